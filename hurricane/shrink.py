"""GoldenNAS's progressive space shrinking, run inside supernet training.

Every ``shrink_every`` steps the trainer samples paths from the operators still allowed,
measures each path's validation accuracy with inherited weights (BN recomputed) and its
predicted latency, and drops on each sampled layer the operator whose paths do worst for
their latency. "For their latency" is the residual of accuracy against a straight-line fit on
log latency across the sampled paths: a slow op must buy more accuracy than a fast one to
stay. ``skip`` is never dropped (it keeps tight budgets reachable), nor is a layer narrowed
below ``keep`` operators.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from torch import nn

from hurricane.arch import Arch
from hurricane.compute import Compute
from hurricane.data import DataSplits
from hurricane.evaluate import accuracy, recalibrate_bn
from hurricane.supernet import Supernet

Latency = Callable[[Sequence[Arch]], np.ndarray]


def shrink_step(
    net: Supernet,
    data: DataSplits,
    allowed: list[list[str]],
    layers: Sequence[int],
    fixed: Arch | None,
    latency: Latency,
    n_paths: int,
    keep: int,
    seed: int,
    bn_batches: int = 10,
    compute: Compute | None = None,
    workers: int = 0,
) -> tuple[list[list[str]], dict[str, Any]]:
    """One shrinking event: the narrowed candidate lists and what was measured and dropped."""
    rng = random.Random(seed)
    space = net.space
    paths: dict[str, Arch] = {}
    for _ in range(n_paths * 10):
        if len(paths) >= n_paths:
            break
        a = space.sample_arch(rng, list(layers), fixed, allowed)
        paths.setdefault(str(a), a)
    archs = list(paths.values())
    was_training = net.training
    accs = []
    for i, a in enumerate(archs):
        sub: nn.Module = net.extract(a)  # built where the supernet's weights are
        sub = compute.module(sub) if compute is not None else sub
        recalibrate_bn(sub, data.train, bn_batches, 256, seed + i, compute, workers)
        accs.append(accuracy(sub, data.val, compute=compute, workers=workers))
    net.train(was_training)
    lat = np.asarray(latency(archs), dtype=float)
    new, dropped, scores = drop_worst(archs, np.array(accs), lat, allowed, layers, keep)
    report = {
        "paths": len(archs),
        "mean_acc": round(float(np.mean(accs)), 5),
        "dropped": dropped,
        "residual_by_op": scores,
    }
    return new, report


def drop_worst(
    archs: Sequence[Arch],
    acc: np.ndarray,
    latency_ms: np.ndarray,
    allowed: list[list[str]],
    layers: Sequence[int],
    keep: int,
) -> tuple[list[list[str]], dict[str, str], dict[str, dict[str, float]]]:
    """The rule: per layer, drop the op (not ``skip``) whose paths have the lowest mean
    accuracy residual against a line fitted on log latency, unless that leaves < ``keep``."""
    log_ms = np.log(latency_ms)
    design = np.c_[np.ones_like(log_ms), log_ms]
    coef = np.linalg.lstsq(design, acc, rcond=None)[0] if len(archs) > 2 else np.zeros(2)
    resid = acc - design @ coef
    new = [list(ops) for ops in allowed]
    dropped: dict[str, str] = {}
    scores: dict[str, dict[str, float]] = {}
    for i in layers:
        per_op: dict[str, list[float]] = {}
        for a, r in zip(archs, resid):
            per_op.setdefault(a.ops[i], []).append(float(r))
        scores[str(i)] = {op: round(float(np.mean(v)), 5) for op, v in per_op.items()}
        candidates = [op for op in per_op if op != "skip" and op in new[i]]
        if len(new[i]) <= keep or not candidates:
            continue
        worst = min(candidates, key=lambda op: np.mean(per_op[op]))
        new[i].remove(worst)
        dropped[str(i)] = worst
    return new, dropped, scores
