"""The LightGBM operator predictor: records, analytic costs, fit/predict, unseen families."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from hurricane.dynamic import DynConv2d
from hurricane.errors import UserError
from hurricane.op_predictor import OpPredictor, cost, normalise, record_from_instance
from hurricane.ops import build_op
from hurricane.space import OpInstance, load_space


def conv_macs(module: nn.Module, x: torch.Tensor) -> int:
    """Multiply-adds of every Conv2d, counted by running the module."""
    total = 0

    def hook(m: DynConv2d, inp, out) -> None:
        nonlocal total
        total += out.numel() * m.weight.shape[1] * m.kernel * m.kernel

    convs = [m for m in module.modules() if isinstance(m, DynConv2d)]
    handles = [m.register_forward_hook(hook) for m in convs]
    with torch.no_grad():
        module.eval()(x)
    for h in handles:
        h.remove()
    return total


@pytest.mark.parametrize(
    "op,cin,cout,stride",
    [
        ("mb_k3_e6", 16, 24, 2),
        ("mb_k5_e3", 24, 24, 1),
        ("mb_k3_e1_g2", 16, 16, 1),
        ("ds_k5", 16, 32, 2),
        ("fmb_k3_e3", 16, 24, 1),
        ("shuffle_k3", 24, 24, 1),
        ("shuffle_k5", 16, 32, 2),
        ("shufflex", 24, 24, 1),
        ("conv_k3", 16, 32, 2),
        ("res_k3", 16, 32, 2),
        ("res_k3", 16, 16, 1),
        ("skip", 16, 32, 2),
    ],
)
def test_analytic_cost_matches_the_module(op, cin, cout, stride) -> None:
    """The FLOPs feature is the real conv work of the block (SE aside)."""
    x = torch.randn(1, cin, 14, 14)
    want = conv_macs(build_op(op, cin, cout, stride), x)
    rec = normalise({"op": op, "cin": cin, "cout": cout, "h": 14, "w": 14, "stride": stride})
    flops, params, moved = cost(rec)
    assert flops == pytest.approx(want, rel=0.02)
    assert params > 0 and moved > 0


def test_records_fill_defaults_and_parse_names() -> None:
    r = normalise({"op": "k5_e1_g2", "cin": 8, "h": 7})
    assert (r["family"], r["kernel"], r["expansion"], r["groups"]) == ("mb", 5, 1, 2)
    assert (r["cout"], r["w"], r["stride"], r["se"], r["act"]) == (8, 7, 1, False, "relu")
    r = normalise({"op": "mb_k3_e6_se_hswish", "cin": 8, "cout": 8, "h": 7, "w": 7})
    assert r["se"] and r["act"] == "hswish"
    r = normalise({"op": "dwconv", "cin": 32, "h": 56, "kernel": 3, "groups": 32})
    assert (r["family"], r["kernel"], r["groups"]) == ("dwconv", 3, 32)
    assert normalise({"op": "head_c128", "cin": 64, "cout": 10, "h": 7})["family"] == "head"
    with pytest.raises(UserError, match="needs 'cin'"):
        normalise({"op": "conv_k3", "h": 8})


def synthetic(records: list[dict]) -> np.ndarray:
    """A made-up device: a dispatch cost, then compute and memory at family-specific rates."""
    rate = {
        "mb": 1.0,
        "ds": 1.6,
        "fmb": 0.7,
        "shuffle": 1.3,
        "shufflex": 1.5,
        "conv": 0.8,
        "res": 0.9,
        "skip": 1.0,
        "head": 1.0,
    }
    out = []
    for rec in records:
        r = normalise(rec)
        flops, _, moved = cost(r)
        se = 1.25 if r["se"] else 1.0
        out.append(0.01 + rate[r["family"]] * se * (flops / 2e8 + moved / 4e8))
    return np.array(out)


def test_fit_predict_held_out_and_unseen_family() -> None:
    space = load_space("demo")
    insts = [*space.fixed_instances(), *space.op_instances()]
    records = [record_from_instance(i) for i in insts]
    y = synthetic(records)
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(records))
    train, test = idx[:400], idx[400:]
    model = OpPredictor(seed=0).fit([records[i] for i in train], y[train])
    pred = model.predict([records[i] for i in test])
    mape = np.mean(np.abs(pred - y[test]) / y[test])
    assert mape < 0.08, mape
    # A family never seen in training still gets a sensible, size-aware prediction.
    small = {"op": "dwconv", "cin": 32, "cout": 32, "h": 8, "w": 8, "kernel": 3, "groups": 32}
    big = {**small, "h": 32, "w": 32}
    p_small, p_big = model.predict(small), model.predict(big)
    assert 0 < p_small < p_big and np.isfinite(p_big)
    # Missing keys are allowed.
    assert model.predict({"op": "mb_k3_e3", "cin": 16, "h": 14}) > 0
    # Same seed, same data: the same model.
    again = OpPredictor(seed=0).fit([records[i] for i in train], y[train])
    assert np.array_equal(again.predict([records[i] for i in test]), pred)


def test_predicts_channel_counts_nobody_profiled() -> None:
    """Dynamic channel scaling: train on the width grid, predict widths between."""
    recs = [{"op": "mb_k3_e6", "cin": c, "cout": c, "h": 14, "w": 14} for c in range(16, 97, 16)]
    recs += [{"op": "ds_k3", "cin": c, "cout": c, "h": 14, "w": 14} for c in range(16, 97, 16)]
    model = OpPredictor().fit(recs, synthetic(recs))
    between = [{"op": "mb_k3_e6", "cin": c, "cout": c, "h": 14, "w": 14} for c in (20, 44, 76)]
    pred, want = model.predict(between), synthetic(between)
    assert np.all(np.abs(pred - want) / want < 0.15), (pred, want)
    assert pred[0] < pred[1] < pred[2]


def test_save_load_round_trip(tmp_path) -> None:
    recs = [
        record_from_instance(OpInstance("mb_k3_e3", c, c, 8, 8, 1, "relu"))
        for c in (8, 16, 24, 32, 40)
    ]
    model = OpPredictor().fit(recs, synthetic(recs))
    model.save(tmp_path / "p.json")
    loaded = OpPredictor.load(tmp_path / "p.json")
    assert np.allclose(loaded.predict(recs), model.predict(recs))
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(UserError, match="bad.json: not a saved"):
        OpPredictor.load(tmp_path / "bad.json")


def test_bad_fit_input_is_one_clear_error() -> None:
    recs = [{"op": "conv_k3", "cin": 8, "h": 8}] * 3
    with pytest.raises(UserError, match="3 records but 2 latencies"):
        OpPredictor().fit(recs, [1.0, 2.0])
    with pytest.raises(UserError, match="positive"):
        OpPredictor().fit(recs, [1.0, -2.0, 1.0])
    with pytest.raises(UserError, match="not fitted"):
        OpPredictor().predict(recs)
