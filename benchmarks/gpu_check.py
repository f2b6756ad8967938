"""What Hurricane's training does on a GPU machine (run through ``benchmarks/gpu_check.sh``).

On generated 224x224 JPEGs (an ImageFolder of the ``default`` space's 1000 classes), with
the machine's cores decoding: the ``default`` supernet trained in bf16 for a few hundred
steps in one process and under torchrun on every GPU (NCCL), one search generation's
fitness evaluations timed, the input pipeline's rate, and the supernet's overhead over the
standalone subnet (``benchmarks/supernet_throughput.py``). Writes
``benchmarks/results/gpu.json``.

It runs the project from the tree with the machine's own ``python3`` (torch with CUDA;
no device runtimes), so nothing here may import one. ``--smoke`` runs every part on the CPU
in miniature, which is how the script is checked on a machine without a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT))

from hurricane.compute import compute_for  # noqa: E402
from hurricane.loader import iterate  # noqa: E402
from hurricane.provenance import provenance  # noqa: E402
from hurricane.space_file import load_space  # noqa: E402
from hurricane.synthetic import write_imagefolder  # noqa: E402


def log(msg: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def train_run(
    out: Path,
    data: Path,
    args: argparse.Namespace,
    procs: int,
    device: str,
    workers: int,
    torchrun: bool,
) -> dict:
    """One ``hurricane train`` of the default supernet (``procs`` processes under torchrun,
    else one plain process); its summary."""
    launch = [sys.executable]
    if torchrun:
        launch += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs)]
    cmd = launch + [
        "-m",
        "pipelines.cli",
        "train",
        "--space",
        "default",
        "--data",
        f"imagefolder:{data}",
        "--steps",
        str(args.steps),
        "--batch-size",
        str(args.batch_size * procs),  # global: each process keeps --batch-size
        "--precision",
        args.precision,
        "--torch-device",
        device,
        "--workers",
        str(workers),
        "--eval-paths",
        "0",
        "--ckpt-every",
        str(10 * args.steps),
        "--no-progress",
        "--fresh",
        "--out",
        str(out),
    ]
    if device != "cpu":
        cmd.append("--channels-last")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t = time.perf_counter()
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    if res.returncode != 0:
        raise SystemExit(f"training failed ({' '.join(cmd)}):\n{res.stderr[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    summary["wall_s"] = round(time.perf_counter() - t, 1)
    return summary


def input_rate(data: Path, space, workers: int, batch: int, batches: int) -> float:
    """Training images decoded and augmented per second with ``workers`` processes."""
    from hurricane.data import load_data

    splits = load_data(f"imagefolder:{data}", space.resolution, space.in_channels, space.classes)
    n = len(splits.train)
    gen = torch.Generator().manual_seed(0)
    plans = [(b, torch.randint(0, n, (batch,), generator=gen)) for b in range(batches + 1)]
    pin = torch.cuda.is_available()
    it = iter(iterate(splits.train, plans, train=True, workers=workers, pin_memory=pin))
    next(it)  # workers started, first batch in
    t = time.perf_counter()
    count = sum(len(y) for _, y in it)
    return count / (time.perf_counter() - t)


def search_generation(
    sup: Path, data: Path, space, device: str, precision: str, n: int, smoke: bool
) -> float:
    """Seconds for one generation's fitness evaluations (``n`` new candidates), as the
    search computes them: BN recalibration and validation accuracy per candidate."""
    from hurricane.train import TrainConfig
    from hurricane.two_stage import SupernetFitness, data_for, load_supernet

    net = load_supernet(space, sup / "supernet.pt")
    cfg = TrainConfig(space="default", data=f"imagefolder:{data}")
    workers = max(1, (os.cpu_count() or 2) - 1)
    bn_batches, batch = (1, 16) if smoke else (cfg.bn_batches, 256)  # the search's own
    fitness = SupernetFitness(
        net,
        data_for(cfg, space),
        bn_batches,
        batch,
        compute=compute_for(device, precision),
        workers=workers,
    )
    rng = random.Random(0)
    archs = [space.sample_arch(rng) for _ in range(n)]
    fitness(archs[0])  # warm-up: cuDNN picks its kernels once
    sync = torch.cuda.synchronize if device != "cpu" else (lambda: None)
    sync()
    t = time.perf_counter()
    for a in archs:
        fitness(a)
    sync()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=128, help="per GPU")
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--images-per-class", type=int, default=3)
    ap.add_argument("--population", type=int, default=20, help="candidates per generation")
    ap.add_argument("--work", default="runs/gpu_check", help="generated data and runs")
    ap.add_argument("--smoke", action="store_true", help="every part, tiny, on the CPU")
    args = ap.parse_args()
    t0 = time.perf_counter()
    gpus = torch.cuda.device_count()
    if args.smoke:
        args.steps, args.batch_size, args.images_per_class, args.population = 2, 4, 1, 2
        device, procs = "cpu", 2
    elif gpus == 0:
        raise SystemExit("gpu_check: torch sees no CUDA GPU here; --smoke checks it on the CPU")
    else:
        device, procs = "cuda", gpus
    cores = os.cpu_count() or 2
    space = load_space("default")
    work = ROOT / args.work
    data = work / "imagefolder"
    if not (data / "train").is_dir():
        log(f"writing {space.classes * args.images_per_class} JPEGs to {data}")
        write_imagefolder(
            data,
            classes=space.classes,
            per_class=args.images_per_class,
            size=(256, 256),
            val_per_class=1,
            seed=0,
        )
    log(f"{gpus} GPU(s), {cores} cores; training {args.steps} steps, one process")
    plain = train_run(work / "plain", data, args, 1, device, max(1, cores - 1), False)
    log(f"plain: {plain['session_images_per_s']} images/s; under torchrun x {procs}")
    workers = max(1, (cores - 1) // procs)
    dist_run = train_run(work / "torchrun", data, args, procs, device, workers, True)
    per_gpu = plain["session_images_per_s"]
    scaling = round(dist_run["session_images_per_s"] / (procs * per_gpu), 3) if procs > 1 else None
    log("one search generation")
    gen_s = search_generation(
        work / "plain", data, space, device, args.precision, args.population, args.smoke
    )
    log("input pipeline")
    rates = {
        str(w): round(input_rate(data, space, w, 64, 4 if args.smoke else 40), 1)
        for w in sorted({0, max(1, cores // 2), max(1, cores - 1)})
    }
    log("supernet overhead at 224x224")
    # A smoke run's figures are no GPU's: they stay in the work folder, out of results/.
    results = work if args.smoke else RESULTS
    over_json = str(results / "gpu_supernet_throughput.json")
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "supernet_throughput.py"),
        "--space",
        "default",
        "--batch-size",
        "32",
        "--steps",
        "2" if args.smoke else "20",
        "--rounds",
        "2" if args.smoke else "5",
        "--torch-device",
        device,
        "--precision",
        args.precision,
        "--result",
        over_json,
    ]
    subprocess.run(
        cmd, cwd=ROOT, check=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)}
    )
    overhead = json.loads(Path(over_json).read_text())
    result = {
        "gpus": gpus,
        "gpu_name": torch.cuda.get_device_name(0) if gpus else None,
        "smoke": args.smoke,
        "torch_device": device,
        "precision": args.precision,
        "steps": args.steps,
        "batch_size_per_gpu": args.batch_size,
        "images_per_s_per_gpu": per_gpu,
        "images_per_s_torchrun": dist_run["session_images_per_s"],
        "torchrun_processes": procs,
        "scaling_efficiency": scaling,
        "peak_mem_gib": plain["trained_on"]["peak_mem_gib"],
        "overhead": overhead["overhead"],
        "overhead_median_of_round_ratios": overhead["overhead_median_of_round_ratios"],
        "search_generation_s": round(gen_s, 2),
        "search_population": args.population,
        "input_images_per_s": rates,
        "cores": cores,
        "train_wall_s": {"plain": plain["wall_s"], "torchrun": dist_run["wall_s"]},
        "seconds": round(time.perf_counter() - t0, 1),
        "provenance": provenance(),
    }
    results.mkdir(parents=True, exist_ok=True)
    out = results / ("gpu_smoke.json" if args.smoke else "gpu.json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    log(
        f"{per_gpu} images/s per GPU, scaling {scaling}, peak {result['peak_mem_gib']} GiB, "
        f"overhead {result['overhead']}, generation {result['search_generation_s']} s, "
        f"input {rates} images/s; wrote {out} in {result['seconds']} s"
    )


if __name__ == "__main__":
    main()
