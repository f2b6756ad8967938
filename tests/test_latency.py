"""LUT-sum latency: stem + layers + head from a real profiled table; missing keys named."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from hurricane.arch import Arch
from hurricane.latency import (
    LutPredictor,
    MissingEntries,
    MostlyPredicted,
    predicted_note,
    read_table,
)
from hurricane.lut import LutDB
from hurricane.space_file import load_space
from profilers.campaign import space_instances

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


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_a_lut_of_another_space_is_said_and_refused_on_request(lut, ort_lut, tmp_path, capsys):
    """`shrink --space demo` on a database profiled for another space once chose ops from
    hundreds of predicted entries without a word."""
    from pipelines.cli import main

    db, device = lut
    spec = ort_lut[1]
    demo = load_space("demo")
    probe = LutPredictor(demo, read_table(demo, db, device), device)
    predicted, needed = len(set(probe.missing())), probe.needed()
    assert 2 * predicted > needed  # tiny's table holds almost none of demo's entries
    figures = f"{predicted} of {needed} operator instances space demo needs on ort are predicted"
    command = f"hurricane profile --space demo --device {spec} --db {db}"
    out = tmp_path / "reduced.toml"
    shrink = ["shrink", "--space", "demo", "--device", str(spec), "--db", str(db)]
    assert main([*shrink, "--out", str(out)]) == 0
    line = _one_line(capsys.readouterr().err)
    assert figures in line and line.endswith(command), line
    out.unlink()
    predict = ["latency", "predict", "--space", "demo", "--device", str(spec), "--db", str(db)]
    arch = str(demo.default_arch())
    assert main([*predict, arch]) == 0
    assert figures in _one_line(capsys.readouterr().err)
    search = ["search", "--space", "demo", "--device", str(spec), "--db", str(db)]
    search += ["--budget", "1", "--supernet", str(tmp_path / "none")]
    for args in ([*shrink, "--out", str(out)], [*predict, arch], search):
        assert main([*args, "--require-measured"]) == 2
        line = _one_line(capsys.readouterr().err)
        assert figures in line and "--require-measured refuses" in line and command in line
    assert not out.exists()  # refused before anything was written
    # The space the table was profiled for: measured, so not a word, and not refused.
    tiny = ["shrink", "--space", str(TINY), "--device", str(spec), "--db", str(db)]
    assert main([*tiny, "--out", str(out), "--require-measured"]) == 0
    assert "predicted" not in capsys.readouterr().err


def test_predicted_means_more_than_half_of_the_needed_instances(lut, tmp_path) -> None:
    src, device = lut
    db = tmp_path / "lut.sqlite"
    with sqlite3.connect(src) as a, sqlite3.connect(db) as b:
        a.backup(b)
    space = load_space(TINY)
    needed = LutPredictor(space, {}, device).needed()
    assert needed == len(space_instances(space))
    keys = sorted(i.key for i in space_instances(space))
    conn = sqlite3.connect(db)
    with conn:  # half missing, half stored but failed: half predicted, the rest measured
        conn.executemany("DELETE FROM entries WHERE key = ?", [(k,) for k in keys[: needed // 4]])
        conn.executemany(
            "UPDATE entries SET status = 'error', median_ms = NULL WHERE key = ?",
            [(k,) for k in keys[needed // 4 : needed // 2]],
        )
    assert predicted_note(space, db, device) is None
    with conn:
        conn.execute("DELETE FROM entries WHERE key = ?", (keys[needed // 2],))
    note = predicted_note(space, db, device, "ort.toml")
    assert note is not None
    assert f"{needed // 2 + 1} of {needed} operator instances" in note
    failed = needed // 2 - needed // 4
    assert f"({failed} of them failed to measure)" in note and note.endswith(" --retry-errors")
    with pytest.raises(MostlyPredicted, match="--require-measured refuses"):
        predicted_note(space, db, device, "ort.toml", require=True)
