"""The weight-sharing supernet: every candidate of every layer, one path run per step.

Each layer holds one block per candidate operator, built at the layer's widest input and
output widths; a path (an ``Arch``) picks one block per layer and a width, and narrower widths
slice the shared weights (GoldenNAS's dynamic channel scaling, Once-for-All's dynamic ops).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from typing import cast

import torch
from torch import nn

from hurricane.arch import Arch
from hurricane.costs import instance_cost
from hurricane.dynamic import load_active_weights
from hurricane.lutkeys import OpInstance
from hurricane.ops import build_op
from hurricane.space import SearchSpace
from hurricane.subnet import Subnet, build_head, build_stem


class Supernet(nn.Module):
    def __init__(self, space: SearchSpace) -> None:
        super().__init__()
        self.space = space
        self.stem = build_stem(space)
        self.choices = nn.ModuleList()
        for i, layer in enumerate(space.layers):
            cin = max(space.in_channel_choices(i))
            cout = max(layer.channels(space.channel_divisor))
            self.choices.append(
                nn.ModuleList(
                    build_op(op, cin, cout, layer.stride, layer.act, dynamic=True)
                    for op in layer.ops
                )
            )
        self.head = build_head(space, max(space.layers[-1].channels(space.channel_divisor)))
        self._index = [{op: j for j, op in enumerate(layer.ops)} for layer in space.layers]
        self._paths: dict[Arch, list[tuple[int, int]]] = {}

    def _layer_choices(self) -> Iterable[nn.ModuleList]:
        """Each layer's candidate blocks: ``choices`` holds one ModuleList per layer."""
        return cast(Iterable[nn.ModuleList], self.choices)

    def _path(self, arch: Arch) -> list[tuple[int, int]]:
        """(choice index, output channels) per layer; validated once per distinct arch."""
        path = self._paths.get(arch)
        if path is None:
            arch = self.space.validate_arch(arch)
            chans = self.space.arch_channels(arch)
            path = [
                (self._index[i][op], cout) for i, (op, (_, cout)) in enumerate(zip(arch.ops, chans))
            ]
            if len(self._paths) >= 4096:  # random paths rarely repeat: keep the cache small
                self._paths.clear()
            self._paths[arch] = path
        return path

    def forward(self, x: torch.Tensor, arch: Arch) -> torch.Tensor:
        x = self.stem(x)
        for choices, (j, cout) in zip(self._layer_choices(), self._path(arch)):
            x = choices[j](x, cout)
        return self.head(x)

    def sample(
        self,
        rng: random.Random,
        layers: list[int] | None = None,
        fixed: Arch | None = None,
        allowed: Sequence[Sequence[str]] | None = None,
    ) -> Arch:
        return self.space.sample_arch(rng, layers, fixed, allowed)

    def largest(self, layers: list[int] | None = None, fixed: Arch | None = None) -> Arch:
        """The biggest path: on each sampled layer the op with the most multiply-adds at the
        widest width (the teacher of in-place distillation); other layers from ``fixed``."""
        return self._extreme(max, layers, fixed)

    def smallest(self, layers: list[int] | None = None, fixed: Arch | None = None) -> Arch:
        """The sandwich rule's other end: the fewest multiply-adds at the narrowest width."""
        return self._extreme(min, layers, fixed)

    def _extreme(self, pick, layers: list[int] | None, fixed: Arch | None) -> Arch:
        space = self.space
        base = fixed or space.default_arch()
        ops, widths = list(base.ops), list(base.widths)
        for i, layer in enumerate(space.layers):
            if layers is not None and i not in layers:
                continue
            h, w = space.input_shape(i)
            cin, cout = max(space.in_channel_choices(i)), max(layer.channels(space.channel_divisor))
            insts = [
                OpInstance(op, cin, cout, h, w, layer.stride, space.layer_act(i, op))
                for op in layer.ops
            ]
            one = pick(insts, key=lambda inst: instance_cost(inst).macs)
            ops[i], widths[i] = one.op, pick(layer.widths)
        return Arch(tuple(ops), tuple(widths))

    def extract(self, arch: Arch | str) -> Subnet:
        """A standalone network for ``arch`` carrying this supernet's (sliced) weights."""
        if isinstance(arch, str):
            arch = self.space.parse_arch(arch)
        arch = self.space.validate_arch(arch)
        with torch.device(next(self.parameters()).device):  # built where the weights are
            sub = Subnet(self.space, arch)
        load_active_weights(sub.stem, self.stem)
        for block, choices, (j, _) in zip(sub.blocks, self._layer_choices(), self._path(arch)):
            load_active_weights(block, choices[j])
        load_active_weights(sub.head, self.head)
        sub.train(self.training)
        return sub

    def path_parameters(self, arch: Arch) -> list[nn.Parameter]:
        """The parameters a path touches (stem, its chosen blocks, head)."""
        params = list(self.stem.parameters()) + list(self.head.parameters())
        for choices, (j, _) in zip(self._layer_choices(), self._path(arch)):
            params.extend(choices[j].parameters())
        return params
