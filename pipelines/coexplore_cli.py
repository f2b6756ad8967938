"""``hurricane coexplore``: search (architecture, hardware) pairs together.

The hardware half comes from an accelerator design space (``devices/accelerator.py``: every
design within the space's limits gets a latency and an energy table from zigzag-dse, cached
in the LUT database) or from a device's deployment configurations
(``devices/deployment.py``: each profiled into its own LUT table). Fast exploration
(``hurricane.coexplore.FastExplorer``) tunes the hardware for each candidate architecture
from those tables and prunes pairs no configuration fits; the slow exploration evaluates the
rest with the supernet's fitness: the constrained evolution (``--strategy evolution``) or
the REINFORCE controller (``--strategy rl``).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hurricane.errors import UserError
from hurricane.train import TrainConfig
from pipelines.argtypes import (
    add_train_on_args,
    finite_float,
    nonnegative_int,
    positive_finite_float,
    positive_int,
    train_on_from,
)
from pipelines.config import DEFAULT_DB, GenerateSettings


@dataclass
class HardwareTables:
    """A hardware space made ready for fast exploration: its configurations (within limits),
    their latency tables (and energy ones where modelled), the configuration a fixed-hardware
    search would use (the device's own settings, or the space's declared default design),
    and, for a deployment space, each configuration's device spec."""

    name: str
    kind: str
    configs: list[Any]
    latency: dict[str, Any]
    energy: dict[str, Any]
    default: str
    specs: dict[str, Any]
    # Writes a configuration's files into a folder (a ready device spec; a design's
    # description and zigzag's accelerator file); their paths.
    write_files: Callable[[str, Path], list[Path]]


def hardware_tables(
    hw_space: str | Path,
    space,
    db: str | Path,
    lpf_limit: int,
    progress: bool = True,
    workers: int = 1,
    device: str | None = None,
) -> HardwareTables:
    """Load ``hw_space`` and fill its tables: an accelerator space is costed by zigzag-dse
    (cached in ``db``, over ``workers`` processes); a deployment space is profiled on its
    device (or on ``device``, a spec standing in for the space's own), one campaign per
    configuration (resumable)."""
    from hurricane.latency import LatencyModel, LutPredictor
    from hurricane.lut import LutDB
    from hurricane.tomlcheck import read_toml

    data = read_toml(Path(hw_space), "hardware space")
    kind = data.get("kind") or ("deployment" if "device" in data else "accelerator")
    Path(db).parent.mkdir(parents=True, exist_ok=True)
    latency: dict[str, Any] = {}
    energy: dict[str, Any] = {}
    if kind == "deployment":
        from devices.deployment import load_deployment_space, spec_toml
        from profilers.configurations import profile_configurations

        dep = load_deployment_space(hw_space, device)
        profile_configurations(space, dep, db, progress=progress)
        pairs = dep.configurations()
        for c, _ in pairs:
            latency[c.name] = LatencyModel.from_db(space, db, c.name).predict
        knobs = {c.name: {k: v for k, v in c.knobs.items() if k != "device"} for c, _ in pairs}

        def write_spec(name: str, folder: Path) -> list[Path]:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / "hardware.toml"
            path.write_text(spec_toml(dep, knobs[name]))
            return [path]

        return HardwareTables(
            dep.name,
            kind,
            [c for c, _ in pairs],
            latency,
            energy,
            dep.own_config(),
            {c.name: spec for c, spec in pairs},
            write_spec,
        )
    if kind != "accelerator":
        raise UserError(
            f"{hw_space}: kind: {kind!r}: expected 'accelerator' (a design space costed "
            "by zigzag-dse) or 'deployment' (configurations of a device)"
        )
    if device is not None:
        raise UserError(
            f"--device {device}: {hw_space} is an accelerator design space, costed by "
            "zigzag-dse; --device names the device of a deployment space"
        )
    from devices.accelerator import (
        design_json,
        design_tables,
        load_accelerator_space,
        write_design_files,
    )
    from hurricane.coexplore import HardwareConfig

    hw = load_accelerator_space(hw_space)
    with LutDB(db) as conn:
        for d in hw.designs():
            lat, en = design_tables(space, d, conn, lpf_limit, progress, workers)
            latency[d.name] = LutPredictor(space, lat, d.name).predict
            energy[d.name] = LutPredictor(space, en, d.name).predict
    configs = [HardwareConfig(d.name, design_json(d), d.resources()) for d in hw.designs()]
    designs = {d.name: d for d in hw.designs()}
    return HardwareTables(
        hw.name,
        kind,
        configs,
        latency,
        energy,
        hw.default.name,
        {},
        lambda name, folder: write_design_files(designs[name], folder),
    )


def _coexplore(args: argparse.Namespace) -> int:
    from hurricane.coexplore import EPISODES_PER_EVALUATION, STRATEGIES, FastExplorer, fronts
    from hurricane.space_file import load_space
    from hurricane.two_stage import data_for, fitness_for, load_supernet

    space = load_space(args.space)
    t0 = time.perf_counter()
    hw = hardware_tables(
        args.hw_space,
        space,
        args.db,
        args.lpf_limit,
        not args.no_progress,
        args.cost_workers,
        args.device,
    )
    configs, hw_name = hw.configs, hw.name
    tables_s = time.perf_counter() - t0
    explorer = FastExplorer(configs, hw.latency, args.latency_ms, energy=hw.energy, rule=args.tune)
    train_on = train_on_from(args)
    tcfg = TrainConfig(
        space=args.space, data=args.data, eval_limit=args.eval_limit, **train_on.fields()
    )
    pt = Path(args.supernet)
    net = load_supernet(space, pt / "supernet.pt" if pt.is_dir() else pt)
    fitness = fitness_for(net, data_for(tcfg, space), tcfg, args.seed)
    out = Path(args.out)
    g = GenerateSettings(population=args.population, generations=args.generations)
    cfg = g.search_config(args.latency_ms, args.seed)
    found = STRATEGIES[args.strategy](space, explorer, fitness, cfg, out / args.strategy, a=args.a)
    if found is None:
        raise UserError(
            f"no pair within {args.latency_ms:g} ms in "
            f"{EPISODES_PER_EVALUATION * cfg.planned_evaluations()} "
            "episodes; raise --latency-ms, --population or --generations"
        )
    arch, fit, evaluations, pruned = (
        found.arch,
        found.fitness,
        found.evaluations,
        found.pair_pruned_share,
    )
    tuned = explorer.tune([space.parse_arch(arch)])[0]
    design = next(c for c in configs if c.name == tuned.config)
    result = {
        "arch": arch,
        "hardware": {
            "space": hw_name,
            "source": str(args.hw_space),
            "config": design.name,
            **design.knobs,
        },
        "fitness": fit,
        "latency_ms": tuned.latency_ms,
        "energy_mj": tuned.energy_mj,
        "budget_ms": args.latency_ms,
        "strategy": args.strategy,
        "tune": args.tune,
        "evaluations": evaluations,
        "pruned_share": pruned,  # of the (architecture, configuration) pairs
        "pruned_archs_share": found.pruned_share,  # architectures no configuration fits
        "configurations": len(configs),
        "tables_seconds": round(tables_s, 1),
        "search_seconds": round(found.seconds, 1),
    }
    result["default"] = hw.default
    result["pairs"] = fronts(space, explorer, hw.default, found.evaluated)
    out.mkdir(parents=True, exist_ok=True)
    result["hardware_files"] = [str(p) for p in hw.write_files(design.name, out)]
    from pipelines.report import plot_coexplore

    title = f"{hw_name} @ {args.latency_ms:g} ms ({args.strategy})"
    plot = plot_coexplore(out / "fronts.png", title, result["pairs"], args.latency_ms)
    result["fronts"] = str(out / plot) if plot else None
    if args.final_steps:
        result["final"] = _final_and_bundle(args, space, hw, design.name, tuned, arch, out)
    (out / "result.json").write_text(json.dumps(result, indent=1))
    mj = "" if tuned.energy_mj is None else f", {tuned.energy_mj:.4g} mJ"
    print(
        f"best pair: {arch} on {design.name}: validation accuracy {fit:.4f}, "
        f"{tuned.latency_ms:.4g} ms{mj} (budget {args.latency_ms:g} ms); "
        f"{evaluations} evaluated, {pruned:.0%} of the pairs made pruned before evaluation; "
        f"{out / 'result.json'}; hardware: {', '.join(result['hardware_files'])}"
        + (f"; fronts: {result['fronts']}" if result["fronts"] else "")
    )
    return 0


def _final_and_bundle(args, space, hw: HardwareTables, config: str, tuned, arch: str, out: Path):
    """The chosen architecture fine-tuned from its supernet weights and bundled with its
    hardware half: on the device under the chosen configuration (a deployment space), or
    with the design's files and modelled figures (an accelerator)."""
    import tempfile

    from devices.accelerator import zigzag_version
    from hurricane.final import train_final
    from pipelines.handoff import make_bundle, make_modelled_bundle

    pt = Path(args.supernet)
    fin = train_final(
        args.space,
        arch,
        out / "final",
        args.final_steps,
        data=args.data,
        init=pt / "supernet.pt" if pt.is_dir() else pt,
        seed=args.seed,
        progress=not args.no_progress,
        train_on=train_on_from(args),
    )
    with tempfile.TemporaryDirectory() as tmp:
        files = {p.name: p.read_text() for p in hw.write_files(config, Path(tmp))}
    design = next(c for c in hw.configs if c.name == config)
    knobs = {k: v for k, v in design.knobs.items() if k not in ("device", "name")}
    hardware = {
        "space": hw.name,
        "source": str(args.hw_space),
        "config": config,
        "knobs": knobs,
        "files": files,
        "description": "accelerator.yaml" if "accelerator.yaml" in files else None,
    }
    acc = {"test_acc": fin["test_acc"], "test_images": fin["test_images"], "val_acc": None}
    bundle = out / "bundle"
    if hw.kind == "deployment":
        m = make_bundle(
            str(args.space),
            fin["model"],
            hw.specs[config],
            bundle,
            args.latency_ms,
            tuned.latency_ms,
            acc,
            args.data,
            seed=args.seed,
            db=args.db,
            hardware=hardware,
        )
    else:
        modelled = {
            "latency_ms": tuned.latency_ms,
            "energy_mj": tuned.energy_mj,
            "model": f"zigzag-dse {zigzag_version()}, lpf_limit {args.lpf_limit}",
        }
        m = make_modelled_bundle(
            str(args.space),
            fin["model"],
            bundle,
            hardware,
            args.latency_ms,
            modelled,
            acc,
            args.data,
            seed=args.seed,
        )
    print(
        f"final model: test accuracy {fin['test_acc']:.4f}; bundle {bundle} "
        f"{'accepted' if m['accepted'] else 'NOT ACCEPTED: ' + '; '.join(m['reasons'])}"
    )
    return {
        "test_acc": fin["test_acc"],
        "model": fin["model"],
        "bundle": str(bundle),
        "accepted": m["accepted"],
    }


def add_commands(sub: argparse._SubParsersAction) -> None:
    from devices.accelerator import DEFAULT_LPF_LIMIT
    from hurricane.coexplore import STRATEGIES, TUNE_RULES

    d = GenerateSettings()
    c = sub.add_parser(
        "coexplore",
        help="search architecture and accelerator design together (Jiang et al.)",
    )
    c.add_argument("--space", required=True)
    c.add_argument(
        "--hw-space",
        required=True,
        help="hardware space TOML: an accelerator design space or a device's deployment "
        "configurations",
    )
    c.add_argument(
        "--device",
        default=None,
        help="device spec whose deployment configurations are searched (default: the one "
        "the deployment space names; not for an accelerator space)",
    )
    c.add_argument("--latency-ms", type=positive_finite_float, required=True)
    c.add_argument("--supernet", required=True, help="trained run folder or supernet.pt")
    c.add_argument("--strategy", choices=list(STRATEGIES), default="evolution")
    c.add_argument(
        "--tune",
        choices=list(TUNE_RULES),
        default="fastest",
        help="which configuration that meets the budget a pair takes (default: %(default)s)",
    )
    c.add_argument("--data", default=TrainConfig.data)
    c.add_argument("--db", default=DEFAULT_DB, help="LUT database (default: %(default)s)")
    c.add_argument("--out", default="runs/coexplore")
    c.add_argument("--population", type=positive_int, default=d.population)
    c.add_argument("--generations", type=positive_int, default=d.generations)
    c.add_argument(
        "--a",
        type=finite_float(0.0, 1.0),
        default=0.8,
        help="reward weight of accuracy against efficiency (rl; default: %(default)s)",
    )
    c.add_argument("--lpf-limit", type=positive_int, default=DEFAULT_LPF_LIMIT)
    c.add_argument(
        "--cost-workers",
        type=positive_int,
        default=os.cpu_count() or 1,
        help="processes costing accelerator designs with zigzag-dse (default: %(default)s)",
    )
    c.add_argument("--eval-limit", type=positive_int, default=d.eval_limit)
    c.add_argument(
        "--final-steps",
        type=nonnegative_int,
        default=0,
        help="fine-tune the best pair's architecture this many steps and bundle it with its "
        "hardware (default: %(default)s, no final model)",
    )
    c.add_argument("--seed", type=nonnegative_int, default=0)
    c.add_argument("--no-progress", action="store_true")
    add_train_on_args(c)
    c.set_defaults(func=_coexplore)
