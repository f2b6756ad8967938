"""The one measurement engine, through each of its callers: LUT entries, whole models and the
handoff. Real agent, real ONNX Runtime, real SQLite."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from devices.artifacts import ArtifactCache
from devices.spec import load_device
from hurricane.space_file import load_space
from hurricane.subnet import instance_module
from profilers.campaign import profile
from profilers.drift import REFERENCE_ID
from profilers.measure import (
    Engine,
    MemorySink,
    judge_budget,
    latency_of,
    round_cv,
    row_noise,
)
from profilers.models import MeasureError, choose_measured, measure_archs
from profilers.session import AgentSession

TINY = Path(__file__).parent / "spaces" / "tiny.toml"
SPEC = (
    'name = "dev"\nkind = "cpu"\n[runtime]\nname = "onnxruntime"\n[measure]\nwarmup = 1\n'
    "rounds = 6\nruns = 3\nmin_round_ms = 1\nbatch = 4\n"
)
# Ten models of the tiny space; only the last holds shuffle_k3 (the crash is set on it).
TEN = [
    "mb_k3_e3-ds_k3-skip",
    "ds_k3-mb_k3_e3-skip",
    "skip-ds_k3-mb_k3_e3",
    "ds_k3-ds_k3-ds_k3",
    "mb_k3_e3-mb_k3_e3-mb_k3_e3",
    "skip-skip-ds_k3",
    "skip-mb_k3_e3-ds_k3",
    "mb_k3_e3-skip-ds_k3",
    "ds_k3-skip-mb_k3_e3@0.5",
    "ds_k3-shuffle_k3-mb_k3_e3",
]


def spec_file(tmp_path: Path, extra: str = "", name: str = "dev") -> Path:
    path = tmp_path / f"{name}.toml"
    if "statistic" not in extra:
        extra += 'statistic = "min"\n'
    path.write_text(SPEC.replace('name = "dev"', f'name = "{name}"') + extra)
    return path


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> ArtifactCache:
    return ArtifactCache(tmp_path_factory.mktemp("art"))


class Counting(AgentSession):
    """The real session, counting what each batch asked for."""

    batches: list[list[str]] = []

    def measure(self, items, seed=0):
        type(self).batches.append([i for i, _ in items])
        yield from super().measure(items, seed)


def test_a_crash_during_whole_models_stores_only_the_culprit(
    tmp_path: Path, cache, monkeypatch, single_thread
) -> None:
    space = load_space(TINY)
    spec = load_device(spec_file(tmp_path, "cv_threshold = 10.0\n"))
    db = tmp_path / "m.sqlite"
    archs = [space.parse_arch(a) for a in TEN]
    monkeypatch.setenv("HURRICANE_AGENT_CRASH_ON", "shuffle_k3")
    rows = measure_archs(space, spec, archs, db, cache=cache, progress=False, workers=0)
    by_status = {a: r["status"] for a, r in rows.items()}
    assert by_status[TEN[-1]] == "error" and "agent ended" in rows[TEN[-1]]["error"]
    assert [a for a, s in by_status.items() if s == "ok"] == TEN[:-1]
    assert all(rows[a]["median_ms"] > 0 for a in TEN[:-1])
    # Without the fault the culprit is timed on the next call; the nine are not timed again.
    monkeypatch.delenv("HURRICANE_AGENT_CRASH_ON")
    Counting.batches = []
    rows = measure_archs(
        space, spec, archs, db, cache=cache, progress=False, workers=0, session_factory=Counting
    )
    assert rows[TEN[-1]]["status"] == "ok"
    assert [i for b in Counting.batches for i in b if i != REFERENCE_ID] == [TEN[-1]]


def test_a_crash_during_entries_stores_only_the_culprit(
    tmp_path: Path, cache, monkeypatch, single_thread
) -> None:
    space = load_space(TINY)
    victim = next(i for i in space.op_instances() if i.op == "shuffle_k3")
    monkeypatch.setenv("HURRICANE_AGENT_CRASH_ON", victim.key)
    spec = load_device(spec_file(tmp_path, "cv_threshold = 10.0\n"))
    db = tmp_path / "lut.sqlite"
    pending = [i for i in space.op_instances() if i.key != victim.key][:9] + [victim]
    report = profile(
        space, spec, db, cache=cache, progress=False, instances=pending, convert_workers=0
    )
    with sqlite3.connect(db) as conn:
        got = dict(conn.execute("SELECT key, status FROM entries").fetchall())
    assert got.pop(victim.key) == "error"
    assert set(got.values()) == {"ok"} and len(got) == 9
    assert report.errors == 1 and report.measured == 9


def _bundle(tmp_path: Path, arch: str) -> Path:
    from hurricane.final import train_final

    res = train_final(str(TINY), arch, tmp_path / "final", 3, batch_size=32, progress=False)
    return Path(res["model"])


def test_a_crash_during_the_handoff(tmp_path: Path, monkeypatch, single_thread) -> None:
    from pipelines.handoff import BundleError, make_bundle

    model = _bundle(tmp_path, "mb_k3_e3-ds_k3-skip")
    spec = load_device(spec_file(tmp_path, "cv_threshold = 10.0\n"))
    # The drift reference kills the agent: the bundle is still timed, alone, in a fresh one.
    monkeypatch.setenv("HURRICANE_AGENT_CRASH_ON", REFERENCE_ID)
    m = make_bundle(str(TINY), model, spec, tmp_path / "b1", 1000.0, samples=4)
    assert m["accepted"] and m["latency"]["measured_ms"] > 0
    # The model itself kills it: one line that says so, and no bundle left behind.
    monkeypatch.setenv("HURRICANE_AGENT_CRASH_ON", "bundle")
    with pytest.raises(BundleError, match="crashed the device's runtime"):
        make_bundle(str(TINY), model, spec, tmp_path / "b2", 1000.0, samples=4)
    assert not (tmp_path / "b2").exists()


def test_every_caller_gives_the_same_figure(tmp_path: Path, cache, single_thread) -> None:
    """The final step (measure_archs), the handoff and a verify time one network: their
    figures agree within the noise each reports. (Before the one engine the handoff timed the
    model alone, without the reference, and disagreed by up to 65%.)"""
    from pipelines.handoff import make_bundle, verify_bundle

    arch = "mb_k3_e3-mb_k3_e3-mb_k3_e3"
    space = load_space(TINY)
    path = spec_file(tmp_path, "passes = 2\n")
    spec = load_device(path)
    model = _bundle(tmp_path, arch)
    # Load on this shared VM only ever adds time, and it moves whole sessions minutes apart
    # by 20-50%: each caller keeps its least disturbed figure over up to three rounds (a
    # caller that timed differently would stay apart in every round).
    best: dict[str, tuple[float, float]] = {}
    for attempt in range(3):
        db = tmp_path / f"m{attempt}.sqlite"
        final = measure_archs(
            space, spec, [space.parse_arch(arch)], db, cache=cache, progress=False, workers=0
        )[arch]
        bundle = tmp_path / f"b{attempt}"
        m = make_bundle(str(TINY), model, spec, bundle, final["median_ms"] * 1.5, samples=4)
        v = verify_bundle(bundle, str(path))
        figures = {
            "final": (final["median_ms"], row_noise(final)),
            "handoff": (m["latency"]["measured_ms"], m["latency"]["noise"]),
            "verify": (v["measured_ms"], v["noise"]),
        }
        best = {k: min(f, best.get(k, f)) for k, f in figures.items()}
        values = [ms for ms, _ in best.values()]
        allowed = max(0.15, 3 * max(n for _, n in best.values()))
        if max(values) / min(values) - 1 <= allowed:
            break
    assert max(values) / min(values) - 1 <= allowed, best
    # 1.5x the final figure: accepted by both, whatever the noise on a loaded machine makes
    # the verdict ("within budget", or "within noise of the budget" when rounds spread 1/3).
    assert m["accepted"] and m["latency"]["decision"]["accepted"] and v["within_budget"]
    assert len(m["latency"]["passes_ms"]) == 2 and m["latency"]["drift"]["reference"]


def test_judge_budget_says_how_sure() -> None:
    assert judge_budget(0.90, 1.0, 0.05)["verdict"] == "within budget"
    near = judge_budget(1.03, 1.0, 0.05)
    assert near["accepted"] and near["verdict"] == "within noise of the budget"
    assert near["margin"] == pytest.approx(-0.03)
    over = judge_budget(1.06, 1.0, 0.05)
    assert not over["accepted"] and over["verdict"] == "over budget"
    assert not judge_budget(None, 1.0, 0.0)["accepted"]
    # The noise of a row: its rounds, its passes, and the clock against a tiny figure.
    assert row_noise(
        {"median_ms": 1.0, "round_cv": 0.01, "passes": [0.9, 1.0, 1.1]}
    ) == pytest.approx(0.1)
    assert row_noise({"median_ms": 0.02, "round_cv": 0.0}) == pytest.approx(0.1)
    assert row_noise({"median_ms": 1.0, "round_cv": 0.01}, floor=0.04) == 0.04


class Disturbed(AgentSession):
    """The real session; rounds come back with a made-up spread: ``ref`` for the drift
    reference, ``item`` for everything else (every other round slowed by that much). Rounds
    are made even first, so each spread is exactly the made-up one however loaded the
    machine is (the real spread moved the noise floor past the items' on CI)."""

    ref = 0.0
    item = 0.0

    def measure(self, items, seed=0):
        for res in super().measure(items, seed):
            if res.get("type") == "result":
                k = self.ref if res["id"] == REFERENCE_ID else self.item
                meds = res["round_medians_ms"]
                meds = [min(meds)] * len(meds)
                res = {
                    **res,
                    "round_medians_ms": [m * (1 + k * (i % 2)) for i, m in enumerate(meds)],
                }
            yield res


def _noisy_run(tmp_path: Path, cache: ArtifactCache, ref: float, item: float):
    Disturbed.ref, Disturbed.item = ref, item
    spec = load_device(
        spec_file(tmp_path, 'statistic = "median"\ncv_threshold = 0.05\nmax_remeasure = 2\n')
    )
    space = load_space(TINY)
    arts = {}
    rt = spec.runtime
    for inst in space.op_instances()[:8]:
        module, x = instance_module(inst)
        arts[inst.key] = cache.get(module, x, rt.name, rt.precision)
    sink = MemorySink()
    engine = Engine(spec, cache, session_factory=Disturbed, progress=False)
    return engine.run(list(arts), arts.__getitem__, sink), sink


def test_remeasuring_stops_at_the_device_noise_floor(tmp_path: Path, cache, single_thread) -> None:
    # The device itself is as noisy as the items: measuring them again would not do better.
    rep, sink = _noisy_run(tmp_path, cache, ref=1.0, item=1.0)
    assert rep.noise_floor is not None and rep.noise_floor > 0.3
    assert rep.drift["noise_floor"] == rep.noise_floor
    assert rep.remeasured == 0 and rep.noisy_at_floor == 8 and rep.noisy == 8
    assert {r["status"] for r in sink.rows.values()} == {"noisy"}
    # A steady device and noisy items: those are measured again, up to max_remeasure.
    rep, sink = _noisy_run(tmp_path, cache, ref=0.0, item=1.0)
    assert rep.noisy_at_floor == 0 and rep.remeasured == 16
    assert all(r["attempts"] == 3 for r in sink.rows.values())


def test_nothing_measurable_is_a_user_error(tmp_path: Path, cache, monkeypatch) -> None:
    space = load_space(TINY)
    spec = load_device(spec_file(tmp_path, "cv_threshold = 10.0\n"))
    monkeypatch.setenv("HURRICANE_AGENT_CRASH_ON", "ds_k3")
    ranked = [{"arch": a, "fitness": 0.5, "latency_ms": 0.1} for a in TEN[:2]]
    with pytest.raises(MeasureError, match=r"none of the 2 best candidates.*agent ended.*check"):
        choose_measured(space, spec, ranked, 1.0, tmp_path / "m.sqlite", n=2, progress=False)


def test_statistics_of_a_result() -> None:
    res = {"median_ms": 1.2, "round_medians_ms": [1.0, 1.5, 1.02, 1.6, 1.01, 1.4, 1.3, 1.1]}
    assert latency_of(res) == 1.2 and latency_of(res, "min") == 1.0
    assert round_cv(res, "min") == pytest.approx(0.02)


def test_decisions_allow_for_the_noise_the_profile_measured(ort_lut, tmp_path: Path) -> None:
    """The final step's decision takes the device's noise from its profile runs (how far a
    typical batch sits above the best): a figure inside it is within noise, not over."""
    from profilers.models import device_noise

    db = tmp_path / "lut.sqlite"
    with sqlite3.connect(ort_lut[0]) as src, sqlite3.connect(db) as dst:
        src.backup(dst)
    space, spec = load_space(TINY), load_device(ort_lut[1])
    arch = "ds_k3-skip-mb_k3_e3"
    rows = measure_archs(
        space, spec, [space.parse_arch(arch)], db, cache=ort_lut[2], progress=False, workers=0
    )
    ms = rows[arch]["median_ms"]
    ranked = [{"arch": arch, "fitness": 0.5, "latency_ms": ms}]
    # Below the figure by more than its own noise: over budget however loaded the machine.
    budget = ms / (1 + row_noise(rows[arch], device_noise(db, spec))) * 0.98
    over = choose_measured(space, spec, ranked, budget, db, n=1, progress=False)
    assert not over["accepted"] and over["decision"]["verdict"] == "over budget"
    # A profile whose best batch was a tenth of its typical one (noise 0.9): the second
    # measurement, itself often 30% off on this shared VM, stays within that noise.
    with sqlite3.connect(db) as conn:
        conn.execute(
            "UPDATE runs SET info = json_set(info, '$.drift.reference_best_ms', 0.01, "
            "'$.drift.reference_median_ms', 0.1)"
        )
    assert device_noise(db, spec) == pytest.approx(0.9)
    near = choose_measured(space, spec, ranked, budget, db, n=1, progress=False)
    assert near["accepted"] and near["decision"]["verdict"] == "within noise of the budget"
