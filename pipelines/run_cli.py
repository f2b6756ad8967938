"""CLI commands for whole jobs: ``run PIPELINE.toml``, ``generate``, ``handoff`` (and
``handoff verify BUNDLE``) and ``report RUN_DIR`` (the HTML report of a run, again)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from hurricane.adaptive import AdaptiveSettings
from hurricane.budgets import Budget
from hurricane.errors import UserError
from hurricane.reduce import RULES, SKIP_RULES
from hurricane.supernet import SHARING
from hurricane.train import TrainConfig
from pipelines.argtypes import (
    add_train_on_args,
    below_one,
    budget,
    int_at_least,
    nonnegative_int,
    positive_int,
    train_on_from,
)
from pipelines.config import (
    COMMAND_LINE,
    DEFAULT_DB,
    FINAL_FROM,
    GenerateSettings,
    Pipeline,
    load_pipeline,
)


def summary_lines(run, seconds: float) -> list[str]:
    lines = [
        f"pipeline {run.p.name}: {len(run.steps.log.ran)} steps run, "
        f"{len(run.steps.log.skipped)} skipped, {seconds:.0f}s"
    ]
    for dev, res in run.results.items():
        for label, b in res["budgets"].items():
            fin, hand = b["final"], b.get("handoff") or {}
            ms = hand.get("measured_ms", fin.get("measured_ms"))
            accepted = hand.get("accepted", fin.get("accepted"))
            acc = fin.get("test_acc")
            lines.append(
                f"  {dev} @ {b['budget_ms']:g} ms ({label}): {fin['arch']}; test accuracy "
                f"{'-' if acc is None else f'{acc:.4f}'}, measured "
                f"{'-' if ms is None else f'{ms:.4f} ms'}"
                f"{'' if accepted in (True, None) else ', NOT ACCEPTED'}"
            )
            if hand.get("bundle"):
                lines.append(f"    bundle: {hand['bundle']} (manifest sha256 {hand.get('digest')})")
    if getattr(run, "report_path", None):
        lines.append(f"report: {run.report_path}")
    return lines


def execute(p: Pipeline, progress: bool = True, require_measured: bool = False) -> int:
    from hurricane.compute import world_size
    from pipelines.jobs import PipelineRun

    if world_size() > 1:  # profiling, handoff and report are one process's work
        raise UserError(
            "a pipeline runs as one process; under torchrun use 'hurricane train "
            "[--two-stage]' or 'hurricane search', and set [train] torch_device for the pipeline"
        )

    t0 = time.perf_counter()
    run = PipelineRun(p, progress=progress, require_measured=require_measured)
    try:
        run.run()
    except KeyboardInterrupt:
        print(
            f"hurricane: interrupted; finished steps are kept in {p.out}/steps, run the "
            "same command again to resume",
            file=sys.stderr,
        )
        return 130
    print("\n".join(summary_lines(run, time.perf_counter() - t0)))
    accepted = [
        b.get("handoff", {}).get("accepted", True)
        for r in run.results.values()
        for b in r["budgets"].values()
    ]
    return 0 if all(a is not False for a in accepted) else 3


def _run(args: argparse.Namespace) -> int:
    p = load_pipeline(args.pipeline)
    p = replace(p, out=args.out or p.out, db=args.db or p.db, train=train_on_from(args, p.train))
    return execute(p, not args.no_progress, args.require_measured)


def _generate(args: argparse.Namespace) -> int:
    from pipelines.config import parse_pipeline

    gen = {
        "k": args.k,
        "rule": args.rule,
        "skip": args.skip,
        "two_stage": not args.single_stage,
        "steps": args.steps,
        "distill": args.distill,
        "sandwich": args.sandwich,
        "fair": args.fair,
        "share": args.share,
        "bn_batches": args.bn_batches,
        "eval_limit": args.eval_limit,
        "population": args.population,
        "generations": args.generations,
        "min_budget_fraction": args.min_budget_fraction,
        "verify_top": args.verify_top,
        "final_steps": args.final_steps,
        "final_from": args.final_from,
    }
    optional = {"split": args.split, "steps_b": args.steps_b, "train_limit": args.train_limit}
    gen.update({k: v for k, v in optional.items() if v is not None})
    p = parse_pipeline(
        {
            "name": Path(args.out).name or "generate",
            "space": args.space,
            "devices": args.device,
            "budgets": args.budget,
            "data": args.data,
            "db": args.db,
            "out": args.out,
            "seed": args.seed,
            "generate": gen,
            "train": {k: v for k, v in train_on_from(args).fields().items() if v is not None},
            "handoff": {"enabled": False},
            **({"adaptive": adaptive_from(args)} if args.depths else {}),
        },
        COMMAND_LINE,
    )
    return execute(p, not args.no_progress, args.require_measured)


def add_adaptive_args(parser: argparse.ArgumentParser) -> None:
    """GoldenNet flags: ``--depths`` turns the final model depth-adaptive."""
    d = AdaptiveSettings()
    parser.add_argument(
        "--depths",
        default=None,
        help="make the final model a GoldenNet: blocks each stage may drop (a number, or "
        "'default' for 2) or comma-separated variant names like s2-1,s2-1+s3-1",
    )
    parser.add_argument("--no-abn", action="store_true", help="one set of BN statistics")
    parser.add_argument("--per-depth-affine", action="store_true")
    parser.add_argument("--no-skd", action="store_true", help="no self-distillation")
    parser.add_argument("--kd-weight", type=float, default=d.kd_weight)
    parser.add_argument("--kd-temperature", type=float, default=d.kd_temperature)


def adaptive_from(args: argparse.Namespace) -> dict[str, Any]:
    """The ``[adaptive]`` table the GoldenNet flags stand for."""
    return {
        "depths": args.depths,
        "adaptive_bn": not args.no_abn,
        "per_depth_affine": args.per_depth_affine,
        "distill": not args.no_skd,
        "kd_weight": args.kd_weight,
        "kd_temperature": args.kd_temperature,
    }


def _report(args: argparse.Namespace) -> int:
    from pipelines.jobs import PipelineRun

    print(f"report: {PipelineRun.of_folder(args.run, args.db).report()}")
    return 0


def _handoff(args: argparse.Namespace) -> int:
    from pipelines.handoff import hardware_of, make_bundle, manifest_digest, verify_bundle

    if args.target == "verify":
        if not args.bundle:
            raise UserError(
                "handoff verify: give the bundle folder (hurricane handoff verify "
                "runs/NAME/bundles/DEVICE-BUDGET [--device SPEC])"
            )
        res = verify_bundle(args.bundle, args.device, digest=args.digest)
        for p in res["problems"]:
            print(f"  {p}")
        print(
            f"{res['bundle']}: {res['files']} files, "
            f"{'checksums match' if not res['problems'] else 'CHECKSUMS FAIL'}; "
            f"manifest says {'accepted' if res['accepted'] else 'NOT ACCEPTED'}"
        )
        print(f"  manifest sha256 {res['digest']}{' (as pinned)' if res['pinned'] else ''}")
        if "measured_ms" in res:
            o = res["outputs"]
            print(
                f"  on {res['device']}: {res['measured_ms']:.4f} ms (manifest: "
                f"{res['manifest_measured_ms']:.4f} ms, budget {res['budget_ms']} ms) "
                f"{res['decision']['verdict'] if res['within_budget'] else 'OVER BUDGET'} "
                f"(noise {res['noise']:.1%}); outputs "
                f"{'match' if o['passed'] else 'DIFFER'} (relative error "
                f"{o['relative_error']:.2g}, top-1 agreement {o['top1_agreement']:.0%})"
            )
        if res["problems"] or not res.get("outputs", {}).get("passed", True):
            return 1
        return 0 if res["ok"] else 3  # NOT ACCEPTED: recorded, or over budget again
    if not args.device:
        raise UserError("handoff: give --device SPEC (the device to export for and verify on)")
    from devices.spec import load_device

    target = Path(args.target)
    final_json = target / "final.json" if target.is_dir() else target
    if not final_json.is_file():
        raise UserError(
            f"{target}: no final.json; give the folder 'hurricane generate' wrote "
            "for one device and budget (RUN/DEVICE/BUDGET)"
        )
    fin = json.loads(final_json.read_text())
    if not fin.get("model"):
        raise UserError(f"{final_json}: no trained final model (final_steps was 0)")
    spec = load_device(args.device)
    budget = fin.get("budget_ms")
    if args.budget is not None:
        given = Budget.parse(args.budget)
        if given.ms is None:
            raise UserError(
                f"handoff --budget {args.budget}: give milliseconds here; a percentile "
                f"was resolved when the model was made ({final_json} says {budget} ms)"
            )
        budget = given.ms
    out = Path(args.out or final_json.parent / "bundle")
    acc = {
        "test_acc": fin.get("test_acc"),
        "test_images": fin.get("test_images"),
        "val_acc": fin.get("fitness"),
    }
    m = make_bundle(
        fin["space"],
        fin["model"],
        spec,
        out,
        budget,
        fin.get("predicted_ms"),
        acc,
        args.data,
        args.samples,
        args.seed,
        db=args.db,
        keep_local=args.private_paths,
        hardware=hardware_of(fin),
        golden=fin.get("adaptive"),
        depth_accuracy={d["name"]: d["test_acc"] for d in fin.get("depths", [])},
    )
    print(f"bundle {out}: {', '.join(m['files'])}")
    print(f"  manifest sha256 {manifest_digest(out)} (pin it: handoff verify BUNDLE --digest ...)")
    print(
        f"  {spec.name}: measured {m['latency']['measured_ms']:.4f} ms (budget {budget} ms); "
        f"outputs vs PyTorch: relative error "
        f"{m['verification']['device']['relative_error']:.2g}"
    )
    if not m["accepted"]:
        print(f"WARNING: NOT ACCEPTED: {'; '.join(m['reasons'])}", file=sys.stderr)
        return 3
    print("  accepted")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    from pipelines.search_cli import add_require_measured

    r = sub.add_parser("run", help="run a whole pipeline file (resumable, step by step)")
    r.add_argument("pipeline", help="pipeline TOML file or example name (demo, mobile-cpu, ...)")
    r.add_argument("--out", default=None, help="run folder (default: the file's 'out')")
    r.add_argument("--db", default=None, help="LUT database (default: the file's 'db')")
    r.add_argument("--no-progress", action="store_true")
    add_require_measured(r)
    add_train_on_args(r)
    r.set_defaults(func=_run)

    d = GenerateSettings()
    g = sub.add_parser(
        "generate",
        help="stage one, supernet training and constrained search "
        "for one or several devices and budgets",
    )
    g.add_argument("--space", required=True)
    g.add_argument("--device", action="append", required=True, help="device spec (repeatable)")
    g.add_argument(
        "--budget",
        action="append",
        required=True,
        type=budget,
        help="latency budget: ms, or a percentile like 40%% (repeatable)",
    )
    g.add_argument("--data", default=Pipeline.data)
    g.add_argument("--db", default=DEFAULT_DB, help="LUT database (default: %(default)s)")
    g.add_argument("--out", default="runs/generate")
    g.add_argument(
        "--k", type=nonnegative_int, default=d.k, help="stage one: ops kept per layer (0: none)"
    )
    g.add_argument("--rule", default=d.rule, choices=list(RULES), help="stage one's rule")
    g.add_argument("--skip", default=d.skip, choices=SKIP_RULES, help="where stage one keeps skip")
    g.add_argument("--single-stage", action="store_true", help="SPOS instead of two-stage")
    g.add_argument("--split", type=positive_int, default=None)
    g.add_argument(
        "--steps",
        type=positive_int,
        default=d.steps,
        help="supernet steps per stage (default: %(default)s)",
    )
    g.add_argument("--steps-b", type=positive_int, default=None)
    onoff = argparse.BooleanOptionalAction
    g.add_argument(
        "--distill", action=onoff, default=d.distill, help="in-place distillation in the supernet"
    )
    g.add_argument(
        "--sandwich", action=onoff, default=d.sandwich, help="largest, smallest and random paths"
    )
    g.add_argument(
        "--fair", action=onoff, default=d.fair, help="FairNAS: every candidate once per step"
    )
    g.add_argument(
        "--share",
        choices=list(SHARING),
        default=d.share,
        help="which supernet candidates share one block (default: %(default)s)",
    )
    g.add_argument(
        "--bn-batches",
        type=positive_int,
        default=d.bn_batches,
        help="batch-norm recalibration batches per fitness (default: %(default)s)",
    )
    g.add_argument(
        "--eval-limit",
        type=positive_int,
        default=d.eval_limit,
        help="validation images per fitness",
    )
    g.add_argument("--population", type=int_at_least(2), default=d.population)
    g.add_argument("--generations", type=positive_int, default=d.generations)
    g.add_argument(
        "--min-budget-fraction",
        type=below_one,
        default=d.min_budget_fraction,
        metavar="F",
        help="make no candidate predicted under F x the budget (default: %(default)s)",
    )
    g.add_argument("--verify-top", type=positive_int, default=d.verify_top)
    g.add_argument("--final-steps", type=nonnegative_int, default=d.final_steps)
    g.add_argument(
        "--final-from",
        choices=FINAL_FROM,
        default=d.final_from,
        help="fine-tune the chosen model from its supernet weights, or retrain it",
    )
    g.add_argument("--train-limit", type=positive_int, default=None)
    g.add_argument("--seed", type=nonnegative_int, default=Pipeline.seed)
    g.add_argument("--no-progress", action="store_true")
    add_adaptive_args(g)
    add_require_measured(g)
    add_train_on_args(g)
    g.set_defaults(func=_generate)

    h = sub.add_parser(
        "handoff",
        help="export, verify on the device and bundle a final model; "
        "'handoff verify BUNDLE' re-checks a bundle",
    )
    h.add_argument("target", help="RUN/DEVICE/BUDGET folder (with final.json), or 'verify'")
    h.add_argument("bundle", nargs="?", help="with 'verify': the bundle folder")
    h.add_argument("--device", default=None, help="device spec (with verify: re-measure there)")
    h.add_argument(
        "--digest",
        default=None,
        metavar="SHA256",
        help="with verify: refuse the bundle unless its manifest.json has this sha256",
    )
    h.add_argument(
        "--private-paths",
        action="store_true",
        help="keep local paths, the command line and the host name in the manifest "
        "(for a bundle that stays in-house)",
    )
    h.add_argument(
        "--db", default=DEFAULT_DB, help="LUT database: how noisy the device is (%(default)s)"
    )
    h.add_argument(
        "--budget",
        type=budget,
        default=None,
        help="latency budget in ms (default: the one final.json names)",
    )
    h.add_argument("--out", default=None, help="bundle folder (default: beside final.json)")
    h.add_argument("--data", default=TrainConfig.data)
    h.add_argument(
        "--samples",
        type=positive_int,
        default=Pipeline.handoff_samples,
        help="images compared with PyTorch",
    )
    h.add_argument("--seed", type=nonnegative_int, default=Pipeline.seed)
    h.set_defaults(func=_handoff)

    rep = sub.add_parser(
        "report", help="write a run's HTML report (RUN/report/index.html) from what it holds"
    )
    rep.add_argument("run", help="the run folder (a 'hurricane run' or 'generate' --out)")
    rep.add_argument("--db", default=None, help="LUT database (default: the run's)")
    rep.set_defaults(func=_report)
