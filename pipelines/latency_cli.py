"""CLI commands for the latency model: ``latency validate``, ``latency predict``,
``latency sample``."""

from __future__ import annotations

import argparse
import sys

from pipelines.argtypes import int_at_least, nonnegative_int, positive_finite_float, positive_int
from pipelines.config import DEFAULT_DB


def _validate(args: argparse.Namespace) -> int:
    from devices.spec import load_device
    from hurricane.space_file import load_space
    from pipelines.latency_validate import summary_lines, validate_latency

    space, spec = load_space(args.space), load_device(args.device)
    result = validate_latency(
        space,
        spec,
        args.db,
        n=args.n,
        n_calibration=args.calibration,
        seed=args.seed,
        out_dir=args.out,
        progress=not args.no_progress,
    )
    print("\n".join(summary_lines(result)))
    print(f"  stored as validation {result['id']} in {args.db}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from devices.spec import load_device
    from hurricane.latency import LatencyModel, predicted_note
    from hurricane.space_file import load_space

    space = load_space(args.space)
    name = load_device(args.device).name
    note = predicted_note(space, args.db, name, args.device, args.require_measured)
    if note:
        print(f"hurricane: {note}", file=sys.stderr)
    model = LatencyModel.from_db(space, args.db, name)
    archs = [space.parse_arch(a) for a in args.arch]
    for a, summed, pred in zip(archs, model.predict_sum(archs), model.predict(archs)):
        print(f"{pred:9.4f} ms  (LUT sum {summed:.4f})  {a}")
    if model.predicted_keys and not note:
        print(f"note: {len(model.predicted_keys)} LUT entries were predicted, not measured")
    if model.calibration is None:
        print("note: no calibration stored for this space; run hurricane latency validate")
    return 0


def _sample(args: argparse.Namespace) -> int:
    from devices.spec import load_device
    from hurricane.space_file import load_space
    from profilers.adaptive import adaptive_sample

    report = adaptive_sample(
        load_space(args.space),
        load_device(args.device),
        args.db,
        budget=args.budget,
        target_mape=args.target_mape,
        per_round=args.per_round,
        seed=args.seed,
        progress=not args.no_progress,
    )
    for r in report["rounds"]:
        print(
            f"round {r['round']}: {r['train']} entries, cross-validated MAPE {r['cv_mape']:.2%}"
            + (f", profiled {r['added']} more" if r.get("added") else "")
        )
    print(f"{report['stopped']}; predictor saved to {report['predictor']}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    lat = sub.add_parser("latency", help="the latency model: validate, predict, sample")
    lsub = lat.add_subparsers(dest="latency_command", required=True)

    val = lsub.add_parser(
        "validate",
        help="measure random models end to end and score the calibrated LUT prediction on them",
    )
    val.add_argument("--space", required=True, help="built-in space name or TOML file")
    val.add_argument("--device", required=True, help="device spec TOML file or example name")
    val.add_argument(
        "--n", type=positive_int, default=100, help="held-out models (default: %(default)s)"
    )
    val.add_argument(
        "--calibration",
        type=int_at_least(2),
        default=30,
        help="models to fit the calibration on (default: %(default)s)",
    )
    val.add_argument("--seed", type=nonnegative_int, default=0)
    val.add_argument("--db", default=DEFAULT_DB, help="LUT database (default: %(default)s)")
    val.add_argument(
        "--out",
        default=None,
        help="folder for validation.json and scatter.png (default: runs/latency/DEVICE-SPACE)",
    )
    val.add_argument("--no-progress", action="store_true")
    val.set_defaults(func=_validate)

    pred = lsub.add_parser("predict", help="predicted latency of architectures on a device")
    pred.add_argument("--space", required=True)
    pred.add_argument("--device", required=True, help="device spec TOML file or example name")
    pred.add_argument("--db", default=DEFAULT_DB)
    pred.add_argument("arch", nargs="+", help="architecture strings")
    pred.add_argument(
        "--require-measured",
        action="store_true",
        help="refuse when more than half of the operator instances the space needs are not "
        "measured on the device (the operator predictor would guess them)",
    )
    pred.set_defaults(func=_predict)

    samp = lsub.add_parser(
        "sample",
        help="profile extra operator configurations where the "
        "operator predictor errs most (nn-Meter style)",
    )
    samp.add_argument("--space", required=True)
    samp.add_argument("--device", required=True)
    samp.add_argument("--db", default=DEFAULT_DB)
    samp.add_argument(
        "--budget", type=positive_int, default=200, help="configurations to profile at most"
    )
    samp.add_argument(
        "--target-mape",
        type=positive_finite_float,
        default=0.05,
        help="stop once cross-validated MAPE is below this (default: %(default)s)",
    )
    samp.add_argument("--per-round", type=positive_int, default=40)
    samp.add_argument("--seed", type=nonnegative_int, default=0)
    samp.add_argument("--no-progress", action="store_true")
    samp.set_defaults(func=_sample)
