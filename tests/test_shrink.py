"""Progressive shrinking (GoldenNAS, hurricane/shrink.py) on real Fashion-MNIST and a real
ONNX Runtime LUT."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from hurricane.arch import Arch
from hurricane.shrink import drop_worst
from hurricane.space_file import load_space
from hurricane.train import TrainConfig, Trainer
from pipelines.cli import main

TINY = str(Path(__file__).parent / "spaces" / "tiny.toml")


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
