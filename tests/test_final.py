"""The final model (hurricane/final.py) and the device's check of the chosen candidates, on real
Fashion-MNIST and a real ONNX Runtime LUT."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import torch

from devices.spec import load_device
from hurricane.arch import Arch
from hurricane.final import train_final
from hurricane.latency import LatencyModel
from hurricane.space_file import load_space
from hurricane.subnet import build_subnet
from pipelines.cli import main
from pipelines.config import DEFAULT_DB
from profilers.measure import row_noise
from profilers.models import choose_measured, device_noise, measure_archs

TINY = str(Path(__file__).parent / "spaces" / "tiny.toml")


def copy_db(src: Path, tmp_path: Path) -> Path:
    db = tmp_path / "lut.sqlite"
    with sqlite3.connect(src) as a, sqlite3.connect(db) as b:
        a.backup(b)
    return db


def arch(*ops: str) -> Arch:
    return Arch(tuple(ops), (1.0,) * len(ops))


def test_final_model_from_inherited_weights(tmp_path) -> None:
    space = load_space(TINY)
    a = space.parse_arch("mb_k3_e3-ds_k3@0.5-skip")
    res = train_final(TINY, a, tmp_path / "scratch", steps=40, seed=0, progress=False)
    assert res["from"] == "scratch" and res["test_images"] == 10000 and res["steps"] == 40
    assert res["test_acc"] > 0.3  # 40 steps of a real network on Fashion-MNIST, chance is 0.1
    saved = torch.load(res["model"], weights_only=True)
    net = build_subnet(space, saved["arch"])
    net.load_state_dict(saved["model"])  # a standalone network, not a supernet
    # Fine-tuning from the run above (its supernet holds the trained path) starts where it
    # ended: a few steps at a small rate keep its accuracy instead of starting from chance.
    init = tmp_path / "scratch" / "train" / "supernet.pt"
    tuned = train_final(
        TINY, a, tmp_path / "tuned", steps=2, init=init, lr=1e-4, seed=1, progress=False
    )
    assert tuned["from"] == "inherited weights"
    assert abs(tuned["test_acc"] - res["test_acc"]) < 0.05


def test_device_check_keeps_the_fittest_within_budget(ort_lut, tmp_path) -> None:
    db = copy_db(ort_lut[0], tmp_path)
    spec, space = load_device(ort_lut[1]), load_space(TINY)
    big, small = (
        space.parse_arch("mb_k3_e3-mb_k3_e3-mb_k3_e3"),
        space.parse_arch("skip@0.5-ds_k3@0.5-skip@0.5"),
    )
    rows = measure_archs(space, spec, [big, small], db, cache=ort_lut[2], progress=False)
    ms_big, ms_small = rows[str(big)]["median_ms"], rows[str(small)]["median_ms"]
    assert ms_small < ms_big
    ranked = [
        {"arch": str(big), "fitness": 0.9, "latency_ms": 0.0},  # a wrong prediction
        {"arch": str(small), "fitness": 0.8, "latency_ms": 0.0},
    ]
    # Below the big one by more than its own noise, so it is over budget for certain however
    # loaded the machine is (a figure within noise of the budget is accepted by design).
    floor = device_noise(db, spec)
    noise_big, noise_small = (row_noise(rows[str(a)], floor) for a in (big, small))
    budget = ms_big / (1 + noise_big) * 0.98
    assert ms_small <= budget * (1 + noise_small), "the machine did not separate the two"
    got = choose_measured(space, spec, ranked, budget, db, progress=False)
    assert got["arch"] == str(small) and got["accepted"] and got["measured_ms"] == ms_small
    assert [c["accepted"] for c in got["candidates"]] == [False, True]
    assert got["candidates"][0]["decision"]["verdict"] == "over budget"
    # Nothing fits: the fastest, loudly not accepted.
    tight = ms_small / (1 + noise_small) * 0.9
    got = choose_measured(space, spec, ranked, tight, db, progress=False)
    assert got["arch"] == str(small) and got["accepted"] is False


def test_two_stage_cli_with_final_model(ort_lut, tmp_path, capsys, monkeypatch) -> None:
    """The README's order — shrink, then train --two-stage on what it wrote — with neither
    naming --db: both use the one default database."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    db, spec = copy_db(ort_lut[0], tmp_path), ort_lut[1]
    db.rename(tmp_path / DEFAULT_DB)
    assert main(["shrink", "--space", TINY, "--device", str(spec), "--k", "2"]) == 0
    reduced = str(tmp_path / "runs" / "spaces" / "tiny-ort-k2.toml")
    lo, _ = LatencyModel.from_db(load_space(reduced), DEFAULT_DB, "ort").fastest()
    out = tmp_path / "two"
    args = [
        "train",
        "--two-stage",
        "--space",
        reduced,
        "--device",
        str(spec),
        "--budget",
        str(lo * 3),
        "--split",
        "1",
        "--steps",
        "4",
        "--steps-b",
        "3",
        "--batch-size",
        "32",
        "--train-limit",
        "256",
        "--eval-limit",
        "128",
        "--eval-paths",
        "0",
        "--no-progress",
        "--threads",
        "1",
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
        "--verify-top",
        "2",
        "--final-steps",
        "3",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "7 supernet steps" in printed and "final model:" in printed
    res = json.loads((out / "result.json").read_text())
    final = json.loads((out / "final.json").read_text())
    assert res["supernet_steps"] == 7 and res["final"]["arch"] == final["arch"]
    assert final["measured_ms"] > 0 and final["steps"] == 3 and 0 <= final["test_acc"] <= 1
    assert final["accepted"] == (final["measured_ms"] <= lo * 3)
    assert (out / "final" / "model.pt").exists()
    # Without a budget the two stages cannot search: one clear line.
    assert main([a for a in args if a not in ("--budget", str(lo * 3))]) == 2
    assert "give --device and --budget" in capsys.readouterr().err
