"""Accuracy of a network on a split, and batch-norm recalibration for inherited weights.

Both run where the model's weights are, in the precision ``compute`` asks for; file data
are decoded by ``hurricane.loader`` (``workers`` processes), in-memory data in-process.
"""

from __future__ import annotations

import torch
from torch import nn

from hurricane.compute import Compute
from hurricane.data import Images
from hurricane.loader import iterate


def _compute(model: nn.Module, compute: Compute | None) -> Compute:
    if compute is not None:
        return compute
    first = next(model.parameters(), None)
    return Compute(first.device if first is not None else torch.device("cpu"))


@torch.no_grad()
def recalibrate_bn(
    model: nn.Module,
    data: Images,
    batches: int,
    batch_size: int,
    seed: int,
    compute: Compute | None = None,
    workers: int = 0,
) -> None:
    """Recompute BN running statistics as exact averages over ``batches`` training batches.

    A path of a supernet inherits statistics accumulated over other paths, which do not fit
    it; recomputing them on a few batches (SPOS, GoldenNAS's adaptive BN) does."""
    c = _compute(model, compute)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average: every batch weighs the same
    was_training = model.training
    model.train()
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(data), generator=gen)
    plans = [
        (seed, idx)
        for b in range(batches)
        if len(idx := perm[b * batch_size : (b + 1) * batch_size])
    ]
    for x, _ in iterate(data, plans, train=False, workers=workers, pin_memory=c.cuda):
        with c.autocast():
            model(c.batch(x))
    for bn, momentum in zip(bns, saved):
        bn.momentum = momentum
    model.train(was_training)


@torch.no_grad()
def accuracy(
    model: nn.Module,
    data: Images,
    batch_size: int = 500,
    compute: Compute | None = None,
    workers: int = 0,
) -> float:
    """Top-1 accuracy in eval mode over the whole split."""
    c = _compute(model, compute)
    was_training = model.training
    model.eval()
    correct = 0
    plans = [
        (0, torch.arange(start, min(start + batch_size, len(data))))
        for start in range(0, len(data), batch_size)
    ]
    for x, y in iterate(data, plans, train=False, workers=workers, pin_memory=c.cuda):
        with c.autocast():
            pred = model(c.batch(x)).argmax(1).cpu()
        correct += int((pred == y).sum())
    model.train(was_training)
    return correct / max(1, len(data))
