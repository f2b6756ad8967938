"""GoldenNets (GoldenNAS, Luo et al. 2021): one network that can drop blocks at run time.

A *depth variant* of an architecture skips trailing blocks of a stage that keep their input's
shape (stride 1, as many channels out as in), as Once-for-All's elastic depth does. A variant
is itself an architecture of the space, with ``skip`` (the identity where shapes match) in
place of each dropped block, so every variant exports, times and bundles like any final model.

Stages are the space's: a new stage starts at a layer with a stride or a different channel
count from the one before. A variant is named by what it drops, stage numbers from 1:
``full``, ``s2-1`` (stage 2 drops its last block), ``s2-1+s3-2``.

``AdaptiveNet`` holds one set of weights for every variant and, with adaptive batch
normalization, one set of batch-norm statistics per variant (affine parameters shared unless
``per_depth_affine``), switched with the variant: dropping a block shifts every later layer's
activations, so one set of statistics fits no variant well. Training (``hurricane.train``)
samples variants each step, the full depth, the shallowest and a random one (the sandwich
rule), and with self-distillation the full depth's soft outputs teach the others. Chosen here,
as the paper gives no exact rule: per-depth statistics in every batch-norm layer (the stem's
included, whose statistics are the same for every variant), recalibrated per variant on
training batches after training; and the sandwich's random member drawn from the variants
that are neither the full depth nor the shallowest.
"""

from __future__ import annotations

import copy
import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from hurricane.arch import Arch
from hurricane.errors import UserError
from hurricane.space import SearchSpace
from hurricane.subnet import Subnet

FULL = "full"
ADAPTIVE_FILE = "adaptive.pt"  # every variant's weights and statistics, one file
# Each stage may drop up to this many trailing shape-keeping blocks by default.
DEFAULT_MAX_DROP = 2
# More variants than this is more exports and device timings than a deployment switches
# between; list the wanted ones instead.
MAX_VARIANTS = 16


@dataclass(frozen=True)
class AdaptiveSettings:
    """How a GoldenNet is fine-tuned: the one set of defaults the CLI and pipelines share."""

    depths: str = "default"  # a number of blocks per stage, or comma-separated variant names
    adaptive_bn: bool = True
    per_depth_affine: bool = False
    distill: bool = True  # self-knowledge distillation from the full depth
    kd_weight: float = 0.5
    kd_temperature: float = 1.0

    def train_fields(self) -> dict[str, Any]:
        """The ``TrainConfig`` fields: the sandwich rule samples the depths."""
        return {
            "depths": self.depths,
            "adaptive_bn": self.adaptive_bn,
            "per_depth_affine": self.per_depth_affine,
            "distill": self.distill,
            "kd_weight": self.kd_weight,
            "kd_temperature": self.kd_temperature,
            "sandwich": True,
        }


class DepthError(UserError):
    """A depth list the architecture cannot offer."""


@dataclass(frozen=True)
class Variant:
    """One depth of a GoldenNet: the layers it skips and the architecture that leaves."""

    name: str
    dropped: tuple[int, ...]
    arch: Arch

    @property
    def blocks(self) -> int:
        return sum(op != "skip" for op in self.arch.ops)


def stages(space: SearchSpace) -> list[list[int]]:
    """The space's layers grouped into stages (a stride or a channel change starts one)."""
    out: list[list[int]] = []
    prev = space.stem.cout
    for i, layer in enumerate(space.layers):
        if not out or layer.stride != 1 or layer.cout != prev:
            out.append([])
        out[-1].append(i)
        prev = layer.cout
    return out


def droppable(space: SearchSpace, arch: Arch) -> list[list[int]]:
    """Per stage, the trailing blocks ``arch`` can drop: stride 1 and as many channels out
    as in on this architecture's widths (last one first; skips are not counted)."""
    chans = space.arch_channels(arch)
    out = []
    for layers in stages(space):
        run: list[int] = []
        for i in reversed(layers):
            cin, cout = chans[i]
            if space.layers[i].stride != 1 or cin != cout:
                break
            if arch.ops[i] != "skip":  # a skip is dropped already: look past it
                run.append(i)
        out.append(run)
    return out


def _name(drops: dict[int, int]) -> str:
    parts = [f"s{s + 1}-{n}" for s, n in sorted(drops.items()) if n]
    return "+".join(parts) or FULL


def _parse_name(name: str) -> dict[int, int]:
    """``s2-1+s3-2`` -> {stage index: blocks}; raises ValueError on bad text."""
    if name == FULL:
        return {}
    drops: dict[int, int] = {}
    for part in name.split("+"):
        stage, _, count = part.strip().partition("-")
        if not stage.startswith("s") or not stage[1:].isdigit() or not count.isdigit():
            raise ValueError(part)
        s, n = int(stage[1:]) - 1, int(count)
        if s < 0 or n < 1 or s in drops:
            raise ValueError(part)
        drops[s] = n
    return drops


def _drops(name: str, n_stages: int) -> dict[int, int]:
    """A variant name's {stage index: blocks}, or a DepthError saying what is wrong."""
    try:
        drops = _parse_name(name)
    except ValueError:
        raise DepthError(
            f"depths: {name!r}: expected 'full' or stages to drop, like 's2-1' or "
            "'s2-1+s3-2' (stage numbers from 1, blocks dropped from its end)"
        ) from None
    for s in drops:
        if s >= n_stages:
            raise DepthError(f"depths: {name!r}: the space has {n_stages} stages, not {s + 1}")
    return drops


def _blocks_text(space: SearchSpace, arch: Arch, stage: list[int], can: list[int]) -> str:
    if can:
        layers = ", ".join(f"layer {i} ({arch.ops[i]})" for i in sorted(can))
        return f"can drop {len(can)} block(s): {layers}"
    chans = space.arch_channels(arch)
    last = stage[-1]
    cin, cout = chans[last]
    if arch.ops[last] == "skip":
        why = f"layer {last} is already a skip"
    elif space.layers[last].stride != 1:
        why = f"layer {last} has stride {space.layers[last].stride}"
    else:
        why = f"layer {last} changes the shape ({cin} -> {cout} channels)"
    return f"can drop no block ({why})"


def variants(
    space: SearchSpace, arch: Arch, depths: int | Sequence[str] | None = None
) -> list[Variant]:
    """The depth variants of ``arch``, deepest first, ``full`` always first.

    ``depths``: None for the default (every stage may drop its last one or two droppable
    blocks, in every combination), a number for another such limit, or a list of variant
    names (``s2-1``, ``s2-1+s3-1``). Raises ``DepthError`` naming the stage and the blocks it
    can drop when a name asks for more."""
    arch = space.validate_arch(arch)
    can = droppable(space, arch)
    all_stages = stages(space)
    if depths is None or isinstance(depths, int):
        limit = DEFAULT_MAX_DROP if depths is None else depths
        if isinstance(limit, bool) or limit < 0:
            raise DepthError(f"depths: {limit!r}: give a number of blocks >= 0 or variant names")
        ranges = [range(min(limit, len(c)) + 1) for c in can]
        wanted = [{s: n for s, n in enumerate(combo) if n} for combo in itertools.product(*ranges)]
    else:
        wanted = [{}]
        for name in depths:
            drops = _drops(str(name), len(all_stages))
            for s, n in drops.items():
                if n > len(can[s]):
                    raise DepthError(
                        f"depths: {name!r}: stage {s + 1} (layers {all_stages[s][0]}-"
                        f"{all_stages[s][-1]}) {_blocks_text(space, arch, all_stages[s], can[s])}"
                    )
            wanted.append(drops)
    out: dict[str, Variant] = {}
    for drops in wanted:
        dropped = tuple(sorted(i for s, n in drops.items() for i in can[s][:n]))
        ops = list(arch.ops)
        for i in dropped:
            if "skip" not in space.layers[i].ops:
                raise DepthError(
                    f"depths: {_name(drops)}: layer {i} has no 'skip' candidate in space "
                    f"{space.name!r}, so a variant without its block is not an architecture "
                    "of the space; add 'skip' to its ops"
                )
            ops[i] = "skip"
        out.setdefault(_name(drops), Variant(_name(drops), dropped, Arch(tuple(ops), arch.widths)))
    found = sorted(out.values(), key=lambda v: (-v.blocks, v.name != FULL, v.name))
    if len(found) == 1:
        text = "; ".join(
            f"stage {s + 1} {_blocks_text(space, arch, st, can[s])}"
            for s, st in enumerate(all_stages)
        )
        raise DepthError(f"depths: {arch} has no block to drop ({text})")
    if len(found) > MAX_VARIANTS:
        raise DepthError(
            f"depths: {len(found)} variants, more than {MAX_VARIANTS}; give a smaller number "
            "or list the variants wanted (like 's2-1', 's2-1+s3-1')"
        )
    return found


def check_depths(space: SearchSpace, text: str) -> None:
    """What can be checked before an architecture is chosen: each name asks a stage for no
    more blocks than follow its first (the only ones that can keep its shape)."""
    depths = None if text == "default" else parse_depths(text)
    if not isinstance(depths, list):
        return
    all_stages = stages(space)
    for name in depths:
        for s, n in _drops(name, len(all_stages)).items():
            st = all_stages[s]
            can = [i for i in st[1:] if "skip" in space.layers[i].ops]
            if n > len(can):
                which = ", ".join(str(i) for i in can) or "none"
                raise DepthError(
                    f"depths: {name!r}: stage {s + 1} (layers {st[0]}-{st[-1]}) can drop at most "
                    f"{len(can)} block(s) (layers {which}: the first changes the shape)"
                )


def parse_depths(text: str | None) -> int | list[str] | None:
    """The CLI's ``--depths``: a number of blocks per stage, or comma-separated names."""
    if text is None or not text.strip() or text.strip() == "default":
        return None
    text = text.strip()
    if text.isdigit():
        return int(text)
    return [part.strip() for part in text.split(",") if part.strip()]


class DepthBN(nn.Module):
    """A batch-norm layer with one set of running statistics per variant (and affine
    parameters per variant, or one shared set); ``active`` picks the set."""

    def __init__(self, bn: nn.BatchNorm2d, sets: int, per_depth_affine: bool) -> None:
        super().__init__()
        self.bns = nn.ModuleList(copy.deepcopy(bn) for _ in range(sets))
        if not per_depth_affine:
            first = self.bns[0]
            for other in self.bns[1:]:
                other.weight, other.bias = first.weight, first.bias  # tied: one Parameter
        self.active = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bns[self.active](x)


class AdaptiveNet(nn.Module):
    """One network, every depth variant of it: the interface ``hurricane.train.Trainer``
    samples paths through (``sample``, ``largest``, ``smallest``, ``extract``), with
    variants as the paths."""

    def __init__(
        self,
        space: SearchSpace,
        net: Subnet,
        depth_variants: Sequence[Variant],
        adaptive_bn: bool = True,
        per_depth_affine: bool = False,
    ) -> None:
        super().__init__()
        self.space = space
        self.variants = list(depth_variants)
        self.adaptive_bn = adaptive_bn
        self.per_depth_affine = per_depth_affine
        self.net = copy.deepcopy(net)
        sets = len(self.variants) if adaptive_bn else 1
        for module in list(self.net.modules()):
            for child_name, child in list(module.named_children()):
                if isinstance(child, nn.BatchNorm2d):
                    setattr(module, child_name, DepthBN(child, sets, per_depth_affine))
        self._index = {v.arch: i for i, v in enumerate(self.variants)}

    def index(self, arch: Arch) -> int:
        try:
            return self._index[arch]
        except KeyError:
            names = ", ".join(v.name for v in self.variants)
            raise UserError(f"{arch} is not one of this GoldenNet's variants ({names})") from None

    def set_depth(self, i: int) -> None:
        j = i if self.adaptive_bn else 0
        for m in self.net.modules():
            if isinstance(m, DepthBN):
                m.active = j

    def forward(self, x: torch.Tensor, arch: Arch | None = None) -> torch.Tensor:
        i = 0 if arch is None else self.index(arch)
        self.set_depth(i)
        dropped = self.variants[i].dropped
        x = self.net.stem(x)
        for j, block in enumerate(self.net.blocks):
            if j not in dropped:
                x = block(x)
        return self.net.head(x)

    # --- the path interface the trainer uses ---------------------------------------------
    def sample(self, rng: random.Random, layers=None, fixed=None, allowed=None) -> Arch:  # noqa: ARG002
        """A random variant other than the full depth and the shallowest (any variant when
        there are only those)."""
        middle = self.variants[1:-1] or self.variants
        return middle[rng.randrange(len(middle))].arch

    def largest(self, layers=None, fixed=None) -> Arch:  # noqa: ARG002
        return self.variants[0].arch

    def smallest(self, layers=None, fixed=None) -> Arch:  # noqa: ARG002
        return self.variants[-1].arch

    def extract(self, arch: Arch | str) -> Subnet:
        """The variant as a standalone network of the space, with its own statistics."""
        if isinstance(arch, str):
            arch = self.space.parse_arch(arch)
        i = self.index(self.space.validate_arch(arch))
        self.set_depth(i)
        with torch.device(next(self.parameters()).device):
            sub = Subnet(self.space, arch)
        mine = f".bns.{self._set(i)}."
        own = {
            k.replace(mine, "."): v
            for k, v in self.net.state_dict().items()
            if ".bns." not in k or mine in k
        }
        wanted = sub.state_dict()
        sub.load_state_dict({k: v for k, v in own.items() if k in wanted})
        sub.train(self.training)
        return sub

    def _set(self, i: int) -> int:
        return i if self.adaptive_bn else 0

    def load_variant_bn(self, i: int, sub: Subnet) -> None:
        """Copy a standalone variant's batch-norm statistics (recalibrated) back into set
        ``i``: ``recalibrate`` recalibrates each variant as a plain network."""
        j = self._set(i)
        mine = dict(self.net.named_modules())
        with torch.no_grad():
            for name, m in sub.named_modules():
                if isinstance(m, nn.BatchNorm2d) and isinstance(mine.get(name), DepthBN):
                    bn = mine[name].bns[j]
                    bn.running_mean.copy_(m.running_mean)
                    bn.running_var.copy_(m.running_var)
                    bn.num_batches_tracked.copy_(m.num_batches_tracked)


def recalibrate_variants(
    net: AdaptiveNet,
    data,
    batches: int,
    batch_size: int,
    seed: int,
    compute=None,
    workers: int = 0,
) -> None:
    """Adaptive BN after training: each variant's own statistics recomputed on training
    batches as that variant runs; with one shared set, the full depth's."""
    from hurricane.evaluate import recalibrate_bn

    for i, v in enumerate(net.variants if net.adaptive_bn else net.variants[:1]):
        sub = net.extract(v.arch)
        recalibrate_bn(sub, data, batches, batch_size, seed, compute, workers)
        net.load_variant_bn(i, sub)


def checkpoint(net: AdaptiveNet, arch: Arch) -> dict:
    """What ``adaptive.pt`` holds: tensors and plain values only, like every model file."""
    return {
        "space": net.space.name,
        "arch": str(arch),
        "depths": [
            {"name": v.name, "arch": str(v.arch), "dropped": list(v.dropped)} for v in net.variants
        ],
        "adaptive_bn": net.adaptive_bn,
        "per_depth_affine": net.per_depth_affine,
        "model": {k: t.float().cpu() for k, t in net.state_dict().items()},
    }


def load_adaptive(space: SearchSpace, path) -> AdaptiveNet:
    """The GoldenNet an ``adaptive.pt`` holds."""
    from hurricane.train import load_tensors

    saved = load_tensors(path, "GoldenNet (adaptive.pt)")
    try:
        arch = space.parse_arch(saved["arch"])
        vs = [
            Variant(d["name"], tuple(d["dropped"]), space.parse_arch(d["arch"]))
            for d in saved["depths"]
        ]
    except (KeyError, TypeError) as exc:
        raise UserError(f"{path}: not a GoldenNet file Hurricane wrote (no {exc})") from None
    bn, affine = saved["adaptive_bn"], saved["per_depth_affine"]
    net = AdaptiveNet(space, Subnet(space, arch), vs, bn, affine)
    try:
        net.load_state_dict(saved["model"])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0][:200]
        raise UserError(f"{path}: its weights do not fit {arch} ({first})") from None
    return net
