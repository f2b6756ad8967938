"""Where training and evaluation compute: the torch device, the precision, the process group.

This is the *training* hardware. The *target* hardware whose latency is searched for is a
device spec (``--device``, ``devices/``); the two are never the same setting, and messages
and summaries call this one the "torch device". The LUT, the search's bookkeeping and the
export stay on the CPU whatever is chosen here.

Mixed precision is autocast over fp32 master weights (so every saved weight, and the final
model's export, is fp32), with a gradient scaler for fp16, whose narrow range underflows
small gradients; bf16 has fp32's range and needs none.

Under ``torchrun`` every process takes one device: ``cuda:LOCAL_RANK`` on a GPU machine
(NCCL), the CPU otherwise (gloo). Only rank 0 writes files; ``main_only`` runs a step on
rank 0 alone (a device measurement over SSH, say) and hands its result to every rank.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from hurricane.errors import UserError

TORCH_DEVICES = "auto|cpu|cuda|cuda:N"
PRECISIONS = ("fp32", "bf16", "fp16")
DEFAULT_TORCH_DEVICE = "auto"
DEFAULT_PRECISION = "fp32"
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

T = TypeVar("T")


class ComputeError(UserError):
    """A torch device or precision this machine cannot give."""


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """Whether this process writes files and prints results (rank 0, or not under torchrun)."""
    return rank() == 0


def resolve_torch_device(text: str = DEFAULT_TORCH_DEVICE) -> torch.device:
    """``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``; under torchrun
    ``auto`` and ``cuda`` mean this process's GPU, ``cuda:LOCAL_RANK``."""
    value = str(text).strip().lower()
    if value == "auto":
        value = "cuda" if torch.cuda.is_available() else "cpu"
    if value == "cpu":
        return torch.device("cpu")
    kind, _, index = value.partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise ComputeError(
            f"torch device {text!r}: expected {TORCH_DEVICES} (where the network trains; "
            "the target hardware is --device)"
        )
    if not torch.cuda.is_available():
        raise ComputeError(
            f"torch device {text!r}: this machine has no CUDA GPU that torch can use "
            f"(torch {torch.__version__}); train with --torch-device cpu or auto"
        )
    count = torch.cuda.device_count()
    if not index:
        n = local_rank() if world_size() > 1 else 0
    elif world_size() > 1:
        raise ComputeError(
            f"torch device {text!r}: under torchrun each process takes cuda:LOCAL_RANK; "
            "give --torch-device cuda (or auto) and choose GPUs with CUDA_VISIBLE_DEVICES"
        )
    else:
        n = int(index)
    if n >= count:
        raise ComputeError(
            f"torch device {text!r}: cuda:{n} asked for, but this machine has {count} GPU(s) "
            f"(cuda:0..cuda:{count - 1})"
        )
    return torch.device("cuda", n)


@dataclass(frozen=True)
class Compute:
    """How tensors are computed: device, autocast precision and memory layout."""

    device: torch.device = torch.device("cpu")
    precision: str = DEFAULT_PRECISION
    channels_last: bool = False

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ComputeError(
                f"precision {self.precision!r}: expected one of {', '.join(PRECISIONS)}"
            )

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=_DTYPES[self.precision])

    def scaler(self) -> torch.amp.GradScaler | None:
        """A loss scaler for fp16 (none otherwise)."""
        return torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None

    def module(self, m: torch.nn.Module) -> torch.nn.Module:
        """``m`` moved to the device (weights stay fp32), channels-last when asked."""
        m = m.to(self.device)
        if self.channels_last:  # documented for Module.to, missing from its type stubs
            m = m.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        return m

    def batch(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=self.cuda)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def describe(self) -> dict[str, Any]:
        """What a summary records about where it trained."""
        name = torch.cuda.get_device_name(self.device) if self.cuda else "cpu"
        return {
            "torch_device": str(self.device),
            "torch_device_name": name,
            "precision": self.precision,
            "channels_last": self.channels_last,
        }


def compute_for(
    torch_device: str = DEFAULT_TORCH_DEVICE,
    precision: str = DEFAULT_PRECISION,
    channels_last: bool = False,
) -> Compute:
    """The ``Compute`` these settings ask for, checked (one line when this machine can't)."""
    device = resolve_torch_device(torch_device)
    out = Compute(device, precision, channels_last)
    if precision == "bf16" and out.cuda and not torch.cuda.is_bf16_supported():
        raise ComputeError(
            f"precision bf16: {torch.cuda.get_device_name(device)} has no bf16; use fp16 or fp32"
        )
    if out.cuda:
        torch.cuda.set_device(device)
    return out


@dataclass(frozen=True)
class TrainOn:
    """Where and how a command trains and evaluates, as the user gave it (``[train]`` in a
    pipeline file, ``--torch-device``/``--precision``/``--channels-last``/``--workers``)."""

    torch_device: str = DEFAULT_TORCH_DEVICE
    precision: str = DEFAULT_PRECISION
    channels_last: bool = False
    workers: int | None = None  # data-loading processes for file data (None: from the CPUs)

    def fields(self) -> dict[str, Any]:
        """As ``TrainConfig`` keyword arguments."""
        return dataclasses.asdict(self)

    def compute(self) -> Compute:
        return compute_for(self.torch_device, self.precision, self.channels_last)


class Dist:
    """Process-group facts; a single process when not launched by torchrun. NCCL when this
    process trains on a GPU, gloo on the CPU (also for a CPU-side group beside NCCL)."""

    def __init__(self, compute: Compute | None = None) -> None:
        self.world = world_size()
        self.rank = rank()
        self.local_rank = local_rank()
        self.active = self.world > 1
        cuda = compute is not None and compute.cuda
        self.backend = "nccl" if cuda else "gloo"
        if self.active and not dist.is_initialized():
            timeout = timedelta(minutes=float(os.environ.get("HURRICANE_DIST_TIMEOUT_MIN", 30)))
            if cuda:
                assert compute is not None
                dist.init_process_group("nccl", timeout=timeout, device_id=compute.device)
            else:
                dist.init_process_group("gloo", timeout=timeout)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


def main_only(fn: Callable[[], T]) -> T:
    """``fn()`` on rank 0 only, its result given to every rank (picklable; an exception on
    rank 0 is raised on every rank). Without a process group, just ``fn()``."""
    if group_size() == 1:
        return fn()
    box: list[Any] = [None]
    if dist.get_rank() == 0:
        try:
            box[0] = ("ok", fn())
        except Exception as exc:  # every rank must leave the broadcast, then all raise
            box[0] = ("error", exc)
    dist.broadcast_object_list(box, src=0)
    status, value = box[0]
    if status == "error":
        raise value
    return value


def group_size() -> int:
    """Processes in the initialised process group (1 without one)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def share(items: list[T], fn: Callable[[T], Any]) -> list[Any]:
    """``fn`` over ``items``, split over the ranks (rank r takes items r, r+world, ...),
    every rank receiving every result in order. Without a process group, a plain map."""
    if group_size() == 1:
        return [fn(x) for x in items]
    world, me = dist.get_world_size(), dist.get_rank()
    mine = [(i, fn(items[i])) for i in range(me, len(items), world)]
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, mine)
    out: list[Any] = [None] * len(items)
    for part in gathered:
        for i, value in part:
            out[i] = value
    return out
