"""Architectures: one operator (and one width multiplier) per searchable layer.

String form: layers joined by ``-``, each ``OP`` or ``OP@WIDTH`` where the width is not 1,
e.g. ``mb_k3_e6-skip@0.5-shuffle_k5``. JSON form: ``{"ops": [...], "widths": [...]}``.
Both round-trip exactly; ``SearchSpace.validate_arch`` checks one against a space.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from hurricane.errors import UserError


class ArchError(UserError):
    """An architecture string or JSON document that cannot be read."""


def _width(w: float) -> str:
    # Shortest digits that read back to the same float, never in exponent form ("1e-05"
    # would be split at its "-").
    return np.format_float_positional(w, trim="-")


@dataclass(frozen=True)
class Arch:
    ops: tuple[str, ...]
    widths: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.ops) != len(self.widths):
            raise ArchError(f"{len(self.ops)} ops but {len(self.widths)} widths")
        object.__setattr__(self, "ops", tuple(self.ops))
        object.__setattr__(self, "widths", tuple(float(w) for w in self.widths))

    @classmethod
    def of(cls, ops: list[str] | tuple[str, ...], widths: list[float] | None = None) -> Arch:
        return cls(tuple(ops), tuple(widths) if widths is not None else (1.0,) * len(ops))

    def __str__(self) -> str:
        return "-".join(
            op if w == 1.0 else f"{op}@{_width(w)}" for op, w in zip(self.ops, self.widths)
        )

    def __len__(self) -> int:
        return len(self.ops)

    @classmethod
    def parse(cls, text: str) -> Arch:
        text = text.strip()
        if not text:
            raise ArchError("empty architecture string")
        ops, widths = [], []
        for i, part in enumerate(text.split("-")):
            op, _, width = part.partition("@")
            if not op:
                raise ArchError(f"layer {i}: empty operator in {text!r}")
            try:
                w = float(width) if width else 1.0
            except ValueError:
                raise ArchError(f"layer {i}: width {width!r} is not a number") from None
            ops.append(op)
            widths.append(w)
        return cls(tuple(ops), tuple(widths))

    def to_json(self) -> dict[str, Any]:
        return {"ops": list(self.ops), "widths": list(self.widths)}

    @classmethod
    def from_json(cls, data: dict[str, Any] | str) -> Arch:
        if isinstance(data, str):
            data = json.loads(data)
        if not isinstance(data, dict) or not isinstance(data.get("ops"), list):
            raise ArchError('architecture JSON needs {"ops": [...], "widths": [...]}')
        ops = data["ops"]
        widths = data.get("widths", [1.0] * len(ops))
        return cls(tuple(ops), tuple(widths))
