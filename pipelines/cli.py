"""The ``hurricane`` command line."""

from __future__ import annotations

import argparse
import errno
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from hurricane.errors import UserError
from pipelines.argtypes import (
    Parser,
    add_train_on_args,
    below_one,
    nonnegative_finite_float,
    nonnegative_int,
    open_fraction,
    positive_finite_float,
    positive_int,
    train_on_from,
)


def _space_show(args: argparse.Namespace) -> int:
    from hurricane.space_file import load_space

    space = load_space(args.space)
    summary = space.summary()
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    h, w = space.resolution
    print(f"space {space.name} ({space.source}): {space.description}")
    print(
        f"input {space.in_channels}x{h}x{w}, {space.classes} classes; "
        f"stem conv_k{space.stem.kernel} -> {space.stem.cout} stride {space.stem.stride}; "
        f"head {space.head.channels or 'none'}"
    )
    print(f"{'layer':>5}  {'input':>9}  {'cout (widths)':<22} {'s':>1}  {'act':<6}  candidates")
    for layer in summary["layers"]:
        chans = layer["channels"]
        cout = f"{layer['cout']}" + (f" ({','.join(map(str, chans))})" if len(chans) > 1 else "")
        hw = "x".join(map(str, layer["input_hw"]))
        cands = layer["candidates"]
        print(
            f"{layer['index']:>5}  {hw:>9}  {cout:<22} {layer['stride']:>1}  {layer['act']:<6}  "
            f"{len(cands)}: {' '.join(cands)}"
        )
    print(f"operator instances: {summary['num_op_instances']}")
    print(f"log10 size: {summary['log10_size']:.2f}")
    return 0


def _space_list(args: argparse.Namespace) -> int:
    from hurricane.space_file import builtin_spaces, load_space

    for name in builtin_spaces():
        space = load_space(name)
        print(
            f"{name:<10} {len(space.layers):>3} layers  log10 size {space.log10_size():6.2f}  "
            f"{space.description}"
        )
    return 0


def _add_train_args(
    p: argparse.ArgumentParser, out_default: str, epochs: float | None = None
) -> None:
    from hurricane.supernet import SHARING
    from hurricane.train import TrainConfig
    from pipelines.config import DEFAULT_DB

    d = TrainConfig()
    p.add_argument("--space", default=d.space, help="built-in space name or TOML file")
    p.add_argument(
        "--data",
        default=d.data,
        help="fashion-mnist | cifar10:DIR | imagefolder:DIR | idx:DIR (default: %(default)s)",
    )
    p.add_argument("--out", default=out_default, help="run folder (checkpoints, summary)")
    p.add_argument("--epochs", type=positive_finite_float, default=epochs or d.epochs)
    p.add_argument(
        "--steps",
        type=positive_int,
        default=None,
        help="train this many steps (overrides --epochs)",
    )
    p.add_argument(
        "--batch-size", type=positive_int, default=d.batch_size, help="global batch size"
    )
    p.add_argument("--lr", type=positive_finite_float, default=d.lr)
    p.add_argument("--momentum", type=nonnegative_finite_float, default=d.momentum)
    p.add_argument("--weight-decay", type=nonnegative_finite_float, default=d.weight_decay)
    p.add_argument("--label-smoothing", type=below_one, default=d.label_smoothing)
    p.add_argument("--warmup-steps", type=nonnegative_int, default=d.warmup_steps)
    p.add_argument("--seed", type=nonnegative_int, default=d.seed)
    p.add_argument(
        "--ckpt-every", type=positive_int, default=d.ckpt_every, help="checkpoint every N steps"
    )
    p.add_argument(
        "--sample-layers",
        default=None,
        help="layers to sample, e.g. '0-3,5' (default: all); the others stay at --fixed",
    )
    p.add_argument("--fixed", default=None, help="architecture string for the unsampled layers")
    p.add_argument("--no-augment", action="store_true")
    p.add_argument(
        "--distill",
        action="store_true",
        help="in-place distillation: the largest path teaches the sampled one",
    )
    p.add_argument(
        "--sandwich",
        action="store_true",
        help="each step trains the largest, the smallest and a random path",
    )
    p.add_argument(
        "--fair",
        action="store_true",
        help="FairNAS: each step trains every candidate of every layer once, gradients summed",
    )
    p.add_argument(
        "--share",
        choices=list(SHARING),
        default=d.share,
        help="which candidates share one block: 'family' gives a family's kernels and "
        "expansions one (default: %(default)s)",
    )
    p.add_argument(
        "--kd-weight",
        type=float,
        default=d.kd_weight,
        help="with --distill, the KL term's share of a student's loss (default: %(default)s)",
    )
    p.add_argument("--kd-temperature", type=float, default=d.kd_temperature)
    p.add_argument("--init", default=None, help="start from this supernet.pt")
    p.add_argument(
        "--device",
        default=None,
        help="device spec whose LUT ranks ops (--shrink-every, --two-stage)",
    )
    p.add_argument(
        "--db", default=DEFAULT_DB, help="LUT database, with --device (default: %(default)s)"
    )
    p.add_argument(
        "--shrink-every",
        type=nonnegative_int,
        default=d.shrink_every,
        help="progressive shrinking: every N steps drop each layer's op that does "
        "worst for its latency (needs --device; default: off)",
    )
    p.add_argument(
        "--shrink-paths",
        type=positive_int,
        default=d.shrink_paths,
        help="paths evaluated per shrinking event",
    )
    p.add_argument(
        "--shrink-keep",
        type=positive_int,
        default=d.shrink_keep,
        help="never shrink a layer below this many ops",
    )
    p.add_argument("--val-fraction", type=open_fraction, default=d.val_fraction)
    p.add_argument(
        "--train-limit", type=positive_int, default=None, help="use at most N training images"
    )
    p.add_argument(
        "--eval-limit", type=positive_int, default=d.eval_limit, help="validation images per eval"
    )
    p.add_argument(
        "--eval-paths", type=nonnegative_int, default=d.eval_paths, help="paths evaluated per epoch"
    )
    p.add_argument(
        "--bn-batches",
        type=positive_int,
        default=d.bn_batches,
        help="training batches that recalibrate batch norm before each evaluation",
    )
    p.add_argument(
        "--threads", type=positive_int, default=None, help="torch CPU threads per process"
    )
    p.add_argument(
        "--micro-batches",
        type=positive_int,
        default=d.micro_batches,
        help="split each process's batch into N accumulated micro-batches (less memory; "
        "batch norm sees one micro-batch, as under torchrun it sees one process's share)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--fresh", action="store_true", help="discard a checkpoint in --out and start over"
    )
    add_train_on_args(p)


def _train_config(args: argparse.Namespace):
    from hurricane.space_file import load_space
    from hurricane.train import TrainConfig, parse_layers

    space = load_space(args.space)
    return TrainConfig(
        space=args.space,
        data=args.data,
        out=args.out,
        epochs=args.epochs,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        label_smoothing=args.label_smoothing,
        warmup_steps=args.warmup_steps,
        seed=args.seed,
        ckpt_every=args.ckpt_every,
        sample_layers=parse_layers(args.sample_layers, len(space.layers)),
        fixed=str(space.parse_arch(args.fixed)) if args.fixed else None,
        augment=not args.no_augment,
        val_fraction=args.val_fraction,
        train_limit=args.train_limit,
        eval_limit=args.eval_limit,
        eval_paths=args.eval_paths,
        bn_batches=args.bn_batches,
        threads=args.threads,
        progress=not args.no_progress,
        distill=args.distill,
        sandwich=args.sandwich,
        fair=args.fair,
        share=args.share,
        kd_weight=args.kd_weight,
        kd_temperature=args.kd_temperature,
        init=args.init,
        shrink_every=args.shrink_every,
        shrink_paths=args.shrink_paths,
        shrink_keep=args.shrink_keep,
        latency_db=args.db if args.device else None,
        latency_device=_device_name(args.device),
        micro_batches=args.micro_batches,
        **train_on_from(args).fields(),
    )


def _device_name(device: str | None) -> str | None:
    if not device:
        return None
    from devices.spec import load_device

    return load_device(device).name


def _train(args: argparse.Namespace) -> int:
    from hurricane.compute import is_main
    from hurricane.train import train

    if getattr(args, "two_stage", False):
        from pipelines.search_cli import two_stage_command

        return two_stage_command(args, _train_config(args))
    summary = train(_train_config(args), fresh=args.fresh)
    last = summary["history"][-1] if summary["history"] else {}
    if is_main():
        on = summary["trained_on"]
        procs = f" x {summary['world_size']} processes" if summary["world_size"] > 1 else ""
        print(
            f"trained {summary['steps']} steps in {summary['train_seconds']:.1f}s on torch "
            f"device {on['torch_device']}{procs} ({on['precision']}); last epoch loss "
            f"{last.get('train_loss', float('nan')):.4f}; outputs in {args.out}"
        )
    return 0


def _demo(args: argparse.Namespace) -> int:
    """The embedded default: the demo pipeline, end to end, on this machine."""
    from dataclasses import replace

    from pipelines.config import load_pipeline
    from pipelines.run_cli import execute

    p = load_pipeline("demo")
    p = replace(p, out=args.out or p.out, db=args.db or p.db)
    print(
        f"Hurricane demo: {p.description}; profile, stage one, two-stage search, final "
        f"model, handoff and report in {p.out} (Ctrl-C and run again to resume)"
    )
    return execute(p, progress=not args.no_progress)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="hurricane",
        description="Hardware-aware neural architecture search: profile devices, search under "
        "a latency budget, hand over a verified model.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    space = sub.add_parser("space", help="inspect search spaces")
    space_sub = space.add_subparsers(dest="space_command", required=True)
    show = space_sub.add_parser("show", help="layers, candidates, operator instances, size")
    show.add_argument(
        "space", help="built-in space name (demo, default, fbnet, proxyless) or TOML file"
    )
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(func=_space_show)
    lst = space_sub.add_parser("list", help="the built-in spaces")
    lst.set_defaults(func=_space_list)

    train = sub.add_parser("train", help="train a weight-sharing supernet (SPOS); resumable")
    _add_train_args(train, "runs/train")
    from pipelines.search_cli import add_two_stage_args

    add_two_stage_args(train)
    train.set_defaults(func=_train)

    from pipelines import coexplore_cli, latency_cli, profile_cli, run_cli, search_cli

    profile_cli.add_commands(sub)
    latency_cli.add_commands(sub)
    search_cli.add_commands(sub)
    coexplore_cli.add_commands(sub)
    run_cli.add_commands(sub)

    demo = sub.add_parser(
        "demo",
        help="the embedded default: the demo pipeline end to end (pipelines/examples/demo.toml)",
    )
    demo.add_argument("--out", default=None, help="run folder (default: runs/demo)")
    demo.add_argument("--db", default=None, help="LUT database (default: the pipeline's)")
    demo.add_argument("--no-progress", action="store_true")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        if exc.code == 2:  # a bad flag or value, already printed as one line (Parser.error)
            return 2
        raise
    try:
        return args.func(args)
    except UserError as exc:
        print(f"hurricane: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hurricane: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into head and the like
        sys.stderr.close()
        return 0
    except OSError as exc:  # a folder made read-only: one line, not a traceback
        if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        print(f"hurricane: error: {_cannot_write(exc)}", file=sys.stderr)
        return 2


def _cannot_write(exc: OSError) -> str:
    """A refused write as one line naming the folder. Checkpoints, supernets and step records
    are written under a temporary name and then renamed, so what was there stays: the same
    command resumes once the folder can be written."""
    if not exc.filename:
        return f"{exc.strerror}; make the output folder writable and run the command again"
    folder = Path(exc.filename).parent
    return (
        f"{folder}: cannot write {Path(exc.filename).name} there ({exc.strerror}); make the "
        "folder writable (or give another --out) and run the same command again to resume"
    )


if __name__ == "__main__":
    sys.exit(main())
