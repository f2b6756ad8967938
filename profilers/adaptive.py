"""Adaptive sampling for the operator predictor, after nn-Meter: profile more configurations
where the predictor errs most, until a target error or a budget is reached.

The candidates are what dynamic channel scaling can produce and the width grid never
measures: every multiple of the channel divisor between a layer's narrowest and widest
channel counts. Each round fits the predictor with k-fold cross-validation on what is
measured, finds the entries with the largest out-of-fold error, and profiles the unmeasured
candidates closest to them (same op, shape and stride; nearest channels), plus a few random
ones so no region is never looked at.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from devices.spec import DeviceSpec
from hurricane.latency import read_table
from hurricane.lutkeys import OpInstance, is_pair_key
from hurricane.op_predictor import OpPredictor, record_from_instance
from hurricane.opnames import parse_op
from hurricane.ops import check_op
from hurricane.space import SearchSpace
from profilers.campaign import Campaign


def candidate_pool(space: SearchSpace) -> list[OpInstance]:
    """Every (op, cin, cout) on the divisor grid between each layer's extreme widths."""
    d = space.channel_divisor
    out: dict[OpInstance, None] = {}  # insertion-ordered set
    for i, layer in enumerate(space.layers):
        h, w = space.input_shape(i)
        cins = space.in_channel_choices(i)
        couts = layer.channels(d)
        cin_range = range(min(cins), max(cins) + 1, d) if len(cins) > 1 else cins
        cout_range = range(min(couts), max(couts) + 1, d) if len(couts) > 1 else couts
        for op in layer.ops:
            spec, act = parse_op(op), space.layer_act(i, op)
            for cin in cin_range:
                for cout in cout_range:
                    if check_op(spec, cin, cout, layer.stride) is None:
                        out.setdefault(OpInstance(op, cin, cout, h, w, layer.stride, act))
    return list(out)


def cross_validated_errors(
    keys: list[str], table: dict[str, float], folds: int, seed: int
) -> np.ndarray:
    """Out-of-fold relative error of every entry."""
    from sklearn.model_selection import KFold

    records = [record_from_instance(OpInstance.from_key(k)) for k in keys]
    y = np.array([table[k] for k in keys])
    pred = np.empty_like(y)
    for train, test in KFold(min(folds, len(keys)), shuffle=True, random_state=seed).split(y):
        model = OpPredictor(seed=seed).fit([records[i] for i in train], y[train])
        pred[test] = model.predict([records[i] for i in test])
    return np.abs(pred - y) / y


def _nearest(target: OpInstance, pool: list[OpInstance]) -> list[OpInstance]:
    same = [
        p
        for p in pool
        if (p.op, p.h, p.w, p.stride) == (target.op, target.h, target.w, target.stride)
    ]
    return sorted(same, key=lambda p: abs(p.cin - target.cin) + abs(p.cout - target.cout))


def adaptive_sample(
    space: SearchSpace,
    spec: DeviceSpec,
    db_path: str | Path,
    budget: int = 200,
    target_mape: float = 0.05,
    per_round: int = 40,
    folds: int = 5,
    seed: int = 0,
    progress: bool = True,
    out: str | Path | None = None,
    **campaign_kw: Any,
) -> dict[str, Any]:
    """Grow the device's table where the operator predictor is weakest; save the predictor
    fitted on everything measured. Returns the per-round history."""
    rng = np.random.default_rng(seed)
    rounds: list[dict[str, Any]] = []
    added_total, stopped = 0, ""
    while True:
        table = read_table(space, db_path, spec.name)
        keys = sorted(k for k in table if not is_pair_key(k))  # pairs: not one operator
        errors = cross_validated_errors(keys, table, folds, seed)
        cv_mape = float(errors.mean())
        entry = {
            "round": len(rounds),
            "train": len(keys),
            "cv_mape": cv_mape,
            "cv_within_10pct": float(np.mean(errors <= 0.1)),
        }
        rounds.append(entry)
        pool = [p for p in candidate_pool(space) if p.key not in table]
        if cv_mape <= target_mape:
            stopped = f"target reached: cross-validated MAPE {cv_mape:.2%} <= {target_mape:.2%}"
        elif added_total >= budget:
            stopped = f"budget of {budget} configurations spent (MAPE {cv_mape:.2%})"
        elif not pool:
            stopped = f"every candidate configuration is measured (MAPE {cv_mape:.2%})"
        if stopped:
            break
        take = min(per_round, budget - added_total, len(pool))
        chosen: dict[OpInstance, None] = {}
        worst = [OpInstance.from_key(keys[i]) for i in np.argsort(-errors)]
        explore = max(1, take // 4)
        for inst in worst:
            if len(chosen) >= take - explore:
                break
            for cand in _nearest(inst, pool)[:2]:
                chosen.setdefault(cand)
        rest = [p for p in pool if p not in chosen]
        for i in rng.permutation(len(rest))[: take - len(chosen)]:
            chosen.setdefault(rest[i])
        batch = list(chosen)[:take]
        report = Campaign(
            space, spec, db_path, instances=batch, progress=progress, **campaign_kw
        ).run()
        entry["added"] = report.new_entries
        added_total += len(batch)
        if not report.new_entries:
            stopped = "nothing new could be measured"
            break
    table = read_table(space, db_path, spec.name)
    keys = sorted(k for k in table if not is_pair_key(k))
    model = OpPredictor(seed=seed).fit(
        [record_from_instance(OpInstance.from_key(k)) for k in keys], [table[k] for k in keys]
    )
    path = Path(out) if out else Path(db_path).parent / f"op-predictor-{spec.name}.json"
    model.save(path)
    return {"rounds": rounds, "stopped": stopped, "added": added_total, "predictor": str(path)}
