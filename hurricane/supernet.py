"""The weight-sharing supernet: every candidate of every layer, one path run per step.

Each layer holds one block per candidate operator, built at the layer's widest input and
output widths; a path (an ``Arch``) picks one block per layer and a width, and narrower widths
slice the shared weights (GoldenNAS's dynamic channel scaling, Once-for-All's dynamic ops).

How far candidates share weights is a rule of ``SHARING``. ``none`` gives each operator its
own block. ``family`` gives one block to the operators of a family that differ only in kernel
and expansion (``mb_k3_e3`` ... ``mb_k7_e6``; ``ds_k3``/``ds_k5``), built at the largest of
each: a smaller kernel is the centre of the largest (Single-Path NAS's superkernel), a smaller
expansion the first hidden channels (Once-for-All's elastic depthwise blocks). Separate blocks
learn unrelated channels, so each path feeds the next layer features it has not seen; on the
demo space twelve separate candidates per layer kept a 3000-step SPOS supernet near 30%
training accuracy, where one block at random widths trains almost like a single network.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import cast

import torch
from torch import nn

from hurricane.arch import Arch
from hurricane.costs import instance_cost
from hurricane.dynamic import load_active_weights
from hurricane.errors import UserError
from hurricane.lutkeys import OpInstance
from hurricane.opnames import OpSpec, parse_op
from hurricane.ops import build_op
from hurricane.space import SearchSpace
from hurricane.subnet import Subnet, build_head, build_stem

# Which candidates of a layer share one block: operators with the same key do.
SHARING: dict[str, Callable[[OpSpec], object]] = {
    "none": lambda spec: spec.name,
    "family": lambda spec: replace(spec, kernel=None, expansion=None),
}
DEFAULT_SHARING = "none"


def check_sharing(share: str) -> str:
    if share not in SHARING:
        raise ValueError(f"weight sharing {share!r} is not one of {', '.join(SHARING)}")
    return share


def saved_sharing(saved: dict, source: str) -> str:
    """The sharing a saved supernet (a loaded ``supernet.pt``) was trained with; files from
    before sharing existed have ``none``."""
    config = saved.get("config")
    share = config.get("share", "none") if isinstance(config, dict) else "none"
    if share not in SHARING:
        raise UserError(f"{source}: config.share {share!r} is not one of {', '.join(SHARING)}")
    return share


def _shared_spec(specs: list[OpSpec]) -> OpSpec:
    """The block a group of operators shares: the largest kernel and expansion of any."""
    kernels = [s.kernel for s in specs if s.kernel is not None]
    expansions = [s.expansion for s in specs if s.expansion is not None]
    return replace(
        specs[0],
        kernel=max(kernels) if kernels else None,
        expansion=max(expansions) if expansions else None,
    )


class Supernet(nn.Module):
    def __init__(self, space: SearchSpace, share: str = DEFAULT_SHARING) -> None:
        super().__init__()
        self.space, self.share = space, check_sharing(share)
        key = SHARING[share]
        self.stem = build_stem(space)
        self.choices = nn.ModuleList()
        # Per layer, per operator: (its block's index, the kernel and expansion it runs at).
        self._index: list[dict[str, tuple[int, int | None, int | None]]] = []
        for i, layer in enumerate(space.layers):
            cin = max(space.in_channel_choices(i))
            cout = max(layer.channels(space.channel_divisor))
            groups: dict[object, list[str]] = {}
            for op in layer.ops:
                groups.setdefault(key(parse_op(op)), []).append(op)
            blocks, index = nn.ModuleList(), {}
            for j, ops in enumerate(groups.values()):
                specs = [parse_op(op) for op in ops]
                blocks.append(
                    build_op(_shared_spec(specs), cin, cout, layer.stride, layer.act, dynamic=True)
                )
                index.update({op: (j, sp.kernel, sp.expansion) for op, sp in zip(ops, specs)})
            self.choices.append(blocks)
            self._index.append(index)
        self.head = build_head(space, max(space.layers[-1].channels(space.channel_divisor)))
        self._paths: dict[Arch, list[tuple[int, int, int | None, int | None]]] = {}

    def _layer_choices(self) -> Iterable[nn.ModuleList]:
        """Each layer's candidate blocks: ``choices`` holds one ModuleList per layer."""
        return cast(Iterable[nn.ModuleList], self.choices)

    def _path(self, arch: Arch) -> list[tuple[int, int, int | None, int | None]]:
        """(block index, output channels, kernel, expansion) per layer; validated once per
        distinct arch."""
        path = self._paths.get(arch)
        if path is None:
            arch = self.space.validate_arch(arch)
            chans = self.space.arch_channels(arch)
            path = []
            for i, (op, (_, cout)) in enumerate(zip(arch.ops, chans)):
                j, kernel, expansion = self._index[i][op]
                path.append((j, cout, kernel, expansion))
            if len(self._paths) >= 4096:  # random paths rarely repeat: keep the cache small
                self._paths.clear()
            self._paths[arch] = path
        return path

    def forward(self, x: torch.Tensor, arch: Arch) -> torch.Tensor:
        x = self.stem(x)
        for choices, (j, cout, kernel, expansion) in zip(self._layer_choices(), self._path(arch)):
            x = choices[j](x, cout, kernel, expansion)
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
        for block, choices, (j, *_) in zip(sub.blocks, self._layer_choices(), self._path(arch)):
            load_active_weights(block, choices[j])
        load_active_weights(sub.head, self.head)
        sub.train(self.training)
        return sub

    def path_parameters(self, arch: Arch) -> list[nn.Parameter]:
        """The parameters a path touches (stem, its chosen blocks, head)."""
        params = list(self.stem.parameters()) + list(self.head.parameters())
        for choices, (j, *_) in zip(self._layer_choices(), self._path(arch)):
            params.extend(choices[j].parameters())
        return params
