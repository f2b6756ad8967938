"""Pairs: a layer and the strided skip after it, timed as one unit where a runtime fuses them."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from devices.artifacts import ArtifactCache
from devices.spec import load_device
from hurricane.arch import Arch
from hurricane.errors import UserError
from hurricane.latency import LutPredictor, fill_missing, read_table
from hurricane.lutkeys import PAIR_OP, is_pair_key
from hurricane.space_file import load_space
from hurricane.subnet import build_subnet, instance_module
from profilers.campaign import profile, space_instances

TINY = Path(__file__).parent / "spaces" / "tiny.toml"
SPEC = (
    'name = "dev"\nkind = "cpu"\n[runtime]\nname = "onnxruntime"\n[measure]\nwarmup = 1\n'
    "rounds = 3\nruns = 3\nmin_round_ms = 1\nbatch = 8\ncv_threshold = 10.0\n"
    'statistic = "min"\ndrift_threshold = 0\n'
)


def test_pair_instances_cover_every_strided_skip() -> None:
    space = load_space(TINY)  # layer 2 is strided and offers skip; layer 1 is not strided
    assert space.pair_layers() == [2]
    pairs = space.pair_instances()
    prev = space.layers[1]
    assert len(pairs) == len(prev.ops) * 2 * 2 * 2  # ops x cin x mid x cout widths
    assert len({p.key for p in pairs}) == len(pairs) and all(is_pair_key(p.key) for p in pairs)
    for p in pairs:
        assert p.first.cout == p.second.cin and p.second.op == PAIR_OP
        assert p.second.stride == 2 and (p.first.h, p.second.h) == (7, 7)  # 28 -> 14 -> 7
    # A pair's module is exactly those two layers of a subnet: same output shape.
    arch = Arch.of(["ds_k3", "mb_k3_e3", "skip"], [1.0, 0.5, 1.0])
    pair = next(
        p
        for p in pairs
        if p.first.op == "mb_k3_e3"
        and p.first.cout == 8
        and p.second.cout == 24
        and p.first.cin == 16
    )
    module, x = instance_module(pair)
    net = build_subnet(space, arch).eval()
    with torch.no_grad():
        inside = net.blocks[1](net.blocks[0](net.stem(torch.zeros(1, 1, 28, 28))))
        assert module(x).shape == net.blocks[2](inside).shape


def synthetic(space, value: float = 1.0) -> dict[str, float]:
    return {i.key: value for i in space_instances(space)}


def test_a_pair_saving_beyond_its_widths_typical_one_is_used() -> None:
    space = load_space(TINY)
    table = synthetic(space)
    plain = LutPredictor(space, table)
    assert plain.pairs == {}  # no pairs timed: the plain sum
    pairs = space.pair_instances()
    pair = pairs[0]
    same_widths = [
        p
        for p in pairs
        if (p.first.cin, p.first.cout, p.second.cout)
        == (pair.first.cin, pair.first.cout, pair.second.cout)
    ]
    assert len(same_widths) == len(space.layers[1].ops)
    for p in same_widths:  # parts sum to 2.0: one call fewer saves 0.1 whatever the op
        table[p.key] = 1.9
    table[pair.key] = 0.5  # this op saves 1.4 more
    pred = LutPredictor(space, table)
    rng = random.Random(0)
    archs = [space.sample_arch(rng) for _ in range(400)]
    got, base = pred.predict(archs), plain.predict(archs)
    hit = 0
    for arch, g, b in zip(archs, got, base):
        insts = space.arch_instances(arch)
        if (insts[1], insts[2]) == (pair.first, pair.second):
            assert g == pytest.approx(b - 1.4)
            hit += 1
        else:
            assert g == pytest.approx(b)
    assert hit > 0
    # fastest() reports what predict() says of its choice.
    ms, arch = pred.fastest()
    assert ms == pytest.approx(pred.predict(arch))


def test_the_operator_predictor_leaves_pairs_out() -> None:
    space = load_space(TINY)
    table = {k: v for k, v in synthetic(space, 0.1).items()}
    for p in space.pair_instances():
        table[p.key] = 0.15
    gap = space.op_instances()[5].key
    del table[gap]
    filled, predicted = fill_missing(space, table)
    assert predicted == [gap] and filled[gap] > 0


def test_campaign_times_pairs_when_the_spec_asks(tmp_path: Path, single_thread) -> None:
    space, db = load_space(TINY), tmp_path / "lut.sqlite"
    (tmp_path / "dev.toml").write_text(SPEC + "pairs = true\n")
    report = profile(
        space,
        load_device(tmp_path / "dev.toml"),
        db,
        cache=ArtifactCache(tmp_path / "art"),
        progress=False,
    )
    table = read_table(space, db, "dev")
    pair_keys = [k for k in table if is_pair_key(k)]
    assert len(pair_keys) == len(space.pair_instances()) == 32
    assert report.measured == len(space_instances(space)) + 32 and report.errors == 0
    pred = LutPredictor(space, table)
    assert 2 in pred.pairs  # what was timed is used
    # The spec's default follows the runtime: on for OpenVINO, off elsewhere.
    assert load_device("local-openvino").measure.pairs
    assert not load_device("local-litert").measure.pairs


def test_pairs_field_is_checked(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text(SPEC + 'pairs = "yes"\n')
    with pytest.raises(UserError, match="bad.toml.*pairs"):
        load_device(tmp_path / "bad.toml")
