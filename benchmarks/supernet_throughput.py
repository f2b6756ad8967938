"""Weight-sharing overhead: supernet training steps on one path vs the standalone subnet.

Trains the demo supernet on a seeded path and a standalone subnet of the same path for the
same number of steps on the same Fashion-MNIST batches, interleaved in rounds (this machine's
speed drifts between and within processes), and reports medians over rounds.

    .venv/bin/python benchmarks/supernet_throughput.py [--steps 30 --rounds 7]

Writes benchmarks/results/supernet_throughput.json; the goal is overhead <= 0.15.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from hurricane.data import load_data
from hurricane.provenance import provenance
from hurricane.space_file import load_space
from hurricane.subnet import build_subnet
from hurricane.supernet import Supernet

RESULTS = Path(__file__).parent / "results"


def make_step(model, params, arch=None):
    opt = torch.optim.SGD(params, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-5)

    def step(x, y):
        logits = model(x, arch) if arch is not None else model(x)
        loss = F.cross_entropy(logits, y, label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def timed(step, batches) -> float:
    t = time.perf_counter()
    for x, y in batches:
        step(x, y)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", default="demo")
    ap.add_argument("--steps", type=int, default=30, help="steps per round and model")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    space = load_space(args.space)
    data = load_data("fashion-mnist", space.resolution, space.in_channels, space.classes)
    gen = torch.Generator().manual_seed(args.seed)
    batches = [
        data.train.batch(torch.randint(0, len(data.train), (args.batch_size,), generator=gen))
        for _ in range(args.steps)
    ]
    arch = space.sample_arch(random.Random(args.seed))

    supernet = Supernet(space).train()
    subnet = build_subnet(space, arch).train()
    # The supernet's optimizer holds every candidate's weights, as in real SPOS training;
    # only the path's get gradients and updates.
    runners = {
        "supernet": make_step(supernet, supernet.parameters(), arch),
        "subnet": make_step(subnet, subnet.parameters()),
    }
    for run in runners.values():  # warm-up: allocator, oneDNN primitive caches
        timed(run, batches[:3])

    seconds: dict[str, list[float]] = {name: [] for name in runners}
    for r in range(args.rounds):
        order = list(runners) if r % 2 == 0 else list(reversed(runners))
        for name in order:
            seconds[name].append(timed(runners[name], batches))
    images = args.steps * args.batch_size
    rate = {name: [images / s for s in secs] for name, secs in seconds.items()}
    sup = statistics.median(rate["supernet"])
    sub = statistics.median(rate["subnet"])
    # Per-round ratios cancel drift that hits both models of a round alike.
    ratios = [a / b for a, b in zip(rate["supernet"], rate["subnet"])]
    result = {
        "space": space.name,
        "arch": str(arch),
        "batch_size": args.batch_size,
        "steps_per_round": args.steps,
        "rounds": args.rounds,
        "threads": args.threads,
        "supernet_params": sum(p.numel() for p in supernet.parameters()),
        "subnet_params": sum(p.numel() for p in subnet.parameters()),
        "supernet_images_per_s": round(sup, 1),
        "subnet_images_per_s": round(sub, 1),
        "overhead": round(1 - sup / sub, 4),
        "overhead_median_of_round_ratios": round(1 - statistics.median(ratios), 4),
        "round_images_per_s": {k: [round(v, 1) for v in vs] for k, vs in rate.items()},
        "goal": "overhead <= 0.15",
        "provenance": provenance(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "supernet_throughput.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"path {arch}")
    print(
        f"supernet {sup:.1f} img/s, subnet {sub:.1f} img/s, overhead {result['overhead']:.3f} "
        f"(median of round ratios: {result['overhead_median_of_round_ratios']:.3f}); "
        f"wrote {out}"
    )


if __name__ == "__main__":
    main()
