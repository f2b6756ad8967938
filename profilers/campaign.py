"""The profiling campaign: a (space, device) pair -> a latency lookup table in SQLite.

Enumerate the space's operator instances (plus stem and head), convert each into the device's
artifact (cached), ship them in batches to the device's agent, and store every result the
moment it arrives. Running again skips what is stored, so an interrupted campaign (Ctrl-C, a
dropped connection, a rebooted board) continues where it stopped with nothing lost or
duplicated. Noisy entries are re-measured, then flagged; failures are stored with their error.
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from devices.convert import Artifact, ArtifactCache, ConversionError
from devices.spec import DeviceSpec
from devices.transport import DeviceUnreachable
from hurricane.lut import Entry, LutDB, entry_from_samples, error_entry
from hurricane.space import OpInstance, PairInstance, SearchSpace
from hurricane.subnet import instance_module
from profilers.drift import REFERENCE_ID, DriftGuard
from profilers.passes import USABLE, combined, merged, prior, spread
from profilers.session import AgentCrashed, AgentSession


@dataclass
class CampaignReport:
    device: str
    space: str
    db: str
    instances: int
    already_done: int
    measured: int = 0
    noisy: int = 0
    errors: int = 0
    remeasured: int = 0
    passes: int = 1  # what the spec asked for (profilers/passes.py)
    repeated: int = 0  # entries timed in a pass after the first
    pass_spread: float | None = None  # median distance of one pass from the median of all
    drift: dict[str, Any] = field(default_factory=dict)  # see profilers/drift.py
    seconds: float = 0.0
    convert_seconds: float = 0.0
    timed_seconds: float = 0.0  # time inside the agent's timed runs
    fingerprint: dict[str, Any] = field(default_factory=dict)

    @property
    def new_entries(self) -> int:
        return self.measured + self.noisy + self.errors

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["new_entries"] = self.new_entries
        d["entries_per_min"] = (
            round(60 * self.new_entries / self.seconds, 1) if self.seconds else None
        )
        d["overhead_ratio"] = (
            round(self.seconds / self.timed_seconds, 2) if self.timed_seconds else None
        )
        return d


NOISE_FLOOR_MS = 0.002  # below this spread the clock and the agent's loop dominate anyway


def latency_of(result: dict[str, Any], statistic: str = "median") -> float:
    """An item's latency from the agent's round medians: their median (DESIGN's convention)
    or their minimum. Measured here (12 demo models, 4 sessions each, this 2-core VM):
    other tenants slow whole 20-60 ms stretches by up to 60%, so the median of 5 rounds of
    50 ms moved 4-13% between sessions while the minimum of 20-25 rounds of 10 ms moved 1%."""
    meds = result.get("round_medians_ms") or []
    if statistic == "min" and meds:
        return float(min(meds))
    return float(result["median_ms"])


def round_cv(result: dict[str, Any], statistic: str = "median") -> float:
    """How far the reported statistic would move if measured again. For the median: the
    spread of the round medians relative to their mean. For the minimum: how far the
    lowest quarter of the rounds sits above it (a steady minimum is reached by many rounds).
    A spread under ``NOISE_FLOOR_MS`` counts as steady, so microsecond ops are not
    re-measured forever."""
    meds = sorted(result.get("round_medians_ms") or [])
    if len(meds) < 2 or statistics.fmean(meds) <= 0:
        return 0.0
    if statistic == "min":
        spread = meds[len(meds) // 4] - meds[0]
        return 0.0 if spread < NOISE_FLOOR_MS else spread / meds[0]
    spread = statistics.pstdev(meds)
    return 0.0 if spread < NOISE_FLOOR_MS else spread / statistics.fmean(meds)


def _convert_chunk(
    instances: list[OpInstance], runtime: str, precision: str, cache_root: str
) -> list[tuple[str, str | None]]:
    """Worker: convert instances into the shared cache; (key, error or None) for each."""
    torch.set_num_threads(1)
    cache = ArtifactCache(Path(cache_root))
    results = cache.get_many([instance_module(inst) for inst in instances], runtime, precision)
    return [
        (inst.key, str(r) if isinstance(r, ConversionError) else None)
        for inst, r in zip(instances, results)
    ]


def convert_all(
    instances: list[OpInstance],
    runtime: str,
    precision: str,
    cache: ArtifactCache,
    workers: int,
    progress: bool = True,
    position: int = 0,
) -> dict[str, str]:
    """Convert every instance into the cache with ``workers`` processes before any timing
    starts (conversion next to a timed run would disturb it); return key -> error for the
    ones that failed. The measuring loop then finds each artifact in the cache."""
    errors: dict[str, str] = {}
    if workers <= 1 or len(instances) < 2 * workers:
        if runtime == "litert":  # still worth one converter call per chunk
            for key, err in _convert_chunk(instances, runtime, precision, str(cache.root)):
                if err:
                    errors[key] = err
        return errors  # others are converted one by one as they are measured
    # LiteRT converts a chunk of blocks per converter call, so its tasks are bigger.
    cap = 16 if runtime == "litert" else 8
    per_task = max(1, min(cap, len(instances) // (workers * 2)))
    chunks = [instances[i : i + per_task] for i in range(0, len(instances), per_task)]
    ctx = multiprocessing.get_context("spawn")  # JAX (LiteRT's converter) does not survive fork
    bar = tqdm(
        total=len(instances),
        desc=f"convert {runtime}",
        unit="op",
        disable=not progress,
        position=position,
        dynamic_ncols=True,
    )
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futures = [
            pool.submit(_convert_chunk, chunk, runtime, precision, str(cache.root))
            for chunk in chunks
        ]
        for fut in as_completed(futures):
            for key, err in fut.result():
                if err:
                    errors[key] = err
            bar.update(len(fut.result()))
    bar.close()
    return errors


def space_instances(space: SearchSpace, pairs: bool = False) -> list[OpInstance | PairInstance]:
    """Every entry a LUT of ``space`` needs, with the strided-skip pairs when ``pairs``."""
    extra = space.pair_instances() if pairs else []
    return list(dict.fromkeys([*space.fixed_instances(), *space.op_instances(), *extra]))


class Campaign:
    def __init__(
        self,
        space: SearchSpace,
        spec: DeviceSpec,
        db_path: str | Path,
        cache: ArtifactCache | None = None,
        progress: bool = True,
        retry_errors: bool = False,
        remeasure_noisy: bool = False,
        limit: int | None = None,
        session_factory: Callable[[DeviceSpec], AgentSession] = AgentSession,
        position: int = 0,
        convert_workers: int | None = None,
        instances: list[OpInstance] | None = None,
    ) -> None:
        self.space, self.spec = space, spec
        # Default: the space's every op instance; adaptive sampling passes its own.
        self.instances = instances
        self.db = LutDB(db_path)
        self.cache = cache or ArtifactCache()
        self.progress, self.retry_errors, self.limit = progress, retry_errors, limit
        self.remeasure_noisy = remeasure_noisy
        self.session_factory = session_factory
        self.position = position
        self.guard = DriftGuard(None, 0.0, 0)
        self._pass = 0  # 0-based index of the pass being measured
        self._guards: list[DriftGuard] = []  # of the passes before this one
        self._stored: set[str] = set()
        if convert_workers is None:  # ONNX export is fast enough in-process
            convert_workers = 0 if spec.runtime.name == "onnxruntime" else (os.cpu_count() or 1)
        self.convert_workers = convert_workers
        self.failed_conversions: dict[str, str] = {}

    # --- helpers --------------------------------------------------------------------------
    def _convert(self, inst: OpInstance) -> Artifact:
        if inst.key in self.failed_conversions:  # a worker tried already
            raise ConversionError(self.failed_conversions[inst.key])
        module, example = instance_module(inst)
        rt = self.spec.runtime
        return self.cache.get(module, example, rt.name, rt.precision)

    def _entry(
        self, inst: OpInstance, res: dict[str, Any], status: str, attempts: int, old: Entry | None
    ) -> Entry:
        before = None if old is None else (old.passes, old.median_ms, old.status, old.samples)
        passes, samples, status = merged(
            before,
            self._pass,
            latency_of(res, self.spec.measure.statistic),
            res["samples_ms"],
            status,
        )
        return entry_from_samples(
            inst,
            samples,
            status=status,
            median_ms=combined(passes),
            passes=tuple(passes),
            runtime=f"{res.get('runtime')} {res.get('runtime_version', '')}".strip(),
            precision=self.spec.runtime.precision,
            delegate=res.get("delegate"),
            attempts=attempts,
        )

    # --- the run --------------------------------------------------------------------------
    def run(self) -> CampaignReport:
        spec, space = self.spec, self.space
        instances = (
            self.instances
            if self.instances is not None
            else space_instances(space, spec.measure.pairs)
        )
        dev = self.db.upsert_device(spec.name, spec.kind, spec.runtime.name, _spec_json(spec))
        done = self.db.done_keys(dev)
        if self.retry_errors:
            done -= {e.key for e in self.db.entries(dev, ["error"])}
        if self.remeasure_noisy:  # e.g. flagged while something else loaded the device
            done -= {e.key for e in self.db.entries(dev, ["noisy"])}
        pending = [i for i in instances if i.key not in done]
        already = len(instances) - len(pending)
        if self.limit is not None:
            pending = pending[: self.limit]
        report = CampaignReport(
            spec.name,
            space.name,
            str(self.db.path),
            len(instances),
            already,
            passes=spec.measure.passes,
        )
        # An interrupted run, or a spec that now asks for more passes, leaves entries short.
        chosen = {i.key for i in pending} | (done if self.limit is None else set())
        mine = [i for i in instances if i.key in chosen]
        if not pending and not self._short(dev, mine, spec.measure.passes):
            return report
        run_id = self.db.start_run(dev, space.name, {"pending": len(pending)})
        t0 = time.perf_counter()
        bar = tqdm(
            total=len(pending),
            desc=f"{spec.name}",
            unit="op",
            disable=not self.progress,
            position=self.position,
            dynamic_ncols=True,
        )
        status = "interrupted"
        session = self.session_factory(spec)
        try:
            t = time.perf_counter()
            failed = convert_all(
                pending,
                spec.runtime.name,
                spec.runtime.precision,
                self.cache,
                self.convert_workers,
                self.progress,
                self.position,
            )
            report.convert_seconds += time.perf_counter() - t
            self.failed_conversions = failed
            session.open()
            report.fingerprint = session.fingerprint
            self.db.upsert_device(
                spec.name, spec.kind, spec.runtime.name, _spec_json(spec), session.fingerprint
            )
            self.guard = DriftGuard.for_spec(spec, self.cache)
            session = self._pass_loop(session, dev, run_id, pending, report, bar)
            for p in range(1, spec.measure.passes):
                todo = self._short(dev, mine, p + 1)
                if not todo:
                    continue
                session.restart_agent()  # a fresh process: what the pass is for
                self._pass, self._stored = p, set()
                self._guards.append(self.guard)
                self.guard = DriftGuard.for_spec(spec, self.cache)
                bar.total += len(todo)
                bar.set_description(f"{spec.name} pass {p + 1}/{spec.measure.passes}")
                session = self._pass_loop(session, dev, run_id, todo, report, bar)
            if spec.measure.passes > 1:
                report.pass_spread = spread(
                    e.passes for e in self.db.entries(dev, USABLE) if e.key in chosen
                )
            status = "done"
        finally:
            bar.close()
            report.drift = _drift_json([*self._guards, self.guard])
            report.seconds = time.perf_counter() - t0
            self.db.finish_run(run_id, status, report.to_json())
            try:
                session.close()
            except Exception:  # closing a lost connection must not hide the real error
                pass
        return report

    def _short(self, dev: int, instances: list[OpInstance], wanted: int) -> list[OpInstance]:
        """Of ``instances``, the stored usable ones with fewer than ``wanted`` passes."""
        have = {
            e.key: len(prior(e.passes, e.median_ms, e.status)) for e in self.db.entries(dev, USABLE)
        }
        return [i for i in instances if 0 < have.get(i.key, 0) < wanted]

    def _pass_loop(self, session, dev, run_id, pending, report, bar):
        queue: list[tuple[OpInstance, int]] = [(i, 1) for i in pending]
        by_key = {i.key: i for i in pending}
        while queue or (queue := [(by_key[k], 1) for k in self.guard.recheck()]):
            batch, queue = queue[: self.spec.measure.batch], queue[self.spec.measure.batch :]
            session, retry = self._batch(session, dev, run_id, batch, report, bar)
            queue.extend(retry)
        return session

    def _batch(self, session, dev, run_id, batch, report, bar):
        """Convert, measure and store one batch; return the (possibly new) session and the
        entries to measure again."""
        items: list[tuple[str, Artifact]] = []
        by_key: dict[str, tuple[OpInstance, int]] = {}
        t = time.perf_counter()
        for inst, attempts in batch:
            try:
                items.append((inst.key, self._convert(inst)))
                by_key[inst.key] = (inst, attempts)
            except ConversionError as exc:
                bar.update(1)
                if self._pass:  # converted for an earlier pass: keep what that measured
                    continue
                self.db.put(dev, error_entry(inst, str(exc), attempts=attempts), run_id)
                report.errors += 1
        report.convert_seconds += time.perf_counter() - t
        retry: list[tuple[OpInstance, int]] = []
        items = self.guard.with_reference(items)
        try:
            results = list(self._measure(session, items))
        except AgentCrashed as crash:
            # Which op killed it is unknown: run the unfinished ones one by one.
            results = [r for r in crash.partial]
            for key in crash.pending:
                if key == REFERENCE_ID:
                    continue
                session.restart_agent()
                try:
                    results.extend(self._measure(session, [(key, dict(items)[key])]))
                except AgentCrashed as alone:
                    results.append({"type": "error", "id": key, "error": str(alone)})
        except DeviceUnreachable:
            # One reconnect; if that fails too, what was stored stays stored.
            session.close()
            session = self.session_factory(self.spec)
            session.open()
            results = list(self._measure(session, items))
        statistic = self.spec.measure.statistic
        results, again = self.guard.judge(results, lambda r: latency_of(r, statistic))
        retry.extend(by_key[k] for k in again)
        for res in results:
            inst, attempts = by_key[res["id"]]
            old = self.db.get(dev, inst.key) if self._pass else None
            if res["type"] == "error" and old is not None:  # a later pass failed: keep the rest
                bar.update(inst.key not in self._stored)
                self._stored.add(inst.key)
                continue
            if res["type"] == "error":
                self.db.put(dev, error_entry(inst, res["error"], attempts=attempts), run_id)
                report.errors += 1
                bar.update(1)
                continue
            report.timed_seconds += sum(res["samples_ms"]) / 1000
            noisy = round_cv(res, self.spec.measure.statistic) > self.spec.measure.cv_threshold
            if noisy and attempts <= self.spec.measure.max_remeasure:
                retry.append((inst, attempts + 1))
                report.remeasured += 1
                continue
            entry = self._entry(inst, res, "noisy" if noisy else "ok", attempts, old)
            self.db.put(dev, entry, run_id)
            if inst.key in self._stored:  # measured again after a slow batch: counted already
                continue
            self._stored.add(inst.key)
            if self._pass:
                report.repeated += 1
            elif noisy:
                report.noisy += 1
            else:
                report.measured += 1
            bar.update(1)
        if self._pass:
            bar.set_postfix(timed_again=report.repeated)
        else:
            bar.set_postfix(ok=report.measured, noisy=report.noisy, err=report.errors)
        return session, retry

    @staticmethod
    def _measure(session: AgentSession, items: list[tuple[str, Artifact]]):
        if not items:
            return []
        out: list[dict[str, Any]] = []
        try:
            for res in session.measure(items):
                out.append(res)
        except AgentCrashed as crash:
            crash.partial = out
            raise
        return out


def _drift_json(guards: list[DriftGuard]) -> dict[str, Any]:
    """The first pass's drift figures, with re-measured batches counted over all passes and,
    when there were several, each pass's reference best (one process against another)."""
    out = guards[0].to_json()
    out["batches_remeasured"] = sum(g.rejected for g in guards)
    if len(guards) > 1:
        out["reference_best_ms_by_pass"] = [g.to_json()["reference_best_ms"] for g in guards]
    return out


def _spec_json(spec: DeviceSpec) -> dict[str, Any]:
    return asdict(spec)


def profile(space: SearchSpace, spec: DeviceSpec, db_path: str | Path, **kw: Any) -> CampaignReport:
    """Profile ``space`` on ``spec`` into the LUT at ``db_path`` (resumable)."""
    return Campaign(space, spec, db_path, **kw).run()


def measure_modules(
    spec: DeviceSpec,
    models: list[tuple[str, nn.Module, torch.Tensor]],
    cache: ArtifactCache | None = None,
) -> dict[str, dict[str, Any]]:
    """Measure complete networks end to end through the same agent path as operators."""
    cache = cache or ArtifactCache()
    rt = spec.runtime
    items = [(mid, cache.get(m, x, rt.name, rt.precision)) for mid, m, x in models]
    with AgentSession(spec) as session:
        return {res["id"]: res for res in session.measure(items)}
