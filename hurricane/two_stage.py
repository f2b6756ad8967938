"""HURRICANE's two-stage supernet training and search, and single-stage SPOS beside it.

Stage A samples only the later layers (``split`` and after; the earlier ones fixed) and a
constrained search fixes them; stage B continues from stage A's weights, samples the earlier
layers with the later ones fixed, and searches again. Each stage trains a supernet over half
the layers, which is where the saving in supernet steps comes from. Every part is resumable:
training from its checkpoint, each search from its state file, and a finished part is read
back instead of being run again.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

from hurricane.arch import Arch
from hurricane.compute import Compute, Dist, compute_for
from hurricane.data import DataSplits, load_data
from hurricane.errors import UserError
from hurricane.evaluate import accuracy, recalibrate_bn
from hurricane.loader import default_workers
from hurricane.search import EvolutionSearch, Latency, SearchConfig
from hurricane.space import SearchSpace
from hurricane.space_file import load_space
from hurricane.supernet import Supernet, saved_sharing
from hurricane.train import TrainConfig, Trainer, load_tensors


class SupernetFitness:
    """Validation accuracy of a path with inherited weights, after recomputing its
    batch-norm statistics on ``bn_batches`` training batches (GoldenNAS's adaptive BN),
    computed on ``compute``'s torch device (the supernet is moved there)."""

    def __init__(
        self,
        net: Supernet,
        data: DataSplits,
        bn_batches: int = 10,
        batch_size: int = 256,
        seed: int = 0,
        compute: Compute | None = None,
        workers: int = 0,
    ) -> None:
        self.compute = compute or Compute()
        self.net = cast(Supernet, self.compute.module(net))
        self.data, self.workers = data, workers
        self.bn_batches, self.batch_size, self.seed = bn_batches, batch_size, seed

    def __call__(self, arch: Arch) -> float:
        c, w = self.compute, self.workers
        sub = c.module(self.net.extract(arch))
        recalibrate_bn(sub, self.data.train, self.bn_batches, self.batch_size, self.seed, c, w)
        return accuracy(sub, self.data.val, compute=c, workers=w)


def fitness_for(net: Supernet, data: DataSplits, cfg: TrainConfig, seed: int) -> SupernetFitness:
    """The search's fitness on the torch device, precision and loader ``cfg`` trains with."""
    compute = compute_for(cfg.torch_device, cfg.precision, cfg.channels_last)
    Dist(compute)  # under torchrun: the group the search shares its evaluations over
    workers = default_workers() if cfg.workers is None else cfg.workers
    return SupernetFitness(net, data, cfg.bn_batches, seed=seed, compute=compute, workers=workers)


def load_supernet(space: SearchSpace, path: str | Path) -> Supernet:
    """A trained ``supernet.pt`` of ``space``; tensors only (``train.load_tensors``). Its
    weight sharing is the one its training recorded (files from before: ``none``)."""
    obj = load_tensors(path, "supernet")
    net = Supernet(space, saved_sharing(obj, str(path)))
    try:
        net.load_state_dict(obj["model"])
    except RuntimeError as exc:  # another space's supernet: missing or misshapen weights
        first = str(exc).strip().splitlines()[0][:200]
        raise UserError(f"{path}: not a supernet of space {space.name!r} ({first})") from None
    return net.eval()


def data_for(cfg: TrainConfig, space: SearchSpace) -> DataSplits:
    return load_data(
        cfg.data,
        space.resolution,
        space.in_channels,
        space.classes,
        cfg.val_fraction,
        train_limit=cfg.train_limit,
        eval_limit=cfg.eval_limit,
    )


def _stage(
    cfg: TrainConfig,
    space: SearchSpace,
    data: DataSplits,
    latency: Latency,
    search: SearchConfig,
    out: Path,
    min_latency: Callable[..., tuple[float, Arch]] | None,
) -> dict[str, Any]:
    trainer = Trainer(cfg, space, data)
    summary = trainer.train()
    if cfg.shrink_every:
        search = replace(search, allowed=summary["allowed_ops"])
    # The trained weights, as every rank holds them (only rank 0 wrote supernet.pt).
    net = trainer.net.eval()
    fitness = SupernetFitness(
        net, data, cfg.bn_batches, seed=cfg.seed, compute=trainer.compute, workers=trainer.workers
    )
    fixed = space.parse_arch(search.fixed) if search.fixed else None
    # A budget too low for this stage is too low given its fixed layers, not the whole space.
    stage_min = (lambda: min_latency(search.layers, fixed)) if min_latency else None
    result = EvolutionSearch(space, latency, fitness, search, out, min_latency=stage_min).run()
    result["supernet_steps"] = summary["steps"]
    result["supernet_seconds"] = summary["train_seconds"]
    return result


def single_stage(
    cfg: TrainConfig,
    latency: Latency,
    search: SearchConfig,
    out: str | Path,
    min_latency: Callable[[], tuple[float, Arch]] | None = None,
) -> dict[str, Any]:
    """SPOS: one supernet over every layer, one search."""
    out = Path(out)
    space = load_space(cfg.space)
    data = data_for(cfg, space)
    cfg = replace(cfg, out=str(out / "supernet"), sample_layers=None, fixed=None)
    res = _stage(
        cfg,
        space,
        data,
        latency,
        replace(search, layers=None, fixed=None),
        out / "search",
        min_latency,
    )
    result = {
        "arch": res["best"],
        "fitness": res["fitness"],
        "latency_ms": res["latency_ms"],
        "supernet_steps": res["supernet_steps"],
        "supernet_seconds": res["supernet_seconds"],
        "search": res,
    }
    (out / "result.json").write_text(json.dumps(result, indent=1))
    return result


def stage_a_config(
    cfg: TrainConfig,
    space: SearchSpace,
    split: int,
    steps: int,
    out: str | Path,
    fixed: Arch | None = None,
) -> TrainConfig:
    """Stage A's training: layers ``split..`` sampled, the earlier ones fixed."""
    late = list(range(split, len(space.layers)))
    return replace(
        cfg, out=str(out), steps=steps, sample_layers=late, fixed=str(fixed or space.default_arch())
    )


def two_stage(
    cfg: TrainConfig,
    split: int,
    latency: Latency,
    search: SearchConfig,
    out: str | Path,
    steps_a: int,
    steps_b: int,
    fixed: Arch | None = None,
    min_latency: Callable[..., tuple[float, Arch]] | None = None,
    stage_a_out: str | Path | None = None,
) -> dict[str, Any]:
    """Stage A over layers ``split..``, then stage B over ``..split``; returns the final
    architecture with both stages' results and the total supernet cost. ``stage_a_out``
    shares one stage-A supernet between searches (one per latency budget)."""
    out = Path(out)
    space = load_space(cfg.space)
    n = len(space.layers)
    if not 0 < split < n:
        raise UserError(f"split must be between 1 and {n - 1} for a {n}-layer space, got {split}")
    data = data_for(cfg, space)
    stage_a = Path(stage_a_out) if stage_a_out else out / "stage_a"
    a_cfg = stage_a_config(cfg, space, split, steps_a, stage_a, fixed)
    base, late, early = a_cfg.fixed, a_cfg.sample_layers, list(range(split))
    a = _stage(
        a_cfg,
        space,
        data,
        latency,
        replace(search, layers=late, fixed=base),
        out / "search_a",
        min_latency,
    )
    b_cfg = replace(
        cfg,
        out=str(out / "stage_b"),
        steps=steps_b,
        sample_layers=early,
        fixed=a["best"],
        init=str(stage_a / "supernet.pt"),
    )
    b = _stage(
        b_cfg,
        space,
        data,
        latency,
        replace(search, layers=early, fixed=a["best"]),
        out / "search_b",
        min_latency,
    )
    result = {
        "arch": b["best"],
        "fitness": b["fitness"],
        "latency_ms": b["latency_ms"],
        "split": split,
        "fixed": base,
        "supernet_steps": a["supernet_steps"] + b["supernet_steps"],
        "supernet_seconds": round(a["supernet_seconds"] + b["supernet_seconds"], 2),
        "stage_a": a,
        "stage_b": b,
    }
    (out / "result.json").write_text(json.dumps(result, indent=1))
    return result
