"""CLI commands for the hardware-aware search: ``shrink`` (stage one) and ``search``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipelines.profile_cli import DEFAULT_DB


def _latency_model(space, db: str, device: str):
    from devices.spec import load_device
    from hurricane.latency import LatencyModel

    spec = load_device(device)
    return spec, LatencyModel.from_db(space, db, spec.name)


def _shrink(args: argparse.Namespace) -> int:
    from devices.spec import load_device
    from hurricane.latency import fill_missing, read_table
    from hurricane.reduce import reduce_space, scores_json
    from hurricane.space import load_space, space_to_toml

    space = load_space(args.space)
    spec = load_device(args.device)
    table, _ = fill_missing(space, read_table(space, args.db, spec.name), spec.name)
    exclude = [*spec.exclude_ops, *(args.exclude or [])]
    name = f"{space.name}-{spec.name}-k{args.k}"
    reduced, scores = reduce_space(space, table, k=args.k, rule=args.rule, exclude=exclude,
                                   name=name)  # fmt: skip
    out = Path(args.out or f"runs/spaces/{name}.toml")
    out.parent.mkdir(parents=True, exist_ok=True)
    header = (f"Stage one for device {spec.name}: top {args.k} per layer by rule {args.rule!r}"
              f"{'; excluded ' + ', '.join(exclude) if exclude else ''}.\n"
              f"Made by: hurricane shrink --space {args.space} --device {args.device} "
              f"--k {args.k} --rule {args.rule} from {args.db}")  # fmt: skip
    out.write_text(space_to_toml(reduced, header))
    out.with_suffix(".scores.json").write_text(json.dumps(scores_json(scores), indent=1))
    for i, layer in enumerate(reduced.layers):
        print(f"layer {i:>2}: {', '.join(layer.ops)}")
    print(f"reduced space: {out} (log10 size {space.log10_size():.1f} -> "
          f"{reduced.log10_size():.1f}); scores: {out.with_suffix('.scores.json')}")  # fmt: skip
    return 0


def _search(args: argparse.Namespace) -> int:
    from hurricane.search import EvolutionSearch, SearchConfig, random_search
    from hurricane.space import load_space
    from hurricane.train import TrainConfig
    from hurricane.two_stage import SupernetFitness, data_for, load_supernet

    space = load_space(args.space)
    spec, model = _latency_model(space, args.db, args.device)
    cfg = SearchConfig(budget_ms=args.latency_ms, population=args.population,
                       generations=args.generations, parents=args.parents,
                       mutations=args.mutations, crossovers=args.crossovers,
                       seed=args.seed)  # fmt: skip
    net = load_supernet(space, Path(args.supernet) / "supernet.pt"
                        if Path(args.supernet).is_dir() else args.supernet)  # fmt: skip
    tcfg = TrainConfig(space=args.space, data=args.data, eval_limit=args.eval_limit)
    fitness = SupernetFitness(net, data_for(tcfg, space), tcfg.bn_batches, seed=args.seed)
    out = Path(args.out)
    if args.random:
        res = random_search(space, model.predict, fitness, cfg, out=out)
    else:
        res = EvolutionSearch(space, model.predict, fitness, cfg, out,
                              min_latency=model.fastest).run()  # fmt: skip
    (out / "result.json").write_text(json.dumps({**res, "device": spec.name}, indent=1))
    print(f"best: {res['best']}\n  validation accuracy {res['fitness']:.4f}, predicted "
          f"{res['latency_ms']:.3f} ms on {spec.name} (budget {args.latency_ms} ms); "
          f"{res['evaluated']} evaluated, {res['rejected']} over budget never evaluated; "
          f"history in {out}")  # fmt: skip
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    sh = sub.add_parser("shrink", help="stage one: reduce a space to what is fast on a device")
    sh.add_argument("--space", required=True)
    sh.add_argument("--device", required=True, help="device spec (its LUT must be profiled)")
    sh.add_argument("--db", default=DEFAULT_DB)
    sh.add_argument("--k", type=int, default=4, help="ops kept per layer (default: %(default)s)")
    sh.add_argument("--rule", default="pareto",
                    help="pareto | flops_per_ms | params_per_ms | fastest")  # fmt: skip
    sh.add_argument("--exclude", action="append", help="op pattern to drop (repeatable)")
    sh.add_argument("--out", default=None, help="reduced space file (default: runs/spaces/)")
    sh.set_defaults(func=_shrink)

    se = sub.add_parser("search", help="stage two: evolutionary search under a latency budget")
    se.add_argument("--space", required=True)
    se.add_argument("--device", required=True)
    se.add_argument("--latency-ms", type=float, required=True, help="latency budget (ms)")
    se.add_argument("--supernet", required=True, help="trained run folder or supernet.pt")
    se.add_argument("--data", default="fashion-mnist")
    se.add_argument("--db", default=DEFAULT_DB)
    se.add_argument("--out", default="runs/search")
    se.add_argument("--population", type=int, default=20)
    se.add_argument("--generations", type=int, default=10)
    se.add_argument("--parents", type=int, default=5)
    se.add_argument("--mutations", type=int, default=10)
    se.add_argument("--crossovers", type=int, default=10)
    se.add_argument("--eval-limit", type=int, default=2000, help="validation images per fitness")
    se.add_argument("--seed", type=int, default=0)
    se.add_argument("--random", action="store_true", help="random search baseline instead")
    se.set_defaults(func=_search)
