"""A learned operator latency model for one device: operator features -> milliseconds.

The LUT only knows what was measured; dynamic channel scaling and other tools' tables bring
configurations nobody profiled. ``OpPredictor`` learns from any table of records, a record
being a plain dict with these keys (all optional except where noted):

- ``op``: an operator name (``mb_k5_e6_se``, FBNet's ``k3_e1_g2``, ``head_c128``) or any
  family name another tool uses (``dwconv``, ``fc``); unknown families are fine
- ``cin``, ``cout``: channels in and out; ``h``, ``w``: input size; ``stride``
- ``kernel``, ``expansion``, ``groups``, ``se`` (bool), ``act`` (``relu``, ``hswish``, ...):
  taken from ``op`` when it is a Hurricane name, else from the record (defaults 1, 1, 1,
  False, ``relu``)

Features are the op family, those fields, and FLOPs, parameters and bytes moved, computed per
family by ``hurricane.costs`` (a generic k x k grouped conv for families it does not know). The
target is modelled in two parts: a non-negative linear fit of latency on (1, FLOPs, bytes),
which extrapolates sensibly to unseen sizes and families, times a LightGBM correction learned on
the log ratio.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, overload

import numpy as np

from hurricane.costs import Block, op_fields
from hurricane.errors import UserError
from hurricane.lutkeys import OpInstance

RECORD_KEYS = (
    "op",
    "cin",
    "cout",
    "h",
    "w",
    "kernel",
    "stride",
    "groups",
    "expansion",
    "se",
    "act",
)
FEATURES = (
    "family",
    "act",
    "kernel",
    "expansion",
    "groups",
    "se",
    "cin",
    "cout",
    "h",
    "w",
    "stride",
    "mflops",
    "kparams",
    "kbytes",
)
_CATEGORICAL = (0, 1)  # family, act


def record_from_instance(inst: OpInstance) -> dict[str, Any]:
    """The record of a LUT key (its op name is parsed later, with the rest)."""
    return {
        "op": inst.op,
        "cin": inst.cin,
        "cout": inst.cout,
        "h": inst.h,
        "w": inst.w,
        "stride": inst.stride,
        "act": inst.act,
    }


def block_of(rec: Mapping[str, Any]) -> Block:
    """The block a normalised record stands for (its cost: ``block_of(rec).cost()``)."""
    return Block(
        rec["family"],
        rec["cin"],
        rec["cout"],
        rec["h"],
        rec["w"],
        rec["stride"],
        rec["kernel"],
        rec["expansion"],
        rec["groups"],
        rec["se"],
    )


def normalise(rec: Mapping[str, Any]) -> dict[str, Any]:
    """A record with every field filled: parsed from a Hurricane op name where possible."""
    if not isinstance(rec, Mapping):
        raise UserError(f"a latency record must be a dict with keys {RECORD_KEYS}, got {rec!r}")
    op = str(rec.get("op") or "unknown")
    out: dict[str, Any] = {"op": op}
    for key in ("cin", "cout", "h", "w"):
        if key not in rec and key in ("cin", "h"):
            raise UserError(f"latency record {dict(rec)!r}: needs {key!r}")
        out[key] = int(rec.get(key, rec.get("cin" if key == "cout" else "h")))
    named = op_fields(op)
    out["family"] = named["family"]
    out["kernel"] = int(rec.get("kernel") or named["kernel"])
    out["expansion"] = int(rec.get("expansion") or named["expansion"])
    out["groups"] = int(rec.get("groups") or named["groups"])
    out["stride"] = int(rec.get("stride") or 1)
    out["se"] = bool(rec.get("se", named["se"]))
    out["act"] = str(rec.get("act") or named["act"] or "relu")
    return out


class OpPredictor:
    """Operator latency for one device, scikit-learn style: ``fit(records, latencies_ms)``,
    ``predict(records)``. See the module docstring for the record keys."""

    def __init__(self, n_estimators: int = 400, learning_rate: float = 0.05, seed: int = 0) -> None:
        self.n_estimators, self.learning_rate, self.seed = n_estimators, learning_rate, seed
        self.families: dict[str, int] = {}
        self.acts: dict[str, int] = {}
        self.linear = np.zeros(3)
        self.booster: Any = None
        self.n_train = 0

    # --- features -----------------------------------------------------------------------
    def _matrix(
        self, records: Iterable[Mapping[str, Any]], learn: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        rows, lin = [], []
        for raw in records:
            r = normalise(raw)
            if learn:
                self.families.setdefault(r["family"], len(self.families))
                self.acts.setdefault(r["act"], len(self.acts))
            flops, params, moved = block_of(r).cost()
            rows.append(
                [
                    self.families.get(r["family"], -1),
                    self.acts.get(r["act"], -1),
                    r["kernel"],
                    r["expansion"],
                    r["groups"],
                    float(r["se"]),
                    r["cin"],
                    r["cout"],
                    r["h"],
                    r["w"],
                    r["stride"],
                    flops / 1e6,
                    params / 1e3,
                    moved / 1e3,
                ]
            )
            lin.append([1.0, flops / 1e6, moved / 1e6])
        # Negative codes are LightGBM's "missing": an unseen family takes the default branch.
        return np.asarray(rows, dtype=float).reshape(-1, len(FEATURES)), np.asarray(lin).reshape(
            -1, 3
        )

    # --- learning -----------------------------------------------------------------------
    def fit(
        self, records: Sequence[Mapping[str, Any]], latencies_ms: Sequence[float]
    ) -> OpPredictor:
        import lightgbm
        from scipy.optimize import nnls

        y = np.asarray(latencies_ms, dtype=float)
        if len(records) != len(y):
            raise UserError(f"fit: {len(records)} records but {len(y)} latencies")
        if len(y) < 2 or not np.all(np.isfinite(y)) or np.any(y <= 0):
            raise UserError("fit: need at least 2 records with positive, finite latencies (ms)")
        self.families, self.acts = {}, {}
        x, lin = self._matrix(records, learn=True)
        # Relative least squares (rows scaled by 1/y): every size counts alike.
        self.linear, _ = nnls(lin / y[:, None], np.ones_like(y))
        base = self._base(lin)
        n = len(y)
        model = lightgbm.LGBMRegressor(
            n_estimators=self.n_estimators,
            learning_rate=self.learning_rate,
            num_leaves=31,
            min_child_samples=max(2, min(20, n // 20)),
            subsample=0.8,
            subsample_freq=1,
            colsample_bytree=0.9,
            min_split_gain=0.0,
            cat_smooth=1.0,
            min_data_per_group=2,
            reg_lambda=1.0,
            random_state=self.seed,
            deterministic=True,
            force_row_wise=True,
            n_jobs=1,
            verbose=-1,
        )
        model.fit(x, np.log(y / base), categorical_feature=list(_CATEGORICAL))
        self.booster = model.booster_
        self.n_train = n
        return self

    def _base(self, lin: np.ndarray) -> np.ndarray:
        # Floor: a tiny op still costs the runtime's dispatch; never divide by ~0.
        floor = max(self.linear[0], 1e-4)
        return np.maximum(lin @ self.linear, floor)

    @overload
    def predict(self, records: Mapping[str, Any]) -> float: ...
    @overload
    def predict(self, records: Sequence[Mapping[str, Any]]) -> np.ndarray: ...
    def predict(
        self, records: Sequence[Mapping[str, Any]] | Mapping[str, Any]
    ) -> np.ndarray | float:
        """Predicted latency (ms) of one record or an array for a sequence."""
        if self.booster is None:
            raise UserError("this OpPredictor is not fitted yet: call fit(records, latencies_ms)")
        single = isinstance(records, Mapping)
        x, lin = self._matrix([records] if isinstance(records, Mapping) else records, learn=False)
        if not len(x):
            return np.zeros(0)
        out = self._base(lin) * np.exp(self.booster.predict(x))
        return float(out[0]) if single else out

    # --- persistence --------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        if self.booster is None:
            raise UserError("save: this OpPredictor is not fitted yet")
        state = {
            "format": "hurricane-op-predictor/1",
            "families": self.families,
            "acts": self.acts,
            "linear": self.linear.tolist(),
            "n_train": self.n_train,
            "seed": self.seed,
            "booster": self.booster.model_to_string(),
        }
        Path(path).write_text(json.dumps(state))

    @classmethod
    def load(cls, path: str | Path) -> OpPredictor:
        import lightgbm

        try:
            state = json.loads(Path(path).read_text())
            assert state["format"] == "hurricane-op-predictor/1"
        except (OSError, ValueError, KeyError, AssertionError) as exc:
            raise UserError(f"{path}: not a saved Hurricane operator predictor ({exc})") from None
        self = cls(seed=state["seed"])
        self.families, self.acts = state["families"], state["acts"]
        self.linear, self.n_train = np.asarray(state["linear"]), state["n_train"]
        self.booster = lightgbm.Booster(model_str=state["booster"])
        return self


def mape(predicted: np.ndarray, measured: np.ndarray) -> float:
    predicted, measured = np.asarray(predicted, float), np.asarray(measured, float)
    return float(np.mean(np.abs(predicted - measured) / measured)) if len(measured) else math.nan
