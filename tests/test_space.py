"""Search spaces: the model (hurricane.space) and its TOML files (hurricane.space_file):
built-in spaces, sizes, op instances, validation."""

from __future__ import annotations

import math

import pytest

from hurricane.opnames import FBNET_OPS, VOCABULARY, canonical
from hurricane.space_file import SpaceError, builtin_spaces, load_space, parse_space, space_to_toml
from hurricane.tomlcheck import ConfigError

BUILTINS = ["demo", "default", "fbnet", "proxyless"]

BASE = """\
name = "small"
channel_divisor = 8

[input]
resolution = 16
channels = 3
classes = 10

[stem]
cout = 8

[[layers]]
cout = 16
stride = 2
ops = ["mb_k3_e3", "skip"]

[[layers]]
cout = 16
ops = ["mb_k3_e3", "skip"]
"""


def _edit(old: str, new: str, text: str = BASE) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


# --- built-in spaces ---------------------------------------------------------------------------


def test_builtin_names() -> None:
    assert set(BUILTINS) <= set(builtin_spaces())


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_space_loads(name: str) -> None:
    space = load_space(name)
    assert space.name == name
    assert space.source == f"{name}.toml"
    assert len(space.layers) > 0
    for layer in space.layers:
        assert layer.ops, "every layer offers at least one candidate"
        assert all(canonical(op) == op for op in layer.ops)
        assert layer.stride in (1, 2)


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_summary(name: str) -> None:
    space = load_space(name)
    s = space.summary()
    for key in ("layers", "num_op_instances", "log10_size"):
        assert key in s
    assert len(s["layers"]) == len(space.layers)
    for entry, layer in zip(s["layers"], space.layers):
        assert entry["candidates"] == list(layer.ops)
    assert s["log10_size"] == pytest.approx(space.log10_size())
    instances = space.op_instances()
    assert len(instances) == len(set(instances))
    assert len({inst.key for inst in instances}) == len(instances)
    assert s["num_op_instances"] == len(instances)
    # every candidate of every layer appears at least once
    for i, layer in enumerate(space.layers):
        h, w = space.input_shape(i)
        ops_here = {
            inst.op
            for inst in instances
            if (inst.h, inst.w) == (h, w) and inst.stride == layer.stride
        }
        assert set(layer.ops) <= ops_here


def test_default_space() -> None:
    space = load_space("default")
    assert len(space.layers) >= 20
    for layer in space.layers:
        assert len(layer.ops) >= 32
        assert set(layer.ops) == set(VOCABULARY)
    assert space.resolution == (224, 224)
    assert space.classes == 1000


def test_fbnet_space() -> None:
    space = load_space("fbnet")
    assert len(space.layers) == 22
    expected = {canonical(op) for op in FBNET_OPS}
    for layer in space.layers:
        assert len(layer.ops) == 9
        assert set(layer.ops) == expected
        assert layer.widths == (1.0,)
    assert space.log10_size() == pytest.approx(22 * math.log10(9))
    assert space.summary()["log10_size"] == pytest.approx(22 * math.log10(9))


def test_demo_space() -> None:
    space = load_space("demo")
    assert len(space.layers) == 6
    for layer in space.layers:
        assert len(layer.ops) == 12
        assert len(layer.widths) == 3
    assert space.log10_size() == pytest.approx(6 * math.log10(12 * 3))
    assert space.resolution == (28, 28)
    assert space.in_channels == 1
    # stem stride 2: 28 -> 14; then layers of stride 1, 2, 1, 2, 1, 1 (ceil division)
    assert [space.input_shape(i) for i in range(7)] == [
        (14, 14),
        (14, 14),
        (7, 7),
        (7, 7),
        (4, 4),
        (4, 4),
        (4, 4),
    ]


def test_proxyless_space() -> None:
    space = load_space("proxyless")
    assert len(space.layers) == 22
    assert space.layers[0].ops == ("ds_k3",)
    assert space.act == "relu6"
    assert all(layer.act == "relu6" for layer in space.layers)
    for i, layer in enumerate(space.layers[1:], start=1):
        assert {f"mb_k{k}_e{e}" for k in (3, 5, 7) for e in (3, 6)} <= set(layer.ops)
        # skip is offered only where the shape is kept
        prev = space.layers[i - 1].cout
        can_skip = layer.stride == 1 and prev == layer.cout
        assert ("skip" in layer.ops) == can_skip, i


def test_widths_add_instances() -> None:
    plain = parse_space(BASE)
    wide = parse_space(_edit('name = "small"', 'name = "small"\nwidths = [0.5, 1.0]'))
    assert wide.layers[0].widths == (0.5, 1.0)
    assert plain.layers[0].widths == (1.0,)
    n_plain, n_wide = len(plain.op_instances()), len(wide.op_instances())
    assert n_wide > n_plain
    assert wide.summary()["num_op_instances"] == n_wide
    assert wide.log10_size() == pytest.approx(plain.log10_size() + 2 * math.log10(2))
    # layer 1 sees both input widths of layer 0 (8 and 16 channels)
    cins = {inst.cin for inst in wide.op_instances() if inst.h == 8}
    assert cins == {8, 16}


def test_op_instance_fields_and_act() -> None:
    text = _edit(
        'ops = ["mb_k3_e3", "skip"]\n\n[[layers]]',
        'ops = ["mb_k3_e3_hswish", "skip"]\n\n[[layers]]',
    )
    space = parse_space(text)
    insts = space.op_instances()
    first = [i for i in insts if i.op == "mb_k3_e3_hswish"]
    assert len(first) == 1
    inst = first[0]
    assert (inst.cin, inst.cout, inst.h, inst.w, inst.stride, inst.act) == (
        8,
        16,
        16,
        16,
        2,
        "hswish",
    )
    assert inst.key == "mb_k3_e3_hswish:8>16:16x16:s2:hswish"
    assert all(i.act == "relu" for i in insts if i.op != "mb_k3_e3_hswish")


def test_repeat_and_inherited_ops() -> None:
    text = """
ops = ["mb_k3_e3", "k3_e1"]
[input]
resolution = [16, 12]
channels = 3
classes = 4
[stem]
cout = 8
stride = 2
[[layers]]
cout = 16
stride = 2
repeat = 3
"""
    space = parse_space(text, source="rep.toml")
    assert space.name == "rep"
    assert len(space.layers) == 3
    assert [layer.stride for layer in space.layers] == [2, 1, 1]
    assert all(layer.ops == ("mb_k3_e3", "mb_k3_e1") for layer in space.layers)
    assert space.input_shape(0) == (8, 6)
    assert space.input_shape(3) == (4, 3)


def test_load_space_from_path(tmp_path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(_edit('name = "small"\n', ""))
    space = load_space(path)
    assert space.name == "mine"
    assert space.source == str(path)
    assert len(space.layers) == 2
    assert load_space(str(path)).layers == space.layers


def test_load_space_unknown_builtin() -> None:
    with pytest.raises(SpaceError) as info:
        load_space("no_such_space")
    msg = str(info.value)
    assert "no_such_space" in msg
    assert "\n" not in msg
    for name in BUILTINS:
        assert name in msg


def test_load_space_missing_file(tmp_path) -> None:
    with pytest.raises(SpaceError, match="not found"):
        load_space(tmp_path / "absent.toml")


# --- validation errors -----------------------------------------------------------------------

BAD_CASES = {
    "unknown_op": (
        _edit('ops = ["mb_k3_e3", "skip"]', 'ops = ["mb_k3_e3", "foo_k3"]'),
        "layers[0].ops[1]",
        "foo_k3",
    ),
    "bad_kernel": (
        _edit('ops = ["mb_k3_e3", "skip"]', 'ops = ["mb_k4_e3"]'),
        "layers[0].ops[0]",
        "mb_k4_e3",
    ),
    "empty_candidates": (
        BASE.rsplit('ops = ["mb_k3_e3", "skip"]', 1)[0] + "ops = []\n",
        "layers[1].ops",
        "empty",
    ),
    "ops_not_a_list": (
        _edit('ops = ["mb_k3_e3", "skip"]', 'ops = "mb_k3_e3"'),
        "layers[0].ops",
        "list",
    ),
    "missing_ops": (
        _edit('ops = ["mb_k3_e3", "skip"]\n', ""),
        "layers[0].ops",
        "missing",
    ),
    "bad_stride": (
        BASE.rstrip("\n") + "\nstride = 3\n",
        "layers[1].stride",
        "3",
    ),
    "g2_odd_cout": (
        _edit(
            'cout = 16\nstride = 2\nops = ["mb_k3_e3", "skip"]',
            'cout = 15\nstride = 2\nops = ["mb_k3_e1_g2"]',
        ),
        "layers[0].ops[0]",
        "divisible",
    ),
    "g2_odd_cin": (
        _edit("cout = 8\n", "cout = 7\n")
        .rstrip("\n")
        .replace('ops = ["mb_k3_e3", "skip"]', 'ops = ["k5_e1_g2", "skip"]', 1),
        "layers[0].ops[0]",
        "divisible",
    ),
    "unknown_layer_field": (
        BASE.rstrip("\n") + '\ncolour = "red"\n',
        "layers[1].colour",
        "unknown field",
    ),
    "unknown_top_field": (
        "colour = 1\n" + BASE,
        "colour",
        "unknown field",
    ),
    "unknown_input_field": (
        _edit("classes = 10\n", "classes = 10\nsize = 3\n"),
        "input.size",
        "unknown field",
    ),
    "missing_input": (
        BASE.replace("[input]\nresolution = 16\nchannels = 3\nclasses = 10\n", ""),
        "input",
        "missing",
    ),
    "missing_stem": (
        BASE.replace("[stem]\ncout = 8\n", ""),
        "stem",
        "missing",
    ),
    "bad_layer_width": (
        _edit('ops = ["mb_k3_e3", "skip"]', 'ops = ["mb_k3_e3", "skip"]\nwidths = [0.5, 1.5]'),
        "layers[0].widths[1]",
        "1.5",
    ),
    "bad_top_width": (
        _edit('name = "small"', 'name = "small"\nwidths = [1.5]'),
        "widths[0]",
        "1.5",
    ),
    "zero_width": (
        _edit('ops = ["mb_k3_e3", "skip"]', 'ops = ["mb_k3_e3", "skip"]\nwidths = [0]'),
        "layers[0].widths[0]",
        "(0, 1]",
    ),
    "repeated_width": (
        _edit('ops = ["mb_k3_e3", "skip"]', 'ops = ["mb_k3_e3", "skip"]\nwidths = [0.5, 0.5]'),
        "layers[0].widths",
        "repeat",
    ),
    "duplicate_op": (
        _edit('ops = ["mb_k3_e3", "skip"]', 'ops = ["mb_k3_e3", "skip", "mb_k3_e3"]'),
        "layers[0].ops",
        "twice",
    ),
    "duplicate_alias": (
        _edit('ops = ["mb_k3_e3", "skip"]', 'ops = ["k3_e1", "mb_k3_e1"]'),
        "layers[0].ops",
        "mb_k3_e1",
    ),
    "bad_act": (
        _edit('name = "small"', 'name = "small"\nact = "gelu"'),
        "act",
        "gelu",
    ),
    "bad_classes": (
        _edit("classes = 10", "classes = 1"),
        "input.classes",
        ">= 2",
    ),
    "bad_cout_type": (
        _edit("cout = 16\nstride = 2", 'cout = "16"\nstride = 2'),
        "layers[0].cout",
        "integer",
    ),
    "bad_dropout": (
        BASE + "\n[head]\ndropout = 1.0\n",
        "head.dropout",
        "[0, 1)",
    ),
    "no_layers": (
        BASE.split("[[layers]]")[0],
        "layers",
        "missing",
    ),
    "missing_cout": (
        _edit("cout = 16\nstride = 2", "stride = 2"),
        "layers[0].cout",
        "missing",
    ),
    "missing_channels": (
        _edit("channels = 3\n", ""),
        "input.channels",
        "missing",
    ),
    "name_not_a_string": (
        _edit('name = "small"', "name = 5"),
        "name",
        "string",
    ),
    "name_that_leaves_its_folder": (  # names stage one's files: runs/spaces/SPACE-DEVICE-kK
        _edit('name = "small"', 'name = "x/../../../../../ESCAPED"'),
        "name",
        "a space name must be a plain file name",
    ),
    "head_not_a_table": (
        "head = 3\n" + BASE,
        "head",
        "table",
    ),
}


def test_base_text_is_valid() -> None:
    space = parse_space(BASE, source="bad.toml")
    assert len(space.layers) == 2


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_space_errors(case: str) -> None:
    text, field, detail = BAD_CASES[case]
    with pytest.raises(SpaceError) as info:
        parse_space(text, source="bad.toml")
    msg = str(info.value)
    assert "\n" not in msg, msg
    assert msg.startswith(f"bad.toml: {field}: "), msg
    assert detail in msg, msg


def test_error_after_repeat_names_the_toml_table() -> None:
    """Errors name the [[layers]] table as written, not the index after expanding repeats."""
    text = _edit("cout = 16\nstride = 2\n", "cout = 16\nstride = 2\nrepeat = 3\n")
    text = _edit(
        'cout = 16\nops = ["mb_k3_e3", "skip"]', 'cout = 15\nops = ["skip", "k3_e1_g2"]', text
    )
    with pytest.raises(SpaceError) as info:
        parse_space(text, source="bad.toml")
    msg = str(info.value)
    assert msg.startswith("bad.toml: layers[1].ops[1]: "), msg
    assert "\n" not in msg


def test_error_in_repeated_layer_names_the_repeat() -> None:
    text = _edit("cout = 8\n", "cout = 7\n")
    text = _edit(
        'stride = 2\nops = ["mb_k3_e3", "skip"]', 'stride = 2\nrepeat = 2\nops = ["k3_e1_g2"]', text
    )
    with pytest.raises(SpaceError) as info:
        parse_space(text, source="bad.toml")
    msg = str(info.value)
    assert msg.startswith("bad.toml: layers[0]"), msg
    assert "repeat 1 of 2" in msg and ".ops[0]: " in msg, msg
    assert "\n" not in msg


def test_space_file_round_trips_an_empty_description(tmp_path) -> None:
    space = parse_space(BASE)
    assert space.description == ""
    path = tmp_path / "again.toml"
    path.write_text(space_to_toml(space))
    again = load_space(path)
    assert (again.layers, again.description, again.name) == (space.layers, "", "small")


def test_invalid_toml_is_one_line() -> None:
    with pytest.raises(SpaceError) as info:
        parse_space("name = \n[input", source="bad.toml")
    msg = str(info.value)
    assert msg.startswith("bad.toml: ")
    assert "\n" not in msg
    assert "TOML" in msg


def test_space_error_is_value_error() -> None:
    assert issubclass(SpaceError, ValueError)
    assert issubclass(SpaceError, ConfigError)  # read through tomlcheck.Fields, as specs are


def test_a_space_file_that_is_not_utf8_is_one_line(tmp_path) -> None:
    path = tmp_path / "latin.toml"
    path.write_bytes(
        _edit('name = "small"', 'name = "small"\ndescription = "caf\xe9"').encode("latin-1")
    )
    with pytest.raises(SpaceError) as info:
        load_space(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: not UTF-8 text") and "0xe9" in msg, msg
    assert "\n" not in msg
