"""Which timing statistic reproduces between sessions on this machine?

    .venv/bin/python benchmarks/measurement_protocol.py

Times 12 LiteRT models from the artifact cache (run latency_validation.py first to fill it)
in 4 sessions per protocol (rounds x minimum ms per round, interleaved in shuffled order) and
reports, per statistic of the round medians (median, min, 25th percentile), how far each
model's figure moves from session to session. Writes benchmarks/results/measurement_protocol.json.
This is what made the local specs use 20 short rounds and the minimum.
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from devices.artifacts import default_cache_dir

PROTOCOLS = [(25, 10), (5, 50), (15, 15), (25, 10)]


def session(its: list, rounds: int, round_ms: float, seed: int) -> dict[str, np.ndarray]:
    for it in its:
        for _ in range(5):
            it.invoke()
    meds: list[list[float]] = [[] for _ in its]
    rng = random.Random(seed)
    for _ in range(rounds):
        order = list(range(len(its)))
        rng.shuffle(order)
        for j in order:
            ts, t0 = [], time.perf_counter()
            while len(ts) < 10 or time.perf_counter() - t0 < round_ms / 1e3:
                t = time.perf_counter()
                its[j].invoke()
                ts.append(time.perf_counter() - t)
            meds[j].append(float(np.median(ts)) * 1e3)
    m = np.array(meds)
    return {"median": np.median(m, 1), "min": m.min(1), "p25": np.quantile(m, 0.25, 1)}


def main() -> None:
    files = sorted((default_cache_dir() / "litert").glob("*/*.tflite"), key=os.path.getsize)
    if len(files) < 20:
        raise SystemExit("the artifact cache holds too few LiteRT models; run a profile first")
    pick = random.Random(0).sample(files[len(files) // 3 :], 12)
    its = []
    for f in pick:
        it = Interpreter(model_path=str(f), num_threads=1)
        it.allocate_tensors()
        inp = it.get_input_details()[0]
        it.set_tensor(inp["index"], np.random.rand(*inp["shape"]).astype(np.float32))
        its.append(it)
    rows = []
    for rounds, round_ms in PROTOCOLS:
        reps = [session(its, rounds, round_ms, s) for s in range(4)]
        for stat in ("median", "min", "p25"):
            a = np.array([r[stat] for r in reps])
            rel = np.abs(a - np.median(a, 0)) / np.median(a, 0)
            row = {
                "rounds": rounds,
                "round_ms": round_ms,
                "statistic": stat,
                "mean_dev": round(float(rel.mean()), 4),
                "max_dev": round(float(rel.max()), 4),
                "share_over_5pct": round(float(np.mean(rel > 0.05)), 3),
            }
            rows.append(row)
            print(
                f"rounds {rounds:>2} x {round_ms:>2} ms {stat:>6}: mean |dev| "
                f"{row['mean_dev']:.3f} max {row['max_dev']:.3f}"
            )
    out = Path(__file__).parent / "results" / "measurement_protocol.json"
    out.write_text(json.dumps(rows, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
