"""LUT-sum latency: stem + layers + head from a real profiled table; missing keys named."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from hurricane.arch import Arch
from hurricane.latency import LutPredictor, MissingEntries
from hurricane.lut import LutDB
from hurricane.space_file import load_space

TINY = Path(__file__).parent / "spaces" / "tiny.toml"


@pytest.fixture
def lut(ort_lut) -> tuple[Path, str]:
    return ort_lut[0], "ort"


def test_prediction_is_the_sum_of_entries(lut) -> None:
    db, device = lut
    space = load_space(TINY)
    pred = LutPredictor.from_db(space, db, device)
    assert pred.missing() == []
    with LutDB(db) as conn:
        table = {e.key: e.median_ms for e in conn.entries(conn.device_id(device))}
    rng = random.Random(0)
    archs = [space.sample_arch(rng) for _ in range(50)]
    got = pred.predict(archs)
    for arch, value in zip(archs, got):
        keys = [space.stem_instance().key] + [i.key for i in space.arch_instances(arch)]
        last = space.arch_channels(arch)[-1][1]
        keys.append(next(h.key for h in space.head_instances() if h.cin == last))
        assert value == pytest.approx(sum(table[k] for k in keys), rel=1e-12)
    assert pred.predict(archs[0]) == pytest.approx(got[0])
    # A bigger path costs more than the smallest one on any sane table.
    small = Arch.of(["skip", "skip", "skip"], [0.5, 0.5, 0.5])
    big = Arch.of(["mb_k3_e3"] * 3)
    assert pred.predict(big) > pred.predict(small)


def test_ten_thousand_archs_at_once(lut) -> None:
    db, device = lut
    space = load_space(TINY)
    pred = LutPredictor.from_db(space, db, device)
    rng = random.Random(1)
    archs = [space.sample_arch(rng) for _ in range(10_000)]
    ops, widths = pred.encode(archs)
    out = pred.predict_indices(ops, widths)
    assert out.shape == (10_000,) and np.isfinite(out).all() and (out > 0).all()
    np.testing.assert_allclose(out[:20], pred.predict(archs[:20]))


def test_missing_entries_are_named(lut, tmp_path: Path) -> None:
    db, device = lut
    space = load_space(TINY)
    with LutDB(db) as conn:
        table = {e.key: e.median_ms for e in conn.entries(conn.device_id(device))}
    arch = Arch.of(["mb_k3_e3", "ds_k3", "skip"])
    gone = space.arch_instances(arch)[1].key
    del table[gone]
    pred = LutPredictor(space, table, device)
    assert gone in pred.missing()
    with pytest.raises(MissingEntries) as err:
        pred.predict([Arch.of(["skip"] * 3, [0.5] * 3), arch])
    assert err.value.keys == [gone]
    assert "hurricane profile --space" in str(err.value) and "\n" not in str(err.value)
    # Architectures that avoid the hole still score.
    assert pred.predict(Arch.of(["skip"] * 3, [0.5] * 3)) > 0
    with pytest.raises(Exception, match="no latency table for device 'nope'"):
        LutPredictor.from_db(space, db, "nope")
