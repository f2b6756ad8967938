"""Search spaces: the model of a space, its shapes, the LUT keys it needs and its architectures.

A space fixes the input, a stem, a list of searchable layers (output channels, stride,
candidate operators, optional width multipliers for channel-level search) and a head. Spaces
are written as TOML files (the built-in ones in ``hurricane/spaces/``), read and validated by
``hurricane.space_file``.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from hurricane.arch import Arch, ArchError
from hurricane.dynamic import make_divisible
from hurricane.lutkeys import PAIR_OP, OpInstance, PairInstance, head_op
from hurricane.opnames import OpNameError, canonical, parse_op


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
        op = head_op(self.head.channels)
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
