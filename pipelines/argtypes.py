"""How the ``hurricane`` command line reads numbers: one argparse ``type`` per kind, used by
every flag of that kind, so that ``--steps -5``, ``--budget nan`` or ``--limit -5`` stop
with one line naming the flag and the value before anything runs.

``Parser`` prints an argparse error as that one line (``hurricane: error: argument --steps:
...``) instead of the usage block, as ``pipelines.cli.main`` prints a ``UserError``.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

from hurricane.budgets import Budget, BudgetError

if TYPE_CHECKING:
    from hurricane.compute import TrainOn


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` (and, through ``add_subparsers``, its sub-parsers) whose errors
    are one line on stderr, exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"hurricane: error: {message} (see '{self.prog} --help')\n")


def int_at_least(lo: int) -> Callable[[str], int]:
    """A ``type`` for integer flags that must be ``lo`` or more."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < lo:
            raise argparse.ArgumentTypeError(f"expected an integer >= {lo}, got {text!r}")
        return value

    parse.__name__ = f"int_at_least_{lo}"
    return parse


def finite_float(
    lo: float | None = None, hi: float | None = None, lo_open: bool = False
) -> Callable[[str], float]:
    """A ``type`` for number flags: finite (never ``nan`` or ``inf``), ``lo`` or more (more
    than ``lo`` with ``lo_open``), below ``hi``."""
    left = "(" if lo_open else "["
    want = (
        f"a finite number in {left}{lo:g}, {hi:g})"
        if lo is not None and hi is not None
        else f"a finite number {'>' if lo_open else '>='} {lo:g}"
        if lo is not None
        else "a finite number"
    )

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        ok = math.isfinite(value)
        if ok and lo is not None:
            ok = value > lo if lo_open else value >= lo
        if ok and hi is not None:
            ok = value < hi
        if not ok:
            raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}")
        return value

    return parse


positive_int = int_at_least(1)
nonnegative_int = int_at_least(0)
positive_finite_float = finite_float(0.0, lo_open=True)
nonnegative_finite_float = finite_float(0.0)
open_fraction = finite_float(0.0, 1.0, lo_open=True)  # in (0, 1): --val-fraction
below_one = finite_float(0.0, 1.0)  # in [0, 1): --min-budget-fraction


def budget(text: str) -> str:
    """A latency budget as ``hurricane.budgets.Budget.parse`` reads it (milliseconds, finite
    and positive, or a percentile); the text is kept as typed for what parses it later."""
    try:
        Budget.parse(text)
    except BudgetError as exc:  # what is expected, and the value as it was typed
        how = str(exc).partition(", got ")[0]
        raise argparse.ArgumentTypeError(f"{how}, got {text!r}") from None
    return text


def add_train_on_args(p: argparse.ArgumentParser) -> None:
    """Where a command trains and evaluates (``hurricane.compute.TrainOn``); a flag left out
    keeps the pipeline file's ``[train]`` value, or the default."""
    from hurricane.compute import PRECISIONS, TORCH_DEVICES

    g = p.add_argument_group("training hardware (the target hardware is --device)")
    g.add_argument(
        "--torch-device",
        default=None,
        metavar=TORCH_DEVICES,
        help="where networks train and are evaluated (default: auto, CUDA when available)",
    )
    g.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=None,
        help="autocast precision over fp32 weights (default: fp32)",
    )
    g.add_argument(
        "--channels-last",
        action="store_true",
        default=None,
        help="channels-last memory layout (faster convolutions on recent GPUs)",
    )
    g.add_argument(
        "--workers",
        type=nonnegative_int,
        default=None,
        help="data-loading processes for image-file data sets (default: from the CPU count)",
    )


def train_on_from(args: argparse.Namespace, base: TrainOn | None = None) -> TrainOn:
    """The ``TrainOn`` of ``add_train_on_args``'s flags over ``base``, the torch device
    checked now (one line where this machine has no CUDA) rather than after profiling."""
    from dataclasses import replace

    from hurricane.compute import TrainOn, resolve_torch_device

    given: dict[str, Any] = {
        k: getattr(args, k, None)
        for k in ("torch_device", "precision", "channels_last", "workers")
        if getattr(args, k, None) is not None
    }
    out = replace(base or TrainOn(), **given)
    resolve_torch_device(out.torch_device)
    return out
