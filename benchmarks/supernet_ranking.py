"""How well a trained supernet ranks architectures against training each one alone (demo
space, Fashion-MNIST, local LiteRT), per supernet training option.

    .venv/bin/python benchmarks/supernet_ranking.py [--n 30] [--band 30 60]
        [--standalone-steps 600] [--steps 3000] [--trainings spos fair sandwich ...]
        [--standalone-seeds 2] [--equal-passes] [--bn-batches 10 50] [--eval-limits 2000 6000]
        [--seed 0] [--out runs/bench-ranking] [--fresh]

``--n`` architectures are drawn (seeded) with predicted latency on ``--device`` between the
``--band`` percentiles of the space's latencies, so that the ranking is the one a search
under such a budget needs. Each is trained alone from scratch for ``--standalone-steps``
(the final model's schedule, ``hurricane.final.train_final``) and scored on the test split;
those accuracies are stored under ``--out/standalone`` and in the result file, and reused
by later runs (``--fresh`` redoes them), so their cost is paid once per space, schedule and
seed. Each training option then trains one supernet for ``--steps`` (with ``--equal-passes``,
as many steps as train ``--steps`` paths in all: a fair step trains one path per candidate,
a sandwich step three) and scores every architecture with the search's fitness
(``hurricane.two_stage.SupernetFitness``: inherited weights, BN recalibrated on each
``--bn-batches`` count, validation accuracy on each ``--eval-limits`` count of images).
Rows of options an earlier run measured on the same architectures are kept; a rerun option
replaces its row. With ``--standalone-seeds 2`` the truth is two seeds' mean and
``seed_agreement`` (the two seeds' tau) says how much of a ranking noise allows.

Per option: Kendall's tau and Spearman's rho against the stand-alone accuracies, with
bootstrap 95% intervals (``--bootstrap`` resamples of the architectures), the overlap of
the two top 5s, and per operator family how far the supernet over- or under-rates it (the
mean, over architectures, of the family's share of layers times the rank difference,
supernet rank minus stand-alone rank, normalised: positive is over-rated). Writes
``benchmarks/results/supernet_ranking.json``: ``n``, the architectures with their
stand-alone accuracies, and ``trainings``, one object per option with ``name``,
``kendall_tau``, ``tau_ci``, ``spearman``, ``spearman_ci``, ``top5_overlap``, ``families``
and ``default`` (true for the one ``hurricane run`` uses).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import random
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from devices.spec import load_device
from hurricane.arch import Arch
from hurricane.budgets import percentile_ms
from hurricane.final import train_final
from hurricane.latency import LatencyModel
from hurricane.provenance import provenance
from hurricane.space_file import load_space
from hurricane.train import TrainConfig, train
from hurricane.two_stage import data_for, fitness_for, load_supernet
from pipelines.config import GenerateSettings
from pipelines.jobs import profile_device
from pipelines.report import op_family

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
# Each option's TrainConfig fields (the rest at TrainConfig's defaults: plain SPOS).
TRAININGS: dict[str, dict[str, Any]] = {
    "spos": {},
    "fair": {"fair": True},
    "sandwich": {"sandwich": True},
    "distill": {"distill": True},
    "sandwich_distill": {"sandwich": True, "distill": True},
    "fair_distill": {"fair": True, "distill": True},
    # The same with a family's kernels and expansions sharing one block.
    "family": {"share": "family"},
    "fair_family": {"fair": True, "share": "family"},
    "sandwich_family": {"sandwich": True, "share": "family"},
    "distill_family": {"distill": True, "share": "family"},
    "sandwich_distill_family": {"sandwich": True, "distill": True, "share": "family"},
}


def product_default() -> str:
    """The option ``hurricane run`` trains with: the one matching its generate settings."""
    g = GenerateSettings()
    fields = ("fair", "sandwich", "distill", "share")
    want = {f: getattr(g, f) for f in fields}
    for name, opts in TRAININGS.items():
        if {f: opts.get(f, getattr(TrainConfig, f)) for f in fields} == want:
            return name
    raise SystemExit(f"no training option here matches hurricane run's {want}")


DEFAULT = product_default()
DEFAULT_BAND = [30.0, 60.0]  # results written before the band was recorded used it


def sample_band(
    space, predict, lo: float, hi: float, n: int, seed: int, exclude: frozenset = frozenset()
) -> list:
    """``n`` distinct architectures with predicted latency within [lo, hi] ms, seeded, none
    of them in ``exclude``."""
    rng, found = random.Random(seed), {}
    for _ in range(200 * n):
        a = space.sample_arch(rng)
        if str(a) not in exclude and lo <= float(predict([a])[0]) <= hi:
            found.setdefault(str(a), a)
        if len(found) == n:
            break
    if len(found) < n:
        raise SystemExit(f"only {len(found)} architectures within {lo:.4g}-{hi:.4g} ms")
    return list(found.values())


def standalone(space_ref: str, arch, steps: int, seed: int, out: Path) -> float:
    """Test accuracy of ``arch`` trained alone: stored, and read back on later runs."""
    key = hashlib.sha256(f"{space_ref}|{arch}|{steps}|{seed}".encode()).hexdigest()[:16]
    path = out / key / "result.json"
    if path.is_file():
        return float(json.loads(path.read_text())["test_acc"])
    fin = train_final(space_ref, arch, out / key, steps, seed=seed, progress=False)
    path.write_text(json.dumps({"arch": str(arch), "steps": steps, "seed": seed, **fin}))
    return float(fin["test_acc"])


def reusable(path: Path, args, device: str) -> dict | None:
    """The stored result at ``path`` when it was measured on the same space, device, band,
    seed and stand-alone schedule, with at most ``--n`` architectures: its architectures and
    accuracies are reused (a larger ``--n`` adds architectures from the same band), so the
    stand-alone trainings are paid once even where ``--out`` did not survive."""
    if args.fresh or not path.is_file():
        return None
    body = json.loads(path.read_text())
    same = (
        body.get("space") == args.space
        and body.get("device") == device
        and body.get("n", 0) <= args.n
        and body.get("standalone_steps") == args.standalone_steps
        and body.get("band_percentiles", DEFAULT_BAND) == args.band
        and body.get("seed", 0) == args.seed
    )
    return body if same else None


def interval(n: int, stat, rounds: int, seed: int) -> list[float]:
    """95% bootstrap interval of ``stat(idx)`` over resamples of ``n`` architectures."""
    rs = np.random.default_rng(seed)
    vals = []
    for _ in range(rounds):
        idx = rs.integers(0, n, n)
        if len(set(idx)) > 2:
            v = stat(idx)
            if np.isfinite(v):  # a resample whose scores all tie has no rank correlation
                vals.append(v)
    return [round(float(np.percentile(vals, q)), 4) for q in (2.5, 97.5)]


def bootstrap(x: np.ndarray, y: np.ndarray, fn, rounds: int, seed: int) -> list[float]:
    return interval(len(x), lambda idx: fn(x[idx], y[idx]), rounds, seed)


def gain(truth: np.ndarray, scores: np.ndarray, base: np.ndarray, rounds: int, seed: int) -> dict:
    """tau(scores) - tau(base) with a paired bootstrap 95% interval: both rank the same
    resampled architectures, so the architectures' own spread cancels."""

    def diff(idx: np.ndarray) -> float:
        return tau(truth[idx], scores[idx]) - tau(truth[idx], base[idx])

    return {
        "tau_gain": round(tau(truth, scores) - tau(truth, base), 4),
        "tau_gain_ci": interval(len(truth), diff, rounds, seed),
    }


def tau(x: np.ndarray, y: np.ndarray) -> float:
    return float(stats.kendalltau(x, y).statistic)


def rho(x: np.ndarray, y: np.ndarray) -> float:
    return float(stats.spearmanr(x, y).statistic)


def families(archs: list, truth: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """Per op family: mean of (its share of layers) x (places the supernet ranks an
    architecture above its stand-alone rank) / n; positive: rich in it, rated too high."""
    n = len(archs)
    diff = (stats.rankdata(-truth) - stats.rankdata(-scores)) / n
    out: dict[str, float] = {}
    for fam in sorted({op_family(op) for a in archs for op in a.ops}):
        share = np.array([sum(op_family(op) == fam for op in a.ops) / len(a.ops) for a in archs])
        out[fam] = round(float(np.mean(share * diff)), 4)
    return out


def ranking(archs: list, truth: np.ndarray, scores: np.ndarray, rounds: int, seed: int) -> dict:
    top = set(np.argsort(-truth)[:5]) & set(np.argsort(-scores)[:5])
    return {
        "kendall_tau": round(tau(truth, scores), 4),
        "tau_ci": bootstrap(truth, scores, tau, rounds, seed),
        "spearman": round(rho(truth, scores), 4),
        "spearman_ci": bootstrap(truth, scores, rho, rounds, seed),
        "top5_overlap": len(top),
        "families": families(archs, truth, scores),
    }


def passes(name: str, space) -> int:
    """Paths a step of option ``name`` trains (forward and backward each)."""
    opts = TRAININGS[name]
    n = max(len(layer.ops) for layer in space.layers) if opts.get("fair") else 1
    if opts.get("sandwich"):
        return n + 2  # the largest (the teacher, with distill) and the smallest
    return n + int(bool(opts.get("distill")))


def steps_for(name: str, steps: int, space, equal_passes: bool) -> int:
    """``steps``, or with ``equal_passes`` as many as train ``steps`` paths in all."""
    return max(1, round(steps / passes(name, space))) if equal_passes else steps


def scored(name, bn: int, ev: int, cfg: TrainConfig, space, archs, y, args, work: Path) -> dict:
    """One row: option ``name``'s supernet (trained, or resumed from ``work``) ranking
    ``archs`` with ``bn`` batch-norm recalibration batches and ``ev`` validation images;
    the scores are stored in ``work`` and reused."""
    label = name + ("" if bn == TrainConfig.bn_batches else f"+bn{bn}")
    label += "" if ev == TrainConfig.eval_limit else f"+val{ev}"
    key = hashlib.sha256(f"{[str(a) for a in archs]}|{bn}|{ev}|{args.seed}".encode())
    path = work / f"scores-{key.hexdigest()[:12]}.json"
    if not path.is_file():
        train(cfg)
        scoring = replace(cfg, bn_batches=bn, eval_limit=ev)
        net = load_supernet(space, work / "supernet.pt")
        fit = fitness_for(net, data_for(scoring, space), scoring, args.seed)
        t0 = time.perf_counter()
        scores = [round(float(fit(a)), 4) for a in archs]
        done = {"scores": scores, "seconds": round(time.perf_counter() - t0, 1)}
        path.write_text(json.dumps(done))
    done = json.loads(path.read_text())
    summary = json.loads((work / "summary.json").read_text())
    scores = done["scores"]
    return {
        "name": label,
        "default": label == DEFAULT,
        "options": {**TRAININGS[name], "bn_batches": bn, "eval_limit": ev},
        "steps": cfg.steps,
        "paths_per_step": passes(name, space),
        "train_seconds": summary.get("train_seconds"),
        "score_seconds": done["seconds"],
        **ranking(archs, y, np.array(scores), args.bootstrap, args.seed),
        "fitness": scores,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", default="demo")
    ap.add_argument("--device", default="local-litert")
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--band", type=float, nargs=2, default=DEFAULT_BAND)
    ap.add_argument("--standalone-steps", type=int, default=600)
    ap.add_argument(
        "--standalone-seeds",
        type=int,
        default=2,
        help="seeds each architecture is trained alone with; the truth is their mean",
    )
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--trainings", nargs="+", default=list(TRAININGS), choices=list(TRAININGS))
    ap.add_argument(
        "--equal-passes",
        action="store_true",
        help="every option trains --steps paths in all (fair: --steps / candidates steps)",
    )
    ap.add_argument("--bn-batches", type=int, nargs="+", default=[TrainConfig.bn_batches])
    ap.add_argument(
        "--eval-limits",
        type=int,
        nargs="+",
        default=[TrainConfig.eval_limit],
        help="validation images per fitness; each count is its own row",
    )
    ap.add_argument("--train-limit", type=int, default=None)
    ap.add_argument("--bootstrap", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/bench-ranking")
    ap.add_argument("--result", default="supernet_ranking.json")
    ap.add_argument(
        "--fresh",
        action="store_true",
        help="sample and train the stand-alone architectures again instead of reusing --result's",
    )
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    space = load_space(args.space)
    spec = load_device(args.device)
    path = RESULTS / args.result
    stored = reusable(path, args, spec.name)
    if stored:
        archs = [Arch.parse(r["arch"]) for r in stored["archs"]]
        known = [r.get("test_accs", [r["test_acc"]]) for r in stored["archs"]]
        lo, hi = stored["band_ms"]
        print(f"{len(archs)} architectures and their stand-alone accuracies from {path}")
        if len(archs) < args.n:
            db = out / "lut.sqlite"
            profile_device(space, spec, db, progress=True)
            predict = LatencyModel.from_db(space, db, spec.name).predict
            have = frozenset(str(a) for a in archs)
            more = sample_band(space, predict, lo, hi, args.n - len(archs), args.seed, have)
            archs, known = archs + more, known + [[] for _ in more]
            print(f"  and {len(more)} more within {lo:.4g}-{hi:.4g} ms", flush=True)
    else:
        db = out / "lut.sqlite"
        profile_device(space, spec, db, progress=True)
        predict = LatencyModel.from_db(space, db, spec.name).predict
        lo, hi = (percentile_ms(predict, space, p, args.seed) for p in args.band)
        archs = sample_band(space, predict, lo, hi, args.n, args.seed)
        known = [[] for _ in archs]
        print(f"{len(archs)} architectures within {lo:.4g}-{hi:.4g} ms", flush=True)
    accs = []  # per architecture, one stand-alone accuracy per seed
    for i, (a, have) in enumerate(zip(archs, known)):
        accs.append([float(t) for t in have[: args.standalone_seeds]])
        for s in range(len(accs[-1]), args.standalone_seeds):
            acc = standalone(
                args.space, a, args.standalone_steps, args.seed + s, out / "standalone"
            )
            accs[-1].append(acc)
            print(f"  alone {i + 1}/{len(archs)} seed {args.seed + s}: {a} {acc:.4f}", flush=True)
    y = np.array([np.mean(t) for t in accs])
    # Two seeds' agreement bounds what any supernet's tau against their mean can show.
    ceiling = None
    if args.standalone_seeds > 1:
        s0, s1 = np.array([t[0] for t in accs]), np.array([t[1] for t in accs])
        ci = bootstrap(s0, s1, tau, args.bootstrap, args.seed)
        ceiling = {"kendall_tau": round(tau(s0, s1), 4), "tau_ci": ci}
        print(f"stand-alone seed agreement: tau {ceiling['kendall_tau']:+.3f} {ceiling['tau_ci']}")
    # Options measured by earlier runs on the same architectures stay, re-ranked on ``y``.
    rows = [
        {**r, **ranking(archs, y, np.array(r["fitness"]), args.bootstrap, args.seed)}
        for r in (stored or {}).get("trainings", [])
        if len(r["fitness"]) == len(archs)  # rows scored on fewer architectures are redone
    ]
    for name in args.trainings:
        steps = steps_for(name, args.steps, space, args.equal_passes)
        work = out / "supernets" / f"{name}-{steps}"
        cfg = TrainConfig(
            space=args.space,
            out=str(work),
            steps=steps,
            seed=args.seed,
            eval_paths=0,
            train_limit=args.train_limit,
            progress=False,
            **TRAININGS[name],
        )
        for bn, ev in itertools.product(args.bn_batches, args.eval_limits):
            row = scored(name, bn, ev, cfg, space, archs, y, args, work)
            rows = [r for r in rows if r["name"] != row["name"]] + [row]
            print(
                f"{row['name']:>22}: {steps} steps {row['train_seconds']}s tau "
                f"{row['kendall_tau']:+.3f} {row['tau_ci']} rho {row['spearman']:+.3f} "
                f"top5 {row['top5_overlap']}/5 families {row['families']}",
                flush=True,
            )
    body = {
        "n": len(archs),
        "space": args.space,
        "device": spec.name,
        "band_ms": [lo, hi],
        "band_percentiles": args.band,
        "seed": args.seed,
        "standalone_steps": args.standalone_steps,
        "standalone_seeds": args.standalone_seeds,
        "seed_agreement": ceiling,
        "archs": [
            {"arch": str(a), "test_acc": round(float(m), 4), "test_accs": t}
            for a, m, t in zip(archs, y, accs)
        ],
        "trainings": rows,
        "provenance": provenance(),
    }
    spos = next((np.array(r["fitness"]) for r in rows if r["name"] == "spos"), None)
    for r in rows:
        r["default"] = r["name"] == DEFAULT
        if spos is not None:  # against plain SPOS, what `hurricane run` trained before
            r["vs_spos"] = gain(y, np.array(r["fitness"]), spos, args.bootstrap, args.seed)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(body, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
