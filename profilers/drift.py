"""Catching a device that was slower than usual for a whole batch.

On a shared device other work slows whole seconds at a time. A batch timed inside such a
stretch is slowed evenly for every item, so each item's rounds agree with one another and the
per-item noise check passes; measured here, 20 of 127 demo models timed in one 4-second
stretch came out 16-23% slower than when measured again. A fixed reference model rides in
every batch; a batch whose reference ran more than ``drift_threshold`` slower than the
reference's median over the session's batches is measured again, and at the end every batch
accepted before the median settled is checked again against it. Where the reference's own
rounds spread wider than the threshold (the engine's noise floor), that spread is the
threshold. A device slow for a whole session moves the median too; that is caught against
the LUT's profile runs instead (``profilers.measure.warn_if_slower``).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from devices.artifacts import Artifact, ArtifactCache
from devices.convert import ConversionError
from devices.spec import DeviceSpec

REFERENCE_ID = "__reference__"


def reference_module() -> tuple[nn.Module, torch.Tensor]:
    """A small fixed network (about 30 µs on one x86 core): long enough to time well, short
    enough to cost little in every batch. Seeded, so its artifact is cached once per runtime."""
    gen = torch.Generator().manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(16, 32, 1),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1, groups=32),
        nn.ReLU(),
        nn.Conv2d(32, 16, 1),
    )
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return net.eval(), torch.randn(1, 16, 28, 28, generator=gen)


@dataclass
class DriftGuard:
    """Judges each batch by its reference latency. ``artifact=None`` turns the guard off (no
    reference could be converted, or the spec sets ``drift_threshold = 0``)."""

    artifact: Artifact | None
    threshold: float
    retries: int
    best_ms: float = math.inf
    rejected: int = 0  # batches measured again
    accepted_ms: dict[str, float] = field(default_factory=dict)  # item id -> its batch's ref
    tries: dict[str, int] = field(default_factory=dict)
    rechecked: bool = False
    refs_ms: list[float] = field(default_factory=list)
    # The reference's own spread within a batch (set by the engine): a batch slower by less
    # than that is not evidence of drift, so measuring it again would not do better.
    floor: float = 0.0

    @property
    def typical_ms(self) -> float:
        """The reference's median over this session's batches: the device's usual speed."""
        return statistics.median(self.refs_ms) if self.refs_ms else math.inf

    @property
    def limit(self) -> float:
        """A batch whose reference ran slower than this is measured again. Held against the
        session's median, not its best: the best of many batches is an extreme that typical
        batches miss (demo profile here: best 0.0202 ms, median 0.0230 ms, so 101 batches were
        measured again against a 3% threshold, for nothing)."""
        return self.typical_ms * (1 + max(self.threshold, self.floor))

    @classmethod
    def for_spec(cls, spec: DeviceSpec, cache: ArtifactCache) -> DriftGuard:
        m = spec.measure
        if m.drift_threshold <= 0:
            return cls(None, 0.0, 0)
        net, x = reference_module()
        calibration = x.repeat(4, 1, 1, 1) if spec.runtime.precision == "int8" else None
        try:
            art = cache.get(net, x, spec.runtime.name, spec.runtime.precision, calibration)
        except ConversionError:
            return cls(None, 0.0, 0)
        return cls(art, m.drift_threshold, m.drift_retries)

    @property
    def enabled(self) -> bool:
        return self.artifact is not None

    def with_reference(self, items: list[tuple[str, Artifact]]) -> list[tuple[str, Artifact]]:
        if self.artifact is None or not items:  # not enabled
            return items
        return [*items, (REFERENCE_ID, self.artifact)]

    def judge(
        self, results: list[dict[str, Any]], latency: Any
    ) -> tuple[list[dict[str, Any]], list[str]]:
        """Split a batch's results into those to keep and the ids to measure again.
        ``latency`` maps a result line to milliseconds (the spec's statistic)."""
        ref = [r for r in results if r.get("id") == REFERENCE_ID]
        results = [r for r in results if r.get("id") != REFERENCE_ID]
        if not ref or ref[0].get("type") != "result":
            return results, []  # crashed or failed: nothing to judge by
        ref_ms = latency(ref[0])
        self.refs_ms.append(ref_ms)
        self.best_ms = min(self.best_ms, ref_ms)
        ids = [r["id"] for r in results if r.get("type") == "result"]
        if ref_ms > self.limit:
            again = [i for i in ids if self.tries.get(i, 0) < self.retries]
            if again:
                self.rejected += 1
                for i in again:
                    self.tries[i] = self.tries.get(i, 0) + 1
                return [r for r in results if r.get("id") not in set(again)], again
        for i in ids:
            self.accepted_ms[i] = ref_ms
        return results, []

    def recheck(self) -> list[str]:
        """Once, at the end: the ids kept from batches that look slow against the final best."""
        if self.rechecked or not self.enabled:
            return []
        self.rechecked = True
        return [
            i
            for i, ms in self.accepted_ms.items()
            if ms > self.limit and self.tries.get(i, 0) < self.retries
        ]

    def to_json(self) -> dict[str, Any]:
        refs = sorted(self.refs_ms)
        return {
            "reference": self.enabled,
            "threshold": self.threshold,
            "batches_remeasured": self.rejected,
            "reference_best_ms": None if not refs else round(refs[0], 5),
            "reference_median_ms": None if not refs else round(refs[len(refs) // 2], 5),
        }
