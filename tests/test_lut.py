"""The LUT database: real SQLite file in WAL mode, upserts, no duplicates, reopen."""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from hurricane.errors import UserError
from hurricane.lut import DeviceBusy, LutDB, _proc, entry_from_samples, error_entry
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


# --- files that cannot serve as a LUT ------------------------------------------------------


@contextmanager
def read_only_lut(src: Path, what: str) -> Iterator[Path]:
    """A copy of the LUT ``src`` this test cannot write: the file itself (``what="file"``) or
    the folder holding it (``"folder"``). Root passes every permission check, so under root
    the block runs as nobody (effective uid), in a folder under /tmp that nobody can reach."""
    root = os.geteuid() == 0
    base = Path(tempfile.mkdtemp(prefix="hurricane-ro-"))
    base.chmod(0o755)
    folder = base / "luts"
    folder.mkdir()
    db = folder / "lut.sqlite"
    with sqlite3.connect(src) as a, sqlite3.connect(db) as b:
        a.backup(b)
    LutDB(db).close()  # WAL mode, as every LUT is
    if root:
        os.chown(folder, 65534, 65534)
        os.chown(db, 65534, 65534)
    if what == "file":
        db.chmod(0o444)
    else:
        folder.chmod(0o555)
    try:
        if root:
            os.seteuid(65534)
        try:
            yield db
        finally:
            if root:
                os.seteuid(0)
    finally:
        folder.chmod(0o755)
        shutil.rmtree(base)


def test_files_that_are_not_a_lut_are_one_line_and_left_as_they_were(tmp_path: Path) -> None:
    text = tmp_path / "notes.sqlite"
    text.write_text("not a database\n" * 100)
    foreign = tmp_path / "other.sqlite"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE photos (name TEXT)")
    folder = tmp_path / "luts"
    folder.mkdir()
    cases = {text: "not a LUT database", foreign: "not a Hurricane LUT", folder: "a folder"}
    for path, words in cases.items():
        before = path.read_bytes() if path.is_file() else None
        for readonly in (False, True):
            with pytest.raises(UserError) as err:
                LutDB(path, readonly=readonly)
            msg = str(err.value)
            assert msg.startswith(f"{path}: ") and words in msg and "\n" not in msg, msg
        if before is not None:  # not one byte written, no table added
            assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["luts", "notes.sqlite", "other.sqlite"]
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize(
    "what,words",
    [("file", "the database is read-only; make it writable"), ("folder", "is read-only, and")],
)
def test_a_lut_this_process_cannot_write(tmp_path: Path, what: str, words: str) -> None:
    src = tmp_path / "lut.sqlite"
    with LutDB(src) as db:
        dev = db.upsert_device("local", "cpu", "onnxruntime", {})
        db.put(dev, entry_from_samples(A, [1.0, 2.0, 3.0]))
    with read_only_lut(src, what) as path:
        before = path.read_bytes()
        with pytest.raises(UserError) as err:  # a writer: refused before it starts
            LutDB(path)
        msg = str(err.value)
        assert msg.startswith(f"{path}: ") and words in msg and "\n" not in msg, msg
        with LutDB(path, readonly=True) as db:  # a reader still reads it
            assert db.get(db.device_id("local"), A.key).median_ms == 2.0
        assert path.read_bytes() == before


# --- one campaign per device -----------------------------------------------------------------

HOLD = """
import sys, time
from hurricane.lut import LutDB
with LutDB(sys.argv[1]) as db, db.device_lock("local", "space tiny"):
    print("held", flush=True)
    time.sleep(60)
"""


def test_device_lock_refuses_a_live_holder_and_waits_for_it(tmp_path: Path) -> None:
    path = tmp_path / "lut.sqlite"
    root = Path(__file__).resolve().parents[1]
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path)], cwd=root, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with LutDB(path) as db:
            with pytest.raises(DeviceBusy) as err:
                with db.device_lock("local"):
                    pass
            assert err.value.pid == holder.pid
            msg = str(err.value)
            assert f"pid {holder.pid}" in msg and "'local'" in msg and "space tiny" in msg
            with db.device_lock("other"):  # a lock is one device's, not the file's
                pass
            seen = []
            threading.Timer(1.0, holder.kill).start()
            with db.device_lock("local", wait=True, poll_s=0.1, on_wait=seen.append) as left:
                assert [h["pid"] for h in seen] == [holder.pid]
                # Killed, the holder could not release it: this taker took it over.
                assert left is not None and left["pid"] == holder.pid
                row = db.conn.execute("SELECT pid FROM locks WHERE device = 'local'").fetchone()
                assert row["pid"] == os.getpid()
            assert db.conn.execute("SELECT COUNT(*) FROM locks").fetchone()[0] == 0
    finally:
        holder.kill()
        holder.wait()


def test_a_dead_or_reused_pid_does_not_hold_the_lock(tmp_path: Path) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        with LutDB(tmp_path / "lut.sqlite") as db:
            dev = db.upsert_device("local", "cpu", "onnxruntime", {})
            stale = db.start_run(dev, "tiny")
            for pid, proc in ((gone.pid, None), (sleeper.pid, "another-boot:1")):
                db.conn.execute(
                    "INSERT OR REPLACE INTO locks (device, pid, host, proc, started) "
                    "VALUES ('local', ?, ?, ?, 'then')",
                    (pid, socket.gethostname(), proc),
                )
                with db.device_lock("local") as left:
                    assert left is not None and left["pid"] == pid
            (status,) = db.conn.execute("SELECT status FROM runs WHERE id = ?", (stale,)).fetchone()
            assert status == "interrupted"
            # The same sleeper as itself (its real start time) is alive: refused.
            db.conn.execute(
                "INSERT INTO locks (device, pid, host, proc, started) VALUES ('local', ?, ?, ?, "
                "'then')",
                (sleeper.pid, socket.gethostname(), _proc(sleeper.pid)[1]),
            )
            with pytest.raises(DeviceBusy, match=f"pid {sleeper.pid}"):
                with db.device_lock("local"):
                    pass
    finally:
        sleeper.kill()
        sleeper.wait()
