"""How well a trained supernet ranks architectures against training each one alone (demo
space, Fashion-MNIST, local LiteRT), per supernet training option.

    .venv/bin/python benchmarks/supernet_ranking.py [--n 30] [--band 30 60]
        [--standalone-steps 600] [--steps 3000] [--trainings spos fair sandwich ...]
        [--seed 0] [--out runs/bench-ranking]

``--n`` architectures are drawn (seeded) with predicted latency on ``--device`` between the
``--band`` percentiles of the space's latencies, so that the ranking is the one a search
under such a budget needs. Each is trained alone from scratch for ``--standalone-steps``
(the final model's schedule, ``hurricane.final.train_final``) and scored on the test split;
those accuracies are stored under ``--out/standalone`` and reused by later runs, so their
cost is paid once per space, schedule and seed. Each training option then trains one
supernet for ``--steps`` and scores every architecture with the search's fitness
(``hurricane.two_stage.SupernetFitness``: inherited weights, recalibrated BN, validation
accuracy).

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
import json
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from devices.spec import load_device
from hurricane.budgets import percentile_ms
from hurricane.final import train_final
from hurricane.latency import LatencyModel
from hurricane.provenance import provenance
from hurricane.space_file import load_space
from hurricane.train import TrainConfig, train
from hurricane.two_stage import data_for, fitness_for, load_supernet
from pipelines.jobs import profile_device
from pipelines.report import op_family

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
# Each option's TrainConfig fields; "spos" is what `hurricane run` trains today.
TRAININGS: dict[str, dict[str, Any]] = {
    "spos": {},
    "fair": {"fair": True},
    "sandwich": {"sandwich": True},
    "distill": {"distill": True},
    "sandwich_distill": {"sandwich": True, "distill": True},
    "fair_distill": {"fair": True, "distill": True},
}
DEFAULT = "spos"


def sample_band(space, predict, lo: float, hi: float, n: int, seed: int) -> list:
    """``n`` distinct architectures with predicted latency within [lo, hi] ms, seeded."""
    rng, found = random.Random(seed), {}
    for _ in range(200 * n):
        a = space.sample_arch(rng)
        if lo <= float(predict([a])[0]) <= hi:
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


def bootstrap(x: np.ndarray, y: np.ndarray, fn, rounds: int, seed: int) -> list[float]:
    rs = np.random.default_rng(seed)
    vals = []
    for _ in range(rounds):
        idx = rs.integers(0, len(x), len(x))
        if len(set(idx)) > 2:
            vals.append(fn(x[idx], y[idx]))
    return [round(float(np.percentile(vals, 2.5)), 4), round(float(np.percentile(vals, 97.5)), 4)]


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", default="demo")
    ap.add_argument("--device", default="local-litert")
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--band", type=float, nargs=2, default=[30.0, 60.0])
    ap.add_argument("--standalone-steps", type=int, default=600)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--trainings", nargs="+", default=list(TRAININGS), choices=list(TRAININGS))
    ap.add_argument("--train-limit", type=int, default=None)
    ap.add_argument("--bootstrap", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/bench-ranking")
    ap.add_argument("--result", default="supernet_ranking.json")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    space = load_space(args.space)
    spec = load_device(args.device)
    db = out / "lut.sqlite"
    profile_device(space, spec, db, progress=True)
    predict = LatencyModel.from_db(space, db, spec.name).predict
    lo, hi = (percentile_ms(predict, space, p, args.seed) for p in args.band)
    archs = sample_band(space, predict, lo, hi, args.n, args.seed)
    print(f"{len(archs)} architectures within {lo:.4g}-{hi:.4g} ms", flush=True)
    truth = []
    for i, a in enumerate(archs):
        truth.append(
            standalone(args.space, a, args.standalone_steps, args.seed, out / "standalone")
        )
        print(f"  alone {i + 1}/{len(archs)}: {a} {truth[-1]:.4f}", flush=True)
    y = np.array(truth)
    rows = []
    for name in args.trainings:
        cfg = TrainConfig(
            space=args.space,
            out=str(out / "supernets" / name),
            steps=args.steps,
            seed=args.seed,
            eval_paths=0,
            train_limit=args.train_limit,
            progress=False,
            **TRAININGS[name],
        )
        t0 = time.perf_counter()
        summary = train(cfg)
        fit = fitness_for(
            load_supernet(space, out / "supernets" / name / "supernet.pt"),
            data_for(cfg, space),
            cfg,
            args.seed,
        )
        scores = np.array([fit(a) for a in archs])
        row = {
            "name": name,
            "default": name == DEFAULT,
            "options": TRAININGS[name],
            "steps": args.steps,
            "train_seconds": summary.get("train_seconds"),
            "seconds": round(time.perf_counter() - t0, 1),
            **ranking(archs, y, scores, args.bootstrap, args.seed),
            "fitness": [round(float(s), 4) for s in scores],
        }
        rows.append(row)
        print(
            f"{name:>18}: tau {row['kendall_tau']:+.3f} {row['tau_ci']} rho "
            f"{row['spearman']:+.3f} top5 {row['top5_overlap']}/5 families {row['families']}",
            flush=True,
        )
    body = {
        "n": len(archs),
        "space": args.space,
        "device": spec.name,
        "band_ms": [lo, hi],
        "standalone_steps": args.standalone_steps,
        "archs": [{"arch": str(a), "test_acc": t} for a, t in zip(archs, truth)],
        "trainings": rows,
        "provenance": provenance(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / args.result
    path.write_text(json.dumps(body, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
