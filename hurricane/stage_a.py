"""Stage A's fixed layers: where HURRICANE's two-stage search splits the space, and the
architecture the layers stage A does not search are held at while it trains and searches.

Every two-stage caller (``hurricane run``/``generate``, ``train --two-stage``, the search
benchmark) takes both from here, so they split and fix the same way.
"""

from __future__ import annotations

import numpy as np

from hurricane.arch import Arch
from hurricane.latency import LatencyModel, LutPredictor
from hurricane.space import SearchSpace


def default_split(space: SearchSpace, split: int | None = None) -> int:
    """``split`` when given, else half the layers: stage A samples ``split`` and after."""
    return split if split is not None else len(space.layers) // 2


def stage_a_base(model: LatencyModel, split: int, budget_ms: float) -> Arch:
    """The architecture of the layers stage A does not search.

    Per layer the op of median latency (``LutPredictor.typical``) when the whole typical
    network fits the budget. Otherwise the early layers step down together, op by op in
    latency order and then to the narrowest width, to the first base under which the
    typical later layers still fit: stage B then has room both ways. Falling straight to the
    fastest base left stage B only the ops cheaper than ``skip`` (demo, LiteRT, a space
    reduced by flops_per_ms: 35 candidates evaluated instead of 200). If no step fits, the
    fastest base that leaves stage A's search feasible."""
    lut, late = model.lut, list(range(split, len(model.lut.space.layers)))
    typical = lut.typical()
    for base in _base_ladder(lut, split, typical):
        if model.predict(base) <= budget_ms:
            return base
    if model.fastest(late, typical)[0] <= 0.9 * budget_ms:
        return typical
    return model.fastest()[1]


def _base_ladder(lut: LutPredictor, split: int, typical: Arch) -> list[Arch]:
    """Typical, then the early layers (before ``split``) on ops ever lower in their latency
    order, at the middle width and then at the narrowest; the later layers stay typical."""
    orders, out = [], []
    for layer, tab in zip(lut.space.layers[:split], lut.tables):
        at_max = np.nan_to_num(tab[:, -1, -1], nan=np.inf)
        orders.append([layer.ops[j] for j in np.argsort(at_max, kind="stable")])
    for narrow in (False, True):
        for step in range((max(len(o) for o in orders) - 1) // 2, -1, -1):
            ops, widths = list(typical.ops), list(typical.widths)
            for i, order in enumerate(orders):
                ops[i] = order[min(step, (len(order) - 1) // 2)]
                if narrow:
                    widths[i] = min(lut.space.layers[i].widths)
            arch = Arch(tuple(ops), tuple(widths))
            if arch not in out:
                out.append(arch)
    return out
