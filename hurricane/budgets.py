"""Latency budgets: milliseconds, or a percentile of a space's predicted latencies.

One definition for every caller — a pipeline file's ``budgets``, ``--budget`` of ``hurricane
generate``, ``search`` and ``train --two-stage``, and the search benchmark — so that "40%"
names the same budget wherever it is written. A percentile is of ``PERCENTILE_SAMPLES``
seeded random architectures of the space as given (before stage one reduces it), so it does
not move when stage one's settings do. Once resolved, a budget is ``budget_ms`` all the way
to the evolution's constraint (``SearchConfig.budget_ms``).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from hurricane.errors import UserError
from hurricane.search import Latency
from hurricane.space import SearchSpace

PERCENTILE_SAMPLES = 2000
_PERCENT = re.compile(r"^(\d+(?:\.\d+)?)%$")
_HOW = 'milliseconds (a positive number, 0.08) or a percentile of the space\'s latencies ("40%")'


class BudgetError(UserError):
    pass


@dataclass(frozen=True)
class Budget:
    """A latency budget: ``ms`` milliseconds, or the ``percentile`` of random architectures'
    predicted latency on the device (a budget that suits any machine, for examples)."""

    ms: float | None = None
    percentile: float | None = None

    @property
    def label(self) -> str:
        return f"{self.ms:g}ms" if self.ms is not None else f"p{self.percentile:g}"

    @classmethod
    def parse(cls, value: Any) -> Budget:
        """A number or numeric string is milliseconds; ``"N%"`` is a percentile."""
        if isinstance(value, str) and not _PERCENT.match(value.strip()):
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if value > 0 and np.isfinite(value):
                return cls(ms=float(value))
        elif isinstance(value, str) and (m := _PERCENT.match(value.strip())):
            p = float(m.group(1))
            if 0 < p <= 100:
                return cls(percentile=p)
        raise BudgetError(f"a budget is {_HOW}, got {value!r}")

    def resolve(self, predict: Latency, space: SearchSpace, seed: int) -> float:
        """Milliseconds: the budget itself, or its percentile of ``space``'s latencies."""
        if self.ms is not None:
            return self.ms
        if self.percentile is None:  # Budget() built in code with neither
            raise BudgetError(f"a budget is {_HOW}, got neither")
        return percentile_ms(predict, space, self.percentile, seed)


def percentile_ms(predict: Latency, space: SearchSpace, percentile: float, seed: int) -> float:
    """The ``percentile`` of the predicted latency of ``PERCENTILE_SAMPLES`` random
    architectures of ``space``, drawn from ``random.Random(seed)``."""
    rng = random.Random(seed)
    archs = [space.sample_arch(rng) for _ in range(PERCENTILE_SAMPLES)]
    return round(float(np.percentile(predict(archs), percentile)), 6)
