"""Progressive shrinking (GoldenNAS), the final model and the device's check of the chosen
candidates, on real Fashion-MNIST and a real ONNX Runtime LUT."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch

from devices.spec import load_device
from hurricane.arch import Arch
from hurricane.final import train_final
from hurricane.latency import LatencyModel
from hurricane.shrink import drop_worst
from hurricane.space_file import load_space
from hurricane.subnet import build_subnet
from hurricane.train import TrainConfig, Trainer
from pipelines.cli import main
from pipelines.config import DEFAULT_DB
from profilers.models import choose_measured, measure_archs

TINY = str(Path(__file__).parent / "spaces" / "tiny.toml")


def copy_db(src: Path, tmp_path: Path) -> Path:
    db = tmp_path / "lut.sqlite"
    with sqlite3.connect(src) as a, sqlite3.connect(db) as b:
        a.backup(b)
    return db


def arch(*ops: str) -> Arch:
    return Arch(tuple(ops), (1.0,) * len(ops))


def test_drop_worst_rule() -> None:
    allowed = [["a", "b", "c", "skip"], ["a", "b"]]
    # Same latency for all: the residual is the accuracy itself. "b" on layer 0 is worst;
    # "skip" is worse still but is never dropped; layer 1 is at keep=2 already.
    archs = [arch("a", "a"), arch("b", "a"), arch("c", "b"), arch("skip", "b"), arch("b", "b")]
    acc = np.array([0.8, 0.5, 0.7, 0.1, 0.52])
    new, dropped, scores = drop_worst(archs, acc, np.ones(5), allowed, [0, 1], keep=2)
    assert new == [["a", "c", "skip"], ["a", "b"]] and dropped == {"0": "b"}
    # Accuracy per unit of latency: the others lie on one accuracy-vs-log-latency curve;
    # "slow" costs the most and buys less than its latency asks, so it goes, not "fast".
    names = ["fast", "mid", "big", "slow"]
    lat = np.array([1.0, 2.0, 3.0, 4.0])
    acc = 0.5 + 0.1 * np.log2(lat)
    acc[3] = 0.62
    archs = [arch(op) for op in names] * 2
    new, dropped, _ = drop_worst(archs, np.r_[acc, acc], np.r_[lat, lat], [names], [0], keep=1)
    assert dropped == {"0": "slow"} and new == [["fast", "mid", "big"]]
    assert scores["0"]["skip"] < scores["0"]["b"] < scores["0"]["a"]


@pytest.fixture
def shrink_cfg(ort_lut, tmp_path):
    db, spec, _ = ort_lut

    def cfg(out: str, **kw) -> TrainConfig:
        return TrainConfig(
            space=TINY,
            out=str(tmp_path / out),
            steps=6,
            batch_size=32,
            train_limit=512,
            eval_limit=128,
            eval_paths=0,
            bn_batches=1,
            progress=False,
            threads=1,
            shrink_every=2,
            shrink_paths=6,
            shrink_keep=2,
            latency_db=str(db),
            latency_device="ort",
            **kw,
        )

    return cfg


def test_progressive_shrinking_trains_and_resumes(shrink_cfg, tmp_path) -> None:
    whole = Trainer(shrink_cfg("whole")).train()
    ops = load_space(TINY).layers[0].ops
    # Events at steps 2 and 4 (none at the last step): two drops per layer, 4 ops -> 2.
    assert [e["step"] for e in whole["shrink_history"]] == [2, 4]
    for kept in whole["allowed_ops"]:
        assert len(kept) == 2 and "skip" in kept and set(kept) <= set(ops)
    dropped = [e["dropped"] for e in whole["shrink_history"]]
    assert all(set(d) == {"0", "1", "2"} for d in dropped)
    # Paths after the last event use only the kept ops.
    t = Trainer(shrink_cfg("probe"))
    t.allowed = whole["allowed_ops"]
    for step in range(20):
        a = t.path_at(step)
        assert all(op in kept for op, kept in zip(a.ops, t.allowed))

    # Killed after the checkpoint at step 3 (after one event), then resumed: same result.
    class Killed(Exception):
        pass

    cut = shrink_cfg("cut", ckpt_every=3)
    trainer = Trainer(cut)
    save = trainer.save_checkpoint

    def save_then_die() -> None:
        save()
        raise Killed

    trainer.save_checkpoint = save_then_die
    with pytest.raises(Killed):
        trainer.train()
    assert torch.load(Path(cut.out) / "checkpoint.pt", weights_only=False)["step"] == 3
    resumed = Trainer(cut).train()
    assert resumed["resumed_from"] == [3]
    assert resumed["allowed_ops"] == whole["allowed_ops"]
    assert resumed["shrink_history"] == whole["shrink_history"]
    assert resumed["state_sha256"] == whole["state_sha256"]


def test_shrinking_needs_a_latency_table(tmp_path, capsys) -> None:
    assert (
        main(
            [
                "train",
                "--space",
                TINY,
                "--out",
                str(tmp_path / "r"),
                "--steps",
                "2",
                "--shrink-every",
                "1",
                "--no-progress",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    # The flag train takes is --device; TrainConfig's field name is no flag at all.
    assert "give --device (and --db)" in err and "--latency-device" not in err
    assert len(err.strip().splitlines()) == 1


def test_final_model_from_inherited_weights(tmp_path) -> None:
    space = load_space(TINY)
    a = space.parse_arch("mb_k3_e3-ds_k3@0.5-skip")
    res = train_final(TINY, a, tmp_path / "scratch", steps=40, seed=0, progress=False)
    assert res["from"] == "scratch" and res["test_images"] == 10000 and res["steps"] == 40
    assert res["test_acc"] > 0.3  # 40 steps of a real network on Fashion-MNIST, chance is 0.1
    saved = torch.load(res["model"], weights_only=False)
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
    budget = (ms_big * ms_small) ** 0.5
    got = choose_measured(space, spec, ranked, budget, db, progress=False)
    assert got["arch"] == str(small) and got["accepted"] and got["measured_ms"] == ms_small
    assert [c["accepted"] for c in got["candidates"]] == [False, True]
    # Nothing fits: the fastest, loudly not accepted.
    got = choose_measured(space, spec, ranked, ms_small * 0.5, db, progress=False)
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
