"""The device and LUT commands through the real CLI, on this machine's ONNX Runtime."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from pipelines.cli import main

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
