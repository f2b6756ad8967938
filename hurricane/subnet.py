"""Standalone networks: one architecture of a space built as a plain ``nn.Module``."""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from hurricane.arch import Arch
from hurricane.dynamic import ConvBN, DynLinear
from hurricane.lutkeys import OpInstance, PairInstance, head_channels
from hurricane.ops import build_op
from hurricane.space import SearchSpace


def build_stem(space: SearchSpace) -> ConvBN:
    s = space.stem
    return ConvBN(space.in_channels, s.cout, s.kernel, s.stride, act=space.act)


class Head(nn.Module):
    """Optional 1x1 conv to ``channels``, global average pool, dropout, classifier.
    Its input width may be narrower than ``cin`` (the last layer's width choice)."""

    def __init__(self, cin: int, channels: int, classes: int, dropout: float, act: str) -> None:
        super().__init__()
        self.conv = ConvBN(cin, channels, 1, act=act) if channels else None
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.fc = DynLinear(channels or cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv is not None:
            x = self.conv(x)
        return self.fc(self.dropout(x.mean((2, 3))))


def build_head(space: SearchSpace, cin: int) -> Head:
    h = space.head
    return Head(cin, h.channels, space.classes, h.dropout, space.layers[-1].act)


class Subnet(nn.Module):
    """stem -> one block per searchable layer -> head."""

    def __init__(self, space: SearchSpace, arch: Arch) -> None:
        super().__init__()
        arch = space.validate_arch(arch)
        self.arch_str = str(arch)
        self.space_name = space.name
        self.stem = build_stem(space)
        blocks = []
        for i, ((cin, cout), op) in enumerate(zip(space.arch_channels(arch), arch.ops)):
            layer = space.layers[i]
            blocks.append(build_op(op, cin, cout, layer.stride, layer.act))
        self.blocks = nn.ModuleList(blocks)
        self.head = build_head(space, space.arch_channels(arch)[-1][1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def build_subnet(space: SearchSpace, arch: Arch | str) -> Subnet:
    """A freshly initialised standalone network for ``arch``."""
    if isinstance(arch, str):
        arch = space.parse_arch(arch)
    return Subnet(space, arch)


def instance_module(
    inst: OpInstance | PairInstance, seed: int = 0
) -> tuple[nn.Module, torch.Tensor]:
    """A standalone module and a batch-1 input for one LUT key (an op, the stem or a head).

    Weights are seeded by the key, so the same key always gives the same module (and the
    same content hash in the artifact cache)."""
    torch.manual_seed(seed + int(hashlib.sha256(inst.key.encode()).hexdigest()[:8], 16))
    if isinstance(inst, PairInstance):
        first, second = inst.first, inst.second
        pair = nn.Sequential(
            build_op(first.op, first.cin, first.cout, first.stride, first.act),
            build_op(second.op, second.cin, second.cout, second.stride, second.act),
        )
        return pair.eval(), torch.randn(1, first.cin, first.h, first.w)
    channels = head_channels(inst.op)
    if channels is not None:
        module: nn.Module = Head(inst.cin, channels, inst.cout, 0.0, inst.act)
    else:
        module = build_op(inst.op, inst.cin, inst.cout, inst.stride, inst.act)
    return module.eval(), torch.randn(1, inst.cin, inst.h, inst.w)
