"""Whole networks measured end to end on a device, for calibration, validation and the
final choice.

Timed by the measurement engine (``profilers/measure.py``), as LUT entries and the handoff
are; every result is committed to the LUT database's ``models`` table as it arrives, so an
interrupted run keeps what it measured and a second run measures only what is missing.
"""

from __future__ import annotations

import hashlib
import statistics
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import torch

from devices.artifacts import Artifact, ArtifactCache, convert_all
from devices.convert import ConversionError
from devices.spec import DeviceSpec
from hurricane.arch import Arch
from hurricane.errors import UserError
from hurricane.latency import USABLE
from hurricane.lut import LutDB
from hurricane.space import SearchSpace
from hurricane.subnet import build_subnet
from profilers.measure import Engine, judge_budget, row_noise, warn_if_slower
from profilers.session import AgentSession


def arch_module(space: SearchSpace, arch: Arch) -> tuple[torch.nn.Module, torch.Tensor]:
    """The network of ``arch`` with weights seeded by its string (same arch, same artifact)."""
    torch.manual_seed(int(hashlib.sha256(str(arch).encode()).hexdigest()[:8], 16))
    net = build_subnet(space, arch).eval()
    return net, torch.randn(1, space.in_channels, *space.resolution)


def _arch_module(space: SearchSpace, arch: str) -> tuple[torch.nn.Module, torch.Tensor]:
    return arch_module(space, Arch.parse(arch))


def measure_archs(
    space: SearchSpace,
    spec: DeviceSpec,
    archs: Sequence[Arch],
    db_path: str | Path,
    cache: ArtifactCache | None = None,
    progress: bool = True,
    workers: int | None = None,
    batch: int | None = None,
    seed: int = 0,
    session_factory: Callable[[DeviceSpec], AgentSession] | None = None,
) -> dict[str, dict[str, Any]]:
    """End-to-end latency of each architecture on ``spec``: arch string -> stored row
    (``median_ms``, ``status``, ``passes``, ...). Architectures already timed are not timed
    again, except for the passes the spec asks for that they lack (profilers/passes.py); one
    stored as an error is tried again, since a crash or a lost board may have caused it."""
    cache = cache or ArtifactCache()
    archs = [space.validate_arch(a) for a in archs]
    wanted = list(dict.fromkeys(str(a) for a in archs))
    h = space.structure_hash()
    if batch is not None and batch != spec.measure.batch:
        spec = replace(spec, measure=replace(spec.measure, batch=batch))
    with LutDB(db_path) as db:
        dev = db.upsert_device(spec.name, spec.kind, spec.runtime.name, spec.to_json())
        stored = db.models(dev, h)
        todo = [a for a in wanted if stored.get(a, {}).get("status") not in USABLE]
        failed: dict[str, str] = {}
        rt = spec.runtime
        if todo:  # four models per task and per converter call: they are bigger than blocks
            failed = convert_all(
                partial(_arch_module, space),
                todo,
                todo,
                rt.name,
                rt.precision,
                cache,
                workers,
                progress,
                unit="model",
                task=4,
            )

        def artifact(a: str) -> Artifact:
            if a in failed:
                raise ConversionError(failed[a])
            net, x = arch_module(space, Arch.parse(a))
            return cache.get(net, x, rt.name, rt.precision)

        sink = ModelSink(db, dev, space.name, h)
        engine = Engine(
            spec,
            cache,
            session_factory,
            progress,
            unit="model",
            desc=f"measure on {spec.name}",
        )
        engine.run(todo, artifact, sink, again=wanted, seed=seed)
        warn_if_slower(spec, profiled_reference(db, dev), engine.guard)
        stored = db.models(dev, h)
    return {a: stored[a] for a in wanted if a in stored}


class ModelSink:
    """The engine's rows into the LUT database's ``models`` table, committed as they come."""

    def __init__(self, db: LutDB, dev: int, space: str, space_hash: str) -> None:
        self.db, self.dev, self.space, self.hash = db, dev, space, space_hash

    def stored(self, key: str) -> dict[str, Any] | None:
        return self.db.model(self.dev, self.hash, key)

    def put(self, key: str, row: dict[str, Any]) -> None:
        self.db.put_model(self.dev, self.space, self.hash, key, row)


def profiled_reference(db: LutDB, dev: int) -> dict[str, float] | None:
    """How the drift reference ran in this device's profile runs (``runs.info``): its best
    and its typical (median over batches) figure, and the device's noise, the share a typical
    batch sits above the best: how far a figure can move from one batch to the next."""
    best, typical = [], []
    for info in db.run_infos(dev):
        drift = info.get("drift") or {}
        by_pass = drift.get("reference_best_ms_by_pass") or []
        best += [v for v in (drift.get("reference_best_ms"), *by_pass) if v]
        if drift.get("reference_median_ms"):
            typical.append(drift["reference_median_ms"])
    if not best:
        return None
    out = {"best_ms": min(best)}
    if typical:
        out["typical_ms"] = statistics.median(typical)
        out["noise"] = round(max(0.0, 1 - out["best_ms"] / out["typical_ms"]), 4)
    return out


def device_noise(db_path: str | Path | None, spec: DeviceSpec) -> float:
    """The device's noise from its profile runs in ``db_path`` (0 when nothing is known)."""
    if db_path is None or not Path(db_path).is_file():
        return 0.0
    with LutDB(db_path) as db:
        known = {d["name"] for d in db.devices()}
        ref = profiled_reference(db, db.device_id(spec.name)) if spec.name in known else None
    return float(ref.get("noise", 0.0)) if ref else 0.0


def choose_measured(
    space: SearchSpace,
    spec: DeviceSpec,
    ranked: Sequence[dict[str, Any]],
    budget_ms: float,
    db: str | Path,
    n: int = 5,
    progress: bool = True,
    spec_for: Callable[[dict[str, Any]], DeviceSpec] | None = None,
) -> dict[str, Any]:
    """The fittest of the first ``n`` ranked candidates (dicts with ``arch``, ``fitness``,
    ``latency_ms``) whose latency measured on the device meets ``budget_ms`` (decided by
    ``profilers.measure.judge_budget``, as the handoff decides).

    The prediction decides what the search may evaluate; the device decides what is handed
    over. When none of them fits, the fastest measured one is returned, marked not accepted.
    ``spec_for``: the device each candidate runs on (co-exploration's pairs each name their
    configuration); default ``spec`` for all.
    """
    top = list(ranked)[:n]
    where = [spec_for(c) if spec_for else spec for c in top]
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    floors: dict[str, float] = {}
    for s in {w.name: w for w in where}.values():  # one batch per configuration
        archs = [space.parse_arch(c["arch"]) for c, w in zip(top, where) if w.name == s.name]
        got = measure_archs(space, s, archs, db, progress=progress)
        rows.update({(s.name, a): r for a, r in got.items()})
        floors[s.name] = device_noise(db, s)
    measured = []
    for c, w in zip(top, where):
        row = rows.get((w.name, c["arch"]), {})
        ms = row.get("median_ms") if row.get("status") in USABLE else None
        noise = row_noise(row, floors[w.name]) if ms is not None else 0.0
        decision = judge_budget(ms, budget_ms, noise)
        measured.append(
            {
                **c,
                "predicted_ms": c["latency_ms"],
                "measured_ms": ms,
                "measured_on": w.name,
                "accepted": decision["accepted"],
                "decision": decision,
            }
        )
    for c in measured:
        if c["accepted"]:
            return {**c, "candidates": measured}
    timed = [c for c in measured if c["measured_ms"] is not None]
    if not timed:
        why = next((r["error"] for r in rows.values() if r.get("error")), "")
        raise MeasureError(
            f"none of the {len(top)} best candidates could be measured on {spec.name}"
            + (f" (first error: {why[:200]})" if why else "")
            + f"; check the device with: hurricane devices check {spec.source}"
        )
    fastest = min(timed, key=lambda c: c["measured_ms"])
    return {**fastest, "candidates": measured}


class MeasureError(UserError):
    """Nothing the user asked for could be timed on the device."""
