"""The device and LUT commands through the real CLI, on this machine's ONNX Runtime."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from subprocess import PIPE

from pipelines.cli import main
from tests.test_lut import read_only_lut

TINY = str(Path(__file__).parent / "spaces" / "tiny.toml")
SPEC = 'name = "cli-ort"\nkind = "cpu"\n[runtime]\nname = "onnxruntime"\n[measure]\nwarmup = 1\nrounds = 3\nruns = 3\nmin_round_ms = 0\n'  # noqa: E501


def test_devices_check(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("HURRICANE_CACHE", str(tmp_path / "cache"))
    spec = tmp_path / "ort.toml"
    spec.write_text(SPEC)
    assert main(["devices", "check", str(spec)]) == 0
    out = capsys.readouterr().out
    assert "runtimes:" in out and "onnxruntime" in out and "tiny model:" in out
    assert "all checks passed" in out


def test_devices_check_reports_failure(tmp_path: Path, capsys) -> None:
    spec = tmp_path / "bad.toml"
    spec.write_text(SPEC.replace('kind = "cpu"', 'kind = "cpu"\npython = "/bin/false"'))
    assert main(["devices", "check", str(spec)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "agent" in err[0]


def test_profile_then_show_and_export(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("HURRICANE_CACHE", str(tmp_path / "cache"))
    spec = tmp_path / "ort.toml"
    spec.write_text(SPEC)
    db = tmp_path / "lut.sqlite"
    args = ["profile", "--space", TINY, "--device", str(spec), "--db", str(db), "--no-progress"]
    assert main([*args, "--limit", "5"]) == 0
    first = capsys.readouterr().out
    assert "0 already stored" in first and "0 errors" in first
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "5 already stored" in out
    assert main(["lut", "show", "--db", str(db), "--limit", "3"]) == 0
    out = capsys.readouterr().out
    assert "cli-ort (cpu, onnxruntime)" in out and "more (--limit 0 shows all)" in out
    assert main(["lut", "export", "--db", str(db), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 43 and len({r["key"] for r in rows}) == 43
    assert all(r["median_ms"] > 0 and r["n"] == 9 for r in rows if r["status"] != "error")
    out_csv = tmp_path / "lut.csv"
    assert main(["lut", "export", "--db", str(db), "--out", str(out_csv)]) == 0
    table = list(csv.DictReader(io.StringIO(out_csv.read_text())))
    assert {r["key"] for r in table} == {r["key"] for r in rows}
    assert len(table[0]["samples"].split()) == 9


def test_lut_errors(tmp_path: Path, capsys) -> None:
    assert main(["lut", "show", "--db", str(tmp_path / "none.sqlite")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "run 'hurricane profile' first" in err[0]
    assert main(["profile", "--space", TINY, "--device", "no-such", "--db", "x"]) == 2
    assert "examples:" in capsys.readouterr().err


def test_database_files_that_cannot_serve_are_one_line(tmp_path: Path, capsys, ort_lut) -> None:
    import profilers.campaign  # noqa: F401  (imported while this process may read everything)

    spec = tmp_path / "ort.toml"
    spec.write_text(SPEC)
    text = tmp_path / "notes.txt"
    text.write_text("not a database\n" * 100)
    folder = tmp_path / "luts"
    folder.mkdir()
    for db, words in ((text, "not a LUT database"), (folder, "a folder, not a LUT")):
        before = db.read_bytes() if db.is_file() else None
        for args in (["lut", "show"], ["profile", "--space", TINY, "--device", str(spec)]):
            assert main([*args, "--db", str(db)]) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and f"{db}: " in err[0] and words in err[0], err
        assert before is None or db.read_bytes() == before
    src = ort_lut[0]
    for what in ("file", "folder"):
        with read_only_lut(src, what) as db:
            before = db.read_bytes()
            assert main(["lut", "show", "--db", str(db)]) == 0  # reading needs no writing
            assert "ort (cpu, onnxruntime): " in capsys.readouterr().out
            args = ["profile", "--space", TINY, "--device", "local-onnxruntime", "--db", str(db)]
            assert main(args) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and f"{db}: " in err[0] and "read-only" in err[0], err
            assert db.read_bytes() == before


ROOT = Path(__file__).resolve().parents[1]


def _lock_pid(db: Path, device: str, proc: subprocess.Popen, timeout: float = 120) -> int:
    """The pid holding ``device``'s lock, once ``proc`` has taken it."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert proc.poll() is None, proc.communicate()
        try:
            with sqlite3.connect(db) as conn:
                row = conn.execute("SELECT pid FROM locks WHERE device = ?", (device,)).fetchone()
        except sqlite3.Error:
            row = None
        if row:
            return row[0]
        time.sleep(0.1)
    raise AssertionError(f"no lock on {device} in {db}")


def profile_cmd(db: Path, *more: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pipelines.cli",
        "profile",
        "--space",
        TINY,
        "--device",
        "local-onnxruntime",
        "--db",
        str(db),
        "--no-progress",
        *more,
    ]


def new_entries(out: str) -> int:
    m = re.search(r"(\d+) measured, (\d+) noisy \(flagged\), (\d+) errors", out)
    assert m, out
    return sum(map(int, m.groups()))


def test_a_second_profile_of_the_device_refuses_or_waits(tmp_path: Path) -> None:
    """Two `hurricane profile` runs on one database and device once both measured everything,
    the last writer winning; the second now refuses, naming the first's pid, or waits."""
    db = tmp_path / "lut.sqlite"
    env = {**os.environ, "HURRICANE_CACHE": str(tmp_path / "cache")}

    def start(*more: str) -> subprocess.Popen:
        return subprocess.Popen(
            profile_cmd(db, *more), cwd=ROOT, env=env, text=True, stdout=PIPE, stderr=PIPE
        )

    first = start("--limit", "4")
    waiter = None
    try:
        assert _lock_pid(db, "local-onnxruntime", first) == first.pid
        os.kill(first.pid, signal.SIGSTOP)  # paused: still running when the second comes
        second = start("--limit", "4")
        _, second_err = second.communicate(timeout=300)
        assert second.returncode == 2, second_err
        err = second_err.strip().splitlines()
        assert len(err) == 1 and f"by pid {first.pid}" in err[0], err
        assert "'local-onnxruntime'" in err[0] and "--wait" in err[0] and str(db) in err[0]
        waiter = start("--limit", "4", "--wait")
        assert waiter.stderr is not None
        assert waiter.stderr.readline().startswith(f"waiting for pid {first.pid}")
        os.kill(first.pid, signal.SIGCONT)
        out1, _ = first.communicate(timeout=300)
        out2, err2 = waiter.communicate(timeout=300)
    finally:
        for p in (first, waiter):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    assert first.returncode == 0 and "0 already stored" in out1 and new_entries(out1) == 4
    # It waited, then measured only what the first left: four more, none twice.
    assert waiter.returncode == 0, err2
    assert "4 already stored" in out2 and new_entries(out2) == 4, out2
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0] == 8
        assert conn.execute("SELECT COUNT(*) FROM locks").fetchone()[0] == 0
        assert [s for (s,) in conn.execute("SELECT status FROM runs")] == ["done", "done"]
