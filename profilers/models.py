"""Whole networks measured end to end on a device, for calibration and validation.

The same agent and protocol as the operator campaign (warm-up, interleaved rounds, median of
round medians, noisy ones re-measured then flagged), and every result is committed to the
LUT database's ``models`` table as it arrives, so an interrupted run keeps what it measured
and a second run measures only what is missing.
"""

from __future__ import annotations

import hashlib
import math
import multiprocessing
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from devices.convert import Artifact, ArtifactCache, ConversionError
from devices.spec import DeviceSpec
from hurricane.arch import Arch
from hurricane.latency import USABLE
from hurricane.lut import LutDB
from hurricane.space import SearchSpace
from hurricane.subnet import build_subnet
from profilers.campaign import _spec_json, latency_of, round_cv
from profilers.drift import REFERENCE_ID, DriftGuard
from profilers.passes import combined, merged, prior
from profilers.session import AgentCrashed, AgentSession


def arch_module(space: SearchSpace, arch: Arch) -> tuple[torch.nn.Module, torch.Tensor]:
    """The network of ``arch`` with weights seeded by its string (same arch, same artifact)."""
    torch.manual_seed(int(hashlib.sha256(str(arch).encode()).hexdigest()[:8], 16))
    net = build_subnet(space, arch).eval()
    return net, torch.randn(1, space.in_channels, *space.resolution)


def _convert_archs(
    space: SearchSpace, archs: list[str], runtime: str, precision: str, cache_root: str
) -> list[tuple[str, str | None]]:
    torch.set_num_threads(1)
    cache = ArtifactCache(Path(cache_root))
    items = [arch_module(space, Arch.parse(a)) for a in archs]
    out = cache.get_many(items, runtime, precision, chunk=4)
    return [(a, str(r) if isinstance(r, ConversionError) else None) for a, r in zip(archs, out)]


def _convert_all(space, archs, spec, cache, workers, progress) -> dict[str, str]:
    rt = spec.runtime
    per = 4
    chunks = [archs[i : i + per] for i in range(0, len(archs), per)]
    errors: dict[str, str] = {}
    bar = tqdm(
        total=len(archs),
        desc=f"convert {len(archs)} models",
        unit="model",
        disable=not progress,
        dynamic_ncols=True,
    )
    if workers <= 1:
        results = (_convert_archs(space, c, rt.name, rt.precision, str(cache.root)) for c in chunks)
        for res in results:
            errors.update({a: e for a, e in res if e})
            bar.update(len(res))
    else:
        ctx = multiprocessing.get_context("spawn")  # the LiteRT converter does not survive fork
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            futures = [
                pool.submit(_convert_archs, space, c, rt.name, rt.precision, str(cache.root))
                for c in chunks
            ]
            for fut in futures:
                res = fut.result()
                errors.update({a: e for a, e in res if e})
                bar.update(len(res))
    bar.close()
    return errors


def measure_archs(
    space: SearchSpace,
    spec: DeviceSpec,
    archs: Sequence[Arch],
    db_path: str | Path,
    cache: ArtifactCache | None = None,
    progress: bool = True,
    workers: int | None = None,
    batch: int = 10,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """End-to-end latency of each architecture on ``spec``: arch string -> stored row
    (``median_ms``, ``status``, ``passes``, ...). Architectures already stored are not measured
    again, except for the passes the spec asks for that they lack (profilers/passes.py)."""
    cache = cache or ArtifactCache()
    archs = [space.validate_arch(a) for a in archs]
    wanted = list(dict.fromkeys(str(a) for a in archs))
    h = space.structure_hash()
    with LutDB(db_path) as db:
        dev = db.upsert_device(spec.name, spec.kind, spec.runtime.name, _spec_json(spec))
        stored = db.models(dev, h)
        todo = [a for a in wanted if a not in stored]
        if todo:
            if workers is None:
                workers = 0 if spec.runtime.name == "onnxruntime" else (os.cpu_count() or 1)
            failed = _convert_all(space, todo, spec, cache, workers, progress)
            for a, err in failed.items():
                db.put_model(dev, space.name, h, a, {"status": "error", "error": err[:500]})
            ok = [a for a in todo if a not in failed]
            _measure(space, spec, ok, db, dev, h, cache, progress, batch, seed, {}, 0)
        for p in range(1, spec.measure.passes):
            stored = db.models(dev, h)
            have = {a: prior(r["passes"], r["median_ms"], r["status"]) for a, r in stored.items()}
            again = [a for a in wanted if 0 < len(have.get(a, [])) <= p]
            if again:  # each pass in its own agent process
                _measure(
                    space,
                    spec,
                    again,
                    db,
                    dev,
                    h,
                    cache,
                    progress,
                    batch,
                    seed + p,
                    {a: stored[a] for a in again},
                    p,
                )
        stored = db.models(dev, h)
    return {a: stored[a] for a in wanted if a in stored}


def _measure(space, spec, archs, db, dev, h, cache, progress, batch, seed, old, index) -> None:
    """Time ``archs`` once more as pass ``index``; ``old``: their stored rows (later passes)."""
    rt, m = spec.runtime, spec.measure
    arts: dict[str, Artifact] = {}
    for a in archs:
        net, x = arch_module(space, Arch.parse(a))
        arts[a] = cache.get(net, x, rt.name, rt.precision)
    attempts: dict[str, int] = {}
    done: set[str] = set()
    desc = f"measure on {spec.name}" + (f" (pass {index + 1})" if index else "")
    bar = tqdm(total=len(archs), desc=desc, unit="model", disable=not progress, dynamic_ncols=True)
    queue = [(a, 1) for a in archs]
    guard = DriftGuard.for_spec(spec, cache)
    with AgentSession(spec) as session:
        step = 0
        while queue or (queue := [(a, attempts.get(a, 1)) for a in guard.recheck()]):
            chunk, queue = queue[:batch], queue[batch:]
            attempts.update(chunk)
            step += 1
            items = guard.with_reference([(a, arts[a]) for a, _ in chunk])
            try:
                results = list(session.measure(items, seed=seed + step))
            except AgentCrashed as crash:
                session.restart_agent()
                results = [
                    {"type": "error", "id": a, "error": str(crash)}
                    for a in crash.pending
                    if a != REFERENCE_ID
                ]
            results, again = guard.judge(results, lambda r: latency_of(r, m.statistic))
            queue.extend((a, attempts[a]) for a in again)
            for res in results:
                a = res["id"]
                before = old.get(a)
                if res["type"] == "error" and before:  # a later pass failed: keep the others
                    bar.update(a not in done)
                    done.add(a)
                    continue
                if res["type"] == "error":
                    db.put_model(
                        dev,
                        space.name,
                        h,
                        a,
                        {"status": "error", "error": res["error"], "attempts": attempts[a]},
                    )
                    bar.update(a not in done)
                    done.add(a)
                    continue
                cv = round_cv(res, m.statistic)
                noisy = cv > m.cv_threshold
                if noisy and attempts[a] <= m.max_remeasure:
                    queue.append((a, attempts[a] + 1))
                    continue
                row = (
                    None
                    if not before
                    else (
                        before["passes"],
                        before["median_ms"],
                        before["status"],
                        before["samples"],
                    )
                )
                passes, samples, status = merged(
                    row,
                    index,
                    latency_of(res, m.statistic),
                    res["samples_ms"],
                    "noisy" if noisy else "ok",
                )
                db.put_model(
                    dev,
                    space.name,
                    h,
                    a,
                    {
                        "median_ms": combined(passes),
                        "round_cv": cv,
                        "passes": passes,
                        "samples_ms": samples,
                        "status": status,
                        "attempts": attempts[a],
                        "delegate": res.get("delegate"),
                        "runtime": f"{res.get('runtime')} {res.get('runtime_version', '')}".strip(),
                    },
                )
                bar.update(a not in done)
                done.add(a)
            bar.set_postfix(remeasured_batches=guard.rejected)
    bar.close()
    warn_if_slower(spec, db.reference_best(dev), guard)


def warn_if_slower(spec: DeviceSpec, profiled_ms: float | None, guard: DriftGuard) -> bool:
    """One line on stderr when this session's reference ran slower than it did while the LUT
    was profiled. The drift guard compares batches within one session, so a device slowed for
    the whole session (a shared host here, 11-17% for half an hour; a throttled phone) passes
    it, and its whole-model timings are held against a LUT measured faster."""
    if not guard.enabled or not profiled_ms or not math.isfinite(guard.best_ms):
        return False
    ratio = guard.best_ms / profiled_ms
    if ratio <= 1 + guard.threshold:
        return False
    print(
        f"WARNING: {spec.name} ran its drift reference {100 * (ratio - 1):.0f}% slower in this "
        f"session ({guard.best_ms:.4g} ms) than while its LUT was profiled "
        f"({profiled_ms:.4g} ms); these model timings are slow against the LUT: let the "
        "device settle, delete them from the models table and measure again",
        file=sys.stderr,
    )
    return True


def choose_measured(
    space: SearchSpace,
    spec: DeviceSpec,
    ranked: Sequence[dict[str, Any]],
    budget_ms: float,
    db: str | Path,
    n: int = 5,
    progress: bool = True,
) -> dict[str, Any]:
    """The fittest of the first ``n`` ranked candidates (dicts with ``arch``, ``fitness``,
    ``latency_ms``) whose latency measured on the device is within ``budget_ms``.

    The prediction decides what the search may evaluate; the device decides what is handed
    over. When none of them fits, the fastest measured one is returned, marked not accepted.
    """
    top = list(ranked)[:n]
    rows = measure_archs(
        space, spec, [space.parse_arch(c["arch"]) for c in top], db, progress=progress
    )
    measured = []
    for c in top:
        row = rows.get(c["arch"], {})
        ms = row.get("median_ms") if row.get("status") in USABLE else None
        measured.append(
            {
                **c,
                "predicted_ms": c["latency_ms"],
                "measured_ms": ms,
                "accepted": ms is not None and ms <= budget_ms,
            }
        )
    for c in measured:
        if c["accepted"]:
            return {**c, "candidates": measured}
    timed = [c for c in measured if c["measured_ms"] is not None]
    if not timed:
        raise RuntimeError(f"none of {len(top)} candidates could be measured on {spec.name}")
    fastest = min(timed, key=lambda c: c["measured_ms"])
    return {**fastest, "candidates": measured}
