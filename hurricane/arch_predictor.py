"""A whole-model latency predictor, for users who can only time complete networks.

``ArchPredictor(space).fit(archs, latencies_ms)`` / ``.predict(archs)``; an architecture is
an ``Arch``, its string, or a list of per-layer op names (widest width on every layer; the
``fbnet`` space takes FBNet's own names such as ``k3_e1_g2``).

The model is linear in what each layer costs: per candidate op, how often it appears and the
multiply-adds and bytes it moves at its layer's shape, plus the same totals over all ops.
Ridge regression (penalty chosen by leave-one-out) keeps the per-op terms small until there
are enough models to learn them, so a few models already give the shared costs, and more
models refine what each op costs beyond its FLOPs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeGuard

import numpy as np

from hurricane.arch import Arch
from hurricane.costs import instance_cost
from hurricane.errors import UserError
from hurricane.space import SearchSpace

ArchLike = Arch | str | Sequence[str]


class ArchPredictor:
    def __init__(self, space: SearchSpace) -> None:
        self.space = space
        self.ops = sorted({op for layer in space.layers for op in layer.ops})
        self._index = {op: i for i, op in enumerate(self.ops)}
        self.model: Any = None
        self.n_train = 0

    def as_arch(self, a: ArchLike) -> Arch:
        if isinstance(a, Arch):
            return self.space.validate_arch(a)
        if isinstance(a, str):
            return self.space.parse_arch(a)
        ops = list(a)
        return self.space.validate_arch(
            Arch.of(ops, [max(layer.widths) for layer in self.space.layers][: len(ops)])
        )

    def _is_op_list(self, a: object) -> TypeGuard[Sequence[str]]:
        """One architecture as per-layer op names (op names never contain '-' or '@')."""
        return (
            isinstance(a, (list, tuple))
            and len(a) == len(self.space.layers)
            and all(isinstance(o, str) and "-" not in o and "@" not in o for o in a)
        )

    def features(self, archs: Sequence[ArchLike]) -> np.ndarray:
        k = len(self.ops)
        x = np.zeros((len(archs), 3 + 3 * k))
        for r, a in enumerate(archs):
            for inst in self.space.arch_instances(self.as_arch(a)):
                flops, _, moved = instance_cost(inst)
                j = self._index[inst.op]
                x[r, [0, 1, 2]] += (flops / 1e6, moved / 1e6, float(inst.op != "skip"))
                x[r, [3 + j, 3 + k + j, 3 + 2 * k + j]] += (1.0, flops / 1e6, moved / 1e6)
        return x

    def fit(self, archs: Sequence[ArchLike], latencies_ms: Sequence[float]) -> ArchPredictor:
        from sklearn.linear_model import RidgeCV
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        y = np.asarray(latencies_ms, dtype=float)
        if len(archs) != len(y) or len(y) < 3:
            raise UserError(
                f"fit: need at least 3 architectures with one latency each, got "
                f"{len(archs)} architectures and {len(y)} latencies"
            )
        if not np.all(np.isfinite(y)) or np.any(y <= 0):
            raise UserError("fit: latencies must be positive milliseconds")
        x = self.features(archs)
        self.model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 3, 25)))
        # Weighted by 1/y^2: relative errors, so fast models count as much as slow ones.
        self.model.fit(x, y, ridgecv__sample_weight=1.0 / y**2)
        self.n_train = len(y)
        return self

    def predict(self, archs: Sequence[ArchLike] | ArchLike) -> np.ndarray | float:
        if self.model is None:
            raise UserError("this ArchPredictor is not fitted yet: call fit(archs, latencies_ms)")
        batch: Sequence[ArchLike]
        if isinstance(archs, (Arch, str)) or self._is_op_list(archs):
            single, batch = True, [archs]
        else:
            single, batch = False, archs
        out = self.model.predict(self.features(batch))
        return float(out[0]) if single else out
