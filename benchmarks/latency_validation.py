"""Latency-model accuracy on held-out architectures, per (device, space), on this machine.

    .venv/bin/python benchmarks/latency_validation.py [--devices local-litert local-openvino]
        [--spaces demo default] [--n 100] [--calibration 30] [--db runs/hurricane.sqlite]
        [--curve-spaces demo] [--curve-devices local-openvino]

For each pair: profile the space's LUT (resumable; nothing is measured twice), then run the
same validation as ``hurricane latency validate`` (N random architectures never used for the
calibration, measured end to end). For the spaces in --curve-spaces it also measures up to
200 more models and reports the whole-model predictor's error on the held-out set as the
number of models it learns from grows (10, 20, 50, 100, 200).

Writes benchmarks/results/latency_validation.json: a list with one object per (device, space)
holding device, space, n, within_5pct, within_10pct, rmse_ms, mape, spearman (and more).
Goal: within_10pct >= 0.99 and within_5pct >= 0.90.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from devices.spec import load_device
from hurricane.arch_predictor import ArchPredictor
from hurricane.calibration import accuracy
from hurricane.latency import USABLE
from hurricane.provenance import provenance
from hurricane.space_file import load_space
from pipelines.config import DEFAULT_DB
from pipelines.latency_validate import sample_distinct, summary_lines, validate_latency
from profilers.campaign import profile
from profilers.models import measure_archs

RESULTS = Path(__file__).parent / "results"
CURVE = (10, 20, 50, 100, 200)


def whole_model_curve(space, spec, db, held: list[str], seed: int) -> dict:
    """Fit ArchPredictor on the first k of 200 extra models; score on ``held``."""
    extra = [
        a for a in sample_distinct(space, 200 + len(held) + 50, seed + 7) if str(a) not in set(held)
    ][:200]
    rows = measure_archs(space, spec, extra, db, seed=seed + 7)
    train = [
        (a, rows[str(a)]["median_ms"])
        for a in extra
        if str(a) in rows and rows[str(a)]["status"] in USABLE
    ]
    held_rows = measure_archs(space, spec, [space.parse_arch(a) for a in held], db, progress=False)
    test_a = [a for a in held if held_rows[a]["status"] in USABLE]
    test_y = np.array([held_rows[a]["median_ms"] for a in test_a])
    out = {"n_models": [], "mape": [], "within_10pct": [], "within_5pct": []}
    for k in CURVE:
        if k > len(train):
            break
        model = ArchPredictor(space).fit([a for a, _ in train[:k]], [y for _, y in train[:k]])
        m = accuracy(model.predict(test_a), test_y)
        out["n_models"].append(k)
        for key in ("mape", "within_10pct", "within_5pct"):
            out[key].append(round(m[key], 4))
        print(
            f"  whole-model predictor from {k:>3} models: MAPE {m['mape']:.2%}, "
            f"within ±10% {m['within_10pct']:.1%}"
        )
    return out


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", nargs="+", default=["local-litert", "local-openvino"])
    ap.add_argument("--spaces", nargs="+", default=["demo", "default"])
    ap.add_argument("--curve-spaces", nargs="*", default=["demo"])
    ap.add_argument(
        "--curve-devices",
        nargs="*",
        default=["local-openvino"],
        help="devices for the whole-model learning curve (200 more models each)",
    )
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--calibration", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--db", default=DEFAULT_DB, help="LUT database (default: %(default)s)")
    return ap


def main() -> None:
    args = build_parser().parse_args()
    out = RESULTS / "latency_validation.json"
    results = json.loads(out.read_text()) if out.exists() else []
    curve_devices = {load_device(d).name for d in args.curve_devices}  # names, or spec files
    for space_name in args.spaces:
        for device_arg in args.devices:
            space, spec = load_space(space_name), load_device(device_arg)
            t0 = time.perf_counter()
            rep = profile(space, spec, args.db)
            device = spec.name  # a spec given as a file path is keyed by its name
            print(
                f"{device}/{space_name}: LUT has {rep.instances} entries "
                f"({rep.new_entries} new, {rep.seconds:.0f}s)"
            )
            plots = RESULTS / f"{device}-{space_name}"
            r = validate_latency(
                space,
                spec,
                args.db,
                n=args.n,
                n_calibration=args.calibration,
                seed=args.seed,
                out_dir=plots,
            )
            print("\n".join(summary_lines(r)))
            entry = {
                "device": device,
                "space": space_name,
                "n": r["n"],
                **{
                    k: round(r[k], 4)
                    for k in ("within_5pct", "within_10pct", "rmse_ms", "mape", "spearman")
                },
                "uncalibrated": {k: round(v, 4) for k, v in r["uncalibrated"].items()},
                "calibration": r["calibration"],
                "n_calibration": r["n_calibration"],
                "predicted_entries": r["predicted_entries"],
                "failed_models": r["failed_models"],
                "protocol": r["protocol"],
                "lut_drift": rep.drift,
                "seed": args.seed,
                "plot": str(Path(r["plot"]).relative_to(Path(__file__).parent)),
            }
            if space_name in args.curve_spaces and device in curve_devices:
                held = [m["arch"] for m in r["models"] if m["role"] == "held_out"]
                entry["whole_model_predictor"] = whole_model_curve(
                    space, spec, args.db, held, args.seed
                )
            entry["seconds"] = round(time.perf_counter() - t0, 1)
            entry["provenance"] = provenance()
            results = [e for e in results if (e["device"], e["space"]) != (device, space_name)]
            results.append(entry)
            RESULTS.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
