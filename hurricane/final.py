"""The final model: the chosen architecture trained (fine-tuned from its inherited supernet
weights, or from scratch) and scored on the whole test split. Which candidate the device
confirms within budget is ``profilers.models.choose_measured``.

Training reuses the supernet trainer with no layer sampled and the chosen architecture
fixed, so the final run has the same seeding, checkpoints and resume as supernet training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from hurricane.arch import Arch
from hurricane.data import load_data
from hurricane.evaluate import accuracy, recalibrate_bn
from hurricane.space import SearchSpace
from hurricane.space_file import load_space
from hurricane.train import TrainConfig, train


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
) -> dict[str, Any]:
    """Train ``arch`` for ``steps`` (from the supernet ``init`` if given) and score it on the
    whole test split. Writes ``model.pt`` (the standalone network's state dict) to ``out``."""
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
    )
    summary = train(cfg)
    sub = _extract(space, out / "train" / "supernet.pt", arch)
    splits = load_data(data, space.resolution, space.in_channels, space.classes, cfg.val_fraction)
    recalibrate_bn(sub, splits.train, cfg.bn_batches, 256, seed)
    test_acc = accuracy(sub, splits.test)
    with open(out / "model.pt", "wb") as f:  # an unwritable folder: an OSError naming it
        torch.save({"space": space.name, "arch": str(arch), "model": sub.state_dict()}, f)
    return {
        "arch": str(arch),
        "test_acc": test_acc,
        "test_images": len(splits.test),
        "steps": summary["steps"],
        "train_seconds": summary["train_seconds"],
        "from": "inherited weights" if init else "scratch",
        "lr": cfg.lr,
        "model": str(out / "model.pt"),
    }


def _extract(space: SearchSpace, supernet_pt: Path, arch: Arch) -> torch.nn.Module:
    from hurricane.two_stage import load_supernet

    return load_supernet(space, supernet_pt).extract(arch)
