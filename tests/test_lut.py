"""The LUT database: real SQLite file in WAL mode, upserts, no duplicates, reopen."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from hurricane.lut import LutDB, entry_from_samples, error_entry
from hurricane.lutkeys import OpInstance

A = OpInstance("mb_k3_e3", 16, 24, 14, 14, 2, "relu")
B = OpInstance("skip", 24, 24, 7, 7, 1, "relu")


def test_entries_round_trip_and_replace(tmp_path: Path) -> None:
    path = tmp_path / "lut.sqlite"
    with LutDB(path) as db:
        dev = db.upsert_device("local", "cpu", "onnxruntime", {"a": 1}, {"cpu_model": "x"})
        run = db.start_run(dev, "demo")
        db.put(dev, entry_from_samples(A, [1.0, 2.0, 3.0], runtime="onnxruntime"), run)
        db.put(dev, error_entry(B, "conversion failed: boom\nmore"), run)
        db.finish_run(run, "done")
        assert db.count(dev) == {"ok": 1, "error": 1}
    mode = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    with LutDB(path) as db:  # reopened: everything is still there
        dev = db.device_id("local")
        a = db.get(dev, A.key)
        assert a.median_ms == 2.0 and a.min_ms == 1.0 and a.n == 3 and a.samples == (1.0, 2.0, 3.0)
        assert db.get(dev, B.key).error == "conversion failed: boom"
        # Re-measuring replaces, never duplicates.
        db.put(dev, entry_from_samples(A, [5.0, 5.0], attempts=2))
        assert len(db.entries(dev)) == 2 and db.get(dev, A.key).median_ms == 5.0
        assert db.done_keys(dev) == {A.key, B.key}
        assert db.devices()[0]["fingerprint"] == {"cpu_model": "x"}
        # A later upsert without a fingerprint keeps the known one.
        db.upsert_device("local", "cpu", "onnxruntime", {"a": 2})
        assert db.devices()[0]["fingerprint"] == {"cpu_model": "x"}
        assert db.devices()[0]["spec"] == {"a": 2}


def test_median_of_round_medians_is_kept(tmp_path: Path) -> None:
    with LutDB(tmp_path / "l.sqlite") as db:
        dev = db.upsert_device("d", "cpu", "litert", {})
        db.put(dev, entry_from_samples(A, [1.0, 1.0, 9.0], median_ms=1.5))
        e = db.get(dev, A.key)
        assert e.median_ms == 1.5 and round(e.cv, 3) == round(e.std_ms / e.mean_ms, 3)
