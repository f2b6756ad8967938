"""Weight-sharing overhead: supernet training steps on one path vs the standalone subnet.

Trains the demo supernet on a seeded path and a standalone subnet of the same path for the
same number of steps on the same Fashion-MNIST batches, interleaved in rounds (this machine's
speed drifts between and within processes), and reports medians over rounds.

    .venv/bin/python benchmarks/supernet_throughput.py [--steps 30 --rounds 7]
    # at real resolution: the default space, 224x224, batch 32, generated images
    .venv/bin/python benchmarks/supernet_throughput.py --space default --batch-size 32 \
        --steps 3 --rounds 5 --result supernet_throughput_224.json
    # on a GPU (benchmarks/gpu_check.sh): --torch-device cuda --precision bf16

Spaces whose input Fashion-MNIST cannot fill (3 channels, 1000 classes) train on seeded
random images and labels: the overhead is a matter of compute, not of what the pixels hold.
Writes benchmarks/results/supernet_throughput.json (or --result); goal overhead <= 0.15.
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

from hurricane.compute import PRECISIONS, Compute, compute_for
from hurricane.data import load_data
from hurricane.provenance import provenance
from hurricane.space_file import load_space
from hurricane.subnet import build_subnet
from hurricane.supernet import Supernet

RESULTS = Path(__file__).parent / "results"


def make_step(model, params, arch=None, compute: Compute | None = None):
    c = compute or Compute()
    opt = torch.optim.SGD(params, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-5)
    scaler = c.scaler()

    def step(x, y):
        with c.autocast():
            logits = model(x, arch) if arch is not None else model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()

    return step


def timed(step, batches, compute: Compute | None = None) -> float:
    sync = torch.cuda.synchronize if compute is not None and compute.cuda else lambda: None
    sync()
    t = time.perf_counter()
    for x, y in batches:
        step(x, y)
    sync()  # CUDA runs asynchronously: count the work, not its queueing
    return time.perf_counter() - t


def make_batches(space, batch_size: int, steps: int, seed: int, data: str):
    gen = torch.Generator().manual_seed(seed)
    if data == "fashion-mnist":
        splits = load_data("fashion-mnist", space.resolution, space.in_channels, space.classes)
        return [
            splits.train.batch(torch.randint(0, len(splits.train), (batch_size,), generator=gen))
            for _ in range(steps)
        ]
    shape = (batch_size, space.in_channels, *space.resolution)
    labels = (batch_size,)
    return [
        (torch.randn(shape, generator=gen), torch.randint(0, space.classes, labels, generator=gen))
        for _ in range(steps)
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", default="demo")
    ap.add_argument("--steps", type=int, default=30, help="steps per round and model")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument(
        "--data",
        choices=("auto", "fashion-mnist", "random"),
        default="auto",
        help="auto: Fashion-MNIST where it fits the space's input, else seeded random images",
    )
    ap.add_argument("--torch-device", default="cpu", help="auto|cpu|cuda|cuda:N")
    ap.add_argument("--precision", choices=PRECISIONS, default="fp32")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--result", default="supernet_throughput.json", help="file in results/")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    compute = compute_for(args.torch_device, args.precision, args.channels_last)

    space = load_space(args.space)
    data = args.data
    if data == "auto":
        data = "fashion-mnist" if (space.in_channels, space.classes) == (1, 10) else "random"
    batches = [
        (compute.batch(x), y.to(compute.device))
        for x, y in make_batches(space, args.batch_size, args.steps, args.seed, data)
    ]
    arch = space.sample_arch(random.Random(args.seed))

    supernet = compute.module(Supernet(space).train())
    subnet = compute.module(build_subnet(space, arch).train())
    # The supernet's optimizer holds every candidate's weights, as in real SPOS training;
    # only the path's get gradients and updates.
    runners = {
        "supernet": make_step(supernet, supernet.parameters(), arch, compute),
        "subnet": make_step(subnet, subnet.parameters(), compute=compute),
    }
    for run in runners.values():  # warm-up: allocator, oneDNN primitive caches, cuDNN
        timed(run, batches[:3], compute)

    seconds: dict[str, list[float]] = {name: [] for name in runners}
    for r in range(args.rounds):
        order = list(runners) if r % 2 == 0 else list(reversed(runners))
        for name in order:
            seconds[name].append(timed(runners[name], batches, compute))
    images = args.steps * args.batch_size
    rate = {name: [images / s for s in secs] for name, secs in seconds.items()}
    sup = statistics.median(rate["supernet"])
    sub = statistics.median(rate["subnet"])
    # Per-round ratios cancel drift that hits both models of a round alike.
    ratios = [a / b for a, b in zip(rate["supernet"], rate["subnet"])]
    result = {
        "space": space.name,
        "resolution": list(space.resolution),
        "data": data,
        **compute.describe(),
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
    out = RESULTS / args.result
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"path {arch}")
    print(
        f"supernet {sup:.1f} img/s, subnet {sub:.1f} img/s, overhead {result['overhead']:.3f} "
        f"(median of round ratios: {result['overhead_median_of_round_ratios']:.3f}); "
        f"wrote {out}"
    )


if __name__ == "__main__":
    main()
