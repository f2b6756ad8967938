"""The reference model that catches a batch timed while the whole device was slow."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from devices.artifacts import ArtifactCache
from devices.spec import load_device
from hurricane.errors import UserError
from hurricane.space_file import load_space
from profilers.campaign import profile
from profilers.drift import REFERENCE_ID, DriftGuard
from profilers.measure import latency_of
from profilers.models import measure_archs
from profilers.session import AgentSession

TINY = Path(__file__).parent / "spaces" / "tiny.toml"
SPEC = (
    'name = "dev"\nkind = "cpu"\n[runtime]\nname = "onnxruntime"\n[measure]\nwarmup = 2\n'
    "rounds = 5\nruns = 5\nmin_round_ms = 2\nbatch = 6\ncv_threshold = 10.0\n"
    'statistic = "min"\n'
)


def line(item: str, ms: float) -> dict:
    return {"type": "result", "id": item, "median_ms": ms, "round_medians_ms": [ms, ms * 1.01]}


def test_judge_rejects_a_slow_batch_and_rechecks_once() -> None:
    guard = DriftGuard(artifact=object(), threshold=0.05, retries=2)  # type: ignore[arg-type]
    lat = latency_of
    kept, again = guard.judge([line("a", 1.0), line(REFERENCE_ID, 0.10)], lat)
    assert [r["id"] for r in kept] == ["a"] and again == []
    # The whole batch ran 20% slow: every item is measured again, nothing is kept.
    kept, again = guard.judge([line("b", 2.4), line("c", 1.2), line(REFERENCE_ID, 0.12)], lat)
    assert kept == [] and again == ["b", "c"]
    kept, again = guard.judge([line("b", 2.0), line("c", 1.0), line(REFERENCE_ID, 0.101)], lat)
    assert len(kept) == 2 and again == []
    # Later, quieter batches lower the median: "a"'s batch now looks slow, and is checked once.
    for item in ("d", "g", "h"):
        guard.judge([line(item, 1.0), line(REFERENCE_ID, 0.09)], lat)
    assert guard.typical_ms == pytest.approx(0.095)
    assert sorted(guard.recheck()) == ["a", "b", "c"]
    assert guard.recheck() == []
    # Errors are kept whatever the reference says; retries are bounded.
    err = {"type": "error", "id": "e", "error": "boom"}
    for _ in range(3):
        kept, again = guard.judge([err, line("f", 1.0), line(REFERENCE_ID, 0.2)], lat)
    assert kept[0] is err and again == [] and kept[1]["id"] == "f"  # third time: kept
    assert guard.to_json()["batches_remeasured"] == 3


def test_one_fast_batch_does_not_make_every_later_one_slow() -> None:
    """The session's best is an extreme: held against it, every batch at the device's usual
    speed was measured again (101 times in one demo profile). Held against the median, a
    device that is steady at its usual speed re-measures at most while the median settles."""
    guard = DriftGuard(artifact=object(), threshold=0.03, retries=3)  # type: ignore[arg-type]
    guard.judge([line("a", 1.0), line(REFERENCE_ID, 0.100)], latency_of)  # a lucky batch
    for i in range(12):
        guard.judge([line(f"x{i}", 1.0), line(REFERENCE_ID, 0.110)], latency_of)
    assert guard.rejected <= 1 and guard.best_ms == 0.100
    assert guard.typical_ms == pytest.approx(0.110)


def test_judge_without_a_reference_keeps_everything() -> None:
    off = DriftGuard(None, 0.0, 0)
    items = [("a", "art")]
    assert off.with_reference(items) is items  # type: ignore[arg-type]
    guard = DriftGuard(artifact="ref", threshold=0.05, retries=2)  # type: ignore[arg-type]
    crashed = [{"type": "error", "id": "a", "error": "agent ended"}]
    assert guard.judge(crashed, latency_of) == (crashed, [])


class SlowSecondBatch(AgentSession):
    """The real session and agent; the second batch's results come back twice as slow, as they
    can when another tenant takes the CPU for a few seconds."""

    calls = 0
    seen: list[list[str]] = []

    def measure(self, items, seed=0):
        cls = type(self)
        cls.calls += 1
        cls.seen.append([i for i, _ in items])
        for res in super().measure(items, seed):
            if cls.calls == 2 and res.get("type") == "result":
                res = {
                    **res,
                    "median_ms": res["median_ms"] * 2,
                    "round_medians_ms": [m * 2 for m in res["round_medians_ms"]],
                }
            yield res


@pytest.fixture()
def slow_second(monkeypatch):
    SlowSecondBatch.calls, SlowSecondBatch.seen = 0, []
    return SlowSecondBatch


def test_campaign_remeasures_a_slow_batch(tmp_path: Path, slow_second, single_thread) -> None:
    (tmp_path / "dev.toml").write_text(SPEC + "drift_threshold = 0.2\n")
    spec = load_device(tmp_path / "dev.toml")
    db = tmp_path / "lut.sqlite"
    cache = ArtifactCache(tmp_path / "art")
    report = profile(
        load_space(TINY),
        spec,
        db,
        cache=cache,
        progress=False,
        limit=18,
        session_factory=slow_second,
    )
    seen = slow_second.seen
    assert all(batch[-1] == REFERENCE_ID for batch in seen)
    slowed = set(seen[1][:-1])
    # The slow batch was measured again, and what is stored comes from the second try.
    assert len(slowed) == 6 and all(sum(k in b for b in seen) >= 2 for k in slowed)
    assert report.drift["batches_remeasured"] >= 1 and report.measured == 18
    with sqlite3.connect(db) as conn:
        n = conn.execute("SELECT count(*) FROM entries").fetchone()[0]
    assert n == 18  # the reference is never stored


def test_models_remeasure_a_slow_batch(tmp_path: Path, slow_second, monkeypatch) -> None:
    import profilers.measure as measure

    monkeypatch.setattr(measure, "AgentSession", slow_second)
    (tmp_path / "dev.toml").write_text(SPEC + "drift_threshold = 0.2\n")
    spec = load_device(tmp_path / "dev.toml")
    space = load_space(TINY)
    # Three batches: if the first (cold) batch's reference was slow too, the slowed second
    # one is still caught, by the recheck against the third's.
    archs = [
        space.parse_arch(a)
        for a in (
            "skip-skip-ds_k3",
            "ds_k3-skip-skip",
            "mb_k3_e3-skip-ds_k3",
            "skip-mb_k3_e3-ds_k3",
            "ds_k3-ds_k3-ds_k3",
            "mb_k3_e3-mb_k3_e3-mb_k3_e3",
        )
    ]
    rows = measure_archs(
        space,
        spec,
        archs,
        tmp_path / "m.sqlite",
        progress=False,
        batch=2,
        cache=ArtifactCache(tmp_path / "art"),
        workers=0,
    )
    seen = slow_second.seen
    slowed = set(seen[1][:-1])
    assert len(slowed) == 2 and all(sum(k in b for b in seen) >= 2 for k in slowed)
    assert {r["status"] for r in rows.values()} == {"ok"} and len(rows) == 6


def test_drift_fields_in_the_spec(tmp_path: Path) -> None:
    (tmp_path / "off.toml").write_text(SPEC + "drift_threshold = 0\n")
    spec = load_device(tmp_path / "off.toml")
    assert not DriftGuard.for_spec(spec, ArtifactCache(tmp_path / "art")).enabled
    (tmp_path / "bad.toml").write_text(SPEC + "drift_threshold = -1\n")
    with pytest.raises(UserError, match="bad.toml.*drift_threshold"):
        load_device(tmp_path / "bad.toml")


def test_a_session_slower_than_the_profile_is_named(ort_lut, tmp_path: Path, capsys) -> None:
    """The guard compares batches within a session; a device slow for the whole session is
    caught against the reference's best from the LUT's profile run instead."""
    db = tmp_path / "lut.sqlite"
    with sqlite3.connect(ort_lut[0]) as src, sqlite3.connect(db) as dst:
        src.backup(dst)
    space, spec = load_space(TINY), load_device(ort_lut[1])

    def measure(arch: str, stored_best_ms: float) -> str:
        with sqlite3.connect(db) as conn:
            n = conn.execute(
                "UPDATE runs SET info = json_set(info, '$.drift.reference_best_ms', "
                "?, '$.drift.reference_median_ms', ?, '$.drift.reference_best_ms_by_pass', "
                "json('[]'))",
                (stored_best_ms, stored_best_ms),
            ).rowcount
        assert n >= 1
        capsys.readouterr()
        rows = measure_archs(
            space, spec, [space.parse_arch(arch)], db, cache=ort_lut[2], progress=False, workers=0
        )
        assert rows[arch]["status"] in ("ok", "noisy")  # measured and stored all the same
        return capsys.readouterr().err

    err = measure("ds_k3-skip-mb_k3_e3", 1e-6)  # as if profiled on a far faster device
    lines = [ln for ln in err.splitlines() if ln.startswith("WARNING")]
    assert len(lines) == 1 and "ort ran its drift reference" in lines[0]
    assert "slower in this session" in lines[0] and "measure again" in lines[0]
    err = measure("skip-ds_k3-mb_k3_e3", 1e3)
    assert "WARNING" not in err
