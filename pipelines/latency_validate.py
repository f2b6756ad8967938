"""Validate a device's latency model against end-to-end measurements.

Sample random architectures, measure each whole network on the device, fit the model-level
calibration on some of them and judge the prediction on the others (never the same ones).
Results go to the LUT database (``validations``), a JSON file and a scatter plot.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import numpy as np

from devices.spec import DeviceSpec
from hurricane.arch import Arch
from hurricane.calibration import Calibration, accuracy, spread_choice
from hurricane.errors import UserError
from hurricane.latency import USABLE, LutPredictor, fill_missing, read_table
from hurricane.lut import LutDB
from hurricane.space import SearchSpace
from profilers.models import measure_archs

POOL = 10  # calibration candidates per calibration model


def sample_distinct(
    space: SearchSpace, n: int, seed: int, at_least: int | None = None
) -> list[Arch]:
    """``n`` distinct uniformly sampled architectures (seeded), or as many as the space has
    if that is fewer but still ``at_least`` (default ``n``)."""
    rng, seen = random.Random(seed), dict[str, Arch]()
    for _ in range(50 * n + 100):
        if len(seen) == n:
            break
        a = space.sample_arch(rng)
        seen.setdefault(str(a), a)
    need = n if at_least is None else at_least
    if len(seen) < need:
        raise UserError(
            f"space {space.name!r} has fewer than {need} distinct architectures; "
            "ask for fewer with --n / --calibration"
        )
    return list(seen.values())


def scatter_plot(path: Path, measured, raw, calibrated, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.asarray(measured)
    lo, hi = float(min(m.min(), np.min(raw), np.min(calibrated))), float(m.max()) * 1.05
    fig, ax = plt.subplots(figsize=(5.5, 5), dpi=120)
    xs = np.array([lo * 0.95, hi])
    ax.fill_between(xs, xs * 0.9, xs * 1.1, color="0.9", label="±10%")
    ax.fill_between(xs, xs * 0.95, xs * 1.05, color="0.8", label="±5%")
    ax.plot(xs, xs, color="0.4", lw=0.8)
    ax.scatter(m, raw, s=12, marker="x", color="tab:orange", label="LUT sum")
    ax.scatter(m, calibrated, s=12, color="tab:blue", label="calibrated")
    ax.set_xlabel("measured latency (ms)")
    ax.set_ylabel("predicted latency (ms)")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def validate_latency(
    space: SearchSpace,
    spec: DeviceSpec,
    db_path: str | Path,
    n: int = 100,
    n_calibration: int = 30,
    seed: int = 0,
    out_dir: str | Path | None = None,
    progress: bool = True,
    cache: Any = None,
) -> dict[str, Any]:
    t0 = time.perf_counter()
    table = read_table(space, db_path, spec.name)  # fails early, naming the profile command
    table, predicted_keys = fill_missing(space, table, spec.name, seed)
    lut = LutPredictor(space, table, spec.name)
    # Held-out models are uniform; calibration models are picked from a larger uniform pool
    # to span its predicted range (see hurricane.calibration.spread_choice).
    pool = sample_distinct(space, n + POOL * n_calibration, seed, at_least=n + n_calibration)
    held, candidates = pool[:n], pool[n:]
    calib = [candidates[i] for i in spread_choice(lut.predict(candidates), n_calibration)]
    archs = calib + held
    # One shuffled order for both sets, so any drift on the device touches them alike.
    order = list(archs)
    random.Random(seed + 1).shuffle(order)
    rows = measure_archs(space, spec, order, db_path, cache=cache, progress=progress, seed=seed)
    usable = {a: r["median_ms"] for a, r in rows.items() if r["status"] in USABLE}
    failed = {a: r.get("error") for a, r in rows.items() if r["status"] not in USABLE}
    calib = [a for a in calib if str(a) in usable]
    held = [a for a in held if str(a) in usable]
    if len(calib) < 2 or not held:
        raise UserError(
            f"{spec.name}: only {len(usable)} of {len(archs)} models could be "
            f"measured ({next(iter(failed.values()), '')}); see hurricane devices "
            f"check {spec.source}"
        )
    summed_c = lut.predict(calib)
    summed_h = lut.predict(held)
    measured_c = np.array([usable[str(a)] for a in calib])
    measured_h = np.array([usable[str(a)] for a in held])
    cal = Calibration.fit(summed_c, measured_c)
    predicted = cal(summed_h)
    out = Path(out_dir) if out_dir else Path("runs") / "latency" / f"{spec.name}-{space.name}"
    plot = out / "scatter.png"
    metrics = accuracy(predicted, measured_h)
    result = {
        "device": spec.name,
        "space": space.name,
        "space_hash": space.structure_hash(),
        **metrics,
        "uncalibrated": accuracy(summed_h, measured_h),
        "calibration": cal.to_json(),
        "n_calibration": len(calib),
        "predicted_entries": len(predicted_keys),
        "failed_models": len(failed),
        "seed": seed,
        "protocol": {
            "warmup": spec.measure.warmup,
            "rounds": spec.measure.rounds,
            "runs": spec.measure.runs,
            "min_round_ms": spec.measure.min_round_ms,
            "statistic": f"{spec.measure.statistic} of round medians",
            "drift_threshold": spec.measure.drift_threshold,
            "batch": 1,
            "passes": spec.measure.passes,
        },
        "plot": str(plot),
        "seconds": round(time.perf_counter() - t0, 1),
        "models": [
            {
                "arch": str(a),
                "role": role,
                "summed_ms": float(s),
                "measured_ms": float(m),
                "predicted_ms": float(cal(s)),
            }
            for role, group, sums, meas in (
                ("calibration", calib, summed_c, measured_c),
                ("held_out", held, summed_h, measured_h),
            )
            for a, s, m in zip(group, sums, meas)
        ],
    }
    title = (
        f"{spec.name}, space {space.name}: {metrics['within_10pct']:.0%} within ±10%, "
        f"MAPE {metrics['mape']:.1%}, n={metrics['n']}"
    )
    scatter_plot(plot, measured_h, summed_h, predicted, title)
    (out / "validation.json").write_text(json.dumps(result, indent=1))
    with LutDB(db_path) as db:
        result["id"] = db.add_validation(db.device_id(spec.name), space.name, result)
    return result


def summary_lines(r: dict[str, Any]) -> list[str]:
    u, c = r["uncalibrated"], r["calibration"]
    return [
        f"{r['device']} / {r['space']}: {r['n']} held-out models (calibrated on "
        f"{r['n_calibration']}; {r['predicted_entries']} LUT entries predicted, "
        f"{r['failed_models']} models failed)",
        f"  {'':<12} {'within ±5%':>10} {'within ±10%':>11} {'RMSE ms':>9} {'MAPE':>7} "
        f"{'Spearman':>9}",
        *(
            f"  {name:<12} {m['within_5pct']:>10.1%} {m['within_10pct']:>11.1%} "
            f"{m['rmse_ms']:>9.4f} {m['mape']:>7.2%} {m['spearman']:>9.4f}"
            for name, m in (("LUT sum", u), ("calibrated", r))
        ),
        f"  calibration: measured = {c['scale']:.4f} x sum + {c['offset_ms']:.4f} ms",
        f"  plot: {r['plot']}",
    ]
