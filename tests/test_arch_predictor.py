"""The whole-model predictor and the model-level calibration."""

from __future__ import annotations

import random

import numpy as np
import pytest

from hurricane.arch import Arch
from hurricane.arch_predictor import ArchPredictor
from hurricane.calibration import Calibration, accuracy
from hurricane.costs import instance_cost
from hurricane.errors import UserError
from hurricane.space_file import load_space


def device_ms(space, arch: Arch) -> float:
    """A made-up device: per-layer dispatch plus op-specific compute and memory rates."""
    total = 0.05
    for inst in space.arch_instances(arch):
        flops, _, moved = instance_cost(inst)
        rate = 2.0 if "_g2" in inst.op else 1.4 if inst.op.startswith("mb_k5") else 1.0
        total += 0.0 if inst.op == "skip" else 0.004 + rate * flops / 3e8 + moved / 6e8
    return total


def test_fbnet_names_and_error_falls_with_more_models() -> None:
    space = load_space("fbnet")
    rng = random.Random(0)
    archs = [space.sample_arch(rng) for _ in range(260)]
    y = np.array([device_ms(space, a) for a in archs])
    test_a, test_y = archs[200:], y[200:]
    errors = {}
    for n in (10, 50, 200):
        model = ArchPredictor(space).fit(archs[:n], y[:n])
        errors[n] = accuracy(model.predict(test_a), test_y)["mape"]
    assert errors[200] < errors[10]
    assert errors[200] < 0.03, errors
    # FBNet's own op names, one per layer, at the widest widths.
    fbnet_names = [
        "k3_e1",
        "k3_e1_g2",
        "k3_e3",
        "k3_e6",
        "k5_e1",
        "k5_e1_g2",
        "k5_e3",
        "k5_e6",
        "skip",
    ]
    names = [fbnet_names[i % 9] for i in range(len(space.layers))]
    canonical = Arch.of(["mb_" + n if n != "skip" else n for n in names])
    assert model.predict(names) == pytest.approx(model.predict(canonical))
    assert model.predict([names])[0] == pytest.approx(model.predict(str(canonical)))
    with pytest.raises(UserError, match="layer 0"):
        model.predict([["k7_e9"] + names[1:]])


def test_bad_input() -> None:
    space = load_space("demo")
    with pytest.raises(UserError, match="at least 3"):
        ArchPredictor(space).fit([space.default_arch()], [1.0])
    with pytest.raises(UserError, match="not fitted"):
        ArchPredictor(space).predict(space.default_arch())


def test_calibration_recovers_scale_and_offset() -> None:
    summed = np.linspace(1.0, 9.0, 20)
    measured = 0.8 * summed + 0.3
    cal = Calibration.fit(summed, measured)
    assert (cal.scale, cal.offset_ms) == (pytest.approx(0.8), pytest.approx(0.3))
    assert cal(np.array([10.0]))[0] == pytest.approx(8.3)
    m = accuracy(cal(summed), measured)
    assert m["within_5pct"] == 1.0 and m["mape"] < 1e-9 and m["spearman"] == pytest.approx(1.0)
    raw = accuracy(summed, measured)
    assert raw["within_5pct"] < 1.0
    with pytest.raises(UserError, match="at least 2"):
        Calibration.fit([1.0], [1.0])
    assert cal.n_outliers == 0


def test_calibration_is_not_tilted_by_one_outlier() -> None:
    rng = np.random.default_rng(0)
    summed = np.linspace(1.0, 9.0, 20)
    measured = (0.8 * summed + 0.3) * (1 + rng.normal(0, 0.005, 20))
    measured[3] *= 0.6  # a model whose ops the runtime fused
    cal = Calibration.fit(summed, measured)
    assert cal.n_outliers == 1
    assert cal.scale == pytest.approx(0.8, rel=0.02)
    assert cal.offset_ms == pytest.approx(0.3, abs=0.05)
    plain = np.linalg.lstsq(
        np.stack([summed, np.ones(20)], 1) / measured[:, None], np.ones(20), rcond=None
    )[0]
    assert abs(plain[0] - 0.8) > 3 * abs(cal.scale - 0.8)  # the plain fit is tilted


def test_accuracy_figures() -> None:
    m = accuracy([1.04, 2.2, 3.0, 3.5], [1.0, 2.0, 3.0, 4.0])
    assert m["within_5pct"] == 0.5 and m["within_10pct"] == 0.75
    assert m["rmse_ms"] == pytest.approx(np.sqrt((0.04**2 + 0.2**2 + 0 + 0.5**2) / 4))
    assert m["mape"] == pytest.approx((0.04 + 0.1 + 0 + 0.125) / 4)
