"""Search-space files: reading a space's TOML (validated field by field) and writing one back.

A bad file stops at the first problem with one line naming the file, the field and what was
expected, read through ``hurricane.tomlcheck.Fields`` as device and pipeline files are. The
model itself (what a space is, its shapes and keys) lives in ``hurricane.space``.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from hurricane.names import check_name
from hurricane.opnames import ACT_NAMES, OpNameError, canonical, parse_op
from hurricane.ops import check_op
from hurricane.space import HeadSpec, LayerSpec, SearchSpace, StemSpec
from hurricane.tomlcheck import ConfigError, Fields, loads_toml, read_toml

BUILTIN_DIR = "spaces"

TOP_FIELDS = {
    "name",
    "description",
    "act",
    "channel_divisor",
    "ops",
    "widths",
    "input",
    "stem",
    "layers",
    "head",
}
LAYER_FIELDS = {"cout", "stride", "ops", "widths", "act", "repeat"}


class SpaceError(ConfigError):
    """A search-space file that cannot be used; the message names file, field and fix."""


def builtin_spaces() -> list[str]:
    folder = resources.files("hurricane") / BUILTIN_DIR
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def load_space(name_or_path: str | Path) -> SearchSpace:
    """Load a built-in space by name (``demo``) or any space file by path."""
    text_name = str(name_or_path)
    path = Path(text_name)
    if path.suffix != ".toml" and not path.exists():
        if text_name not in builtin_spaces():
            raise SpaceError(
                f"{text_name}: no such space file and no built-in space of that name "
                f"(built-in: {', '.join(builtin_spaces())})"
            )
        resource = resources.files("hurricane") / BUILTIN_DIR / f"{text_name}.toml"
        return parse_space(resource.read_text(), source=f"{text_name}.toml")
    return read_space(read_toml(path, "space file", SpaceError), source=str(path))


def parse_space(text: str, source: str = "<string>") -> SearchSpace:
    return read_space(loads_toml(text, source, SpaceError), source)


def read_space(data: dict[str, Any], source: str = "<memory>") -> SearchSpace:
    """A space from a parsed TOML table, or the first problem with it as a ``SpaceError``."""
    top = Fields(data, source, error_type=SpaceError)
    top.only(TOP_FIELDS)
    default = "space" if source == "<string>" else Path(source).stem  # text given in code
    name = check_name("space", top.str("name", default), source, SpaceError)
    description = top.str("description", "", empty=True)
    act = _act(top, "act", "relu")
    divisor = top.int("channel_divisor", 8, lo=1)
    default_ops = _ops(top, "ops") if top.has("ops") else None
    default_widths = _widths(top, "widths") if top.has("widths") else (1.0,)

    if not top.has("input"):
        raise top.error("input", "missing table [input] with resolution, channels, classes")
    inp = top.sub("input")
    inp.only({"resolution", "channels", "classes"})
    resolution = _resolution(inp)
    in_channels = inp.int("channels", lo=1)
    classes = inp.int("classes", lo=2)

    if not top.has("stem"):
        raise top.error("stem", "missing table [stem] with cout (and optional kernel, stride)")
    sf = top.sub("stem")
    sf.only({"cout", "kernel", "stride"})
    stem = StemSpec(
        cout=sf.int("cout", lo=1),
        kernel=sf.int("kernel", 3, lo=1, choices=(1, 3, 5, 7)),
        stride=sf.int("stride", 1, lo=1, choices=(1, 2)),
    )

    raw_layers = top.table.get("layers")
    if not isinstance(raw_layers, list) or not raw_layers:
        raise top.error("layers", "missing or empty; add [[layers]] tables")
    layers: list[LayerSpec] = []
    origin: list[Fields] = []  # per expanded layer: its [[layers]] table, named as written
    for i, table in enumerate(raw_layers):
        lf = Fields(table, source, f"layers[{i}].", SpaceError)
        lf.only(LAYER_FIELDS)
        cout = lf.int("cout", lo=1)
        stride = lf.int("stride", 1, lo=1, choices=(1, 2))
        if lf.has("ops"):
            ops = _ops(lf, "ops")
        elif default_ops is not None:
            ops = default_ops
        else:
            raise lf.error("ops", "missing, and no top-level ops list to inherit")
        widths = _widths(lf, "widths") if lf.has("widths") else default_widths
        layer_act = _act(lf, "act", act)
        repeat = lf.int("repeat", 1, lo=1)
        for r in range(repeat):
            layers.append(LayerSpec(cout, stride if r == 0 else 1, ops, widths, layer_act))
            where = lf.prefix if repeat == 1 else f"layers[{i}] (repeat {r + 1} of {repeat})."
            origin.append(Fields(table, source, where, SpaceError))

    hf = top.sub("head")
    hf.only({"channels", "dropout"})
    dropout = hf.float("dropout", 0.0)
    if not 0 <= dropout < 1:
        raise hf.error("dropout", f"must be a number in [0, 1), got {dropout!r}")
    head = HeadSpec(hf.int("channels", 0, lo=0), dropout)

    space = SearchSpace(
        name=name,
        resolution=resolution,
        in_channels=in_channels,
        classes=classes,
        stem=stem,
        layers=tuple(layers),
        head=head,
        act=act,
        channel_divisor=divisor,
        description=description,
        source=source,
    )
    _check_shapes(space, origin)
    return space


def _resolution(f: Fields) -> tuple[int, int]:
    res = f.table.get("resolution")
    if isinstance(res, int) and not isinstance(res, bool):
        res = [res, res]
    if not (isinstance(res, list) and len(res) == 2):
        raise f.error("resolution", f"expected an integer or [h, w], got {res!r}")
    for r in res:
        if isinstance(r, bool) or not isinstance(r, int):
            raise f.error("resolution", f"expected an integer, got {r!r}")
        if r < 1:
            raise f.error("resolution", f"must be >= 1, got {r}")
    return res[0], res[1]


def _act(f: Fields, key: str, default: str) -> str:
    value = f.str(key, default)
    if value not in ACT_NAMES:
        raise f.error(key, f"activation must be one of {', '.join(ACT_NAMES)}, got {value!r}")
    return value


def _widths(f: Fields, key: str) -> tuple[float, ...]:
    value = f.table[key]
    if not isinstance(value, list) or not value:
        raise f.error(key, "expected a non-empty list of width multipliers like [0.5, 1.0]")
    out = []
    for j, w in enumerate(value):
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 < w <= 1:
            raise f.error(f"{key}[{j}]", f"width multiplier must be in (0, 1], got {w!r}")
        out.append(float(w))
    if len(set(out)) != len(out):
        raise f.error(key, f"width multipliers repeat: {value}")
    return tuple(out)


def _ops(f: Fields, key: str) -> tuple[str, ...]:
    value = f.table[key]
    if not isinstance(value, list):
        raise f.error(key, f"expected a list of operator names, got {value!r}")
    if not value:
        raise f.error(key, "candidate list is empty; give at least one operator")
    out = []
    for j, op in enumerate(value):
        try:
            out.append(canonical(op))
        except OpNameError as exc:
            raise f.error(f"{key}[{j}]", str(exc)) from None
    dupes = sorted({o for o in out if out.count(o) > 1})
    if dupes:
        raise f.error(key, f"operator listed twice: {', '.join(dupes)}")
    return tuple(out)


def _check_shapes(space: SearchSpace, origin: list[Fields]) -> None:
    """Every candidate must run at every (cin, cout) its layer can see."""
    for i, layer in enumerate(space.layers):
        for j, op in enumerate(layer.ops):
            spec = parse_op(op)
            for cin in space.in_channel_choices(i):
                for cout in layer.channels(space.channel_divisor):
                    problem = check_op(spec, cin, cout, layer.stride)
                    if problem:
                        raise origin[i].error(
                            f"ops[{j}]",
                            f"{problem} (cin={cin}, cout={cout}); change the channels, "
                            "widths or channel_divisor, or drop this op here",
                        )


def space_to_toml(space: SearchSpace, header: str = "") -> str:
    """A TOML file that ``parse_space`` reads back into an equal space (one table per layer)."""

    def q(text: str) -> str:
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'

    def floats(ws: tuple[float, ...]) -> str:
        return "[" + ", ".join(repr(float(w)) for w in ws) + "]"

    lines = [f"# {line}" for line in header.splitlines()]
    lines += [
        f"name = {q(space.name)}",
        f"description = {q(space.description)}",
        f"act = {q(space.act)}",
        f"channel_divisor = {space.channel_divisor}",
        "",
        "[input]",
        f"resolution = [{space.resolution[0]}, {space.resolution[1]}]",
        f"channels = {space.in_channels}",
        f"classes = {space.classes}",
        "",
        "[stem]",
        f"cout = {space.stem.cout}",
        f"kernel = {space.stem.kernel}",
        f"stride = {space.stem.stride}",
    ]
    for layer in space.layers:
        lines += [
            "",
            "[[layers]]",
            f"cout = {layer.cout}",
            f"stride = {layer.stride}",
            f"act = {q(layer.act)}",
            f"widths = {floats(layer.widths)}",
            "ops = [" + ", ".join(q(op) for op in layer.ops) + "]",
        ]
    lines += ["", "[head]", f"channels = {space.head.channels}", f"dropout = {space.head.dropout}"]
    return "\n".join(lines) + "\n"
