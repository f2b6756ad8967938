"""Repeated passes: each item timed again in a fresh agent process, the median stored.

On this shared machine a compiled model's speed differs between processes by a few percent
(what shares the 32 MiB L3 at the time, where its buffers land) while its rounds within one
process agree, so neither the per-item spread check nor the drift guard sees it. Measured on
local-openvino: the same 130 default-space models timed in three processes moved 1.9% (median
absolute difference) and came within 5% of each other only 87-94% of the time; LUTs profiled
twice differed by 0.4% (median), 1.8% at the 90th percentile. A spec's ``[measure] passes``
times every LUT entry and every whole model that many times, each pass in a new agent process
after the previous pass has finished (so minutes apart), and stores the median.

A pass that fails keeps the passes before it; a row stored before passes existed counts as
one pass, so raising ``passes`` and running again adds only the missing ones.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence

USABLE = ("ok", "noisy")


def prior(passes: Sequence[float], median_ms: float | None, status: str) -> list[float]:
    """The pass values a stored row already has (none for an error)."""
    if status not in USABLE or median_ms is None:
        return []
    return list(passes) if passes else [float(median_ms)]


def with_pass(previous: Sequence[float], index: int, value: float) -> list[float]:
    """``previous`` with pass ``index`` (0-based) set to ``value``: a pass measured again after
    a slow batch replaces its own value, never an earlier pass's."""
    return [*previous[:index], float(value)]


def merged(
    old: tuple[Sequence[float], float | None, str, Sequence[float]] | None,
    index: int,
    value: float,
    samples: Sequence[float],
    status: str,
) -> tuple[list[float], list[float], str]:
    """(passes, samples, status) of a row once pass ``index`` gave ``value``. ``old``: the
    stored row's (passes, median_ms, status, samples), or None for a row's first pass."""
    if old is None or index == 0:
        return [float(value)], list(samples), status
    passes, median_ms, old_status, old_samples = old
    out = with_pass(prior(passes, median_ms, old_status), index, value)
    noisy = "noisy" in (status, old_status)
    return out, [*old_samples, *samples], "noisy" if noisy else status


def combined(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def spread(rows: Iterable[Sequence[float]]) -> float | None:
    """Median relative distance of a pass from its row's median, over rows with 2+ passes:
    how much one pass alone would have been off."""
    devs = [abs(v / combined(r) - 1) for r in rows if len(r) > 1 for v in r]
    return round(statistics.median(devs), 4) if devs else None
