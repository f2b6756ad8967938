"""Input pipeline for image files: training images decoded and augmented per second through
``hurricane.loader.iterate`` by worker count, and the share of a training step spent waiting
for its batch.

Writes a synthetic ImageFolder of JPEGs (``hurricane.synthetic``; reused when already there),
then, in interleaved rounds (this machine's speed drifts), for each worker count: the rate of
``--batches`` training batches after one warm-up batch, and ``--steps`` training steps of a
small CNN fed by ``iterate`` (wait for the next batch / whole step). Medians over rounds.

    .venv/bin/python benchmarks/input_pipeline.py [--workers 0 1 2 --images 512 --batches 24]

Writes benchmarks/results/input_pipeline.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from hurricane.data import FolderImages, load_data
from hurricane.loader import default_workers, iterate, transform_backend
from hurricane.provenance import provenance
from hurricane.synthetic import write_imagefolder

RESULTS = Path(__file__).parent / "results"
CLASSES = 8


def tiny_cnn(classes: int, width: int) -> nn.Module:
    """Four stride-2 conv3x3-BN-ReLU blocks (width, 2x, 4x, 8x), global pool, linear: at
    224x224 and width 8, a step takes about as long as loading its batch on 2 cores."""
    layers: list[nn.Module] = []
    cin = 3
    for cout in (width, 2 * width, 4 * width, 8 * width):
        layers += [nn.Conv2d(cin, cout, 3, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
        cin = cout
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes))


def dataset(root: Path, images: int, size: int) -> FolderImages:
    """The benchmark's ImageFolder, written once per (size, image count)."""
    folder = root / f"{size}px-{images}"
    per_class = images // CLASSES
    if len(list((folder / "train").glob("*/*.jpg"))) != per_class * CLASSES:
        write_imagefolder(folder, CLASSES, per_class, (size, size), val_per_class=1, seed=0)
    n = per_class * CLASSES
    data = load_data(f"imagefolder:{folder}", (size, size), 3, CLASSES, val_fraction=1 / n)
    assert isinstance(data.train, FolderImages)
    return data.train


def plans(size: int, batch: int, seed: int = 0) -> Iterator[tuple[int, torch.Tensor]]:
    """Endless training plans: a seeded permutation per epoch, key = step."""
    per_epoch = size // batch
    for step in itertools.count():
        epoch, b = divmod(step, per_epoch)
        perm = torch.randperm(size, generator=torch.Generator().manual_seed(seed * 1000 + epoch))
        yield step, perm[b * batch : (b + 1) * batch]


def images_per_s(data: FolderImages, workers: int, batch: int, batches: int) -> float:
    it = iterate(data, plans(len(data), batch), train=True, workers=workers)
    next(it)  # warm-up: worker start, first decode
    t = time.perf_counter()
    for _ in range(batches):
        next(it)
    rate = batches * batch / (time.perf_counter() - t)
    it.close()  # type: ignore[attr-defined]
    return rate


def make_step(model: nn.Module):
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def idle(data: FolderImages, workers: int, batch: int, steps: int, width: int) -> dict:
    """Seconds per step waiting for the batch and in all, over ``steps`` after one warm-up."""
    step = make_step(tiny_cnn(CLASSES, width).train())
    it = iterate(data, plans(len(data), batch, seed=1), train=True, workers=workers)
    step(*next(it))  # warm-up: workers, allocator, oneDNN primitives
    wait = total = 0.0
    for _ in range(steps):
        t0 = time.perf_counter()
        x, y = next(it)
        t1 = time.perf_counter()
        step(x, y)
        t2 = time.perf_counter()
        wait += t1 - t0
        total += t2 - t0
    it.close()  # type: ignore[attr-defined]
    return {"wait_s": wait / steps, "step_s": total / steps, "idle_share": wait / total}


def compute_only(data: FolderImages, batch: int, steps: int, width: int) -> float:
    """Seconds per training step on batches already in memory: the model's own cost."""
    batches = list(itertools.islice(iterate(data, plans(len(data), batch), train=True), 2))
    step = make_step(tiny_cnn(CLASSES, width).train())
    step(*batches[0])
    t = time.perf_counter()
    for i in range(steps):
        step(*batches[i % 2])
    return (time.perf_counter() - t) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--images", type=int, default=512, help="training images to write")
    ap.add_argument("--size", type=int, default=224, help="image side and resolution")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--batches", type=int, default=24, help="timed batches per round")
    ap.add_argument("--steps", type=int, default=16, help="timed training steps per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--width", type=int, default=8, help="the CNN's first width")
    ap.add_argument("--data", type=Path, default=Path("runs/bench-imagefolder"))
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    t = time.perf_counter()
    data = dataset(args.data, args.images, args.size)
    print(f"{len(data)} training images {args.size}x{args.size} ({time.perf_counter() - t:.1f} s)")

    rates: dict[str, list[float]] = {str(w): [] for w in args.workers}
    idles: dict[str, list[dict]] = {str(w): [] for w in args.workers}
    compute: list[float] = []
    for r in range(args.rounds):
        order = args.workers if r % 2 == 0 else list(reversed(args.workers))
        for w in order:
            rates[str(w)].append(images_per_s(data, w, args.batch_size, args.batches))
        compute.append(compute_only(data, args.batch_size, args.steps, args.width))
        for w in order:
            idles[str(w)].append(idle(data, w, args.batch_size, args.steps, args.width))
        print(
            f"round {r}: "
            + ", ".join(f"{w} workers {rates[str(w)][-1]:.0f} img/s" for w in args.workers)
            + "; idle "
            + ", ".join(f"{w}: {idles[str(w)][-1]['idle_share']:.2f}" for w in args.workers)
        )

    med = statistics.median
    model = tiny_cnn(CLASSES, args.width)
    result = {
        "images": len(data),
        "image_size": [args.size, args.size],
        "resolution": list(data.resolution),
        "format": "JPEG quality 90 (hurricane.synthetic.write_imagefolder)",
        "batch_size": args.batch_size,
        "batches_per_round": args.batches,
        "steps_per_round": args.steps,
        "rounds": args.rounds,
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "default_workers": default_workers(),
        "transform": "RandomResizedCrop(0.08-1, 3/4-4/3) + flip, normalised; "
        + f"by {transform_backend()}",
        "model": f"tiny CNN: 4 stride-2 conv3x3-BN-ReLU (widths {args.width}-{8 * args.width}), "
        f"global pool, linear {CLASSES} classes; SGD",
        "model_params": sum(p.numel() for p in model.parameters()),
        "images_per_s": {w: round(med(v), 1) for w, v in rates.items()},
        "idle_share": {w: round(med(d["idle_share"] for d in v), 3) for w, v in idles.items()},
        "step_s": {w: round(med(d["step_s"] for d in v), 4) for w, v in idles.items()},
        "wait_s": {w: round(med(d["wait_s"] for d in v), 4) for w, v in idles.items()},
        "compute_only_step_s": round(med(compute), 4),
        "round_images_per_s": {w: [round(x, 1) for x in v] for w, v in rates.items()},
        "round_idle_share": {w: [round(d["idle_share"], 3) for d in v] for w, v in idles.items()},
        "provenance": provenance(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "input_pipeline.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    for w in args.workers:
        k = str(w)
        print(
            f"{w} workers: {result['images_per_s'][k]:.0f} img/s; training step "
            f"{result['step_s'][k] * 1000:.0f} ms, waiting {result['wait_s'][k] * 1000:.0f} ms "
            f"(idle share {result['idle_share'][k]:.2f})"
        )
    print(f"model alone: {result['compute_only_step_s'] * 1000:.0f} ms a step; wrote {out}")


if __name__ == "__main__":
    main()
