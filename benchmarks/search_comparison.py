"""Search methods compared under one latency budget: demo space, Fashion-MNIST, local LiteRT.

    .venv/bin/python benchmarks/search_comparison.py [--steps 1500] [--stage-fraction 0.3]
        [--final-steps 800] [--budget-ms X | --budget-percentile 40] [--seed 0]
        [--min-budget-fraction 0.9] [--k 4] [--rule pareto] [--eval-limit N] [--final-seeds 5]
        [--skip identity]

Methods (each ends the same way: the best 5 candidates by supernet accuracy are measured on
the device, the fittest within budget is trained ``--final-steps`` — from scratch like
mbv2_scaled by default, or from its inherited weights with ``--final-from inherited`` — with
``--final-seeds`` seeds, and scored on the whole test split; test_acc is the seeds' mean):

- ``hurricane``: stage one (the space reduced for this device, top 4 per layer by the Pareto
  rule, ``skip`` only where it is an identity) and two-stage training, ``--stage-fraction``
  of the SPOS steps per stage.
- ``hurricane_distill``: the same with in-place distillation (the largest path teaches).
- ``spos_full``: single-stage SPOS over the full space for ``--steps``, evolution.
- ``random``: random search under the budget on spos_full's supernet, as many evaluations.
- ``mbv2_scaled``: MobileNetV2 blocks (mb_k3_e6) on every layer, one width multiplier, the
  widest the device runs within budget, trained from scratch for ``--final-steps``.

Every part is resumable (supernets, searches, measured models, final runs live under --out).
Writes benchmarks/results/search_comparison.json with ``budget_ms`` and ``methods`` (each with
test_acc, measured_ms, supernet_steps, supernet_seconds). Goal: hurricane >= spos_full's test
accuracy with <= 0.7 of its supernet steps, above random and mbv2_scaled, every measured
latency within the budget.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from devices.spec import load_device
from hurricane.arch import Arch
from hurricane.final import train_final
from hurricane.latency import LatencyModel, fill_missing, read_table
from hurricane.reduce import RULES, SKIP_RULES, reduce_space
from hurricane.search import SearchConfig, random_search
from hurricane.space import load_space, space_to_toml
from hurricane.train import TrainConfig, provenance
from hurricane.two_stage import SupernetFitness, data_for, load_supernet, single_stage, two_stage
from pipelines.jobs import stage_a_base
from profilers.campaign import profile
from profilers.models import choose_measured, measure_archs

RESULTS = Path(__file__).parent / "results"
MBV2_OP = "mb_k3_e6"
MBV2_WIDTHS = (0.25, 0.35, 0.5, 0.6, 0.75, 0.9, 1.0)


FINAL_FROM = {"scratch": False, "inherited": True}


def train_seeds(space_ref, arch, out: Path, steps, seed, seeds: int, init=None) -> dict:
    """The final training repeated with ``seeds`` seeds (seed, seed+1, ...); test_acc is their
    mean. One seed's init alone moved the same network by a point (demo, 800 steps)."""
    runs = [
        train_final(
            space_ref,
            arch,
            out if k == 0 else out.with_name(f"{out.name}-s{k}"),
            steps,
            init=init,
            seed=seed + k,
            progress=False,
        )
        for k in range(seeds)
    ]
    accs = [r["test_acc"] for r in runs]
    return {
        "test_acc": round(float(np.mean(accs)), 4),
        "test_accs": accs,
        "final_steps": runs[0]["steps"],
        "final_seconds": round(sum(r["train_seconds"] for r in runs), 1),
    }


def _final(
    space_ref,
    space,
    spec,
    ranked,
    budget,
    db,
    supernet_pt,
    out,
    steps,
    seed,
    inherit: bool,
    seeds: int,
) -> dict:
    chosen = choose_measured(space, spec, ranked, budget, db, n=5, progress=False)
    trained = train_seeds(
        space_ref, chosen["arch"], out, steps, seed, seeds, init=supernet_pt if inherit else None
    )
    return {
        "arch": chosen["arch"],
        "val_acc": chosen["fitness"],
        "predicted_ms": round(chosen["predicted_ms"], 5),
        "measured_ms": round(chosen["measured_ms"], 5),
        "accepted": chosen["accepted"],
        **trained,
        "candidates": [
            {k: c[k] for k in ("arch", "fitness", "predicted_ms", "measured_ms")}
            for c in chosen["candidates"]
        ],
    }


def mbv2_scaled(space, spec, db, budget, out: Path, steps, seed, seeds: int) -> dict:
    """The widest uniform-width MobileNetV2 network the device runs within ``budget``."""
    layers = tuple(replace(lay, ops=(MBV2_OP,), widths=MBV2_WIDTHS) for lay in space.layers)
    mb = replace(space, name="mbv2-scaled", layers=layers, description="MobileNetV2, scaled")
    out.mkdir(parents=True, exist_ok=True)
    path = out / "space.toml"
    path.write_text(space_to_toml(mb, "MobileNetV2 blocks at one width multiplier"))
    mb = load_space(path)
    model = LatencyModel.from_db(mb, db, spec.name)
    widths = sorted(MBV2_WIDTHS, reverse=True)
    archs = [Arch((MBV2_OP,) * len(layers), (w,) * len(layers)) for w in widths]
    pred = model.predict(archs)
    rows, chosen = {}, None
    for a, p in zip(archs, pred):  # widest predicted within budget, confirmed on the device
        if p > budget * 1.1:
            continue
        rows.update(measure_archs(mb, spec, [a], db, progress=False))
        if rows[str(a)]["median_ms"] <= budget:
            chosen = a
            break
    if chosen is None:
        raise SystemExit(f"no MobileNetV2 width runs within {budget} ms on {spec.name}")
    trained = train_seeds(str(path), chosen, out / "final", steps, seed, seeds)
    return {
        "arch": str(chosen),
        "width": chosen.widths[0],
        "predicted_ms": round(float(model.predict(chosen)), 5),
        "measured_ms": round(rows[str(chosen)]["median_ms"], 5),
        "accepted": True,
        **trained,
        "supernet_steps": 0,
        "supernet_seconds": 0.0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", default="demo")
    ap.add_argument("--device", default="local-litert")
    ap.add_argument("--db", default="runs/latency.sqlite")
    ap.add_argument("--budget-ms", type=float, default=None)
    ap.add_argument(
        "--budget-percentile",
        type=float,
        default=40.0,
        help="without --budget-ms: this percentile of the predicted latency of "
        "2000 random architectures (seeded)",
    )
    ap.add_argument("--steps", type=int, default=1500, help="SPOS supernet steps")
    ap.add_argument(
        "--stage-fraction",
        type=float,
        default=0.3,
        help="each HURRICANE stage trains this fraction of --steps",
    )
    ap.add_argument("--split", type=int, default=3)
    ap.add_argument("--final-steps", type=int, default=800)
    ap.add_argument(
        "--final-seeds",
        type=int,
        default=5,
        help="seeds each final model is trained with; test_acc is their mean",
    )
    ap.add_argument(
        "--final-from",
        choices=sorted(FINAL_FROM),
        default="scratch",
        help="train each method's chosen architecture from scratch (as "
        "mbv2_scaled is) or fine-tune it from its inherited supernet weights",
    )
    ap.add_argument(
        "--min-budget-fraction",
        type=float,
        default=0.9,
        help="every search (hurricane, spos_full, random) makes candidates only "
        "between this fraction of the budget and the budget",
    )
    ap.add_argument("--population", type=int, default=20)
    ap.add_argument("--generations", type=int, default=10)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument(
        "--rule",
        default="pareto",
        choices=sorted(RULES),
        help="stage one's reduction rule (hurricane/reduce.py)",
    )
    ap.add_argument(
        "--skip",
        default="identity",
        choices=SKIP_RULES,
        help="stage one keeps skip on every layer, or only where it is an identity",
    )
    ap.add_argument(
        "--eval-limit",
        type=int,
        default=2000,
        help="validation images each candidate is scored on (0: the whole split; "
        "that ranks the top of a search more stably but, in one run, did not "
        "pick better models and made searches 4x slower)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--methods",
        nargs="+",
        default=["spos_full", "random", "hurricane", "hurricane_distill", "mbv2_scaled"],
    )
    ap.add_argument("--out", default="runs/bench-search")
    args = ap.parse_args()
    t_start = time.perf_counter()
    out = Path(args.out)
    space, spec = load_space(args.space), load_device(args.device)
    rep = profile(space, spec, args.db)
    print(f"LUT for {spec.name}/{space.name}: {rep.instances} entries ({rep.new_entries} new)")
    model = LatencyModel.from_db(space, args.db, spec.name)
    budget = args.budget_ms
    if budget is None:
        rng = random.Random(args.seed)
        pred = model.predict([space.sample_arch(rng) for _ in range(2000)])
        budget = round(float(np.percentile(pred, args.budget_percentile)), 4)
    print(f"budget {budget} ms on {spec.name} (fastest in the space {model.fastest()[0]:.4f} ms)")
    search = SearchConfig(
        budget_ms=budget,
        population=args.population,
        generations=args.generations,
        seed=args.seed,
        min_fraction=args.min_budget_fraction,
    )
    base = TrainConfig(
        space=args.space,
        seed=args.seed,
        progress=False,
        eval_paths=2,
        eval_limit=args.eval_limit or None,
    )
    stage_steps = round(args.steps * args.stage_fraction)
    inherit = FINAL_FROM[args.final_from]
    fin = (args.final_steps, args.seed, inherit, args.final_seeds)  # every method's final run
    methods: dict[str, dict] = {}
    res_path = RESULTS / "search_comparison.json"

    def save() -> None:
        report = {
            "budget_ms": budget,
            "space": space.name,
            "device": spec.name,
            "methods": methods,
            "goal": goal(methods, budget),
            "settings": vars(args),
            "seconds": round(time.perf_counter() - t_start, 1),
            "provenance": provenance(),
        }
        RESULTS.mkdir(parents=True, exist_ok=True)
        res_path.write_text(json.dumps(report, indent=1) + "\n")

    spos_dir = out / "spos_full"
    if {"spos_full", "random"} & set(args.methods):
        t0 = time.perf_counter()
        spos = single_stage(
            replace(base, steps=args.steps),
            model.predict,
            search,
            spos_dir,
            min_latency=model.fastest,
        )
        spos_pt = spos_dir / "supernet" / "supernet.pt"
        cost = {
            "supernet_steps": spos["supernet_steps"],
            "supernet_seconds": spos["supernet_seconds"],
        }
        if "spos_full" in args.methods:
            methods["spos_full"] = {
                **cost,
                "search_seconds": spos["search"]["seconds"],
                **_final(
                    args.space,
                    space,
                    spec,
                    spos["search"]["top"],
                    budget,
                    args.db,
                    spos_pt,
                    spos_dir / "final",
                    *fin,
                ),
            }
            report("spos_full", methods, t0)
            save()
        if "random" in args.methods:
            t0 = time.perf_counter()
            net = load_supernet(space, spos_pt)
            fit = SupernetFitness(net, data_for(base, space), base.bn_batches, seed=args.seed)
            rnd = random_search(space, model.predict, fit, search, out=out / "random" / "search")
            methods["random"] = {
                **cost,
                "search_seconds": rnd["seconds"],
                **_final(
                    args.space,
                    space,
                    spec,
                    rnd["top"],
                    budget,
                    args.db,
                    spos_pt,
                    out / "random" / "final",
                    *fin,
                ),
            }
            report("random", methods, t0)
            save()

    for name in ("hurricane", "hurricane_distill"):
        if name not in args.methods:
            continue
        t0 = time.perf_counter()
        d = out / name
        d.mkdir(parents=True, exist_ok=True)
        table, _ = fill_missing(space, read_table(space, args.db, spec.name), spec.name)
        reduced, _ = reduce_space(
            space,
            table,
            k=args.k,
            rule=args.rule,
            exclude=spec.exclude_ops,
            skip=args.skip,
            name=f"{space.name}-{spec.name}-k{args.k}",
        )
        path = d / "space.toml"
        path.write_text(space_to_toml(reduced, f"stage one for {spec.name}, k={args.k}"))
        r_model = LatencyModel.from_db(load_space(path), args.db, spec.name)
        cfg = replace(base, space=str(path), distill=name.endswith("distill"))
        fixed = stage_a_base(r_model, args.split, budget)  # as hurricane run does
        res = two_stage(
            cfg,
            args.split,
            r_model.predict,
            search,
            d,
            stage_steps,
            stage_steps,
            fixed=fixed,
            min_latency=r_model.fastest,
        )
        methods[name] = {
            "supernet_steps": res["supernet_steps"],
            "supernet_seconds": res["supernet_seconds"],
            "search_seconds": round(res["stage_a"]["seconds"] + res["stage_b"]["seconds"], 1),
            "reduced_space": [list(lay.ops) for lay in reduced.layers],
            **_final(
                str(path),
                load_space(path),
                spec,
                res["stage_b"]["top"],
                budget,
                args.db,
                d / "stage_b" / "supernet.pt",
                d / "final",
                *fin,
            ),
        }
        report(name, methods, t0)
        save()

    if "mbv2_scaled" in args.methods:
        t0 = time.perf_counter()
        methods["mbv2_scaled"] = mbv2_scaled(
            space,
            spec,
            args.db,
            budget,
            out / "mbv2_scaled",
            args.final_steps,
            args.seed,
            args.final_seeds,
        )
        report("mbv2_scaled", methods, t0)
    save()
    print(f"\n{'method':<18} {'test_acc':>8} {'measured_ms':>11} {'steps':>6} {'seconds':>8}")
    for name, m in methods.items():
        print(
            f"{name:<18} {m['test_acc']:>8.4f} {m['measured_ms']:>11.4f} "
            f"{m['supernet_steps']:>6} {m['supernet_seconds']:>8.1f}"
        )
    for check, ok in goal(methods, budget).items():
        print(f"  {'PASS' if ok else 'FAIL'}  {check}")
    print(f"wrote {res_path}")


def report(name: str, methods: dict, t0: float) -> None:
    m = methods[name]
    print(
        f"{name}: test accuracy {m['test_acc']:.4f}, {m['arch']} measured "
        f"{m['measured_ms']:.4f} ms (predicted {m['predicted_ms']:.4f}); supernet "
        f"{m['supernet_steps']} steps {m['supernet_seconds']:.1f}s; "
        f"{time.perf_counter() - t0:.0f}s in all",
        flush=True,
    )


def goal(methods: dict, budget: float) -> dict[str, bool]:
    out = {
        "every measured latency within budget": all(
            m["measured_ms"] <= budget for m in methods.values()
        )
    }
    h, s = methods.get("hurricane"), methods.get("spos_full")
    if h and s:
        out["hurricane test_acc >= spos_full"] = h["test_acc"] >= s["test_acc"]
        out["hurricane supernet steps <= 0.7 x spos_full"] = (
            h["supernet_steps"] <= 0.7 * s["supernet_steps"]
        )
    for other in ("random", "mbv2_scaled"):
        if h and other in methods:
            out[f"hurricane test_acc > {other}"] = h["test_acc"] > methods[other]["test_acc"]
    return out


if __name__ == "__main__":
    main()
