"""The profiling campaign: a (space, device) pair -> a latency lookup table in SQLite.

Enumerate the space's operator instances (plus stem and head), convert each into the device's
artifact (cached), ship them in batches to the device's agent, and store every result the
moment it arrives. Running again skips what is stored, so an interrupted campaign (Ctrl-C, a
dropped connection, a rebooted board) continues where it stopped with nothing lost or
duplicated. How items are timed is the measurement engine's (``profilers/measure.py``).

One campaign per device and database at a time (``LutDB.device_lock``): a second one refuses,
naming the first one's pid, or with ``wait`` waits for it, then measures only what the first
left; a lock left by a killed campaign is taken over, and its run marked interrupted.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from devices.artifacts import Artifact, ArtifactCache, convert_all
from devices.convert import ConversionError
from devices.spec import DeviceSpec
from hurricane.lut import LutDB, entry_from_samples, error_entry
from hurricane.lutkeys import OpInstance, PairInstance
from hurricane.space import SearchSpace
from hurricane.subnet import instance_module
from profilers.measure import Engine, MemorySink
from profilers.passes import USABLE, prior
from profilers.session import AgentSession


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
    noise_floor: float | None = None  # the drift reference's own round spread (relative)
    noisy_at_floor: int = 0  # noisy entries not re-measured: no noisier than the device
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
        session_factory: Callable[[DeviceSpec], AgentSession] | None = None,
        position: int = 0,
        convert_workers: int | None = None,
        instances: Sequence[OpInstance | PairInstance] | None = None,
        wait: bool = False,
    ) -> None:
        self.space, self.spec = space, spec
        self.wait = wait  # for another campaign on this device, rather than refuse
        # Default: the space's every op instance; adaptive sampling passes its own.
        self.instances = instances
        self.db = LutDB(db_path)
        self.cache = cache or ArtifactCache()
        self.progress, self.retry_errors, self.limit = progress, retry_errors, limit
        self.remeasure_noisy = remeasure_noisy
        self.session_factory = session_factory
        self.position = position
        self.convert_workers = convert_workers  # None: the runtime's default
        self.failed_conversions: dict[str, str] = {}

    def _convert(self, inst: OpInstance | PairInstance) -> Artifact:
        if inst.key in self.failed_conversions:  # a worker tried already
            raise ConversionError(self.failed_conversions[inst.key])
        module, example = instance_module(inst)
        rt = self.spec.runtime
        return self.cache.get(module, example, rt.name, rt.precision)

    def run(self) -> CampaignReport:
        """Profile what the LUT lacks, holding the device's lock (taken before reading what
        is stored, so a campaign that waited measures only what the other one left)."""

        def waiting(h: dict[str, Any]) -> None:
            print(
                f"waiting for pid {h['pid']}, profiling {self.spec.name} in {self.db.path} "
                f"since {h['started']}, to finish",
                file=sys.stderr,
            )

        what = f"space {self.space.name}"
        with self.db.device_lock(self.spec.name, what, self.wait, on_wait=waiting) as left:
            if left is not None:
                print(
                    f"took over the lock pid {left['pid']} left on {self.spec.name} in "
                    f"{self.db.path}: it no longer runs",
                    file=sys.stderr,
                )
            return self._run()

    def _run(self) -> CampaignReport:
        spec, space = self.spec, self.space
        instances = (
            self.instances
            if self.instances is not None
            else space_instances(space, spec.measure.pairs)
        )
        dev = self.db.upsert_device(spec.name, spec.kind, spec.runtime.name, spec.to_json())
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
        sink = LutSink(self.db, dev, mine, spec.runtime.precision)
        if not pending and not self._short(dev, mine, spec.measure.passes):
            return report
        run_id = self.db.start_run(dev, space.name, {"pending": len(pending)})
        sink.run_id = run_id
        t0 = time.perf_counter()
        status = "interrupted"

        def opened(session: AgentSession) -> None:
            self.db.upsert_device(
                spec.name, spec.kind, spec.runtime.name, spec.to_json(), session.fingerprint
            )

        engine = Engine(
            spec,
            self.cache,
            self.session_factory,
            self.progress,
            self.position,
            unit="op",
            on_open=opened,
        )
        try:
            t = time.perf_counter()
            self.failed_conversions = convert_all(
                instance_module,
                pending,
                [i.key for i in pending],
                spec.runtime.name,
                spec.runtime.precision,
                self.cache,
                self.convert_workers,
                self.progress,
                self.position,
            )
            report.convert_seconds += time.perf_counter() - t
            by_key = {i.key: i for i in mine}
            engine.run(
                [i.key for i in pending],
                lambda k: self._convert(by_key[k]),
                sink,
                again=[i.key for i in mine],
            )
            status = "done"
        finally:
            m = engine.report
            report.fingerprint = m.fingerprint
            report.measured, report.noisy, report.errors = m.measured, m.noisy, m.errors
            report.remeasured, report.repeated = m.remeasured, m.repeated
            report.timed_seconds, report.pass_spread = m.timed_seconds, m.pass_spread
            report.noise_floor, report.noisy_at_floor = m.noise_floor, m.noisy_at_floor
            report.drift = m.drift
            report.seconds = time.perf_counter() - t0
            self.db.finish_run(run_id, status, report.to_json())
        return report

    def _short(
        self, dev: int, instances: Sequence[OpInstance | PairInstance], wanted: int
    ) -> list[OpInstance | PairInstance]:
        """Of ``instances``, the stored usable ones with fewer than ``wanted`` passes."""
        have = {
            e.key: len(prior(e.passes, e.median_ms, e.status)) for e in self.db.entries(dev, USABLE)
        }
        return [i for i in instances if 0 < have.get(i.key, 0) < wanted]


class LutSink:
    """The engine's rows as LUT entries: each committed the moment it is final."""

    def __init__(
        self,
        db: LutDB,
        dev: int,
        instances: Sequence[OpInstance | PairInstance],
        precision: str,
    ) -> None:
        self.db, self.dev, self.precision = db, dev, precision
        self.by_key = {i.key: i for i in instances}
        self.run_id: int | None = None

    def stored(self, key: str) -> dict[str, Any] | None:
        e = self.db.get(self.dev, key)
        if e is None:
            return None
        return {
            "status": e.status,
            "median_ms": e.median_ms,
            "passes": list(e.passes),
            "samples": list(e.samples),
        }

    def put(self, key: str, row: dict[str, Any]) -> None:
        inst = self.by_key[key]
        if row["status"] == "error":
            entry = error_entry(inst, row["error"], attempts=row.get("attempts", 1))
        else:
            entry = entry_from_samples(
                inst,
                row["samples_ms"],
                status=row["status"],
                median_ms=row["median_ms"],
                passes=tuple(row["passes"]),
                runtime=row["runtime"],
                precision=self.precision,
                delegate=row.get("delegate"),
                attempts=row["attempts"],
            )
        self.db.put(self.dev, entry, self.run_id)


def _spec_json(spec: DeviceSpec) -> dict[str, Any]:  # pipelines/jobs.py still imports it
    return spec.to_json()


def profile(space: SearchSpace, spec: DeviceSpec, db_path: str | Path, **kw: Any) -> CampaignReport:
    """Profile ``space`` on ``spec`` into the LUT at ``db_path`` (resumable)."""
    return Campaign(space, spec, db_path, **kw).run()


def measure_modules(
    spec: DeviceSpec,
    models: list[tuple[str, nn.Module, torch.Tensor]],
    cache: ArtifactCache | None = None,
    progress: bool = False,
) -> dict[str, dict[str, Any]]:
    """Time complete networks end to end with the engine's protocol: id -> row."""
    cache = cache or ArtifactCache()
    rt = spec.runtime
    arts = {mid: cache.get(m, x, rt.name, rt.precision) for mid, m, x in models}
    sink = MemorySink()
    Engine(spec, cache, progress=progress, unit="model").run(list(arts), arts.__getitem__, sink)
    return sink.rows
