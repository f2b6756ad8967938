"""The final model: the chosen architecture trained (fine-tuned from its inherited supernet
weights, or from scratch) and scored on the whole test split. Which candidate the device
confirms within budget is ``profilers.models.choose_measured``.

Training reuses the supernet trainer with no layer sampled and the chosen architecture
fixed, so the final run has the same seeding, checkpoints and resume as supernet training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from hurricane.adaptive import (
    ADAPTIVE_FILE,
    AdaptiveNet,
    AdaptiveSettings,
    checkpoint,
    recalibrate_variants,
)
from hurricane.arch import Arch
from hurricane.compute import TrainOn, is_main
from hurricane.data import load_data
from hurricane.evaluate import accuracy, recalibrate_bn
from hurricane.space_file import load_space
from hurricane.train import TrainConfig, Trainer


def train_final(
    space_ref: str,
    arch: Arch | str,
    out: str | Path,
    steps: int,
    data: str = "fashion-mnist",
    init: str | Path | None = None,
    lr: float | None = None,
    seed: int = 0,
    batch_size: int = 128,
    progress: bool = True,
    train_on: TrainOn | None = None,
    adaptive: AdaptiveSettings | None = None,
) -> dict[str, Any]:
    """Train ``arch`` for ``steps`` (from the supernet ``init`` if given) on ``train_on``'s
    torch device and score it on the whole test split. Writes ``model.pt`` (the standalone
    network's fp32 state dict, on the CPU) to ``out``; under torchrun rank 0 writes it.

    ``adaptive``: a GoldenNet, every depth variant trained at once; ``model.pt`` is the full
    depth, ``adaptive.pt`` all of them, and ``depths`` lists each with its test accuracy."""
    out = Path(out)
    space = load_space(space_ref)
    arch = space.parse_arch(str(arch))
    cfg = TrainConfig(
        space=space_ref,
        data=data,
        out=str(out / "train"),
        steps=steps,
        batch_size=batch_size,
        lr=lr or (0.05 if init else 0.1),
        seed=seed,
        sample_layers=[],
        fixed=str(arch),
        init=str(init) if init else None,
        eval_paths=1,
        progress=progress,
        **(train_on or TrainOn()).fields(),
        **(adaptive.train_fields() if adaptive else {}),
    )
    trainer = Trainer(cfg)
    trainer.dist.barrier()
    summary = trainer.train()
    c, w = trainer.compute, trainer.workers
    splits = load_data(data, space.resolution, space.in_channels, space.classes, cfg.val_fraction)
    depths: list[dict[str, Any]] = []
    golden = cast(nn.Module, trainer.net)
    sub: nn.Module
    if isinstance(golden, AdaptiveNet):
        golden.eval()
        recalibrate_variants(golden, splits.train, cfg.bn_batches, 256, seed, c, w)
        for v in golden.variants:
            acc = accuracy(c.module(golden.extract(v.arch)), splits.test, compute=c, workers=w)
            depths.append(
                {"name": v.name, "arch": str(v.arch), "blocks": v.blocks, "test_acc": acc}
            )
        sub = golden.extract(arch)
        test_acc = depths[0]["test_acc"]
    else:
        sub = c.module(trainer.net.eval().extract(arch))
        recalibrate_bn(sub, splits.train, cfg.bn_batches, 256, seed, c, w)
        test_acc = accuracy(sub, splits.test, compute=c, workers=w)
    if is_main():
        state = {k: v.float().cpu() for k, v in sub.state_dict().items()}
        with open(out / "model.pt", "wb") as f:  # an unwritable folder: an OSError naming it
            torch.save({"space": space.name, "arch": str(arch), "model": state}, f)
        if isinstance(golden, AdaptiveNet):
            torch.save(checkpoint(golden, arch), out / ADAPTIVE_FILE)
    return {
        "arch": str(arch),
        "test_acc": test_acc,
        **({"depths": depths, "adaptive": str(out / ADAPTIVE_FILE)} if depths else {}),
        "test_images": len(splits.test),
        "steps": summary["steps"],
        "train_seconds": summary["train_seconds"],
        "from": "inherited weights" if init else "scratch",
        "lr": cfg.lr,
        "model": str(out / "model.pt"),
        "trained_on": summary["trained_on"],
    }
