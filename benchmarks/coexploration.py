"""Co-exploration against architecture-only search, per hardware target and budget.

    .venv/bin/python benchmarks/coexploration.py [--space benchmarks/spaces/coexplore.toml]
        [--targets HW.toml ...] [--budgets 40% 70%] [--training product|spos] [--steps 1500]
        [--final-steps 400] [--final-seeds 3] [--population 8] [--generations 3]
        [--workers N] [--seed 0] [--out runs/bench-coexplore] [--methods coexplore_rl ...]

The default space is the demo space with six of its ops and two widths (135 operator
instances instead of 544), so that seven accelerator designs are costed and eight deployment
configurations profiled in well under an hour on two cores.

One supernet serves every method, trained as ``hurricane run`` trains its supernets
(``--training product``: in-place distillation with family sharing, the best ranking on
``benchmarks/supernet_ranking.py``; 1500 steps of two paths are as many path trainings as 3000
of plain SPOS, ``--training spos``). For each target (an accelerator design
space or a device's deployment configurations) and budget (ms, or a percentile of the
target's default-configuration latencies), with the same number of fitness evaluations:

- ``arch_only``: the constrained evolution on the target's default configuration (the
  device spec's own settings; the space's declared default design);
- ``coexplore_evolution``: the evolution over (architecture, its fast-explored configuration);
- ``coexplore_rl``: the REINFORCE controller over architecture and configuration tokens.

Each best pair is trained ``--final-steps`` from its inherited weights with ``--final-seeds``
seeds and scored on the test split (test_acc is their mean, test_accs each seed's); its
latency is measured on the device under its configuration (deployment
targets) or modelled (accelerators, with energy). Writes
``benchmarks/results/coexploration.json``: a list of rows with ``target``, ``budget_ms``,
``method``, ``test_acc``, ``latency_ms``, ``energy_mj``, ``config``, ``evaluations``,
``pruned_share`` (of the (architecture, configuration) pairs, rejected by fast exploration
before any evaluation; ``pruned_archs_share``: of the architectures made, those no
configuration fits) and ``search_seconds``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from hurricane.budgets import Budget
from hurricane.coexplore import STRATEGIES, FastExplorer
from hurricane.final import train_final
from hurricane.provenance import provenance
from hurricane.space_file import load_space
from hurricane.train import TrainConfig, train
from hurricane.two_stage import data_for, fitness_for, load_supernet
from pipelines.coexplore_cli import hardware_tables
from pipelines.config import GenerateSettings

ROOT = Path(__file__).resolve().parents[1]
# (method, slow exploration, searched on the default configuration's table alone)
METHODS = (
    ("arch_only", "evolution", True),
    ("coexplore_evolution", "evolution", False),
    ("coexplore_rl", "rl", False),
)
RESULTS = ROOT / "benchmarks" / "results"
TARGETS = [
    str(ROOT / "devices" / "examples" / "deployments" / "local-litert-configs.toml"),
    str(ROOT / "benchmarks" / "targets" / "openvino-configs.toml"),
    str(ROOT / "devices" / "examples" / "accelerators" / "accel-small.toml"),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", default=str(ROOT / "benchmarks" / "spaces" / "coexplore.toml"))
    ap.add_argument("--targets", nargs="+", default=TARGETS)
    ap.add_argument("--budgets", nargs="+", default=["40%", "70%"])
    ap.add_argument(
        "--training",
        choices=("product", "spos"),
        default="product",
        help="the supernet training: hurricane run's defaults, or plain SPOS",
    )
    ap.add_argument("--steps", type=int, default=1500, help="supernet steps")
    ap.add_argument("--final-steps", type=int, default=400)
    ap.add_argument(
        "--final-seeds",
        type=int,
        default=3,
        help="seeds each best pair is fine-tuned with; test_acc is their mean",
    )
    ap.add_argument("--population", type=int, default=8)
    ap.add_argument("--generations", type=int, default=3)
    ap.add_argument("--eval-limit", type=int, default=1000)
    ap.add_argument("--lpf-limit", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="zigzag processes")
    ap.add_argument("--tune", default="fastest", help="fast exploration's rule (TUNE_RULES)")
    ap.add_argument("--out", default="runs/bench-coexplore")
    ap.add_argument("--result", default="coexploration.json")
    ap.add_argument(
        "--methods",
        nargs="+",
        choices=[m for m, _, _ in METHODS],
        default=[m for m, _, _ in METHODS],
        help="rerun only these; the result file's rows of the others are kept",
    )
    args = ap.parse_args()
    out = Path(args.out)
    db = out / "lut.sqlite"
    space = load_space(args.space)
    cfg = supernet_config(args, out / f"supernet-{args.training}-{args.steps}")
    train(cfg)
    sup = Path(cfg.out) / "supernet.pt"
    fitness = fitness_for(load_supernet(space, sup), data_for(cfg, space), cfg, args.seed)
    rows: list[dict[str, Any]] = []
    kept = kept_rows(RESULTS / args.result, args.methods)
    meta = {  # what produced each new row; a kept row keeps its own
        "space": args.space,
        "training": args.training,
        "steps": args.steps,
        "final_steps": args.final_steps,
        "final_seeds": args.final_seeds,
        "provenance": provenance(),
    }
    for target in args.targets:
        t0 = time.perf_counter()
        hw = hardware_tables(target, space, db, args.lpf_limit, workers=args.workers)
        tables_s = round(time.perf_counter() - t0, 1)
        print(f"{hw.name}: {len(hw.configs)} configurations, tables in {tables_s} s", flush=True)
        for text in args.budgets:
            budget = Budget.parse(text).resolve(hw.latency[hw.default], space, args.seed)
            explorer = FastExplorer(
                hw.configs, hw.latency, budget, energy=hw.energy, rule=args.tune
            )
            base = hw.latency[hw.default]
            g = GenerateSettings(population=args.population, generations=args.generations)
            search = g.search_config(budget, args.seed)
            for method, strategy, fixed in METHODS:
                if method not in args.methods:
                    rows += kept.get((hw.name, round(budget, 6), method), [])
                    continue
                where = out / hw.name / f"{budget:.4g}"
                found = STRATEGIES[strategy](
                    space, explorer, fitness, search, where / method, base if fixed else None
                )
                if found is None:
                    print(f"{hw.name} {budget:.4g} ms {method}: no pair within budget")
                    continue
                arch, evaluations = found.arch, found.evaluations
                pruned, seconds = found.pair_pruned_share, found.seconds
                a = space.parse_arch(arch)
                if method == "arch_only":
                    config, ms = hw.default, float(base([a])[0])
                else:
                    tuned = explorer.tune([a])[0]
                    config, ms = tuned.config or hw.default, tuned.latency_ms
                energy = float(hw.energy[config]([a])[0]) if config in hw.energy else None
                if hw.kind == "deployment":  # the device's own figure, not the table's
                    from profilers.models import measure_archs

                    row = measure_archs(space, hw.specs[config], [a], db, progress=False)[arch]
                    ms = row.get("median_ms") or ms
                accs = [
                    train_final(
                        args.space,
                        arch,
                        where / method / ("final" if k == 0 else f"final-s{k}"),
                        args.final_steps,
                        init=sup,
                        seed=args.seed + k,
                        progress=False,
                    )["test_acc"]
                    for k in range(args.final_seeds)
                ]
                rows.append(
                    {
                        "target": hw.name,
                        "kind": hw.kind,
                        "budget_ms": round(budget, 6),
                        "method": method,
                        "arch": arch,
                        "test_acc": round(float(np.mean(accs)), 4),
                        "test_accs": [round(a, 4) for a in accs],
                        "latency_ms": round(ms, 6),
                        "energy_mj": None if energy is None else round(energy, 6),
                        "config": config,
                        "evaluations": evaluations,
                        "pruned_share": pruned,
                        "pruned_archs_share": found.pruned_share,
                        "search_seconds": round(seconds, 1),
                        "tables_seconds": tables_s,
                        **meta,
                    }
                )
                write_rows(args, rows)  # an interrupted run keeps the rows it finished
                r = rows[-1]
                print(
                    f"{hw.name} @ {budget:.4g} ms {method:>20}: acc {r['test_acc']:.4f} "
                    f"{r['latency_ms']:.4g} ms on {config} (pruned {pruned:.0%}, "
                    f"{evaluations} evaluated, {r['search_seconds']} s)",
                    flush=True,
                )
    path = write_rows(args, rows)
    for line in goal_lines(rows):
        print(line)
    print(f"wrote {path} ({len(rows)} rows)")


# Test accuracies within this of each other count as equal where a row has one seed: the
# final models' seed spread on this space (search_comparison.json: 0.004-0.011 over five
# seeds). With several seeds, twice the larger of the two rows' standard deviations.
EQUAL_ACC = 0.01


def kept_rows(path: Path, methods: list[str]) -> dict[tuple[str, float, str], list[dict]]:
    """The result file's rows of the methods not rerun, by (target, budget, method)."""
    if not path.exists() or len(methods) == len(METHODS):
        return {}
    out: dict[tuple[str, float, str], list[dict]] = {}
    for r in json.loads(path.read_text()):
        if r["method"] not in methods:
            out.setdefault((r["target"], r["budget_ms"], r["method"]), []).append(r)
    return out


def write_rows(args: argparse.Namespace, rows: list[dict[str, Any]]) -> Path:
    """Write the rows so far."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / args.result
    path.write_text(json.dumps(rows, indent=1) + "\n")
    return path


def supernet_config(args: argparse.Namespace, out: Path) -> TrainConfig:
    """The supernet training every method shares: the product's (``GenerateSettings``)
    or plain SPOS, ``--steps`` steps on the benchmark's space."""
    g = GenerateSettings(steps=args.steps, eval_limit=args.eval_limit)
    if args.training == "spos":
        g = replace(g, distill=False, share="none", sandwich=False, fair=False)
    cfg = g.train_config(args.space, TrainConfig.data, out, args.seed, False)
    return replace(cfg, batch_size=64, eval_paths=0)


def equal_margin(a: dict[str, Any], b: dict[str, Any]) -> float:
    """How far two rows' test accuracies may differ and still count as equal."""
    accs = [r.get("test_accs") or [] for r in (a, b)]
    if min(len(x) for x in accs) < 2:
        return EQUAL_ACC
    return 2 * max(float(np.std(x)) for x in accs)


def goal_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Per target and budget: each co-exploration against architecture-only search, and
    whether it reaches the goal (equal accuracy at >= 1.3x lower latency, or higher
    accuracy at no more latency); then the mean pruned share."""
    by: dict[tuple[str, float], dict[str, dict[str, Any]]] = {}
    for r in rows:
        by.setdefault((r["target"], r["budget_ms"]), {})[r["method"]] = r
    out = []
    for (t, b), m in by.items():
        base = m.get("arch_only")
        for name in ("coexplore_evolution", "coexplore_rl"):
            co = m.get(name)
            if base is None or co is None:
                continue
            ratio = base["latency_ms"] / max(1e-12, co["latency_ms"])
            d_acc = co["test_acc"] - base["test_acc"]
            margin = equal_margin(base, co)
            faster = d_acc >= -margin and ratio >= 1.3
            better = d_acc > margin and ratio >= 1.0
            out.append(
                f"{t} @ {b:.4g} ms {name}: latency {ratio:.2f}x lower, accuracy "
                f"{d_acc:+.4f} (equal within {margin:.4f}) -> goal "
                f"{'met' if faster or better else 'not met'}"
            )
    pruned = np.mean([r["pruned_share"] for r in rows if r["method"] != "arch_only"])
    out.append(f"mean share of pairs pruned before evaluation (co-exploration): {pruned:.0%}")
    return out


if __name__ == "__main__":
    main()
