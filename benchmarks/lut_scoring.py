"""LUT-sum scoring speed: 10,000 random architectures of a space in one call.

    .venv/bin/python benchmarks/lut_scoring.py [--space default] [--n 10000]

Only the predictor's speed is measured, so the table holds seeded random latencies for every
key of the space (scoring does the same work whatever the values). Writes
benchmarks/results/lut_scoring.json; the goal is well under a second for 10,000.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

from hurricane.latency import LutPredictor
from hurricane.provenance import provenance
from hurricane.space_file import load_space

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", default="default")
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    space = load_space(args.space)
    rng = random.Random(0)
    keys = [i.key for i in [*space.fixed_instances(), *space.op_instances()]]
    pred = LutPredictor(space, {k: rng.uniform(0.01, 2.0) for k in keys})
    archs = [space.sample_arch(rng) for _ in range(args.n)]
    encode, score = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        ops, widths = pred.encode(archs)
        t1 = time.perf_counter()
        pred.predict_indices(ops, widths)
        t2 = time.perf_counter()
        encode.append(t1 - t0)
        score.append(t2 - t1)
    result = {
        "space": space.name,
        "layers": len(space.layers),
        "archs": args.n,
        "encode_s": round(statistics.median(encode), 4),
        "score_s": round(statistics.median(score), 4),
        "total_s": round(statistics.median(e + s for e, s in zip(encode, score)), 4),
        "goal": "total_s well under 1 s for 10,000 architectures",
        "provenance": provenance(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "lut_scoring.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{args.n} archs of {space.name}: encode {result['encode_s']}s + score "
        f"{result['score_s']}s = {result['total_s']}s; wrote {out}"
    )


if __name__ == "__main__":
    main()
