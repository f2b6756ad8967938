"""The one measurement engine: every timing Hurricane makes on a device goes through here.

LUT entries (``profilers/campaign.py``), whole models (``profilers/models.py``) and the
handoff's bundle (``pipelines/handoff.py``) only say what to time and where to store it; the
protocol is this module's, so the same model gets the same figure whoever asks:

- items go to one long-lived agent in batches of ``[measure] batch``, each batch with the drift
  reference (``profilers/drift.py``); a batch whose reference ran slow is measured again, and
  at the end batches kept before a better reference was seen are checked again;
- an item whose rounds disagree (``round_cv`` over ``cv_threshold``) is measured again, up to
  ``max_remeasure`` times, but only while its spread is clearly above the device's own noise
  floor (the reference's spread in this session): when the device itself is that noisy,
  another attempt will not do better, so it is stored flagged ``noisy`` at once;
- results that arrived before an agent crash are kept; the items still pending are run again
  one at a time in fresh agent processes, so only the culprit is stored as an error; a lost
  connection is re-opened once;
- ``[measure] passes`` > 1 times everything again in fresh agent processes and stores the
  median of the passes (``profilers/passes.py``);
- every reply is checked before it is stored (``profilers/replies.py``): one that is not a
  positive finite timing of an item that was asked for is stored as that item's error, with
  the reason, and replies that name no pending item are counted and reported;
- every row is handed to the caller's sink the moment it is final, so an interruption loses
  at most the batch in flight.
"""

from __future__ import annotations

import math
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from tqdm import tqdm

from devices.artifacts import Artifact, ArtifactCache
from devices.convert import ConversionError
from devices.spec import DeviceSpec
from devices.transport import DeviceUnreachable
from profilers.drift import REFERENCE_ID, DriftGuard
from profilers.passes import combined, merged, prior, spread
from profilers.replies import checked
from profilers.session import AgentCrashed, AgentSession

NOISE_FLOOR_MS = 0.002  # below this spread the clock and the agent's loop dominate anyway
# Re-measure a noisy item only while its spread exceeds the device's own by this factor.
FLOOR_MARGIN = 1.5


def latency_of(result: dict[str, Any], statistic: str = "median") -> float:
    """An item's latency from the agent's round medians: their median (DESIGN's convention)
    or their minimum. Measured here (12 demo models, 4 sessions each, this 2-core VM):
    other tenants slow whole 20-60 ms stretches by up to 60%, so the median of 5 rounds of
    50 ms moved 4-13% between sessions while the minimum of 20-25 rounds of 10 ms moved 1%."""
    meds = result.get("round_medians_ms") or []
    if statistic == "min" and meds:
        return float(min(meds))
    return float(result["median_ms"])


def round_cv(
    result: dict[str, Any], statistic: str = "median", floor_ms: float = NOISE_FLOOR_MS
) -> float:
    """How far the reported statistic would move if measured again. For the median: the
    spread of the round medians relative to their mean. For the minimum: how far the
    lowest quarter of the rounds sits above it (a steady minimum is reached by many rounds).
    A spread under ``NOISE_FLOOR_MS`` counts as steady, so microsecond ops are not
    re-measured forever."""
    meds = sorted(result.get("round_medians_ms") or [])
    if len(meds) < 2 or statistics.fmean(meds) <= 0:
        return 0.0
    if statistic == "min":
        gap = meds[len(meds) // 4] - meds[0]
        return 0.0 if gap < floor_ms else gap / meds[0]
    sd = statistics.pstdev(meds)
    return 0.0 if sd < floor_ms else sd / statistics.fmean(meds)


class Sink(Protocol):
    """Where a caller keeps what the engine measured (the LUT, the models table, memory)."""

    def stored(self, key: str) -> dict[str, Any] | None:
        """The row stored for ``key`` (``status``, ``median_ms``, ``passes``, ``samples``)."""

    def put(self, key: str, row: dict[str, Any]) -> None:
        """Store ``key``'s final row for this pass: ``status`` (ok, noisy, error), and for a
        timed item ``median_ms``, ``passes``, ``samples_ms``, ``round_cv``, ``attempts``,
        ``runtime``, ``runtime_version``, ``delegate``; for an error ``error``."""


class MemorySink:
    """Rows kept in a dict: for callers that store elsewhere (the handoff's manifest)."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}

    def stored(self, key: str) -> dict[str, Any] | None:
        row = self.rows.get(key)
        if row is None:
            return None
        return {**row, "samples": row.get("samples_ms", [])}

    def put(self, key: str, row: dict[str, Any]) -> None:
        self.rows[key] = row


def _old(row: dict[str, Any] | None) -> tuple | None:
    if not row:
        return None
    return (row.get("passes") or [], row.get("median_ms"), row["status"], row.get("samples") or [])


def stored_passes(row: dict[str, Any] | None) -> list[float]:
    """The pass values a stored row has (none for an error or no row)."""
    if not row:
        return []
    return prior(row.get("passes") or [], row.get("median_ms"), row["status"])


@dataclass
class MeasureReport:
    measured: int = 0  # items stored ok in their first pass
    noisy: int = 0  # stored flagged noisy
    errors: int = 0
    remeasured: int = 0  # noisy attempts measured again
    repeated: int = 0  # items timed in a pass after the first
    timed_seconds: float = 0.0  # time inside the agent's timed runs
    pass_spread: float | None = None
    noise_floor: float | None = None  # the reference's median round spread (relative)
    noisy_at_floor: int = 0  # noisy items not re-measured: no noisier than the device
    bad_replies: int = 0  # agent lines that could not be used (invalid ones are errors too)
    drift: dict[str, Any] = field(default_factory=dict)
    fingerprint: dict[str, Any] = field(default_factory=dict)


ArtifactFor = Callable[[str], Artifact]


class Engine:
    """Times items on one device with its spec's protocol (see the module docstring)."""

    def __init__(
        self,
        spec: DeviceSpec,
        cache: ArtifactCache | None = None,
        session_factory: Callable[[DeviceSpec], AgentSession] | None = None,
        progress: bool = True,
        position: int = 0,
        unit: str = "op",
        desc: str | None = None,
        on_open: Callable[[AgentSession], None] | None = None,
    ) -> None:
        self.spec = spec
        self.cache = cache or ArtifactCache()
        self.session_factory = session_factory or AgentSession
        self.progress, self.position, self.unit = progress, position, unit
        self.desc = desc or spec.name
        self.on_open = on_open
        self.report = MeasureReport()
        self._guards: list[DriftGuard] = []
        self._ref_cvs: list[float] = []

    # --- the run --------------------------------------------------------------------------
    def run(
        self,
        first: Sequence[str],
        artifact: ArtifactFor,
        sink: Sink,
        again: Sequence[str] | None = None,
        seed: int = 0,
    ) -> MeasureReport:
        """Time ``first`` (keys; ``artifact(key)`` gives each one's artifact or raises
        ConversionError), then give every key of ``first`` and ``again`` that has fewer
        passes than the spec asks for its further passes, each pass in a fresh agent."""
        spec, rep = self.spec, self.report
        passes = spec.measure.passes
        pool = list(dict.fromkeys([*first, *(again or [])]))
        short = [k for k in pool if 0 < len(stored_passes(sink.stored(k))) < passes]
        if not first and not short:
            return rep
        bar = tqdm(
            total=len(first),
            desc=self.desc,
            unit=self.unit,
            disable=not self.progress,
            position=self.position,
            dynamic_ncols=True,
        )
        session = self.session_factory(spec)
        try:
            session.open()
            rep.fingerprint = session.fingerprint
            if self.on_open is not None:
                self.on_open(session)
            guard = DriftGuard.for_spec(spec, self.cache)
            self._guards = [guard]
            session = self._pass(session, 0, list(first), artifact, sink, bar, guard, seed)
            for p in range(1, passes):
                todo = [k for k in pool if 0 < len(stored_passes(sink.stored(k))) < p + 1]
                if not todo:
                    continue
                session.restart_agent()  # a fresh process: what a pass is for
                guard = DriftGuard.for_spec(spec, self.cache)
                self._guards.append(guard)
                bar.total += len(todo)
                bar.set_description(f"{self.desc} pass {p + 1}/{passes}")
                session = self._pass(session, p, todo, artifact, sink, bar, guard, seed + 1000 * p)
            if passes > 1:
                rep.pass_spread = spread(
                    r for k in pool if len(r := stored_passes(sink.stored(k))) > 1
                )
        finally:
            bar.close()
            rep.drift = drift_json(self._guards)
            rep.noise_floor = self.noise_floor
            rep.drift["noise_floor"] = rep.noise_floor
            try:
                session.close()
            except Exception:  # closing a lost connection must not hide the real error
                pass
        return rep

    @property
    def noise_floor(self) -> float | None:
        """The device's own spread in this run: the median of the reference's round spreads."""
        return round(statistics.median(self._ref_cvs), 4) if self._ref_cvs else None

    @property
    def guard(self) -> DriftGuard | None:
        return self._guards[-1] if self._guards else None

    def _pass(self, session, index, keys, artifact, sink, bar, guard, seed):
        queue: list[tuple[str, int]] = [(k, 1) for k in keys]
        attempts: dict[str, int] = {}
        done: set[str] = set()
        step = 0
        while queue or (queue := [(k, attempts.get(k, 1)) for k in guard.recheck()]):
            chunk, queue = queue[: self.spec.measure.batch], queue[self.spec.measure.batch :]
            attempts.update(chunk)
            step += 1
            session, retry = self._batch(
                session, index, chunk, artifact, sink, bar, guard, seed + step, done
            )
            queue.extend(retry)
        return session

    def _batch(self, session, index, chunk, artifact, sink, bar, guard, seed, done):
        """Measure and store one batch; return the (possibly new) session and the (key,
        attempt) pairs to measure again."""
        spec, m, rep = self.spec, self.spec.measure, self.report
        tries = dict(chunk)
        items: list[tuple[str, Artifact]] = []
        for key, n in chunk:
            try:
                items.append((key, artifact(key)))
            except ConversionError as exc:
                self._finish(key, bar, done)
                if index == 0:  # a later pass keeps what the earlier one measured
                    sink.put(key, {"status": "error", "error": str(exc)[:500], "attempts": n})
                    rep.errors += 1
        results: list[dict[str, Any]] = []
        items = guard.with_reference(items)
        try:
            results = _collect(session, items, seed)
        except AgentCrashed as crash:
            # Which item killed it is unknown: run the unfinished ones one by one.
            results = list(crash.partial)
            arts = dict(items)
            for key in crash.pending:
                if key == REFERENCE_ID:
                    continue
                session.restart_agent()
                try:
                    results.extend(_collect(session, [(key, arts[key])], seed))
                except AgentCrashed as alone:
                    results.append({"type": "error", "id": key, "error": str(alone)})
            session.restart_agent()  # the next batch starts in a healthy process
        except DeviceUnreachable:
            # One reconnect; if that fails too, what was stored stays stored.
            try:
                session.close()
            except Exception:
                pass
            session = self.session_factory(spec)
            session.open()
            results = _collect(session, items, seed)
        results = [checked(r) for r in results]
        self._report_unused(session, bar)
        for r in results:
            if r.get("id") == REFERENCE_ID and r.get("type") == "result":
                # Unclipped: the floor is the device's own spread, however small.
                self._ref_cvs.append(round_cv(r, m.statistic, floor_ms=0.0))
        guard.floor = self.noise_floor or 0.0
        results, slow = guard.judge(results, lambda r: latency_of(r, m.statistic))
        retry = [(k, tries[k]) for k in slow]
        floor = self.noise_floor
        for res in results:
            key = res["id"]
            n = tries[key]
            before = sink.stored(key) if index else None
            if res["type"] == "error":
                self._finish(key, bar, done)
                if before and stored_passes(before):  # a later pass failed: keep the others
                    continue
                sink.put(key, {"status": "error", "error": str(res["error"])[:500], "attempts": n})
                rep.errors += 1
                continue
            rep.timed_seconds += sum(res["samples_ms"]) / 1000
            cv = round_cv(res, m.statistic)
            noisy = cv > m.cv_threshold
            if noisy and n <= m.max_remeasure:
                if floor is None or cv > FLOOR_MARGIN * floor:
                    retry.append((key, n + 1))
                    rep.remeasured += 1
                    continue
                rep.noisy_at_floor += 1
            value = latency_of(res, m.statistic)
            pass_values, samples, status = merged(
                _old(before), index, value, res["samples_ms"], "noisy" if noisy else "ok"
            )
            sink.put(
                key,
                {
                    "status": status,
                    "median_ms": combined(pass_values),
                    "passes": pass_values,
                    "samples_ms": samples,
                    "round_cv": cv,
                    "attempts": n,
                    "runtime": f"{res.get('runtime')} {res.get('runtime_version', '')}".strip(),
                    "runtime_version": res.get("runtime_version"),
                    "delegate": res.get("delegate"),
                },
            )
            if key in done:  # measured again after a slow batch: counted already
                continue
            self._finish(key, bar, done)
            if index:
                rep.repeated += 1
            elif noisy:
                rep.noisy += 1
            else:
                rep.measured += 1
        if index:
            bar.set_postfix(timed_again=rep.repeated)
        else:
            bar.set_postfix(ok=rep.measured, noisy=rep.noisy, err=rep.errors)
        return session, retry

    def _report_unused(self, session: AgentSession, bar: tqdm) -> None:
        """One line for the agent lines of a batch that named no pending item: they would
        otherwise vanish without notice."""
        lost = session.bad_replies
        if not lost:
            return
        self.report.bad_replies += len(lost)
        bar.write(
            f"WARNING: {self.spec.name}: {len(lost)} line(s) from the agent could not be used "
            f"(first: {lost[0][:160]}); items without a usable reply are stored as errors",
            file=sys.stderr,
        )
        lost.clear()

    @staticmethod
    def _finish(key: str, bar: tqdm, done: set[str]) -> None:
        if key not in done:
            done.add(key)
            bar.update(1)


def _collect(
    session: AgentSession, items: list[tuple[str, Artifact]], seed: int
) -> list[dict[str, Any]]:
    """Every line of one batch; on a crash the lines that did arrive ride on the exception."""
    if not items:
        return []
    out: list[dict[str, Any]] = []
    try:
        for res in session.measure(items, seed=seed):
            out.append(res)
    except AgentCrashed as crash:
        crash.partial = out
        raise
    return out


def drift_json(guards: list[DriftGuard]) -> dict[str, Any]:
    """The first pass's drift figures, with re-measured batches counted over all passes and,
    when there were several, each pass's reference best (one process against another)."""
    if not guards:
        return {}
    out = guards[0].to_json()
    out["batches_remeasured"] = sum(g.rejected for g in guards)
    if len(guards) > 1:
        out["reference_best_ms_by_pass"] = [g.to_json()["reference_best_ms"] for g in guards]
    return out


def warn_if_slower(
    spec: DeviceSpec, profiled: dict[str, float] | None, guard: DriftGuard | None
) -> bool:
    """One line on stderr when this session's reference ran slower than it did while the LUT
    was profiled (``profiled``: ``profilers.models.profiled_reference``). The drift guard
    compares batches within one session, so a device slowed for the whole session (a shared
    host here, 11-17% for half an hour; a throttled phone) passes it, and its timings are held
    against a LUT measured faster. Typical is held against typical (the medians over batches),
    since a best of few batches is no match for a best of many."""
    if guard is None or not guard.enabled or not profiled or not math.isfinite(guard.best_ms):
        return False
    if "typical_ms" in profiled:
        now, then = guard.typical_ms, profiled["typical_ms"]
    else:  # a profile recorded before typical figures were kept
        now, then = guard.best_ms, profiled["best_ms"]
    ratio = now / then
    # Within the device's own batch-to-batch noise a slower session is no evidence.
    if ratio <= 1 + max(guard.threshold, profiled.get("noise", 0.0)):
        return False
    print(
        f"WARNING: {spec.name} ran its drift reference {100 * (ratio - 1):.0f}% slower in this "
        f"session ({now:.4g} ms) than while its LUT was profiled ({then:.4g} ms); these "
        "timings are slow against the LUT: let the device settle and measure again",
        file=sys.stderr,
    )
    return True


def row_noise(row: dict[str, Any], floor: float | None = None) -> float:
    """How far a stored figure could move if measured again, relative: the largest of its
    rounds' spread, its passes' half-range, the clock's resolution against it and the
    device's noise floor."""
    ms = row.get("median_ms") or 0.0
    noise = [float(row.get("round_cv") or 0.0), float(floor or 0.0)]
    passes = row.get("passes") or []
    if len(passes) > 1 and ms > 0:
        noise.append((max(passes) - min(passes)) / (2 * ms))
    if ms > 0:
        noise.append(NOISE_FLOOR_MS / ms)
    return max(noise)


def judge_budget(ms: float | None, budget_ms: float | None, noise: float) -> dict[str, Any]:
    """Whether a measured latency meets a budget, and how sure that is. A figure within
    ``noise`` (relative) of the budget on either side could fall either way if measured
    again: it is accepted, and said to be within noise, so a decision never flips on noise
    alone. Every caller that accepts or rejects a model (the final step, the handoff, a
    verify) decides here."""
    if budget_ms is None:
        return {"accepted": ms is not None, "verdict": "no budget", "noise": noise}
    if ms is None:
        return {"accepted": False, "verdict": "not measured", "noise": noise}
    margin = (budget_ms - ms) / budget_ms
    if ms <= budget_ms * (1 - noise):
        verdict = "within budget"
    elif ms <= budget_ms * (1 + noise):
        verdict = "within noise of the budget"
    else:
        verdict = "over budget"
    return {
        "accepted": verdict != "over budget",
        "verdict": verdict,
        "margin": round(margin, 4),
        "noise": round(noise, 4),
    }
