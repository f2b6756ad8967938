"""Search methods compared under one latency budget: demo space, Fashion-MNIST, local LiteRT.

    .venv/bin/python benchmarks/search_comparison.py [--steps 1500] [--stage-fraction 0.3]
        [--final-steps 800] [--budget 40% | --budget MS | --budgets 20% 40% 70%] [--seed 0]
        [--min-budget-fraction 0.9] [--k 4] [--rule pareto] [--eval-limit N] [--final-seeds 5]
        [--skip identity] [--budget-only]

It measures the product itself: ``hurricane``, ``hurricane_distill`` and ``spos_full`` are each
run as the pipeline ``hurricane generate`` runs (``pipelines.jobs.PipelineRun``: profile, stage
one, supernet, search, final — the same steps, defaults and budget as ``hurricane run``), with
only what this comparison sets changed; ``random`` searches spos_full's supernet and ends with
the same final step (``pipelines.jobs.final_model``). ``--budget`` is resolved as the pipeline
resolves it (``hurricane.budgets``): "40%" is the same budget here and in ``hurricane run``.

Methods (each ends the same way: the best ``verify_top`` candidates by supernet accuracy are
measured on the device, the fittest within budget is trained ``--final-steps`` — from scratch
like mbv2_scaled by default, or from its inherited weights with ``--final-from inherited`` —
with ``--final-seeds`` seeds, and scored on the whole test split; test_acc is the seeds' mean):

- ``hurricane``: stage one (the space reduced for this device, top ``--k`` per layer by
  ``--rule``, ``skip`` only where it is an identity) and two-stage training,
  ``--stage-fraction`` of the SPOS steps per stage.
- ``hurricane_distill``: the same with in-place distillation (the largest path teaches),
  where the product's defaults do not already distil.
- ``spos_full``: single-stage plain SPOS (one uniform path per step, a block per candidate)
  over the full space for ``--steps``, evolution.
- ``random``: random search under the budget on spos_full's supernet, as many evaluations.
- ``mbv2_scaled``: MobileNetV2 blocks (mb_k3_e6) on every layer, one width multiplier, the
  widest the device runs within budget, trained from scratch for ``--final-steps``.

With ``--budgets 20% 40% 70%`` the comparison runs at each budget (the product's supernets
are trained once and searched per budget, as one pipeline with several budgets does) and
writes ``benchmarks/results/search_budgets.json`` (a list, one report per budget) and
``search_budgets.png`` (test accuracy against measured latency, seed spread as error bars)
instead; a budget that file already holds with the same settings is kept, not rerun. Every
part is resumable (pipelines, searches, measured models, final runs live under --out).
Writes benchmarks/results/search_comparison.json with ``budget_ms`` and ``methods`` (each with
test_acc, measured_ms, supernet_steps, supernet_seconds). Goal: hurricane >= spos_full's test
accuracy with <= 0.7 of its supernet steps and seconds, above random, above mbv2_scaled by
more than twice the larger seed spread (standard deviation over final seeds), every measured
latency within the budget.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from devices.spec import load_device
from hurricane.arch import Arch
from hurricane.budgets import Budget
from hurricane.final import train_final
from hurricane.latency import LatencyModel
from hurricane.provenance import provenance
from hurricane.reduce import RULES, SKIP_RULES
from hurricane.search import random_search
from hurricane.space_file import load_space, space_to_toml
from hurricane.train import TrainConfig
from hurricane.two_stage import SupernetFitness, data_for, load_supernet
from pipelines.config import DEFAULT_DB, FINAL_FROM, GenerateSettings, Pipeline
from pipelines.jobs import PipelineRun, final_model
from profilers.campaign import profile
from profilers.models import measure_archs

RESULTS = Path(__file__).parent / "results"
MBV2_OP = "mb_k3_e6"
# spos_full is plain single-path one-shot training whatever the product's defaults become.
PLAIN_SPOS: dict[str, Any] = {
    "k": 0,
    "two_stage": False,
    "share": "none",
    "fair": False,
    "sandwich": False,
    "distill": False,
}
MBV2_WIDTHS = (0.25, 0.35, 0.5, 0.6, 0.75, 0.9, 1.0)


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
    return _seed_summary(runs)


def _seed_summary(runs: list[dict]) -> dict:
    accs = [r["test_acc"] for r in runs]
    return {
        "test_acc": round(float(np.mean(accs)), 4),
        "test_accs": accs,
        "final_steps": runs[0]["steps"],
        "final_seconds": round(sum(r["train_seconds"] for r in runs), 1),
    }


def _final_summary(fin: dict, space_ref: str, supernet_pt: str, work: Path, args) -> dict:
    """The product's final step (``fin``, seed ``--seed``) and the same training with the
    other ``--final-seeds`` seeds beside it."""
    init = supernet_pt if args.final_from == "inherited" else None
    runs = [fin] + [
        train_final(
            space_ref,
            fin["arch"],
            work / f"final-s{k}",
            args.final_steps,
            init=init,
            seed=args.seed + k,
            progress=False,
        )
        for k in range(1, args.final_seeds)
    ]
    return {
        "arch": fin["arch"],
        "val_acc": fin["fitness"],
        "predicted_ms": round(fin["predicted_ms"], 5),
        "measured_ms": round(fin["measured_ms"], 5),
        "accepted": fin["accepted"],
        **_seed_summary(runs),
        "candidates": [
            {k: c[k] for k in ("arch", "fitness", "predicted_ms", "measured_ms")}
            for c in fin["candidates"]
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


def settings(args: argparse.Namespace) -> GenerateSettings:
    """The product's generate settings with what this comparison sets; the rest (search
    shape, training, verify_top, ...) are the product's defaults."""
    return replace(
        GenerateSettings(),
        k=args.k,
        rule=args.rule,
        skip=args.skip,
        split=args.split,
        eval_limit=args.eval_limit or None,  # 0: the whole validation split
        population=args.population,
        generations=args.generations,
        min_budget_fraction=args.min_budget_fraction,
        final_steps=args.final_steps,
        final_from=args.final_from,
    )


def _ref(name_or_path: str) -> str:
    """A built-in name as it is, a file as an absolute path (as pipeline files hold them)."""
    path = Path(name_or_path)
    return str(path.resolve()) if path.exists() else name_or_path


def run_product(args: argparse.Namespace, name: str, budget_ms: float, **changes: Any) -> dict:
    """One method run as ``hurricane generate`` runs it (no handoff, no report), in
    ``--out/NAME``: its search and final steps' outputs and the reduced space it searched."""
    budget = Budget(ms=budget_ms)
    p = Pipeline(
        name=name,
        space=_ref(args.space),
        devices=(_ref(args.device),),
        budgets=(budget,),
        db=args.db,
        out=str(Path(args.out) / name),
        seed=args.seed,
        generate=replace(settings(args), **changes),
        handoff=False,
        report=False,
        source=__file__,
    )
    run = PipelineRun(p, progress=False)
    ((dev, res),) = run.run(handoff=False).items()
    b = res["budgets"][budget.label]
    work = Path(p.out) / dev / budget.label
    if p.generate.two_stage:
        two = json.loads((work / "result.json").read_text())
        seconds = two["stage_a"]["seconds"] + two["stage_b"]["seconds"]
    else:
        seconds = json.loads((work / "search" / "state.json").read_text())["seconds"]
    return {
        "search": b["search"],
        "final": b["final"],
        "space_file": res["space_file"],
        "kept": res["shrink"].get("kept"),
        "work": work,
        "search_seconds": round(seconds, 1),
    }


def build_parser() -> argparse.ArgumentParser:
    d = GenerateSettings()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", default="demo")
    ap.add_argument("--device", default="local-litert")
    ap.add_argument("--db", default=DEFAULT_DB, help="LUT database (default: %(default)s)")
    ap.add_argument(
        "--budget",
        default="40%",
        help="latency budget: ms, or a percentile of the space's latencies, resolved as "
        "hurricane run resolves it (default: %(default)s)",
    )
    ap.add_argument(
        "--budgets",
        nargs="+",
        default=None,
        help="several budgets (e.g. 20%% 40%% 70%%): writes search_budgets.json and .png "
        "instead of search_comparison.json",
    )
    ap.add_argument(
        "--budget-only",
        action="store_true",
        help="print the budget in ms the comparison would run under, and stop",
    )
    ap.add_argument("--steps", type=int, default=1500, help="SPOS supernet steps")
    ap.add_argument(
        "--stage-fraction",
        type=float,
        default=0.3,
        help="each HURRICANE stage trains this fraction of --steps",
    )
    ap.add_argument("--split", type=int, default=d.split, help="default: half the layers")
    ap.add_argument("--final-steps", type=int, default=800)
    ap.add_argument(
        "--final-seeds",
        type=int,
        default=5,
        help="seeds each final model is trained with; test_acc is their mean",
    )
    ap.add_argument(
        "--final-from",
        choices=FINAL_FROM,
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
    ap.add_argument("--population", type=int, default=d.population)
    ap.add_argument("--generations", type=int, default=d.generations)
    ap.add_argument("--k", type=int, default=d.k)
    ap.add_argument(
        "--rule",
        default=d.rule,
        choices=sorted(RULES),
        help="stage one's reduction rule (hurricane/reduce.py)",
    )
    ap.add_argument(
        "--skip",
        default=d.skip,
        choices=SKIP_RULES,
        help="stage one keeps skip on every layer, or only where it is an identity",
    )
    ap.add_argument(
        "--eval-limit",
        type=int,
        default=d.eval_limit,
        help="validation images each candidate is scored on (0: the whole split; "
        "that ranks the top of a search more stably but, in one run, did not "
        "pick better models and made searches 4x slower)",
    )
    ap.add_argument("--seed", type=int, default=TrainConfig.seed)
    ap.add_argument(
        "--methods",
        nargs="+",
        # hurricane_distill is hurricane itself where the product already distils.
        default=["spos_full", "random", "hurricane", "mbv2_scaled"],
    )
    ap.add_argument("--out", default="runs/bench-search")
    return ap


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    t_start = time.perf_counter()
    space, spec = load_space(args.space), load_device(args.device)
    rep = profile(space, spec, args.db, progress=not args.budget_only)
    print(f"LUT for {spec.name}/{space.name}: {rep.instances} entries ({rep.new_entries} new)")
    model = LatencyModel.from_db(space, args.db, spec.name)
    texts = args.budgets or [args.budget]
    budgets = [Budget.parse(t).resolve(model.predict, space, args.seed) for t in texts]
    for t, b in zip(texts, budgets):
        print(
            f"budget {b} ms on {spec.name} ({t}; fastest in the space {model.fastest()[0]:.4f} ms)"
        )
    if args.budget_only:
        return
    if not args.budgets:
        compare(args, space, spec, model, budgets[0], RESULTS / "search_comparison.json", "")
        return
    # Over budgets: the product's supernets are trained once and searched per budget (a
    # pipeline's steps); random search and mbv2_scaled get a folder per budget.
    reports = []
    path = RESULTS / "search_budgets.json"
    done = stored_budgets(path, args)
    for t, b in zip(texts, budgets):
        if t in done:  # measured by an earlier run with these settings: kept as it was
            print(f"\n=== budget {t}: kept from {path} ({done[t]['budget_ms']} ms) ===")
            reports.append(done[t])
            continue
        print(f"\n=== budget {t} ({b} ms) ===", flush=True)
        one = compare(args, space, spec, model, b, None, f"-{t.rstrip('%')}")
        reports.append({"budget": t, **one})
        RESULTS.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(reports, indent=1) + "\n")
    plot_budgets(reports, RESULTS / "search_budgets.png", spec.name)
    print(f"wrote {path} ({time.perf_counter() - t_start:.0f} s)")


# Settings that do not change what a budget's report measures.
_NOT_MEASURED = {"out", "db", "budgets", "budget", "budget_only"}


def stored_budgets(path: Path, args: argparse.Namespace) -> dict[str, dict]:
    """Reports in ``path`` measured with the same settings, by budget: a run over several
    budgets takes hours, so one cut short (or whose ``--out`` did not survive) goes on from
    the budgets it finished."""
    if not path.is_file():
        return {}
    want = {k: v for k, v in vars(args).items() if k not in _NOT_MEASURED}
    return {
        r["budget"]: r
        for r in json.loads(path.read_text())
        if {k: v for k, v in r.get("settings", {}).items() if k not in _NOT_MEASURED} == want
    }


def compare(args, space, spec, model, budget: float, res_path: Path | None, tag: str) -> dict:
    """Every method under one budget; ``tag`` names the per-budget folders of the methods
    that are not pipelines. Writes ``res_path`` as it goes (when given); returns the report."""
    t_start = time.perf_counter()
    out = Path(args.out)
    g = settings(args)
    stage_steps = round(args.steps * args.stage_fraction)
    methods: dict[str, dict] = {}

    def save() -> dict:
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
        if res_path is not None:
            RESULTS.mkdir(parents=True, exist_ok=True)
            res_path.write_text(json.dumps(report, indent=1) + "\n")
        return report

    if {"spos_full", "random"} & set(args.methods):
        t0 = time.perf_counter()
        spos = run_product(args, "spos_full", budget, steps=args.steps, **PLAIN_SPOS)
        spos_pt = spos["search"]["supernet_pt"]
        cost = {
            "supernet_steps": spos["search"]["supernet_steps"],
            "supernet_seconds": spos["search"]["supernet_seconds"],
        }
        if "spos_full" in args.methods:
            methods["spos_full"] = {
                **cost,
                "search_seconds": spos["search_seconds"],
                **_final_summary(spos["final"], args.space, spos_pt, spos["work"], args),
            }
            report("spos_full", methods, t0)
            save()
        if "random" in args.methods:
            t0 = time.perf_counter()
            cfg = g.train_config(args.space, Pipeline.data, out / f"random{tag}", args.seed, False)
            net = load_supernet(space, spos_pt)
            fit = SupernetFitness(net, data_for(cfg, space), cfg.bn_batches, seed=args.seed)
            search = g.search_config(budget, args.seed)
            rnd = random_search(
                space, model.predict, fit, search, out=out / f"random{tag}" / "search"
            )
            fin = final_model(
                args.space,
                spec,
                rnd["top"],
                budget,
                args.db,
                Path(spos_pt),
                out / f"random{tag}",
                g.verify_top,
                g.final_steps,
                Pipeline.data,
                args.seed,
                progress=False,
                inherit=g.final_from == "inherited",
            )
            methods["random"] = {
                **cost,
                "search_seconds": rnd["seconds"],
                **_final_summary(fin, args.space, spos_pt, out / f"random{tag}", args),
            }
            report("random", methods, t0)
            save()

    for name in ("hurricane", "hurricane_distill"):
        if name not in args.methods:
            continue
        t0 = time.perf_counter()
        res = run_product(
            args,
            name,
            budget,
            two_stage=True,
            steps=stage_steps,
            steps_b=stage_steps,
            # hurricane: the product's own training options; _distill: with distillation.
            **({"distill": True} if name.endswith("distill") else {}),
        )
        methods[name] = {
            "supernet_steps": res["search"]["supernet_steps"],
            "supernet_seconds": res["search"]["supernet_seconds"],
            "search_seconds": res["search_seconds"],
            "reduced_space": res["kept"],
            **_final_summary(
                res["final"], res["space_file"], res["search"]["supernet_pt"], res["work"], args
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
            out / f"mbv2_scaled{tag}",
            args.final_steps,
            args.seed,
            args.final_seeds,
        )
        report("mbv2_scaled", methods, t0)
    result = save()
    print(f"\n{'method':<18} {'test_acc':>8} {'measured_ms':>11} {'steps':>6} {'seconds':>8}")
    for name, m in methods.items():
        print(
            f"{name:<18} {m['test_acc']:>8.4f} {m['measured_ms']:>11.4f} "
            f"{m['supernet_steps']:>6} {m['supernet_seconds']:>8.1f}"
        )
    for check, ok in goal(methods, budget).items():
        print(f"  {'PASS' if ok else 'FAIL'}  {check}")
    if res_path is not None:
        print(f"wrote {res_path}")
    return result


def plot_budgets(reports: list[dict], path: Path, device: str) -> None:
    """Test accuracy (mean, seed spread as error bars) against measured latency, every
    method at every budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    names = list(dict.fromkeys(n for r in reports for n in r["methods"]))
    for i, name in enumerate(names):
        pts = [
            (m["measured_ms"], m["test_acc"], float(np.std(m.get("test_accs") or [0.0])))
            for r in reports
            if (m := r["methods"].get(name))
        ]
        xs, ys, es = zip(*pts)
        ax.errorbar(xs, ys, yerr=es, fmt="o-", capsize=3, color=f"C{i}", label=name)
    for r in reports:
        ax.axvline(r["budget_ms"], ls="--", color="0.6", lw=0.8)
    ax.set_xlabel(f"measured latency on {device} (ms); dashed: budgets")
    ax.set_ylabel("test accuracy (mean over final seeds, ±1 std)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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
        out["hurricane supernet seconds <= 0.7 x spos_full"] = (
            h["supernet_seconds"] <= 0.7 * s["supernet_seconds"]
        )
    for other in ("random", "mbv2_scaled"):
        if h and other in methods:
            out[f"hurricane test_acc > {other}"] = h["test_acc"] > methods[other]["test_acc"]
    m = methods.get("mbv2_scaled")
    if h and m and h.get("test_accs") and m.get("test_accs"):
        # The seed spread: the larger of the two methods' standard deviations over seeds.
        spread = max(float(np.std(h["test_accs"])), float(np.std(m["test_accs"])))
        out["hurricane > mbv2_scaled by > 2 std"] = h["test_acc"] - m["test_acc"] > 2 * spread
    return out


if __name__ == "__main__":
    main()
