"""End-to-end latency validation, gap filling and adaptive sampling on a real runtime
(ONNX Runtime on this CPU) with a real SQLite LUT."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from devices.artifacts import ArtifactCache
from devices.spec import load_device
from hurricane.calibration import spread_choice
from hurricane.errors import UserError
from hurricane.latency import LatencyModel, LutPredictor, MissingEntries, fill_missing, read_table
from hurricane.lutkeys import OpInstance
from hurricane.space_file import load_space, parse_space
from pipelines.cli import main
from pipelines.latency_validate import POOL, sample_distinct
from profilers.adaptive import adaptive_sample, candidate_pool
from profilers.models import measure_archs

TINY = Path(__file__).parent / "spaces" / "tiny.toml"


@pytest.fixture
def lut(ort_lut) -> tuple[Path, Path, ArtifactCache]:
    return ort_lut


def copy_db(lut, tmp_path: Path) -> Path:
    db = tmp_path / "lut.sqlite"
    with sqlite3.connect(lut[0]) as src, sqlite3.connect(db) as dst:
        src.backup(dst)  # the WAL's pages too
    return db


def test_validate_cli_stores_results_and_reuses_measurements(lut, tmp_path, capsys) -> None:
    db, spec = copy_db(lut, tmp_path), lut[1]
    out = tmp_path / "val"
    argv = [
        "latency",
        "validate",
        "--space",
        str(TINY),
        "--device",
        str(spec),
        "--n",
        "12",
        "--calibration",
        "5",
        "--db",
        str(db),
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "12 held-out models (calibrated on 5" in text and "calibrated" in text
    result = json.loads((out / "validation.json").read_text())
    for key in ("within_5pct", "within_10pct", "rmse_ms", "mape", "spearman"):
        assert np.isfinite(result[key]) and np.isfinite(result["uncalibrated"][key])
    assert result["n"] == 12 and result["n_calibration"] == 5
    roles = [m["role"] for m in result["models"]]
    assert roles.count("calibration") == 5 and roles.count("held_out") == 12
    held = {m["arch"] for m in result["models"] if m["role"] == "held_out"}
    assert not held & {m["arch"] for m in result["models"] if m["role"] == "calibration"}
    # Calibration models span the range, held-out ones are uniform: the fastest and the
    # slowest candidate of the pool are among the calibration models.
    sums = sorted(m["summed_ms"] for m in result["models"] if m["role"] == "calibration")
    space = load_space(TINY)
    pool = sample_distinct(space, 12 + POOL * 5, 0, at_least=17)[12:]
    pool_sums = LutPredictor(space, read_table(space, db, "ort")).predict(pool)
    assert sums[0] == pytest.approx(pool_sums.min()) and sums[-1] == pytest.approx(pool_sums.max())
    # The calibrated figure is what the calibration says of the LUT sum.
    cal = result["calibration"]
    for m in result["models"]:
        want = cal["scale"] * m["summed_ms"] + cal["offset_ms"]
        assert m["predicted_ms"] == pytest.approx(want)
    assert (out / "scatter.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT COUNT(*) FROM models").fetchone()[0] == 17
    assert conn.execute("SELECT COUNT(*) FROM validations").fetchone()[0] == 1
    stamps = conn.execute("SELECT arch, measured_at FROM models").fetchall()
    # Same seed again: every model is already stored, nothing is measured twice.
    assert main(argv) == 0
    assert conn.execute("SELECT arch, measured_at FROM models").fetchall() == stamps
    assert conn.execute("SELECT COUNT(*) FROM validations").fetchone()[0] == 2
    # The stored calibration is what predictions use from now on.
    space = load_space(TINY)
    model = LatencyModel.from_db(space, db, "ort")
    assert model.calibration is not None and model.calibration.scale == pytest.approx(cal["scale"])
    arch = space.default_arch()
    assert model.predict(arch) == pytest.approx(
        cal["scale"] * model.predict_sum(arch) + cal["offset_ms"]
    )
    assert (
        main(
            [
                "latency",
                "predict",
                "--space",
                str(TINY),
                "--device",
                str(spec),
                "--db",
                str(db),
                str(arch),
            ]
        )
        == 0
    )
    assert "ms  (LUT sum" in capsys.readouterr().out


def test_spread_choice_spans_the_range() -> None:
    assert spread_choice([5.0, 1.0, 3.0, 2.0, 4.0], 3) == [1, 2, 0]  # 1, 3 and 5 ms
    assert sorted(spread_choice([2.0, 1.0], 5)) == [0, 1]
    picks = spread_choice(np.random.default_rng(0).normal(size=1000), 20)
    assert len(set(picks)) == 20


def test_missing_entries_are_predicted_not_zero(lut, tmp_path) -> None:
    db = copy_db(lut, tmp_path)
    space = load_space(TINY)
    full = read_table(space, db, "ort")
    gone = sorted(k for k in full if k.startswith("mb_k3_e3"))[:4]
    conn = sqlite3.connect(db)
    conn.executemany("DELETE FROM entries WHERE key = ?", [(k,) for k in gone])
    conn.commit()
    table = read_table(space, db, "ort")
    assert sorted(LutPredictor(space, table).missing()) == gone
    filled, predicted = fill_missing(space, table)
    assert sorted(predicted) == gone
    assert all(np.isfinite(filled[k]) and filled[k] > 0 for k in gone)
    # Too few measured entries to learn from: the gaps are named, with the profile command.
    conn.execute("DELETE FROM entries WHERE key NOT IN (SELECT key FROM entries LIMIT 5)")
    conn.commit()
    with pytest.raises(MissingEntries, match="hurricane profile --space .*tiny.toml"):
        fill_missing(space, read_table(space, db, "ort"))


def test_no_table_for_the_device_is_one_clear_error(lut, tmp_path, capsys) -> None:
    db = copy_db(lut, tmp_path)
    code = main(
        [
            "latency",
            "validate",
            "--space",
            str(TINY),
            "--device",
            "local-onnxruntime",
            "--db",
            str(db),
            "--n",
            "3",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "no latency table for device 'local-onnxruntime'" in err and "hurricane profile" in err
    with pytest.raises(UserError, match="no such LUT database"):
        read_table(load_space(TINY), tmp_path / "none.sqlite", "ort")


def test_models_keyed_by_space_structure(lut, tmp_path) -> None:
    db, spec, cache = copy_db(lut, tmp_path), lut[1], lut[2]
    space = load_space(TINY)
    arch = space.default_arch()
    rows = measure_archs(space, load_device(spec), [arch], db, cache=cache, progress=False)
    assert rows[str(arch)]["status"] in ("ok", "noisy") and rows[str(arch)]["median_ms"] > 0
    changed = parse_space(TINY.read_text().replace("resolution = 28", "resolution = 32"))
    assert changed.structure_hash() != space.structure_hash()
    assert space.structure_hash() == load_space(TINY).structure_hash()


def test_adaptive_sampling_profiles_unmeasured_channel_counts(lut, tmp_path) -> None:
    db, spec, cache = copy_db(lut, tmp_path), lut[1], lut[2]
    space = load_space(TINY)
    before = set(read_table(space, db, "ort"))
    pool = candidate_pool(space)
    assert {p.key for p in pool} - before  # off-grid channel counts exist
    report = adaptive_sample(
        space,
        load_device(spec),
        db,
        budget=6,
        per_round=3,
        target_mape=0.0,
        folds=3,
        progress=False,
        out=tmp_path / "p.json",
        cache=cache,
    )
    after = set(read_table(space, db, "ort"))
    new = after - before
    assert len(new) == 6 and report["added"] == 6 and "budget" in report["stopped"]
    assert new <= {p.key for p in pool}
    assert [r["train"] for r in report["rounds"]] == [len(before), len(before) + 3, len(after)]
    assert (tmp_path / "p.json").exists()
    # The new configurations are ones the width grid never gives.
    grid = {i.key for i in space.op_instances()}
    assert not new & grid
    assert all(isinstance(OpInstance.from_key(k).cin, int) for k in new)


def test_shrink_and_search_cli(lut, tmp_path, capsys) -> None:
    db, spec_path = copy_db(lut, tmp_path), lut[1]
    spec = tmp_path / "ort.toml"  # same device name, plus a device rule
    spec.write_text(spec_path.read_text() + '\n[search]\nexclude_ops = ["ds_*"]\n')
    out = tmp_path / "reduced.toml"
    assert (
        main(
            [
                "shrink",
                "--space",
                str(TINY),
                "--device",
                str(spec),
                "--db",
                str(db),
                "--k",
                "2",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    reduced = load_space(out)
    assert all("ds_k3" not in layer.ops for layer in reduced.layers)
    # skip only where it is an identity: tiny's layer 1 (16 -> 16, stride 1)
    assert [("skip" in lay.ops, len(lay.ops)) for lay in reduced.layers] == [
        (False, 2),
        (True, 3),
        (False, 2),
    ]
    assert out.with_suffix(".scores.json").exists()
    every = tmp_path / "every.toml"
    assert (
        main(
            [
                "shrink",
                "--space",
                str(TINY),
                "--device",
                str(spec),
                "--db",
                str(db),
                "--k",
                "2",
                "--skip",
                "all",
                "--out",
                str(every),
            ]
        )
        == 0
    )
    assert all("skip" in lay.ops and len(lay.ops) == 3 for lay in load_space(every).layers)
    assert "skip=all" in every.read_text()
    # A supernet to search, trained for a few steps on the reduced space.
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--space",
                str(out),
                "--out",
                str(run),
                "--steps",
                "3",
                "--batch-size",
                "32",
                "--train-limit",
                "256",
                "--eval-paths",
                "0",
                "--no-progress",
                "--threads",
                "1",
            ]
        )
        == 0
    )
    model = LatencyModel.from_db(reduced, db, "ort")
    lo, _ = model.fastest()
    base = [
        "search",
        "--space",
        str(out),
        "--device",
        str(spec),
        "--db",
        str(db),
        "--supernet",
        str(run),
        "--population",
        "4",
        "--generations",
        "2",
        "--parents",
        "2",
        "--mutations",
        "2",
        "--crossovers",
        "2",
        "--eval-limit",
        "200",
        "--verify-top",
        "2",
        "--final-steps",
        "2",
    ]
    capsys.readouterr()
    assert main([*base, "--budget", str(lo * 0.5), "--out", str(tmp_path / "s0")]) == 2
    err = capsys.readouterr().err
    assert f"the fastest in this space is {lo:.4g} ms" in err and len(err.splitlines()) == 1
    assert main([*base, "--budget", str(lo * 1.5), "--out", str(tmp_path / "s1")]) == 0
    result = json.loads((tmp_path / "s1" / "result.json").read_text())
    assert result["latency_ms"] <= lo * 1.5 and 0 <= result["fitness"] <= 1
    printed = capsys.readouterr().out
    assert "over budget never evaluated" in printed and "final model:" in printed
    final = json.loads((tmp_path / "s1" / "final.json").read_text())
    assert final["arch"] == result["final"]["arch"] and final["measured_ms"] > 0
    assert final["predicted_ms"] <= lo * 1.5 and final["steps"] == 2


def test_search_names_unmeasured_entries_and_the_profile_command(lut, tmp_path, capsys) -> None:
    db, spec = copy_db(lut, tmp_path), lut[1]
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--space",
                str(TINY),
                "--out",
                str(run),
                "--steps",
                "1",
                "--batch-size",
                "32",
                "--train-limit",
                "64",
                "--eval-paths",
                "0",
                "--no-progress",
                "--threads",
                "1",
            ]
        )
        == 0
    )
    conn = sqlite3.connect(db)
    gone = sorted(k for (k,) in conn.execute("SELECT key FROM entries WHERE key LIKE 'ds_k3:%'"))
    conn.execute("DELETE FROM entries WHERE key LIKE 'ds_k3:%'")
    conn.commit()
    args = [
        "search",
        "--space",
        str(TINY),
        "--device",
        str(spec),
        "--db",
        str(db),
        "--supernet",
        str(run),
        "--budget",
        "1000",
        "--population",
        "2",
        "--generations",
        "1",
        "--eval-limit",
        "64",
        "--no-measure",
        "--final-steps",
        "0",
        "--out",
        str(tmp_path / "s"),
    ]
    capsys.readouterr()
    assert main(args) == 0
    err = capsys.readouterr().err
    assert f"{len(gone)} LUT entries this space needs are not measured on ort" in err
    assert sum(k in err for k in gone) == 3 and f"hurricane profile --space {TINY} --device" in err
    # Too few measured entries to estimate the rest: one line naming them and the command.
    conn.execute("DELETE FROM entries WHERE key NOT IN (SELECT key FROM entries LIMIT 5)")
    conn.commit()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "latency entries missing" in err
    assert f"hurricane profile --space {TINY}" in err
