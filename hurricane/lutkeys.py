"""LUT keys: the string a latency table stores one measurement under, and how it is read back.

An operator at one shape is ``op:cin>cout:HxW:sS:act`` (``mb_k3_e6:16>24:14x14:s2:relu``); two
consecutive layers timed as one unit are their two keys joined by ``+``; a space's head is the
pseudo-operator ``head_cC``. Every module that forms or parses a key goes through this one, so
a key written by a profiling run is found again by the latency model, stage one and reports.
Torch-free, so device and profiling code can read keys without building modules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hurricane.errors import UserError

PAIR_OP = "skip"  # the second layer of every pair
HEAD_PREFIX = "head_c"  # the head's op: head_cC, C its 1x1 conv's channels (0: none)

# The columns a LUT row keeps besides its key (hurricane.lut.Entry).
KEY_COLUMNS = ("op", "cin", "cout", "h", "w", "stride", "act")


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


def pair_key(first: str, second: str) -> str:
    return f"{first}+{second}"


def is_pair_key(key: str) -> bool:
    return "+" in key


def key_columns(inst: OpInstance | PairInstance) -> dict[str, Any]:
    """The key and the columns a LUT row stores beside it."""
    return {"key": inst.key, **{c: getattr(inst, c) for c in KEY_COLUMNS}}


def head_op(channels: int) -> str:
    return f"{HEAD_PREFIX}{channels}"


def head_channels(op: str) -> int | None:
    """The 1x1 conv channels of a head op (0: none), or None if ``op`` is not a head."""
    if not op.startswith(HEAD_PREFIX):
        return None
    return int(op[len(HEAD_PREFIX) :] or 0)
