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
family (a generic k x k grouped conv for families it does not know). The target is modelled
in two parts: a non-negative linear fit of latency on (1, FLOPs, bytes), which extrapolates
sensibly to unseen sizes and families, times a LightGBM correction learned on the log ratio.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hurricane.errors import UserError
from hurricane.opnames import OpNameError, parse_op
from hurricane.space import OpInstance

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


# --- per-family cost --------------------------------------------------------------------
Conv = tuple[int, int, int, int, int, int, int]  # cin, cout, kernel, stride, groups, h, w


def _out(size: int, stride: int) -> int:
    return -(-size // stride)


def _convs(rec: Mapping[str, Any]) -> tuple[list[Conv], int]:
    """The convolutions a record stands for, and the channels of any squeeze-excite."""
    fam, cin, cout = rec["family"], rec["cin"], rec["cout"]
    k, e, g, s, h, w = (
        rec["kernel"],
        rec["expansion"],
        rec["groups"],
        rec["stride"],
        rec["h"],
        rec["w"],
    )
    ho, wo = _out(h, s), _out(w, s)
    se = 0
    if fam == "mb":
        hid = cin * e
        convs = [
            (cin, hid, 1, 1, g, h, w),
            (hid, hid, k, s, hid, h, w),
            (hid, cout, 1, 1, g, ho, wo),
        ]
        se = hid
    elif fam == "ds":
        convs = [(cin, cin, k, s, cin, h, w), (cin, cout, 1, 1, 1, ho, wo)]
        se = cin
    elif fam == "fmb":
        hid = cin * e
        convs = [(cin, hid, k, s, 1, h, w), (hid, cout, 1, 1, 1, ho, wo)]
        se = hid
    elif fam in ("shuffle", "shufflex"):
        kk = 3 if fam == "shufflex" else k
        if s == 1:
            keep = min(cin // 2, cout // 2)
            bi, bo = cin - keep, cout - keep
            convs = []
        else:
            bi, bo = cin, cout - cout // 2
            convs = [(cin, cin, kk, s, cin, h, w), (cin, cout // 2, 1, 1, 1, ho, wo)]
        if fam == "shufflex":
            convs += [
                (bi, bi, 3, s, bi, h, w),
                (bi, bo, 1, 1, 1, ho, wo),
                (bo, bo, 3, 1, bo, ho, wo),
                (bo, bo, 1, 1, 1, ho, wo),
                (bo, bo, 3, 1, bo, ho, wo),
                (bo, bo, 1, 1, 1, ho, wo),
            ]
        else:
            convs += [(bi, bo, 1, 1, 1, h, w), (bo, bo, kk, s, bo, h, w), (bo, bo, 1, 1, 1, ho, wo)]
        se = bo
    elif fam == "res":
        convs = [(cin, cout, k, s, 1, h, w), (cout, cout, k, 1, 1, ho, wo)]
        if s != 1 or cin != cout:
            convs.append((cin, cout, 1, s, 1, h, w))
    elif fam == "skip":
        convs = [] if s == 1 and cin == cout else [(cin, cout, 1, s, 1, h, w)]
    elif fam == "head":
        # A 1x1 conv to ``expansion`` channels (0: none), global pooling, a classifier.
        mid = e if e > 1 else 0
        convs = [(cin, mid, 1, 1, 1, h, w)] if mid else []
        convs.append((mid or cin, cout, 1, 1, 1, 1, 1))
    else:  # conv, and any family another tool names: one k x k grouped convolution
        convs = [(cin, cout, k, s, max(1, min(g, cin, cout)), h, w)]
    return convs, (se if rec["se"] else 0)


def cost(rec: Mapping[str, Any]) -> tuple[float, float, float]:
    """(multiply-adds, parameters, bytes moved at fp32) of a normalised record."""
    convs, se = _convs(rec)
    flops = params = moved = 0.0
    for ci, co, k, s, g, h, w in convs:
        ho, wo = _out(h, s), _out(w, s)
        p = co * (ci // max(g, 1) or 1) * k * k
        flops += p * ho * wo
        params += p
        moved += ci * h * w + co * ho * wo
    if se:
        r = max(1, se // 4)
        flops += 2 * se * r
        params += 2 * se * r
    return flops, params, 4.0 * (moved + params)


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
    family, kernel, expansion, groups, se, act = op.split("_")[0], 1, 1, 1, False, None
    if op.startswith("head_c"):
        family, expansion = "head", int(op[len("head_c") :] or 0)
    else:
        try:
            spec = parse_op(op)
        except OpNameError:
            pass
        else:
            family, groups, se, act = spec.family, spec.groups, spec.se, spec.act
            kernel, expansion = spec.kernel or 1, spec.expansion or 1
    out["family"] = family
    out["kernel"] = int(rec.get("kernel") or kernel)
    out["expansion"] = int(rec.get("expansion") or expansion)
    out["groups"] = int(rec.get("groups") or groups)
    out["stride"] = int(rec.get("stride") or 1)
    out["se"] = bool(rec.get("se", se))
    out["act"] = str(rec.get("act") or act or "relu")
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
            flops, params, moved = cost(r)
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

    def predict(
        self, records: Sequence[Mapping[str, Any]] | Mapping[str, Any]
    ) -> np.ndarray | float:
        """Predicted latency (ms) of one record or an array for a sequence."""
        if self.booster is None:
            raise UserError("this OpPredictor is not fitted yet: call fit(records, latencies_ms)")
        single = isinstance(records, Mapping)
        x, lin = self._matrix([records] if single else records, learn=False)
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
