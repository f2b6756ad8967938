"""Per-block cost: the convolutions each operator family is made of, and what they cost.

One description of every block's shape (which convolutions, at which widths, strides and
sizes) gives multiply-adds, parameters and bytes moved to every caller: the operator
predictor's features, stage one's capacity, the supernet's biggest path and the whole-model
predictor. ``hurricane.ops`` builds the same blocks as modules; ``tests/test_ops.py`` runs each
one and checks these convolutions against the ones it actually executes, so the two cannot
drift apart.

What is counted: convolution (and classifier) weights and the work and activations of each
convolution; batch norm, biases and activations are left out. A squeeze-excite is one term of
``2 * c * (c // 4)`` on top, an estimate: the module's bottleneck is ``make_divisible(c / 4, 8)``
with biases. Changing either would change every predictor's features and stage one's scores.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from hurricane.lutkeys import OpInstance, head_channels
from hurricane.opnames import OpNameError, parse_op


class Conv(NamedTuple):
    """One convolution of a block: ``h`` x ``w`` is its input size; ``groups`` equals ``cin``
    for a depthwise conv. A classifier is a 1x1 conv on a 1x1 input."""

    cin: int
    cout: int
    kernel: int
    stride: int
    groups: int
    h: int
    w: int


class Cost(NamedTuple):
    macs: float  # multiply-adds
    params: float  # convolution and classifier weights
    bytes_moved: float  # at fp32: every conv's input and output activations, and the weights


def out_size(size: int, stride: int) -> int:
    """A 'same'-padded conv's output size: ceil(size / stride)."""
    return -(-size // stride)


def op_fields(op: str) -> dict[str, Any]:
    """``family``, ``kernel``, ``expansion``, ``groups``, ``se`` and ``act`` of an operator name:
    parsed from a Hurricane name or a head (``head_cC``: its 1x1 channels go in ``expansion``);
    for any other tool's name, its first token is the family and the rest are defaults."""
    fields: dict[str, Any] = {
        "family": op.split("_")[0],
        "kernel": 1,
        "expansion": 1,
        "groups": 1,
        "se": False,
        "act": None,
    }
    channels = head_channels(op)
    if channels is not None:
        return {**fields, "family": "head", "expansion": channels}
    try:
        spec = parse_op(op)
    except OpNameError:
        return fields
    return {
        "family": spec.family,
        "kernel": spec.kernel or 1,
        "expansion": spec.expansion or 1,
        "groups": spec.groups,
        "se": spec.se,
        "act": spec.act,
    }


@dataclass(frozen=True)
class Block:
    """One operator at one shape, as the cost formulas see it. For ``head``, ``expansion`` is
    its 1x1 conv's channels (0 or 1: none) and ``cout`` the classes; a family not listed here
    (another tool's ``dwconv``, ``fc``) is one ``kernel`` x ``kernel`` grouped convolution."""

    family: str
    cin: int
    cout: int
    h: int
    w: int
    stride: int = 1
    kernel: int = 1
    expansion: int = 1
    groups: int = 1
    se: bool = False

    @classmethod
    def of(cls, op: str, cin: int, cout: int, h: int, w: int, stride: int = 1) -> Block:
        """The block an operator name stands for at this shape."""
        f = op_fields(op)
        return cls(
            f["family"], cin, cout, h, w, stride, f["kernel"], f["expansion"], f["groups"], f["se"]
        )

    def convs(self) -> list[Conv]:
        """The convolutions the block runs (squeeze-excite aside), in the module's order."""
        fam, cin, cout, k, e, g = (
            self.family,
            self.cin,
            self.cout,
            self.kernel,
            self.expansion,
            self.groups,
        )
        s, h, w = self.stride, self.h, self.w
        ho, wo = out_size(h, s), out_size(w, s)
        if fam == "mb":
            hid = cin * e
            return [
                Conv(cin, hid, 1, 1, g, h, w),
                Conv(hid, hid, k, s, hid, h, w),
                Conv(hid, cout, 1, 1, g, ho, wo),
            ]
        if fam == "ds":
            return [Conv(cin, cin, k, s, cin, h, w), Conv(cin, cout, 1, 1, 1, ho, wo)]
        if fam == "fmb":
            hid = cin * e
            return [Conv(cin, hid, k, s, 1, h, w), Conv(hid, cout, 1, 1, 1, ho, wo)]
        if fam in ("shuffle", "shufflex"):
            return self._shuffle_convs()
        if fam == "res":
            convs = [Conv(cin, cout, k, s, 1, h, w), Conv(cout, cout, k, 1, 1, ho, wo)]
            if s != 1 or cin != cout:
                convs.append(Conv(cin, cout, 1, s, 1, h, w))
            return convs
        if fam == "skip":
            return [] if s == 1 and cin == cout else [Conv(cin, cout, 1, s, 1, h, w)]
        if fam == "head":
            # A 1x1 conv to ``expansion`` channels (0: none), global pooling, a classifier.
            mid = e if e > 1 else 0
            convs = [Conv(cin, mid, 1, 1, 1, h, w)] if mid else []
            return [*convs, Conv(mid or cin, cout, 1, 1, 1, 1, 1)]
        # conv, and any family another tool names: one k x k grouped convolution
        return [Conv(cin, cout, k, s, max(1, min(g, cin, cout)), h, w)]

    def _shuffle_convs(self) -> list[Conv]:
        """ShuffleNetV2 (``shuffle``) and its Xception-style unit (``shufflex``, 3x3): at
        stride 1 ``min(cin // 2, cout // 2)`` channels pass through; at stride 2 a depthwise
        projection branch runs beside the main one."""
        cin, cout, s, h, w = self.cin, self.cout, self.stride, self.h, self.w
        ho, wo = out_size(h, s), out_size(w, s)
        kk = 3 if self.family == "shufflex" else self.kernel
        if s == 1:
            keep = min(cin // 2, cout // 2)
            bi, bo = cin - keep, cout - keep
            convs = []
        else:
            bi, bo = cin, cout - cout // 2
            convs = [Conv(cin, cin, kk, s, cin, h, w), Conv(cin, cout // 2, 1, 1, 1, ho, wo)]
        if self.family == "shufflex":
            return [
                *convs,
                Conv(bi, bi, 3, s, bi, h, w),
                Conv(bi, bo, 1, 1, 1, ho, wo),
                Conv(bo, bo, 3, 1, bo, ho, wo),
                Conv(bo, bo, 1, 1, 1, ho, wo),
                Conv(bo, bo, 3, 1, bo, ho, wo),
                Conv(bo, bo, 1, 1, 1, ho, wo),
            ]
        return [
            *convs,
            Conv(bi, bo, 1, 1, 1, h, w),
            Conv(bo, bo, kk, s, bo, h, w),
            Conv(bo, bo, 1, 1, 1, ho, wo),
        ]

    def se_channels(self) -> int:
        """Channels of the block's squeeze-excite (0 without one)."""
        if not self.se:
            return 0
        fam, cin, cout = self.family, self.cin, self.cout
        if fam == "mb" or fam == "fmb":
            return cin * self.expansion
        if fam == "ds":
            return cin
        if fam in ("shuffle", "shufflex"):
            keep = min(cin // 2, cout // 2) if self.stride == 1 else cout // 2
            return cout - keep
        return 0  # the other families take no squeeze-excite

    def cost(self) -> Cost:
        flops = params = moved = 0.0
        for ci, co, k, s, g, h, w in self.convs():
            ho, wo = out_size(h, s), out_size(w, s)
            p = co * (ci // max(g, 1) or 1) * k * k
            flops += p * ho * wo
            params += p
            moved += ci * h * w + co * ho * wo
        se = self.se_channels()
        if se:
            r = max(1, se // 4)
            flops += 2 * se * r
            params += 2 * se * r
        return Cost(flops, params, 4.0 * (moved + params))


def instance_cost(inst: OpInstance) -> Cost:
    """The cost of one LUT key's operator."""
    return Block.of(inst.op, inst.cin, inst.cout, inst.h, inst.w, inst.stride).cost()
