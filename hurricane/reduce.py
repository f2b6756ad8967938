"""Stage one: narrow a large operator space to the operators that are efficient on one device.

Every candidate op at every layer is scored from that device's latency table and a capacity
measure; the top ``k`` per layer are kept. Latency is the op's LUT entries at that layer,
capacity its multiply-adds there, both averaged over the layer's width choices. The default
rule, ``pareto``, keeps the ops no other op beats on both (nothing faster is also bigger),
spread from the fastest to the biggest; an op the device's runtime executes badly (a 7x7
depthwise conv under XNNPACK) falls off the front on that device only. Other rules:
``flops_per_ms`` (capacity per millisecond; favours dense convs), ``params_per_ms`` and
``fastest``; any function from a layer's ``OpScore`` list to scores replaces the rule.

``skip`` is kept beside the top k where a layer offers it (it is how a search makes a network
shallower, and has no capacity to score): by default (``skip="identity"``) only where it can
be an identity (stride 1, as many channels out as in). On a layer that changes shape it is
FBNet's 1x1 projection; weight sharing rated it above MBConvs that beat it trained alone
(demo space, LiteRT, benchmarks/search_comparison.py: the pick scored 0.870 against 0.866,
mean test accuracy of 3 seeds). ``skip="all"`` keeps it wherever the space offers it.

Device-motivated rules come in as ``exclude`` patterns (``*_se`` for a VPU, ``ds_*``/``mb_*``
for a DSP), from the device's or the pipeline's file.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from hurricane.costs import instance_cost
from hurricane.errors import UserError
from hurricane.latency import LutPredictor, MissingEntries
from hurricane.lutkeys import OpInstance
from hurricane.space import SearchSpace


@dataclass
class OpScore:
    layer: int
    op: str
    latency_ms: float
    mflops: float
    kparams: float
    score: float = 0.0
    kept: bool = False
    why: str = ""


def _per_op(fn: Callable[[OpScore], float]) -> Callable[[list[OpScore]], list[float]]:
    return lambda row: [float(fn(s)) for s in row]


def _spread(n: int) -> list[int]:
    """0..n-1 in the order that covers a sorted range evenly: ends first, then midpoints."""
    if n <= 2:
        return list(range(n))
    order, spans = [0, n - 1], [(0, n - 1)]
    while spans:
        lo, hi = spans.pop(0)
        if hi - lo > 1:
            mid = (lo + hi) // 2
            order.append(mid)
            spans += [(lo, mid), (mid, hi)]
    return order


def pareto(row: list[OpScore]) -> list[float]:
    """Non-dominated sorting on (latency, multiply-adds): ops on the first front (nothing is
    both faster and bigger) first, then the second front, ...; within a front, spread along
    it (the fastest, the biggest, then evenly between), so a latency budget anywhere in the
    range finds good choices."""
    left, front, out = set(range(len(row))), 0, [0.0] * len(row)
    while left:
        first = sorted(
            (
                i
                for i in left
                if not any(
                    row[j].latency_ms <= row[i].latency_ms
                    and row[j].mflops >= row[i].mflops
                    and (row[j].latency_ms, row[j].mflops) != (row[i].latency_ms, row[i].mflops)
                    for j in left
                )
            ),
            key=lambda i: row[i].latency_ms,
        )
        for rank, pos in enumerate(_spread(len(first))):
            out[first[pos]] = -front - rank / (len(first) + 1)
        left -= set(first)
        front += 1
    return out


RULES: dict[str, Callable[[list[OpScore]], list[float]]] = {
    "pareto": pareto,
    "flops_per_ms": _per_op(lambda s: s.mflops / s.latency_ms),
    "params_per_ms": _per_op(lambda s: s.kparams / s.latency_ms),
    "fastest": _per_op(lambda s: -s.latency_ms),
}
Rule = str | Callable[[list[OpScore]], list[float]]
SKIP_RULES = ("all", "identity")  # where stage one keeps ``skip`` (see the module docstring)


def _rule(rule: Rule) -> Callable[[list[OpScore]], list[float]]:
    if callable(rule):
        return rule
    if rule not in RULES:
        raise UserError(f"unknown reduction rule {rule!r}; choose one of {', '.join(RULES)}")
    return RULES[rule]


def score_ops(
    space: SearchSpace,
    table: dict[str, float],
    rule: Rule = "pareto",
) -> list[list[OpScore]]:
    """Per layer, every candidate's latency, capacity and score under ``rule``."""
    fn, out, missing = _rule(rule), [], []
    for i, layer in enumerate(space.layers):
        h, w = space.input_shape(i)
        row = []
        for op in layer.ops:
            act = space.layer_act(i, op)
            lat, flops, params = [], [], []
            for cin in space.in_channel_choices(i):
                for cout in layer.channels(space.channel_divisor):
                    inst = OpInstance(op, cin, cout, h, w, layer.stride, act)
                    if inst.key not in table:
                        missing.append(inst.key)
                        continue
                    f, p, _ = instance_cost(inst)
                    lat.append(table[inst.key])
                    flops.append(f / 1e6)
                    params.append(p / 1e3)
            if lat:
                ms, mflops, kparams = (float(np.mean(v)) for v in (lat, flops, params))
                row.append(OpScore(i, op, ms, mflops, kparams))
        for s, score in zip(row, fn(row)):
            s.score = score
        out.append(row)
    if missing:
        raise MissingEntries(sorted(set(missing)), LutPredictor(space, {}).hint)
    return out


def reduce_space(
    space: SearchSpace,
    table: dict[str, float],
    k: int = 4,
    rule: Rule = "pareto",
    exclude: Sequence[str] = (),
    always_keep: Sequence[str] = ("skip",),
    name: str | None = None,
    skip: str = "identity",
) -> tuple[SearchSpace, list[list[OpScore]]]:
    """The reduced space and every op's score (with whether and why it was kept). ``skip``:
    keep it on ``all`` layers that offer it, or only where it is an ``identity``."""
    if k < 1:
        raise UserError(f"k must be at least 1, got {k}")
    if skip not in SKIP_RULES:
        raise UserError(f"skip must be one of {', '.join(SKIP_RULES)}, got {skip!r}")
    scores = score_ops(space, table, rule)
    layers = []
    for i, (layer, row) in enumerate(zip(space.layers, scores)):
        for s in row:
            hit = next((p for p in exclude if fnmatch.fnmatchcase(s.op, p)), None)
            s.why = f"excluded by {hit!r}" if hit else ""
            if s.op == "skip" and not s.why and skip == "identity" and not _identity(space, i):
                s.why = "skip=identity: this layer changes shape"
        free = [s for s in row if not s.why and s.op not in always_keep]
        for rank, s in enumerate(sorted(free, key=lambda s: -s.score)):
            s.kept = rank < k
            s.why = f"rank {rank + 1} of {len(free)}"
        for s in row:
            if s.op in always_keep and not s.why:
                s.kept, s.why = True, "always kept"
        ops = tuple(s.op for s in row if s.kept)
        if not ops:
            raise UserError(
                f"layer {i}: every candidate is excluded ({', '.join(exclude)}); "
                "loosen the exclude patterns"
            )
        layers.append(replace(layer, ops=ops))
    how = rule if isinstance(rule, str) else "custom rule"
    reduced = replace(
        space,
        name=name or f"{space.name}-reduced",
        layers=tuple(layers),
        description=f"{space.name} reduced to the top {k} per layer ({how})",
    )
    return reduced, scores


def _identity(space: SearchSpace, i: int) -> bool:
    layer, cin = space.layers[i], max(space.in_channel_choices(i))
    return layer.stride == 1 and cin == max(layer.channels(space.channel_divisor))


def scores_json(scores: list[list[OpScore]]) -> list[dict[str, Any]]:
    return [s.__dict__ for row in scores for s in row]
