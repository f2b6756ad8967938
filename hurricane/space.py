"""Declarative search spaces: a TOML file of searchable layers, validated at load.

A space fixes the input, a stem, a list of searchable layers (output channels, stride,
candidate operators, optional width multipliers for channel-level search) and a head. The
built-in spaces live in ``hurricane/spaces/``; any other file path works the same way.
"""

from __future__ import annotations

import hashlib
import math
import random
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from hurricane.arch import Arch, ArchError
from hurricane.dynamic import make_divisible
from hurricane.errors import UserError
from hurricane.opnames import ACT_NAMES, OpNameError, canonical, parse_op
from hurricane.ops import check_op


class SpaceError(UserError):
    """A search-space file that cannot be used; the message names file, field and fix."""


@dataclass(frozen=True)
class OpInstance:
    """One operator at one shape: the key a latency table is built from."""

    op: str
    cin: int
    cout: int
    h: int
    w: int
    stride: int
    act: str

    @property
    def key(self) -> str:
        return f"{self.op}:{self.cin}>{self.cout}:{self.h}x{self.w}:s{self.stride}:{self.act}"

    @classmethod
    def from_key(cls, key: str) -> OpInstance:
        try:
            op, chans, hw, stride, act = key.split(":")
            cin, cout = chans.split(">")
            h, w = hw.split("x")
            assert stride.startswith("s")
            return cls(op, int(cin), int(cout), int(h), int(w), int(stride[1:]), act)
        except (ValueError, AssertionError):
            raise UserError(f"{key!r} is not a LUT key (op:cin>cout:HxW:sS:act)") from None


@dataclass(frozen=True)
class PairInstance:
    """Two consecutive layers timed as one unit: a layer followed by a strided skip (a 1x1
    conv with stride). Measured here: OpenVINO moves that stride into the layer before it,
    which then computes a quarter of its outputs (fused MBConv + strided skip: 5.9 ms as
    parts, 1.6 ms together), so the sum of the two entries misses by up to half a model."""

    first: OpInstance
    second: OpInstance

    @property
    def key(self) -> str:
        return pair_key(self.first.key, self.second.key)

    # The columns a LUT row has, so a pair is stored like any entry.
    op = property(lambda self: f"{self.first.op}+{self.second.op}")
    cin = property(lambda self: self.first.cin)
    cout = property(lambda self: self.second.cout)
    h = property(lambda self: self.first.h)
    w = property(lambda self: self.first.w)
    stride = property(lambda self: self.first.stride * self.second.stride)
    act = property(lambda self: self.second.act)


PAIR_OP = "skip"  # the second layer of every pair


def pair_key(first: str, second: str) -> str:
    return f"{first}+{second}"


def is_pair_key(key: str) -> bool:
    return "+" in key


@dataclass(frozen=True)
class LayerSpec:
    cout: int
    stride: int
    ops: tuple[str, ...]
    widths: tuple[float, ...] = (1.0,)
    act: str = "relu"

    def channels(self, divisor: int) -> tuple[int, ...]:
        """Output channels for each width multiplier, in the order of ``widths``."""
        return tuple(channels_for(self.cout, w, divisor) for w in self.widths)


@dataclass(frozen=True)
class StemSpec:
    cout: int
    kernel: int = 3
    stride: int = 1


@dataclass(frozen=True)
class HeadSpec:
    channels: int = 0
    dropout: float = 0.0


def channels_for(cout: int, width: float, divisor: int) -> int:
    return cout if width == 1.0 else make_divisible(cout * width, divisor)


@dataclass(frozen=True)
class SearchSpace:
    name: str
    resolution: tuple[int, int]
    in_channels: int
    classes: int
    stem: StemSpec
    layers: tuple[LayerSpec, ...]
    head: HeadSpec
    act: str = "relu"
    channel_divisor: int = 8
    description: str = ""
    source: str = "<memory>"
    _shapes: tuple[tuple[int, int], ...] = field(default=(), repr=False, compare=False)

    def __post_init__(self) -> None:
        h, w = (_down(s, self.stem.stride) for s in self.resolution)
        shapes = []
        for layer in self.layers:
            shapes.append((h, w))
            h, w = _down(h, layer.stride), _down(w, layer.stride)
        shapes.append((h, w))
        object.__setattr__(self, "_shapes", tuple(shapes))

    # --- shapes -------------------------------------------------------------------------
    def input_shape(self, i: int) -> tuple[int, int]:
        """Spatial size (h, w) entering layer ``i``; ``len(layers)`` gives the head's."""
        return self._shapes[i]

    def in_channel_choices(self, i: int) -> tuple[int, ...]:
        if i == 0:
            return (self.stem.cout,)
        return self.layers[i - 1].channels(self.channel_divisor)

    def layer_act(self, i: int, op: str) -> str:
        return parse_op(op).act or self.layers[i].act

    def arch_channels(self, arch: Arch) -> list[tuple[int, int]]:
        """(cin, cout) of every layer on this architecture's path."""
        out, cin = [], self.stem.cout
        for layer, width in zip(self.layers, arch.widths):
            cout = channels_for(layer.cout, width, self.channel_divisor)
            out.append((cin, cout))
            cin = cout
        return out

    # --- size and keys ------------------------------------------------------------------
    def log10_size(self) -> float:
        return sum(math.log10(len(layer.ops) * len(layer.widths)) for layer in self.layers)

    def op_instances(self) -> list[OpInstance]:
        """Distinct (op, cin, cout, h, w, stride, act) over every path, in layer order."""
        seen: dict[OpInstance, None] = {}
        for i, layer in enumerate(self.layers):
            h, w = self.input_shape(i)
            for cin in self.in_channel_choices(i):
                for cout in layer.channels(self.channel_divisor):
                    for op in layer.ops:
                        act = self.layer_act(i, op)
                        seen.setdefault(OpInstance(op, cin, cout, h, w, layer.stride, act))
        return list(seen)

    def pair_layers(self) -> list[int]:
        """Layers whose skip is a strided conv, timed together with the layer before."""
        return [
            i
            for i, lay in enumerate(self.layers)
            if i > 0 and lay.stride > 1 and PAIR_OP in lay.ops
        ]

    def pair_instances(self) -> list[PairInstance]:
        """Every (layer i-1 op, strided skip at i) pair at every width, in layer order."""
        seen: dict[PairInstance, None] = {}
        for i in self.pair_layers():
            prev, lay = self.layers[i - 1], self.layers[i]
            (hp, wp), (h, w) = self.input_shape(i - 1), self.input_shape(i)
            act = self.layer_act(i, PAIR_OP)
            for cin in self.in_channel_choices(i - 1):
                for mid in prev.channels(self.channel_divisor):
                    for op in prev.ops:
                        first = OpInstance(
                            op, cin, mid, hp, wp, prev.stride, self.layer_act(i - 1, op)
                        )
                        for cout in lay.channels(self.channel_divisor):
                            second = OpInstance(PAIR_OP, mid, cout, h, w, lay.stride, act)
                            seen.setdefault(PairInstance(first, second))
        return list(seen)

    def stem_instance(self) -> OpInstance:
        h, w = self.resolution
        s = self.stem
        return OpInstance(f"conv_k{s.kernel}", self.in_channels, s.cout, h, w, s.stride, self.act)

    def head_instances(self) -> list[OpInstance]:
        """The head at every width the last layer can give it (op ``head_cC``, C its 1x1
        conv's channels, 0 for none; cout = classes)."""
        h, w = self.input_shape(len(self.layers))
        act = self.layers[-1].act
        op = f"head_c{self.head.channels}"
        last = self.layers[-1].channels(self.channel_divisor)
        return [OpInstance(op, c, self.classes, h, w, 1, act) for c in dict.fromkeys(last)]

    def fixed_instances(self) -> list[OpInstance]:
        """Stem and head: measured with the searchable layers so a LUT sums to a model."""
        return [self.stem_instance(), *self.head_instances()]

    def arch_instances(self, arch: Arch) -> list[OpInstance]:
        arch = self.validate_arch(arch)
        out = []
        for i, ((cin, cout), op) in enumerate(zip(self.arch_channels(arch), arch.ops)):
            h, w = self.input_shape(i)
            out.append(
                OpInstance(op, cin, cout, h, w, self.layers[i].stride, self.layer_act(i, op))
            )
        return out

    # --- architectures ------------------------------------------------------------------
    def validate_arch(self, arch: Arch) -> Arch:
        """Return ``arch`` with canonical op names, or raise naming the first bad layer."""
        if len(arch.ops) != len(self.layers):
            raise ArchError(
                f"architecture has {len(arch.ops)} layers but space {self.name!r} has "
                f"{len(self.layers)}"
            )
        ops = []
        for i, (op, width, layer) in enumerate(zip(arch.ops, arch.widths, self.layers)):
            try:
                op = canonical(op)
            except OpNameError as exc:
                raise ArchError(f"layer {i}: {exc}") from None
            if op not in layer.ops:
                raise ArchError(
                    f"layer {i}: op {op!r} is not a candidate here (candidates: "
                    f"{', '.join(layer.ops)})"
                )
            if width not in layer.widths:
                raise ArchError(
                    f"layer {i}: width {width:g} is not a choice here (choices: "
                    f"{', '.join(f'{w:g}' for w in layer.widths)})"
                )
            ops.append(op)
        return Arch(tuple(ops), arch.widths)

    def parse_arch(self, text: str) -> Arch:
        return self.validate_arch(Arch.parse(text))

    def default_arch(self) -> Arch:
        """First candidate at the widest width on every layer."""
        return Arch(
            tuple(layer.ops[0] for layer in self.layers),
            tuple(max(layer.widths) for layer in self.layers),
        )

    def sample_arch(
        self,
        rng: random.Random,
        layers: list[int] | None = None,
        fixed: Arch | None = None,
        allowed: Sequence[Sequence[str]] | None = None,
    ) -> Arch:
        """Uniform op and width per sampled layer; the others come from ``fixed``.
        ``allowed`` narrows each layer's candidates (progressive shrinking)."""
        base = fixed or self.default_arch()
        sampled = set(range(len(self.layers)) if layers is None else layers)
        ops, widths = list(base.ops), list(base.widths)
        for i, layer in enumerate(self.layers):
            if i in sampled:
                choices = allowed[i] if allowed is not None else layer.ops
                ops[i] = choices[rng.randrange(len(choices))]
                widths[i] = layer.widths[rng.randrange(len(layer.widths))]
        return Arch(tuple(ops), tuple(widths))

    def structure_hash(self) -> str:
        """A short hash of what shapes a network (not the candidate lists or the name), so
        stored whole-model timings are reused exactly when the same networks would be built."""
        parts = (
            self.resolution,
            self.in_channels,
            self.classes,
            self.stem,
            self.head,
            self.act,
            [
                (lay.cout, lay.stride, lay.act, lay.channels(self.channel_divisor))
                for lay in self.layers
            ],
        )
        return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "description": self.description,
            "input": {
                "resolution": list(self.resolution),
                "channels": self.in_channels,
                "classes": self.classes,
            },
            "stem": {
                "cout": self.stem.cout,
                "kernel": self.stem.kernel,
                "stride": self.stem.stride,
            },
            "layers": [
                {
                    "index": i,
                    "cout": layer.cout,
                    "stride": layer.stride,
                    "input_hw": list(self.input_shape(i)),
                    "act": layer.act,
                    "widths": list(layer.widths),
                    "channels": list(layer.channels(self.channel_divisor)),
                    "candidates": list(layer.ops),
                }
                for i, layer in enumerate(self.layers)
            ],
            "head": {"channels": self.head.channels, "dropout": self.head.dropout},
            "num_op_instances": len(self.op_instances()),
            "log10_size": self.log10_size(),
        }


def _down(size: int, stride: int) -> int:
    return -(-size // stride)


# --- loading ---------------------------------------------------------------------------------

BUILTIN_DIR = "spaces"


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
    if not path.is_file():
        raise SpaceError(f"{path}: space file not found")
    return parse_space(path.read_text(), source=str(path))


def parse_space(text: str, source: str = "<string>") -> SearchSpace:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpaceError(f"{source}: not valid TOML: {exc}") from None
    return _SpaceReader(source).read(data)


class _SpaceReader:
    TOP = {
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
    LAYER = {"cout", "stride", "ops", "widths", "act", "repeat"}

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, msg: str) -> SpaceError:
        return SpaceError(f"{self.source}: {where}: {msg}")

    def _keys(self, table: dict, allowed: set[str], where: str) -> None:
        for key in table:
            if key not in allowed:
                raise self.fail(
                    f"{where}{key}" if where else key,
                    f"unknown field (expected one of: {', '.join(sorted(allowed))})",
                )

    def _int(self, value: Any, where: str, lo: int = 1, choices: tuple | None = None) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.fail(where, f"expected an integer, got {value!r}")
        if choices is not None and value not in choices:
            raise self.fail(where, f"must be one of {', '.join(map(str, choices))}, got {value}")
        if value < lo:
            raise self.fail(where, f"must be >= {lo}, got {value}")
        return value

    def _act(self, value: Any, where: str) -> str:
        if value not in ACT_NAMES:
            raise self.fail(
                where, f"activation must be one of {', '.join(ACT_NAMES)}, got {value!r}"
            )
        return value

    def _widths(self, value: Any, where: str) -> tuple[float, ...]:
        if not isinstance(value, list) or not value:
            raise self.fail(where, "expected a non-empty list of width multipliers like [0.5, 1.0]")
        out = []
        for j, w in enumerate(value):
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 < w <= 1:
                raise self.fail(f"{where}[{j}]", f"width multiplier must be in (0, 1], got {w!r}")
            out.append(float(w))
        if len(set(out)) != len(out):
            raise self.fail(where, f"width multipliers repeat: {value}")
        return tuple(out)

    def _ops(self, value: Any, where: str) -> tuple[str, ...]:
        if not isinstance(value, list):
            raise self.fail(where, f"expected a list of operator names, got {value!r}")
        if not value:
            raise self.fail(where, "candidate list is empty; give at least one operator")
        out = []
        for j, op in enumerate(value):
            try:
                out.append(canonical(op))
            except OpNameError as exc:
                raise self.fail(f"{where}[{j}]", str(exc)) from None
        dupes = sorted({o for o in out if out.count(o) > 1})
        if dupes:
            raise self.fail(where, f"operator listed twice: {', '.join(dupes)}")
        return tuple(out)

    def read(self, data: dict[str, Any]) -> SearchSpace:
        self._keys(data, self.TOP, "")
        name = data.get("name", Path(self.source).stem)
        act = self._act(data.get("act", "relu"), "act")
        divisor = self._int(data.get("channel_divisor", 8), "channel_divisor")
        default_ops = self._ops(data["ops"], "ops") if "ops" in data else None
        default_widths = self._widths(data["widths"], "widths") if "widths" in data else (1.0,)

        inp = data.get("input")
        if not isinstance(inp, dict):
            raise self.fail("input", "missing table [input] with resolution, channels, classes")
        self._keys(inp, {"resolution", "channels", "classes"}, "input.")
        res = inp.get("resolution")
        if isinstance(res, int) and not isinstance(res, bool):
            res = [res, res]
        if not (isinstance(res, list) and len(res) == 2):
            raise self.fail("input.resolution", f"expected an integer or [h, w], got {res!r}")
        resolution = tuple(self._int(r, "input.resolution") for r in res)
        in_channels = self._int(inp.get("channels"), "input.channels")
        classes = self._int(inp.get("classes"), "input.classes", lo=2)

        stem_t = data.get("stem")
        if not isinstance(stem_t, dict):
            raise self.fail("stem", "missing table [stem] with cout (and optional kernel, stride)")
        self._keys(stem_t, {"cout", "kernel", "stride"}, "stem.")
        stem = StemSpec(
            cout=self._int(stem_t.get("cout"), "stem.cout"),
            kernel=self._int(stem_t.get("kernel", 3), "stem.kernel", choices=(1, 3, 5, 7)),
            stride=self._int(stem_t.get("stride", 1), "stem.stride", choices=(1, 2)),
        )

        raw_layers = data.get("layers")
        if not isinstance(raw_layers, list) or not raw_layers:
            raise self.fail("layers", "missing or empty; add [[layers]] tables")
        layers: list[LayerSpec] = []
        origin: list[str] = []
        for i, lt in enumerate(raw_layers):
            where = f"layers[{i}]"
            if not isinstance(lt, dict):
                raise self.fail(where, "expected a table")
            self._keys(lt, self.LAYER, f"{where}.")
            cout = self._int(lt.get("cout"), f"{where}.cout")
            stride = self._int(lt.get("stride", 1), f"{where}.stride", choices=(1, 2))
            if "ops" in lt:
                ops = self._ops(lt["ops"], f"{where}.ops")
            elif default_ops is not None:
                ops = default_ops
            else:
                raise self.fail(f"{where}.ops", "missing, and no top-level ops list to inherit")
            widths = (
                self._widths(lt["widths"], f"{where}.widths") if "widths" in lt else default_widths
            )
            layer_act = self._act(lt.get("act", act), f"{where}.act")
            repeat = self._int(lt.get("repeat", 1), f"{where}.repeat")
            for r in range(repeat):
                layers.append(LayerSpec(cout, stride if r == 0 else 1, ops, widths, layer_act))
                origin.append(where if repeat == 1 else f"{where} (repeat {r + 1} of {repeat})")

        head_t = data.get("head", {})
        if not isinstance(head_t, dict):
            raise self.fail("head", "expected a table")
        self._keys(head_t, {"channels", "dropout"}, "head.")
        dropout = head_t.get("dropout", 0.0)
        if (
            isinstance(dropout, bool)
            or not isinstance(dropout, (int, float))
            or not 0 <= dropout < 1
        ):
            raise self.fail("head.dropout", f"must be a number in [0, 1), got {dropout!r}")
        head = HeadSpec(self._int(head_t.get("channels", 0), "head.channels", lo=0), float(dropout))

        space = SearchSpace(
            name=str(name),
            resolution=resolution,
            in_channels=in_channels,
            classes=classes,
            stem=stem,
            layers=tuple(layers),
            head=head,
            act=act,
            channel_divisor=divisor,
            description=str(data.get("description", "")),
            source=self.source,
        )
        self._check_shapes(space, origin)
        return space

    def _check_shapes(self, space: SearchSpace, origin: list[str]) -> None:
        """Every candidate must run at every (cin, cout) its layer can see."""
        for i, layer in enumerate(space.layers):
            for j, op in enumerate(layer.ops):
                spec = parse_op(op)
                for cin in space.in_channel_choices(i):
                    for cout in layer.channels(space.channel_divisor):
                        problem = check_op(spec, cin, cout, layer.stride)
                        if problem:
                            raise self.fail(
                                f"{origin[i]}.ops[{j}]",
                                f"{problem} (cin={cin}, cout={cout}); change the channels, "
                                "widths or channel_divisor, or drop this op here",
                            )
