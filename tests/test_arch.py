"""Architectures (hurricane.arch) and their validation and sampling against a space."""

from __future__ import annotations

import json
import random

import pytest

from hurricane.arch import Arch, ArchError
from hurricane.space_file import load_space, parse_space

BUILTINS = ["demo", "default", "fbnet", "proxyless"]


@pytest.fixture(scope="module")
def spaces() -> dict:
    return {name: load_space(name) for name in BUILTINS}


# --- round trips -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", BUILTINS)
def test_string_and_json_round_trip(spaces: dict, name: str) -> None:
    space = spaces[name]
    rng = random.Random(1234)
    archs = [space.default_arch()] + [space.sample_arch(rng) for _ in range(50)]
    assert len({str(a) for a in archs}) > 1  # sampling actually varies
    for arch in archs:
        assert len(arch) == len(space.layers)
        text = str(arch)
        assert Arch.parse(text) == arch
        assert space.parse_arch(text) == arch
        assert space.validate_arch(arch) == arch
        doc = json.loads(json.dumps(arch.to_json()))
        assert Arch.from_json(doc) == arch
        assert Arch.from_json(json.dumps(arch.to_json())) == arch


def test_string_form_widths() -> None:
    arch = Arch.of(["mb_k3_e6", "skip", "shuffle_k5", "ds_k3"], [1.0, 0.5, 1, 0.75])
    assert str(arch) == "mb_k3_e6-skip@0.5-shuffle_k5-ds_k3@0.75"
    assert arch.widths == (1.0, 0.5, 1.0, 0.75)
    assert all(isinstance(w, float) for w in arch.widths)
    assert Arch.parse("mb_k3_e6-skip@0.5-shuffle_k5-ds_k3@0.75") == arch
    assert Arch.parse("  skip@1-skip@1.0 ") == Arch.of(["skip", "skip"])
    assert "@" not in str(Arch.of(["skip", "ds_k3"]))


def test_demo_sampled_strings_show_widths(spaces: dict) -> None:
    space = spaces["demo"]
    rng = random.Random(7)
    seen_narrow = seen_full = False
    for _ in range(40):
        arch = space.sample_arch(rng)
        parts = str(arch).split("-")
        assert len(parts) == len(space.layers)
        for part, op, w in zip(parts, arch.ops, arch.widths):
            if w == 1.0:
                assert part == op
                seen_full = True
            else:
                assert part == f"{op}@{w:g}"
                seen_narrow = True
    assert seen_narrow and seen_full


def test_json_form() -> None:
    arch = Arch.of(["skip", "mb_k3_e3"], [0.5, 1.0])
    assert arch.to_json() == {"ops": ["skip", "mb_k3_e3"], "widths": [0.5, 1.0]}
    assert Arch.from_json({"ops": ["skip", "mb_k3_e3"]}) == Arch.of(["skip", "mb_k3_e3"])


@pytest.mark.parametrize("bad", ["", "   ", "skip--skip", "skip@abc", "@0.5"])
def test_bad_strings(bad: str) -> None:
    with pytest.raises(ArchError):
        Arch.parse(bad)


@pytest.mark.parametrize(
    "bad", [{"widths": [1.0]}, [], '{"ops": "skip"}', {"ops": ["a"], "widths": []}]
)
def test_bad_json(bad: object) -> None:
    with pytest.raises(ArchError):
        Arch.from_json(bad)  # type: ignore[arg-type]


def test_mismatched_lengths() -> None:
    with pytest.raises(ArchError):
        Arch(("skip", "skip"), (1.0,))


def test_arch_is_hashable_and_frozen() -> None:
    a = Arch.of(["skip", "ds_k3"], [0.5, 1.0])
    b = Arch.parse(str(a))
    assert hash(a) == hash(b)
    assert {a: 1}[b] == 1
    with pytest.raises(AttributeError):
        a.ops = ("skip",)  # type: ignore[misc]


# --- validation against a space --------------------------------------------------------------


def test_fbnet_aliases_canonicalised(spaces: dict) -> None:
    space = spaces["fbnet"]
    aliases = ["k3_e1", "k5_e1_g2", "k3_e6", "skip", "k3_e1_g2", "k5_e3"] * 4
    aliases = aliases[: len(space.layers)]
    arch = Arch.of(aliases)
    valid = space.validate_arch(arch)
    assert valid.ops == tuple(a if a == "skip" else f"mb_{a}" for a in aliases)
    assert valid.widths == arch.widths
    assert space.parse_arch("-".join(aliases)) == valid
    assert all(op in layer.ops for op, layer in zip(valid.ops, space.layers))


def test_invalid_op_names_layer(spaces: dict) -> None:
    space = spaces["demo"]
    ops = list(space.default_arch().ops)
    ops[3] = "conv_k3"  # a real op, but not a demo candidate
    with pytest.raises(ValueError, match=r"layer 3\b.*conv_k3"):
        space.validate_arch(Arch.of(ops))
    ops[3] = "nonsense_k3"  # not an op at all
    with pytest.raises(ValueError, match=r"layer 3\b"):
        space.validate_arch(Arch.of(ops))


def test_wrong_layer_count(spaces: dict) -> None:
    space = spaces["demo"]
    ops = list(space.default_arch().ops)
    with pytest.raises(ValueError, match=r"5 layers.*6"):
        space.validate_arch(Arch.of(ops[:-1]))
    with pytest.raises(ValueError, match="7 layers"):
        space.validate_arch(Arch.of(ops + ["skip"]))


def test_width_not_offered(spaces: dict) -> None:
    space = spaces["demo"]
    arch = space.default_arch()
    widths = list(arch.widths)
    widths[2] = 0.6
    with pytest.raises(ValueError, match=r"layer 2\b.*0\.6"):
        space.validate_arch(Arch(arch.ops, tuple(widths)))
    fb = spaces["fbnet"]
    widths = [1.0] * len(fb.layers)
    widths[5] = 0.5
    with pytest.raises(ValueError, match=r"layer 5\b"):
        fb.validate_arch(Arch(fb.default_arch().ops, tuple(widths)))


# --- sampling ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", BUILTINS)
def test_same_seed_same_arch(spaces: dict, name: str) -> None:
    space = spaces[name]
    a = [space.sample_arch(random.Random(99)) for _ in range(3)]
    assert a[0] == a[1] == a[2]
    rng1, rng2 = random.Random(5), random.Random(5)
    assert [space.sample_arch(rng1) for _ in range(10)] == [
        space.sample_arch(rng2) for _ in range(10)
    ]
    different = {space.sample_arch(random.Random(s)) for s in range(20)}
    assert len(different) > 1


@pytest.mark.parametrize("name", ["demo", "default", "proxyless"])
def test_sample_some_layers_keeps_fixed(spaces: dict, name: str) -> None:
    space = spaces[name]
    rng = random.Random(3)
    fixed = space.sample_arch(rng)
    layers = [1, 4, 5]
    changed = set()
    for _ in range(30):
        arch = space.sample_arch(rng, layers=layers, fixed=fixed)
        space.validate_arch(arch)
        for i in range(len(space.layers)):
            if i not in layers:
                assert arch.ops[i] == fixed.ops[i]
                assert arch.widths[i] == fixed.widths[i]
            elif (arch.ops[i], arch.widths[i]) != (fixed.ops[i], fixed.widths[i]):
                changed.add(i)
    # each sampled layer with more than one choice changes at least once in 30 draws
    multi = {i for i in layers if len(space.layers[i].ops) * len(space.layers[i].widths) > 1}
    assert changed == multi


def test_sample_some_layers_default_base(spaces: dict) -> None:
    space = spaces["demo"]
    base = space.default_arch()
    assert base.widths == tuple(max(layer.widths) for layer in space.layers)
    arch = space.sample_arch(random.Random(0), layers=[])
    assert arch == base


def test_sampled_archs_are_valid_everywhere(spaces: dict) -> None:
    rng = random.Random(11)
    for space in spaces.values():
        for _ in range(20):
            arch = space.sample_arch(rng)
            assert space.validate_arch(arch) == arch
            for op, w, layer in zip(arch.ops, arch.widths, space.layers):
                assert op in layer.ops and w in layer.widths


def test_string_round_trip_precise_width() -> None:
    text = """
[input]
resolution = 8
channels = 3
classes = 2
[stem]
cout = 8
[[layers]]
cout = 8
ops = ["skip"]
widths = [0.3333333333, 1.0]
"""
    space = parse_space(text)
    arch = Arch.of(["skip"], [0.3333333333])
    assert space.validate_arch(arch) == arch
    assert Arch.parse(str(arch)) == arch
    assert space.parse_arch(str(arch)) == arch
