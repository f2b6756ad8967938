"""The LightGBM operator predictor: records, analytic costs, fit/predict, unseen families."""

from __future__ import annotations

import numpy as np
import pytest

from hurricane.costs import Block
from hurricane.errors import UserError
from hurricane.lutkeys import OpInstance
from hurricane.op_predictor import OpPredictor, block_of, normalise, record_from_instance
from hurricane.space_file import load_space


@pytest.mark.parametrize(
    "rec",
    [
        {"op": "mb_k3_e6_se", "cin": 16, "cout": 24, "h": 14, "w": 14, "stride": 2},
        {"op": "shufflex", "cin": 24, "cout": 24, "h": 7, "w": 7},
        {"op": "head_c128", "cin": 64, "cout": 10, "h": 7, "w": 7},
        {"op": "dwconv", "cin": 32, "h": 56, "kernel": 3, "groups": 32},
    ],
)
def test_features_are_the_shared_block_costs(rec) -> None:
    """The predictor's size features are hurricane.costs' figures (checked against the real
    modules in tests/test_ops.py), scaled: MFLOPs, thousands of parameters, kilobytes."""
    r = normalise(rec)
    want = Block.of(rec["op"], r["cin"], r["cout"], r["h"], r["w"], r["stride"])
    if rec["op"] == "dwconv":  # not a Hurricane name: the record's fields describe it
        want = Block("dwconv", 32, 32, 56, 56, 1, kernel=3, groups=32)
    assert block_of(r) == want
    macs, params, moved = want.cost()
    x, lin = OpPredictor()._matrix([rec], learn=True)
    assert x[0, -3:].tolist() == [macs / 1e6, params / 1e3, moved / 1e3]
    assert lin[0].tolist() == [1.0, macs / 1e6, moved / 1e6]
    assert macs > 0 and params > 0 and moved > 4 * params


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
        flops, _, moved = block_of(r).cost()
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
