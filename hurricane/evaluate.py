"""Accuracy of a network on a split, and batch-norm recalibration for inherited weights."""

from __future__ import annotations

import torch
from torch import nn

from hurricane.data import Images


@torch.no_grad()
def recalibrate_bn(
    model: nn.Module, data: Images, batches: int, batch_size: int, seed: int
) -> None:
    """Recompute BN running statistics as exact averages over ``batches`` training batches.

    A path of a supernet inherits statistics accumulated over other paths, which do not fit
    it; recomputing them on a few batches (SPOS, GoldenNAS's adaptive BN) does."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average: every batch weighs the same
    was_training = model.training
    model.train()
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(data), generator=gen)
    for b in range(batches):
        idx = perm[b * batch_size : (b + 1) * batch_size]
        if len(idx) == 0:
            break
        model(data.batch(idx)[0])
    for bn, momentum in zip(bns, saved):
        bn.momentum = momentum
    model.train(was_training)


@torch.no_grad()
def accuracy(model: nn.Module, data: Images, batch_size: int = 500) -> float:
    """Top-1 accuracy in eval mode over the whole split."""
    was_training = model.training
    model.eval()
    correct = 0
    for start in range(0, len(data), batch_size):
        x, y = data.batch(torch.arange(start, min(start + batch_size, len(data))))
        correct += int((model(x).argmax(1) == y).sum())
    model.train(was_training)
    return correct / max(1, len(data))
