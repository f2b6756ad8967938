"""Single-path one-shot (SPOS) supernet training, resumable and data-parallel.

Every random choice of a step (the path, the batch order, the augmentation, dropout) is drawn
from generators seeded by ``(seed, step)``, so a run killed at any point and resumed from its
last checkpoint ends with exactly the weights of an uninterrupted run (on the CPU; on CUDA
the resumed run takes the same paths and batches, but cuDNN's kernels are not bitwise
deterministic). Under ``torchrun`` each process takes its share of every global batch and
DDP averages the gradients (NCCL on GPUs, gloo on the CPU); all processes sample the same
path, so the step equals one large-batch step.

A global batch is cut into ``shards`` = processes x ``micro_batches`` equal parts, each with
its own augmentation and dropout seed; batch norm normalises over one shard. So a run's
weights depend on the number of shards, not on how they are spread: one process with
``micro_batches = 2`` trains what two processes do (up to float summation order).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import pickle
import random
import re
import signal
import sys
import threading
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from hurricane.arch import Arch
from hurricane.compute import Compute, Dist, TrainOn, compute_for, main_only
from hurricane.data import DataSplits, load_data
from hurricane.errors import UserError
from hurricane.evaluate import accuracy, recalibrate_bn
from hurricane.loader import default_workers, iterate
from hurricane.provenance import provenance
from hurricane.space import SearchSpace
from hurricane.space_file import load_space
from hurricane.supernet import DEFAULT_SHARING, SHARING, Supernet, saved_sharing

if TYPE_CHECKING:
    from hurricane.shrink import Latency

CHECKPOINT = "checkpoint.pt"
SUMMARY = "summary.json"
LOG = "log.jsonl"
# Fields that may change between a run and its resumption without changing its result.
# Where it computes may change too (a CPU run resumed on a GPU takes the same paths and
# batches), and so may how the shards are spread (``Trainer.shards`` is checked instead).
RESUMABLE_FIELDS = {
    "out",
    "ckpt_every",
    "progress",
    "threads",
    "torch_device",
    "channels_last",
    "workers",
    "micro_batches",
}


@dataclass
class TrainConfig:
    space: str = "demo"
    data: str = "fashion-mnist"
    out: str = "runs/train"
    epochs: float = 1.0
    steps: int | None = None  # overrides epochs when set
    batch_size: int = 128  # global, split across processes
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-5
    label_smoothing: float = 0.1
    warmup_steps: int = 0
    seed: int = 0
    ckpt_every: int = 100
    sample_layers: list[int] | None = None  # None: every layer is sampled
    fixed: str | None = None  # arch for the layers that are not sampled
    augment: bool = True
    val_fraction: float = 0.1
    train_limit: int | None = None
    eval_limit: int | None = 2000
    eval_paths: int = 2
    bn_batches: int = 10
    threads: int | None = None
    progress: bool = True
    distill: bool = False  # in-place distillation: the largest path teaches the sampled one
    # A student's loss: kd_weight * T^2 * KL(teacher || student at temperature T)
    # + (1 - kd_weight) * cross-entropy; 1.0 and 1.0 are the KL alone, as OFA's.
    kd_weight: float = 1.0
    kd_temperature: float = 1.0
    sandwich: bool = False  # each step trains the largest, the smallest and a random path
    fair: bool = False  # FairNAS: each step trains every candidate of every layer once
    share: str = DEFAULT_SHARING  # which candidates share one block (supernet.SHARING)
    # A GoldenNet (hurricane.adaptive): the depth variants of ``fixed`` are the paths
    # ("default", a number of blocks per stage, or comma-separated variant names).
    depths: str | None = None
    adaptive_bn: bool = True  # per-variant batch-norm statistics
    per_depth_affine: bool = False
    init: str | None = None  # start from this supernet.pt (stage B continues stage A)
    # GoldenNAS progressive shrinking (off when shrink_every is 0): needs a device's LUT.
    shrink_every: int = 0
    shrink_paths: int = 32
    shrink_keep: int = 2
    latency_db: str | None = None
    latency_device: str | None = None
    # Where and how it computes (``hurricane.compute.TrainOn``): not the target --device.
    torch_device: str = TrainOn.torch_device
    precision: str = TrainOn.precision
    channels_last: bool = TrainOn.channels_last
    workers: int | None = TrainOn.workers
    micro_batches: int = 1  # shards of each process's batch, gradients accumulated
    extra: dict[str, Any] = field(default_factory=dict)

    def identity(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in RESUMABLE_FIELDS}


def parse_layers(text: str | None, n_layers: int) -> list[int] | None:
    """``"0-3,5"`` -> [0, 1, 2, 3, 5]; None or ``"all"`` -> None (every layer)."""
    if text is None or text == "all":
        return None
    out: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        try:
            a, b = int(lo), int(hi) if hi else int(lo)
        except ValueError:
            raise UserError(f"--sample-layers: {part!r} is not a layer index or range") from None
        if not (0 <= a <= b < n_layers):
            raise UserError(f"--sample-layers: {part!r} is outside layers 0..{n_layers - 1}")
        out.update(range(a, b + 1))
    return sorted(out)


def _step_rng(seed: int, step: int, salt: int) -> int:
    return (seed * 1_000_003 + step) * 31 + salt


def _shard_salt(salt: int, shard: int) -> int:
    """A per-shard salt; shard 0's is ``salt`` itself, as before shards existed."""
    return salt + 16 * shard


def state_digest(module: torch.nn.Module, params_only: bool = False) -> str:
    h = hashlib.sha256()
    items = module.named_parameters() if params_only else module.state_dict().items()
    for name, tensor in sorted(items):
        h.update(name.encode())
        h.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def ranks_agree(module: torch.nn.Module) -> bool:
    """Whether every process of the group holds exactly these parameters (a hash of each
    rank's, gathered): what ``ranks_in_sync`` in a summary reports."""
    digests: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(digests, state_digest(module, params_only=True))
    return len(set(digests)) == 1


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as f:  # a folder we may not write to is an OSError that names it
        torch.save(obj, f)
    os.replace(tmp, path)


def load_tensors(path: str | Path, what: str, error: type[UserError] = UserError) -> dict[str, Any]:
    """A torch file Hurricane wrote (``supernet.pt``, ``checkpoint.pt``, a final or bundled
    ``model.pt``: tensors and plain str/int/float/list/dict values only), loaded with
    ``weights_only=True``. Such a file may come from someone else (a bundle, ``--init``, a
    supernet to search), and a full unpickle would run whatever code it carries; a file
    holding anything else is refused with ``error``, one line naming the file."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise error(f"{path}: no such file; give the path of a {what}") from None
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL (\S+)", str(exc))
        if not found:
            raise error(
                f"{path}: not a readable {what} (damaged, or not a torch file); "
                "use a file Hurricane wrote"
            ) from None
        raise error(
            f"{path}: not a plain {what}: it holds Python objects ({found.group(1)}), which "
            "Hurricane never loads because unpickling them could run code; use a file "
            "Hurricane wrote"
        ) from None
    except Exception as exc:  # a damaged or foreign file fails in many ways inside torch.load
        first = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ""
        raise error(
            f"{path}: not a readable {what} ({type(exc).__name__}: {first}); "
            "use a file Hurricane wrote"
        ) from None
    if not isinstance(obj, dict) or not isinstance(obj.get("model"), dict):
        raise error(f"{path}: not a {what} (no 'model' state dict); use a file Hurricane wrote")
    return obj


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


class _StopOnInterrupt:
    """Turn the first Ctrl-C into a request to stop after the current step, so a checkpoint
    never holds a half-applied step; a second Ctrl-C interrupts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._installed = threading.current_thread() is threading.main_thread()
        if self._installed:
            self._old = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame) -> None:  # noqa: ARG002
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def restore(self) -> None:
        if self._installed:
            # getsignal gives None for a handler not set from Python: fall back to the default.
            signal.signal(signal.SIGINT, self._old if self._old is not None else signal.SIG_DFL)
            self._installed = False


def distill_loss(
    logits: torch.Tensor,
    y: torch.Tensor,
    soft: torch.Tensor,
    weight: float,
    temperature: float,
    smoothing: float,
) -> torch.Tensor:
    """A student's loss: ``weight`` of the KL to the teacher's ``soft`` outputs (taken at
    ``temperature``, scaled by its square so gradients keep their size, as Hinton et al.),
    the rest cross-entropy on the labels."""
    t = temperature
    kl = F.kl_div(F.log_softmax(logits / t, 1), soft, reduction="batchmean")
    if weight >= 1.0:
        return t * t * kl
    return weight * t * t * kl + (1 - weight) * F.cross_entropy(
        logits, y, label_smoothing=smoothing
    )


class Trainer:
    def __init__(
        self,
        cfg: TrainConfig,
        space: SearchSpace | None = None,
        data: DataSplits | None = None,
        net: Supernet | None = None,
    ) -> None:
        self.cfg = cfg
        self.compute: Compute = compute_for(cfg.torch_device, cfg.precision, cfg.channels_last)
        self.dist = Dist(self.compute)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if cfg.micro_batches < 1:
            raise UserError(f"micro_batches must be at least 1, got {cfg.micro_batches}")
        self.shards = self.dist.world * cfg.micro_batches
        self.workers = default_workers() if cfg.workers is None else cfg.workers
        self.space = space or load_space(cfg.space)
        self.data = data or load_data(
            cfg.data,
            self.space.resolution,
            self.space.in_channels,
            self.space.classes,
            cfg.val_fraction,
            train_limit=cfg.train_limit,
            eval_limit=cfg.eval_limit,
        )
        n_layers = len(self.space.layers)
        self.sample_layers = cfg.sample_layers
        if self.sample_layers is not None and any(
            not 0 <= i < n_layers for i in self.sample_layers
        ):
            raise UserError(f"sample_layers {self.sample_layers} outside layers 0..{n_layers - 1}")
        self.fixed = self.space.parse_arch(cfg.fixed) if cfg.fixed else None
        if cfg.batch_size % self.shards:
            raise UserError(
                f"batch size {cfg.batch_size} does not split into {self.shards} equal shards "
                f"({self.dist.world} process(es) x {cfg.micro_batches} micro-batch(es)); "
                "choose a batch size they divide"
            )
        self.steps_per_epoch = len(self.data.train) // cfg.batch_size
        if self.steps_per_epoch == 0:
            raise UserError(
                f"training split has {len(self.data.train)} images, fewer than one batch of "
                f"{cfg.batch_size}; lower --batch-size or raise --train-limit"
            )
        self.total_steps = cfg.steps or max(1, math.ceil(cfg.epochs * self.steps_per_epoch))
        torch.manual_seed(cfg.seed)
        init = load_tensors(cfg.init, "supernet (--init)") if cfg.init and net is None else None
        if init is not None:  # the weights fix the sharing: a final run from a shared supernet
            share = saved_sharing(init, f"--init {cfg.init}")
            cfg = self.cfg = dataclasses.replace(cfg, share=share)
        if cfg.share not in SHARING:
            raise UserError(
                f"share: {cfg.share!r} is not a weight-sharing rule; use one of "
                f"{', '.join(SHARING)}"
            )
        # Built on the CPU: the same start anywhere.
        self.net = net or Supernet(self.space, cfg.share)
        if init is not None:
            try:
                self.net.load_state_dict(init["model"])
            except RuntimeError as exc:
                first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
                raise UserError(
                    f"--init {cfg.init}: not a supernet of space "
                    f"{self.space.name!r} ({type(exc).__name__}: {first})"
                ) from None
        if cfg.fair and cfg.depths is not None:
            raise UserError(
                "fair sampling is for a supernet's candidates, not a GoldenNet's depths"
            )
        if cfg.depths is not None:  # the same path interface as a supernet's
            self.net = cast(Supernet, self._golden_net(self.net))
        self.net = cast(Supernet, self.compute.module(self.net))
        self.teacher = self.net.largest(self.sample_layers, self.fixed) if cfg.distill else None
        # The sandwich rule's fixed members: trained by themselves, or as the teacher.
        ends = (self.net.largest, self.net.smallest) if cfg.sandwich else ()
        self.sandwich = [end(self.sample_layers, self.fixed) for end in ends]
        if not 0.0 <= cfg.kd_weight <= 1.0 or cfg.kd_temperature <= 0:
            raise UserError(
                f"distillation: kd_weight {cfg.kd_weight} must be within 0..1 and "
                f"kd_temperature {cfg.kd_temperature} above 0"
            )
        self.allowed: list[list[str]] = [list(layer.ops) for layer in self.space.layers]
        self.shrink_history: list[dict[str, Any]] = []
        self.latency = self._shrink_latency() if cfg.shrink_every else None
        self.model: torch.nn.Module = self.net
        if self.dist.active:
            ids = [self.compute.device] if self.compute.cuda else None
            self.model = torch.nn.parallel.DistributedDataParallel(
                self.net, device_ids=ids, find_unused_parameters=True
            )
        decay = [p for p in self.net.parameters() if p.ndim > 1]
        no_decay = [p for p in self.net.parameters() if p.ndim <= 1]
        self.opt = torch.optim.SGD(
            [
                {"params": decay, "weight_decay": cfg.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.momentum > 0,
        )
        self.scaler = self.compute.scaler()
        self.out = Path(cfg.out)
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self.resumed_from: list[int] = []
        self.seconds = 0.0  # training wall time over all sessions of this run
        self.epoch_stats = [0.0, 0, 0]  # loss sum, correct, seen so far in this epoch

    def _golden_net(self, supernet: Supernet) -> torch.nn.Module:
        """The fixed architecture made depth-adaptive, from the supernet's weights."""
        from hurricane.adaptive import AdaptiveNet, parse_depths, variants

        if self.fixed is None or self.sample_layers != []:
            raise UserError("depths: a GoldenNet is one architecture: give fixed, sample no layer")
        found = variants(self.space, self.fixed, parse_depths(self.cfg.depths))
        cfg = self.cfg
        return AdaptiveNet(
            self.space, supernet.extract(self.fixed), found, cfg.adaptive_bn, cfg.per_depth_affine
        )

    # --- schedule and sampling ------------------------------------------------------------
    def _shrink_latency(self) -> Latency:
        from hurricane.latency import LatencyModel

        cfg = self.cfg
        if not (cfg.latency_db and cfg.latency_device):
            raise UserError(
                "progressive shrinking ranks ops by accuracy for their latency: "
                "give --device (and --db) with --shrink-every"
            )
        return LatencyModel.from_db(self.space, cfg.latency_db, cfg.latency_device).predict

    def shrink(self) -> None:
        from hurricane.shrink import shrink_step

        if self.latency is None:  # loaded in __init__ whenever shrink_every is set
            raise RuntimeError("shrink() runs only with shrink_every set")
        layers = self.sample_layers if self.sample_layers is not None else range(len(self.allowed))
        self.allowed, report = shrink_step(
            self.net,
            self.data,
            self.allowed,
            list(layers),
            self.fixed,
            self.latency,
            self.cfg.shrink_paths,
            self.cfg.shrink_keep,
            _step_rng(self.cfg.seed, self.step, 6),
            self.cfg.bn_batches,
            self.compute,
            self.workers,
        )
        report = {"step": self.step, **report}
        self.shrink_history.append(report)
        dropped = ", ".join(f"{op}@{i}" for i, op in report["dropped"].items()) or "nothing"
        self.log(
            f"shrink at step {self.step}: dropped {dropped} "
            f"(mean path accuracy {report['mean_acc']:.4f})"
        )

    def lr_at(self, step: int) -> float:
        if step < self.cfg.warmup_steps:
            return self.cfg.lr * (step + 1) / self.cfg.warmup_steps
        t = (step - self.cfg.warmup_steps) / max(1, self.total_steps - self.cfg.warmup_steps)
        return 0.5 * self.cfg.lr * (1 + math.cos(math.pi * t))

    def path_at(self, step: int) -> Arch:
        rng = random.Random(_step_rng(self.cfg.seed, step, 1))
        return self.net.sample(rng, self.sample_layers, self.fixed, self.allowed)

    def paths_at(self, step: int) -> list[Arch]:
        """The sampled paths of a step: one (SPOS), or with ``fair`` as many as a layer has
        candidates, each candidate of each sampled layer on exactly one of them (FairNAS's
        strict fairness: no op gets more updates than another, so none is favoured for
        learning fast). Widths are drawn per path."""
        if not self.cfg.fair:
            return [self.path_at(step)]
        rng = random.Random(_step_rng(self.cfg.seed, step, 1))
        base = self.fixed or self.space.default_arch()
        layers = range(len(self.space.layers)) if self.sample_layers is None else self.sample_layers
        perms = {i: rng.sample(self.allowed[i], len(self.allowed[i])) for i in layers}
        paths = []
        for k in range(max((len(p) for p in perms.values()), default=1)):
            ops, widths = list(base.ops), list(base.widths)
            for i, perm in perms.items():
                ops[i] = perm[k % len(perm)]
                widths[i] = rng.choice(self.space.layers[i].widths)
            paths.append(Arch(tuple(ops), tuple(widths)))
        return paths

    def my_shards(self) -> range:
        """The shards of every global batch this process trains (``micro_batches`` of them)."""
        micro = self.cfg.micro_batches
        return range(self.dist.rank * micro, (self.dist.rank + 1) * micro)

    def shard_plan(self, step: int) -> list[tuple[int, torch.Tensor]]:
        """This process's shards of step ``step``'s global batch: (augmentation seed, image
        indices) each, for ``hurricane.loader.iterate``."""
        epoch, b = divmod(step, self.steps_per_epoch)
        gen = torch.Generator().manual_seed(_step_rng(self.cfg.seed, epoch, 2))
        perm = torch.randperm(len(self.data.train), generator=gen)
        idx = perm[b * self.cfg.batch_size : (b + 1) * self.cfg.batch_size]
        return [
            (_step_rng(self.cfg.seed, step, _shard_salt(3, j)), idx[j :: self.shards])
            for j in self.my_shards()
        ]

    def batches_from(self, step: int) -> Generator[tuple[torch.Tensor, torch.Tensor], None, None]:
        """Every shard batch from ``step`` on, in order (file data in worker processes)."""
        plans = (p for s in range(step, self.total_steps) for p in self.shard_plan(s))
        yield from iterate(
            self.data.train,
            plans,
            train=self.cfg.augment,
            workers=self.workers,
            pin_memory=self.compute.cuda,
        )

    # --- checkpoints ----------------------------------------------------------------------
    def _checkpoint(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "model": self.net.state_dict(),
            "optimizer": self.opt.state_dict(),
            "config": dataclasses.asdict(self.cfg),
            "history": self.history,
            "resumed_from": self.resumed_from,
            "seconds": self.seconds,
            "world_size": self.dist.world,
            "shards": self.shards,
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "epoch_stats": self.epoch_stats,
            "allowed": self.allowed,
            "shrink_history": self.shrink_history,
        }

    def save_checkpoint(self) -> None:
        if self.dist.main:
            self.out.mkdir(parents=True, exist_ok=True)
            _atomic_save(self._checkpoint(), self.out / CHECKPOINT)
        self.dist.barrier()

    def try_resume(self) -> bool:
        path = self.out / CHECKPOINT

        def read() -> dict[str, Any] | None:
            # Tensors and plain values only (no RNG states: every draw is seeded by the step).
            return load_tensors(path, "training checkpoint") if path.exists() else None

        # Rank 0 reads and hands it over: on several machines only its disk need hold it.
        ckpt = main_only(read)
        if ckpt is None:
            return False
        old = TrainConfig(**ckpt["config"]).identity()
        new = self.cfg.identity()
        changed = [k for k in new if old.get(k) != new[k]]
        there = dict(old)
        there["shards"] = ckpt.get("shards", ckpt.get("world_size", 1))
        if there["shards"] != self.shards:
            changed.append("shards")
        if changed:
            k = changed[0]
            now = self.shards if k == "shards" else new[k]
            why = " (processes x micro-batches)" if k == "shards" else ""
            raise UserError(
                f"{self.out} holds a checkpoint of a different run ({k}{why}: "
                f"{there.get(k)!r} there, {now!r} now); use another --out or pass --fresh"
            )
        self.net.load_state_dict(ckpt["model"])
        self.opt.load_state_dict(ckpt["optimizer"])
        self.step = ckpt["step"]
        self.history = ckpt["history"]
        self.resumed_from = ckpt["resumed_from"] + [self.step]
        self.seconds = ckpt["seconds"]
        self.epoch_stats = ckpt["epoch_stats"]
        self.allowed = ckpt.get("allowed", self.allowed)
        self.shrink_history = ckpt.get("shrink_history", [])
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        return True

    # --- evaluation -----------------------------------------------------------------------
    def eval_paths(self) -> list[Arch]:
        rng = random.Random(_step_rng(self.cfg.seed, -1, 4))
        return [
            self.net.sample(rng, self.sample_layers, self.fixed) for _ in range(self.cfg.eval_paths)
        ]

    def evaluate(self) -> list[float]:
        """Validation accuracy of fixed sample paths, each extracted with recalibrated BN;
        the supernet itself is not touched."""
        accs = []
        c, w = self.compute, self.workers
        for i, arch in enumerate(self.eval_paths()):
            sub = c.module(self.net.extract(arch))
            recalibrate_bn(sub, self.data.train, self.cfg.bn_batches, 256, self.cfg.seed + i, c, w)
            accs.append(accuracy(sub, self.data.val, compute=c, workers=w))
        return accs

    # --- the loop -------------------------------------------------------------------------
    def log(self, msg: str) -> None:
        if self.dist.main:
            tqdm.write(msg, file=sys.stderr)

    def train(self) -> dict[str, Any]:
        cfg = self.cfg
        if self.try_resume():
            self.log(f"resuming {self.out} at step {self.step}/{self.total_steps}")
        if self.dist.main:
            self.out.mkdir(parents=True, exist_ok=True)
        bar = tqdm(
            total=self.total_steps,
            initial=self.step,
            desc="supernet",
            unit="step",
            disable=not (cfg.progress and self.dist.main),
            dynamic_ncols=True,
        )
        images = 0
        t_session = time.perf_counter()
        t_last = t_session
        self.model.train()
        stop = _StopOnInterrupt()
        batches = self.batches_from(self.step)
        try:
            while self.step < self.total_steps:
                if stop.requested:
                    raise KeyboardInterrupt
                step = self.step
                sampled = self.paths_at(step)
                shards = [next(batches) for _ in self.my_shards()]
                for group in self.opt.param_groups:
                    group["lr"] = self.lr_at(step)
                self.opt.zero_grad(set_to_none=True)
                stats = self.epoch_stats
                for k, (j, (x, y)) in enumerate(zip(self.my_shards(), shards, strict=True)):
                    x = self.compute.batch(x)
                    y = y.to(self.compute.device, non_blocking=self.compute.cuda)
                    torch.manual_seed(_step_rng(cfg.seed, step, _shard_salt(5, j)))
                    last = k == len(shards) - 1  # DDP averages the gradients after the last
                    loss, logits = self._shard_step(x, y, sampled, sync=last)
                    stats[0] += float(loss) * len(y)
                    stats[1] += int((logits.argmax(1) == y).sum())
                    stats[2] += len(y)
                    images += len(y) * self.dist.world
                if self.scaler is not None:
                    self.scaler.step(self.opt)
                    self.scaler.update()
                else:
                    self.opt.step()
                self.step += 1
                bar.update(1)
                if self.step % 10 == 0:
                    bar.set_postfix(loss=f"{stats[0] / max(1, stats[2]):.3f}")
                epoch_end = self.step % self.steps_per_epoch == 0 or self.step == self.total_steps
                if epoch_end:
                    now = time.perf_counter()
                    self.seconds += now - t_last
                    t_last = now
                    self._end_epoch(stats[0] / max(1, stats[2]), stats[1] / max(1, stats[2]))
                    self.epoch_stats = [0.0, 0, 0]
                if (
                    cfg.shrink_every
                    and self.step % cfg.shrink_every == 0
                    and self.step < self.total_steps
                ):
                    self.shrink()
                if self.step % cfg.ckpt_every == 0 or self.step == self.total_steps:
                    now = time.perf_counter()
                    self.seconds += now - t_last
                    t_last = now
                    self.save_checkpoint()
        except KeyboardInterrupt:
            bar.close()
            self.seconds += time.perf_counter() - t_last
            self.save_checkpoint()
            self.log(f"interrupted: saved step {self.step}/{self.total_steps}; run again to resume")
            raise
        finally:
            stop.restore()
            batches.close()  # file data: stops the loader's worker processes
        bar.close()
        session = time.perf_counter() - t_session
        return self._finish(images, session)

    def _no_sync(self) -> contextlib.AbstractContextManager[Any]:
        """Accumulate gradients without DDP's all-reduce (a backward before the last)."""
        model = self.model  # wrapped in DistributedDataParallel exactly when dist.active
        ddp = torch.nn.parallel.DistributedDataParallel
        return model.no_sync() if isinstance(model, ddp) else contextlib.nullcontext()

    def _backward(self, loss: torch.Tensor) -> None:
        """Backward of one shard's loss, its share of the step (scaled for fp16)."""
        loss = loss / self.cfg.micro_batches
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def _shard_step(
        self, x: torch.Tensor, y: torch.Tensor, sampled: list[Arch], sync: bool
    ) -> tuple[float, torch.Tensor]:
        """Forward and backward of one shard over every path of the step (gradients
        summed); the last path's loss and logits."""
        cfg = self.cfg
        smoothing, w, t = cfg.label_smoothing, cfg.kd_weight, cfg.kd_temperature
        soft = self._teach(x, y) if self.teacher is not None else None
        # The sandwich's largest path is the teacher when there is one; otherwise it and
        # the smallest train on the labels like the sampled path.
        paths = [p for p in self.sandwich if soft is None or p != self.teacher] + sampled
        for k, path in enumerate(paths):
            last = sync and k == len(paths) - 1
            with contextlib.nullcontext() if last else self._no_sync():
                with self.compute.autocast():
                    logits = self.model(x, path).float()
                    loss = F.cross_entropy(logits, y, label_smoothing=smoothing)
                    total = loss if soft is None else distill_loss(logits, y, soft, w, t, smoothing)
                self._backward(total)
        return float(loss.detach()), logits.detach()

    def _teach(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Train the largest path on the labels (its gradients accumulate with the
        students') and return its soft predictions, at the distillation's temperature, for
        the other paths to learn from."""
        with self._no_sync():
            with self.compute.autocast():
                t_logits = self.model(x, self.teacher).float()
                loss = F.cross_entropy(t_logits, y, label_smoothing=self.cfg.label_smoothing)
            self._backward(loss)
        return F.softmax(t_logits.detach() / self.cfg.kd_temperature, 1)

    def _end_epoch(self, loss: float, acc: float) -> None:
        epoch = math.ceil(self.step / self.steps_per_epoch)
        n_epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        val = self.evaluate() if self.dist.main and self.cfg.eval_paths else []
        record = {
            "epoch": epoch,
            "step": self.step,
            "train_loss": round(loss, 5),
            "train_acc": round(acc, 5),
            "val_acc_paths": [round(a, 5) for a in val],
            "lr": self.lr_at(self.step - 1),
            "seconds": round(self.seconds, 2),
        }
        self.history.append(record)
        val_txt = f" val_acc(paths) {' '.join(f'{a:.4f}' for a in val)}" if val else ""
        self.log(
            f"epoch {epoch}/{n_epochs} step {self.step}/{self.total_steps} loss {loss:.4f} "
            f"train_acc {acc:.4f}{val_txt} lr {record['lr']:.4f} time {self.seconds:.1f}s"
        )
        if self.dist.main:
            with open(self.out / LOG, "a") as f:
                f.write(json.dumps(record) + "\n")

    def _finish(self, images: int, session_seconds: float) -> dict[str, Any]:
        in_sync = True
        if self.dist.active:
            in_sync = ranks_agree(self.net)
            if not in_sync:
                self.log("WARNING: the processes ended with different weights; saving rank 0's")
            # BN running statistics are per process (each saw its own shard): take rank 0's,
            # as DDP does at every forward.
            for buf in self.net.buffers():
                dist.broadcast(buf, 0)
        digest = state_digest(self.net)
        summary = {
            "config": dataclasses.asdict(self.cfg),
            "space": self.space.name,
            "space_source": self.space.source,
            "data": self.data.describe(),
            "trained_on": {
                **self.compute.describe(),
                "backend": self.dist.backend if self.dist.active else None,
                "micro_batches": self.cfg.micro_batches,
                "shards": self.shards,
                "workers": self.workers,
                "peak_mem_gib": (
                    round(torch.cuda.max_memory_allocated(self.compute.device) / 2**30, 3)
                    if self.compute.cuda
                    else None
                ),
            },
            "world_size": self.dist.world,
            "ranks_in_sync": in_sync,
            "steps": self.step,
            "total_steps": self.total_steps,
            "steps_per_epoch": self.steps_per_epoch,
            "resumed_from": self.resumed_from,
            "train_seconds": round(self.seconds, 2),
            "session_images_per_s": round(images / session_seconds, 1) if session_seconds else None,
            "history": self.history,
            "allowed_ops": self.allowed,
            "shrink_history": self.shrink_history,
            "state_sha256": digest,
            "provenance": provenance(),
        }
        if self.dist.main:
            _atomic_save(
                {
                    "space": self.space.name,
                    "config": summary["config"],
                    "model": {k: v.cpu() for k, v in self.net.state_dict().items()},
                },
                self.out / "supernet.pt",
            )
            _write_json(self.out / SUMMARY, summary)
            self.log(f"done: {self.step} steps; supernet and summary in {self.out}")
        self.dist.barrier()
        return summary


def train(cfg: TrainConfig, fresh: bool = False) -> dict[str, Any]:
    """Train (or resume) the supernet run in ``cfg.out``; return its summary."""
    out = Path(cfg.out)
    if fresh and int(os.environ.get("RANK", "0")) == 0:
        for name in (CHECKPOINT, SUMMARY, LOG, "supernet.pt"):
            (out / name).unlink(missing_ok=True)
    trainer = Trainer(cfg)
    trainer.dist.barrier()
    return trainer.train()
