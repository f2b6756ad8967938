"""CLI commands for the hardware-aware search: ``shrink`` (stage one), ``search`` (stage two
on a trained supernet) and ``train --two-stage`` (HURRICANE's two-stage training and search),
each ending with the final model: the device's check of the best candidates, then training
the chosen one from its inherited weights and scoring it on the test split."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hurricane.budgets import Budget
from hurricane.compute import is_main
from hurricane.errors import UserError
from hurricane.latency import space_ref
from hurricane.reduce import RULES, SKIP_RULES
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
from pipelines.config import DEFAULT_DB, FINAL_FROM, GenerateSettings


def say(msg: str) -> None:
    """A result line, printed once (by rank 0 under torchrun)."""
    if is_main():
        print(msg)


def _latency_model(space, db: str, device: str, require_measured: bool = False):
    from devices.spec import load_device
    from hurricane.latency import LatencyModel, predicted_note

    spec = load_device(device)
    note = predicted_note(space, db, spec.name, device, require_measured)
    if note:  # mostly predicted: one line with the figures and the command that measures
        print(f"hurricane: {note}", file=sys.stderr)
    model = LatencyModel.from_db(space, db, spec.name)
    if model.predicted_keys and not note:  # a few filled: say which, and how to measure them
        keys = model.predicted_keys
        print(
            f"note: {len(keys)} LUT entries this space needs are not measured on {spec.name} "
            f"({', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}); using the operator "
            f"predictor's estimates; {model.lut.hint}",
            file=sys.stderr,
        )
    return spec, model


def _shrink(args: argparse.Namespace) -> int:
    from devices.spec import load_device
    from hurricane.latency import predicted_note
    from hurricane.space_file import load_space
    from pipelines.jobs import shrink_for_device

    space = load_space(args.space)
    spec = load_device(args.device)
    note = predicted_note(space, args.db, spec.name, args.device, args.require_measured)
    if note:
        print(f"hurricane: {note}", file=sys.stderr)
    made_by = (
        f"Made by: hurricane shrink --space {args.space} --device {args.device} "
        f"--k {args.k} --rule {args.rule} --skip {args.skip} from {args.db}"
    )
    res = shrink_for_device(
        space,
        spec,
        args.db,
        args.k,
        args.rule,
        args.exclude or [],
        args.out,
        made_by,
        args.skip,
    )
    for i, ops in enumerate(res["kept"]):
        print(f"layer {i:>2}: {', '.join(ops)}")
    out = Path(res["space"])
    before, after = res["log10_size"]
    print(
        f"reduced space: {out} (log10 size {before:.1f} -> {after:.1f}); scores: "
        f"{out.with_suffix('.scores.json')}"
    )
    return 0


def _budget_ms(args: argparse.Namespace, space, model) -> float:
    """``--budget`` in milliseconds (a percentile as ``hurricane generate`` resolves it);
    kept on ``args.budget_ms`` for what follows."""
    from pipelines.jobs import check_reachable

    budget = Budget.parse(args.budget)
    args.budget_ms = budget.resolve(model.predict, space, args.seed)
    if budget.percentile is not None:
        say(f"budget {args.budget} of {space.name}'s latencies: {args.budget_ms:g} ms")
    check_reachable(args.budget, args.budget_ms, model, "--budget")
    return args.budget_ms


def _search_config(args: argparse.Namespace):
    g = GenerateSettings(
        population=args.population,
        generations=args.generations,
        parents=args.parents,
        mutations=args.mutations,
        crossovers=args.crossovers,
        min_budget_fraction=args.min_budget_fraction,
    )
    return g.search_config(args.budget_ms, args.seed)


def _supernet_pt(path: str) -> Path:
    p = Path(path)
    return p / "supernet.pt" if p.is_dir() else p


def _search(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from hurricane.search import EvolutionSearch, random_search
    from hurricane.space_file import load_space
    from hurricane.train import TrainConfig
    from hurricane.two_stage import data_for, fitness_for, load_supernet

    args.train_on = train_on_from(args)
    space = load_space(args.space)
    Budget.parse(args.budget)  # a mistyped budget fails before the LUT is read
    spec, model = _latency_model(space, args.db, args.device, args.require_measured)
    _budget_ms(args, space, model)
    cfg = _search_config(args)
    pt = _supernet_pt(args.supernet)
    summary = pt.parent / "summary.json"
    if summary.exists():  # a progressively shrunk supernet is searched over what it kept
        kept = json.loads(summary.read_text()).get("allowed_ops")
        if kept and any(len(k) < len(layer.ops) for k, layer in zip(kept, space.layers)):
            cfg = replace(cfg, allowed=kept)
    net = load_supernet(space, pt)
    tcfg = TrainConfig(
        space=args.space, data=args.data, eval_limit=args.eval_limit, **args.train_on.fields()
    )
    fitness = fitness_for(net, data_for(tcfg, space), tcfg, args.seed)
    out = Path(args.out)
    if args.random:
        res = random_search(space, model.predict, fitness, cfg, out=out / "search")
    else:
        res = EvolutionSearch(
            space, model.predict, fitness, cfg, out / "search", min_latency=model.fastest
        ).run()
    say(
        f"best: {res['best']}\n  validation accuracy {res['fitness']:.4f}, predicted "
        f"{res['latency_ms']:.3f} ms on {spec.name} (budget {args.budget_ms:g} ms); "
        f"{res['evaluated']} evaluated, {res['rejected']} over budget never evaluated; "
        f"history in {out / 'search'}"
    )
    final = _finalize(args, space, spec, res["top"], pt, out)
    if is_main():
        (out / "result.json").write_text(
            json.dumps({**res, "device": spec.name, "final": final}, indent=1)
        )
    return 0


def _finalize(args, space, spec, ranked, supernet_pt: Path, out: Path) -> dict | None:
    """Device check of the best candidates, then the final training (``jobs.final_model``)."""
    from pipelines.jobs import final_model

    final = final_model(
        space_ref(space),
        spec,
        ranked,
        args.budget_ms,
        args.db,
        supernet_pt,
        out,
        args.verify_top,
        args.final_steps,
        args.data,
        args.seed,
        measure=not args.no_measure,
        inherit=args.final_from == "inherited",
        train_on=args.train_on,
    )
    m = final.get("measured_ms")
    say(
        f"latency on {spec.name}: predicted {final['predicted_ms']:.3f} ms, measured "
        f"{'not measured' if m is None else f'{m:.3f} ms'}, budget {args.budget_ms:g} ms"
        f"{'' if final['accepted'] in (True, None) else ' — NOT ACCEPTED'}"
    )
    return final


def two_stage_command(args: argparse.Namespace, cfg) -> int:
    """``hurricane train --two-stage``: stage A, its search, stage B, its search, final."""
    import math

    from hurricane.space_file import load_space
    from hurricane.stage_a import default_split, stage_a_base
    from hurricane.two_stage import data_for, two_stage

    if not args.device or args.budget is None:
        raise UserError("--two-stage searches between its stages: give --device and --budget")
    args.train_on = train_on_from(args)
    space = load_space(args.space)
    Budget.parse(args.budget)  # a mistyped budget fails before the LUT is read
    spec, model = _latency_model(space, args.db, args.device, args.require_measured)
    _budget_ms(args, space, model)
    split = default_split(space, args.split)
    if args.steps is not None:
        steps_a = args.steps
    else:
        per_epoch = len(data_for(cfg, space).train) // cfg.batch_size
        steps_a = max(1, math.ceil(args.epochs * per_epoch))
    steps_b = args.steps_b if args.steps_b is not None else steps_a
    out = Path(args.out)
    fixed = stage_a_base(model, split, args.budget_ms)  # as `hurricane run` does
    res = two_stage(
        cfg,
        split,
        model.predict,
        _search_config(args),
        out,
        steps_a,
        steps_b,
        fixed=fixed,
        min_latency=model.fastest,
    )
    say(
        f"two-stage (split at layer {split}): {res['supernet_steps']} supernet steps in "
        f"{res['supernet_seconds']:.1f}s; best {res['arch']} validation accuracy "
        f"{res['fitness']:.4f}, predicted {res['latency_ms']:.3f} ms"
    )
    res["final"] = _finalize(
        args, space, spec, res["stage_b"]["top"], out / "stage_b" / "supernet.pt", out
    )
    if is_main():
        (out / "result.json").write_text(json.dumps(res, indent=1))
    return 0


def _add_search_args(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    d = GenerateSettings()
    p.add_argument("--population", type=int_at_least(2), default=d.population)
    p.add_argument("--generations", type=positive_int, default=d.generations)
    p.add_argument("--parents", type=positive_int, default=d.parents)
    p.add_argument("--mutations", type=nonnegative_int, default=d.mutations)
    p.add_argument("--crossovers", type=nonnegative_int, default=d.crossovers)
    p.add_argument(
        "--min-budget-fraction",
        type=below_one,
        default=d.min_budget_fraction,
        metavar="F",
        help="make no candidate predicted under F x the budget (0.9: search "
        "between 90%% and 100%% of it; default: %(default)s)",
    )
    p.add_argument(
        "--verify-top",
        type=positive_int,
        default=d.verify_top,
        help="measure the best N candidates on the device; keep the best within "
        "budget (default: %(default)s)",
    )
    p.add_argument(
        "--no-measure",
        action="store_true",
        help="trust the prediction: do not measure candidates on the device",
    )
    p.add_argument(
        "--final-steps",
        type=nonnegative_int,
        default=d.final_steps,
        help="fine-tune the chosen model this many steps from its inherited "
        "weights, then score it on the test split; 0 skips it (default: %(default)s)",
    )
    p.add_argument(
        "--final-from",
        choices=FINAL_FROM,
        default=d.final_from,
        help="fine-tune the chosen model from its supernet weights, or retrain it",
    )


_BUDGET_HELP = "latency budget: ms, or a percentile of the space's latencies like 40%%"


def add_require_measured(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    p.add_argument(
        "--require-measured",
        action="store_true",
        help="refuse when more than half of the operator instances the space needs are not "
        "measured on the device (the operator predictor would guess them)",
    )


def add_two_stage_args(p: argparse.ArgumentParser) -> None:
    """``hurricane train --two-stage`` options (the train options come from cli.py)."""
    g = p.add_argument_group("two-stage (HURRICANE)")
    g.add_argument(
        "--two-stage",
        action="store_true",
        help="stage A samples layers from --split on, a search fixes them, stage B "
        "samples the earlier ones; then the search and final model",
    )
    g.add_argument(
        "--split",
        type=positive_int,
        default=None,
        help="first layer of stage A (default: half the layers)",
    )
    g.add_argument(
        "--steps-b",
        type=positive_int,
        default=None,
        help="stage B steps (default: as many as stage A, from --steps/--epochs)",
    )
    g.add_argument("--budget", type=budget, default=None, help=_BUDGET_HELP)
    add_require_measured(g)
    _add_search_args(g)


def add_commands(sub: argparse._SubParsersAction) -> None:
    d = GenerateSettings()
    sh = sub.add_parser("shrink", help="stage one: reduce a space to what is fast on a device")
    sh.add_argument("--space", required=True)
    sh.add_argument("--device", required=True, help="device spec (its LUT must be profiled)")
    sh.add_argument("--db", default=DEFAULT_DB, help="LUT database (default: %(default)s)")
    sh.add_argument(
        "--k", type=nonnegative_int, default=d.k, help="ops kept per layer (default: %(default)s)"
    )
    sh.add_argument(
        "--rule", default=d.rule, choices=list(RULES), help="how ops are ranked per layer"
    )
    sh.add_argument("--exclude", action="append", help="op pattern to drop (repeatable)")
    sh.add_argument(
        "--skip",
        default=d.skip,
        choices=SKIP_RULES,
        help="keep skip where it is an identity (default) or everywhere",
    )
    sh.add_argument("--out", default=None, help="reduced space file (default: runs/spaces/)")
    add_require_measured(sh)
    sh.set_defaults(func=_shrink)

    se = sub.add_parser("search", help="stage two: evolutionary search under a latency budget")
    se.add_argument("--space", required=True)
    se.add_argument("--device", required=True)
    se.add_argument("--budget", type=budget, required=True, help=_BUDGET_HELP)
    se.add_argument("--supernet", required=True, help="trained run folder or supernet.pt")
    se.add_argument("--data", default=TrainConfig.data)
    se.add_argument("--db", default=DEFAULT_DB, help="LUT database (default: %(default)s)")
    se.add_argument("--out", default="runs/search")
    _add_search_args(se)
    se.add_argument(
        "--eval-limit",
        type=positive_int,
        default=d.eval_limit,
        help="validation images per fitness",
    )
    se.add_argument("--seed", type=nonnegative_int, default=TrainConfig.seed)
    se.add_argument("--random", action="store_true", help="random search baseline instead")
    add_require_measured(se)
    add_train_on_args(se)
    se.set_defaults(func=_search)
