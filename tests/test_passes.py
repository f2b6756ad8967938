"""Repeated passes: every item timed again in a fresh agent process, the median stored."""

from __future__ import annotations

import sqlite3
import statistics
from pathlib import Path

import pytest

from devices.artifacts import ArtifactCache
from devices.spec import load_device
from hurricane.errors import UserError
from hurricane.lut import LutDB
from hurricane.space_file import load_space
from profilers.campaign import profile
from profilers.models import measure_archs
from profilers.passes import prior, spread, with_pass
from profilers.session import AgentSession

TINY = Path(__file__).parent / "spaces" / "tiny.toml"
SPEC = (
    'name = "dev"\nkind = "cpu"\n[runtime]\nname = "onnxruntime"\n[measure]\nwarmup = 1\n'
    "rounds = 3\nruns = 3\nmin_round_ms = 1\nbatch = 8\ncv_threshold = 10.0\n"
    'statistic = "min"\ndrift_threshold = 0\n'
)


def spec_with(tmp_path: Path, passes: int):
    path = tmp_path / f"dev{passes}.toml"
    path.write_text(SPEC + f"passes = {passes}\n")
    return load_device(path)


class Counting(AgentSession):
    """The real session and agent, counting agent processes started and items timed."""

    starts = 0
    timed: list[str] = []
    fail_from_start = 0  # from this agent start on, every item comes back as an error

    def start_agent(self) -> None:
        type(self).starts += 1
        super().start_agent()

    def measure(self, items, seed=0):
        cls = type(self)
        for res in super().measure(items, seed):
            if res.get("type") == "result":
                cls.timed.append(res["id"])
                if cls.fail_from_start and cls.starts >= cls.fail_from_start:
                    res = {"type": "error", "id": res["id"], "error": "agent lost the board"}
            yield res


@pytest.fixture()
def counting():
    Counting.starts, Counting.timed, Counting.fail_from_start = 0, [], 0
    return Counting


def test_pass_values() -> None:
    assert prior([], 2.0, "ok") == [2.0]  # a row from before passes: one pass
    assert prior([1.0, 3.0], 2.0, "noisy") == [1.0, 3.0]
    assert prior([], None, "error") == []
    assert with_pass([1.0, 2.0, 3.0], 1, 5.0) == [1.0, 5.0]  # re-timed pass 2 replaces its own
    assert spread([[1.0, 1.1, 0.9], [2.0]]) == pytest.approx(0.1)  # of 0, 0.1, 0.1
    assert spread([[2.0]]) is None


def test_campaign_times_each_entry_in_every_pass(tmp_path: Path, counting, single_thread) -> None:
    space, db = load_space(TINY), tmp_path / "lut.sqlite"
    cache = ArtifactCache(tmp_path / "art")
    report = profile(
        space, spec_with(tmp_path, 2), db, cache=cache, progress=False, session_factory=counting
    )
    n = report.instances
    assert report.measured == n and report.repeated == n and report.pass_spread is not None
    assert counting.starts == 2  # the second pass ran in a fresh agent process
    assert sorted(counting.timed) == sorted(counting.timed[:n] * 2)
    with LutDB(db) as lut:
        entries = lut.entries(lut.device_id("dev"))
    assert len(entries) == n
    for e in entries:
        assert len(e.passes) == 2 and e.median_ms == pytest.approx(statistics.median(e.passes))
    # Asking for three passes later times each entry exactly once more; four, once more again.
    counting.timed = []
    again = profile(
        space, spec_with(tmp_path, 3), db, cache=cache, progress=False, session_factory=counting
    )
    assert again.measured == 0 and again.repeated == n and len(counting.timed) == n
    with LutDB(db) as lut:
        assert {len(e.passes) for e in lut.entries(lut.device_id("dev"))} == {3}
    counting.timed = []
    profile(
        space, spec_with(tmp_path, 3), db, cache=cache, progress=False, session_factory=counting
    )
    assert counting.timed == []  # nothing short of its passes: nothing timed


def test_a_failed_pass_keeps_the_earlier_one(tmp_path: Path, counting, single_thread) -> None:
    space, db = load_space(TINY), tmp_path / "lut.sqlite"
    cache = ArtifactCache(tmp_path / "art")
    profile(space, spec_with(tmp_path, 1), db, cache=cache, progress=False)
    with LutDB(db) as lut:
        first = {e.key: e.median_ms for e in lut.entries(lut.device_id("dev"))}
    counting.fail_from_start = 1  # every item of the second pass fails
    profile(
        space, spec_with(tmp_path, 2), db, cache=cache, progress=False, session_factory=counting
    )
    assert len(counting.timed) == len(first)
    with LutDB(db) as lut:
        after = lut.entries(lut.device_id("dev"))
    assert {e.key: e.median_ms for e in after} == first
    assert {e.status for e in after} == {"ok"} and {len(e.passes) for e in after} == {1}


def test_rows_from_before_passes_count_as_one(tmp_path: Path, counting, single_thread) -> None:
    db = tmp_path / "old.sqlite"
    with sqlite3.connect(db) as conn:  # the entries table as the first release made it
        conn.executescript(
            "CREATE TABLE entries (device_id INTEGER NOT NULL, key TEXT NOT NULL, op TEXT NOT "
            "NULL, cin INTEGER NOT NULL, cout INTEGER NOT NULL, h INTEGER NOT NULL, w INTEGER "
            "NOT NULL, stride INTEGER NOT NULL, act TEXT NOT NULL, runtime TEXT, precision "
            "TEXT, delegate TEXT, median_ms REAL, mean_ms REAL, std_ms REAL, min_ms REAL, n "
            "INTEGER, samples TEXT, status TEXT NOT NULL, error TEXT, attempts INTEGER NOT "
            "NULL DEFAULT 1, run_id INTEGER, measured_at TEXT NOT NULL, "
            "PRIMARY KEY (device_id, key));"
        )
    space, cache = load_space(TINY), ArtifactCache(tmp_path / "art")
    profile(space, spec_with(tmp_path, 1), db, cache=cache, progress=False)
    with sqlite3.connect(db) as conn:  # as the old code stored them: no passes
        conn.execute("UPDATE entries SET passes = NULL, median_ms = 1000.0")
    profile(
        space, spec_with(tmp_path, 2), db, cache=cache, progress=False, session_factory=counting
    )
    with LutDB(db) as lut:
        entries = lut.entries(lut.device_id("dev"))
    assert len(counting.timed) == len(entries) > 0
    for e in entries:  # the old figure is pass one
        assert len(e.passes) == 2 and e.passes[0] == 1000.0 and e.passes[1] < 1000.0


def test_models_are_timed_in_every_pass(tmp_path: Path, counting, monkeypatch) -> None:
    import profilers.measure as measure

    monkeypatch.setattr(measure, "AgentSession", counting)
    space = load_space(TINY)
    archs = [
        space.parse_arch(a) for a in ("skip-skip-ds_k3", "ds_k3-skip-skip", "mb_k3_e3-skip-ds_k3")
    ]
    kw = {"progress": False, "cache": ArtifactCache(tmp_path / "art"), "workers": 0}
    db = tmp_path / "m.sqlite"
    rows = measure_archs(space, spec_with(tmp_path, 3), archs, db, **kw)
    assert counting.starts == 3 and len(counting.timed) == 9
    for r in rows.values():
        assert len(r["passes"]) == 3 and r["median_ms"] == statistics.median(r["passes"])
    counting.timed = []
    measure_archs(space, spec_with(tmp_path, 3), archs, db, **kw)
    assert counting.timed == []


def test_passes_field_in_the_spec(tmp_path: Path) -> None:
    assert load_device("local-litert").measure.passes >= 1
    (tmp_path / "bad.toml").write_text(SPEC + "passes = 0\n")
    with pytest.raises(UserError, match="bad.toml.*passes"):
        load_device(tmp_path / "bad.toml")


def test_handoff_times_the_bundle_in_every_pass(
    tmp_path: Path, counting, monkeypatch, single_thread
) -> None:
    import json

    import pipelines.handoff as handoff
    import profilers.measure as measure
    from hurricane.final import train_final

    monkeypatch.setattr(measure, "AgentSession", counting)
    res = train_final(
        str(TINY),
        "mb_k3_e3-ds_k3@0.5-shuffle_k3",
        tmp_path / "final",
        5,
        seed=0,
        batch_size=64,
        progress=False,
    )
    m = handoff.make_bundle(
        str(TINY), res["model"], spec_with(tmp_path, 3), tmp_path / "bundle", 1000.0, samples=4
    )
    lat = m["latency"]
    assert counting.starts == 3 and len(lat["passes_ms"]) == 3
    assert lat["measured_ms"] == statistics.median(lat["passes_ms"])
    assert lat["protocol"]["passes"] == 3
    counting.starts = 0
    again = handoff.verify_bundle(tmp_path / "bundle", str(tmp_path / "dev3.toml"))
    assert counting.starts == 3 and again["measured_ms"] > 0
    assert json.loads((tmp_path / "bundle" / "manifest.json").read_text())["accepted"]
