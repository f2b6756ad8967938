"""Stage two: evolutionary search under a latency budget (SPOS / Once-for-All style).

Candidates are made only within the budget: a mutation or crossover whose predicted latency
is over it is thrown away before anything evaluates it, so no over-budget architecture ever
costs an evaluation. Width multipliers mutate with the ops. Fitness is whatever the caller
passes; ``SupernetFitness`` is validation accuracy of the subnet with inherited weights after
recomputing its batch-norm statistics on a few training batches.

Every generation appends its population to ``history.jsonl`` and rewrites ``state.json``
atomically; a killed search resumes from the last finished generation and gives the same
result as an uninterrupted one (each generation draws from its own seeded generator).

Under ``torchrun`` every rank runs the same search (the same seeds make the same
candidates), each evaluates its share of a generation's new candidates and all gather the
fitnesses (``hurricane.compute.share``), so all hold the same state; rank 0 alone writes
and logs. Fitness is most of a search's time, so this divides it by the number of ranks.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hurricane.arch import Arch
from hurricane.compute import group_size, is_main, main_only, share
from hurricane.errors import UserError
from hurricane.space import SearchSpace

Latency = Callable[[Sequence[Arch]], np.ndarray]


@dataclass
class SearchConfig:
    budget_ms: float
    population: int = 20
    generations: int = 10
    parents: int = 5
    mutations: int = 10
    crossovers: int = 10
    mutate_prob: float = 0.2
    seed: int = 0
    layers: list[int] | None = None  # searched layers (None: all); the others come from fixed
    fixed: str | None = None
    allowed: list[list[str]] | None = None  # per-layer ops left by progressive shrinking
    max_tries: int = 2000  # attempts at one within-budget candidate before giving up
    # Candidates predicted under this fraction of the budget are not made either: a supernet
    # can rank small subnets too high (they train fastest on shared weights), so an unbounded
    # search drifts below the budget it was given.
    min_fraction: float = 0.0

    def planned_evaluations(self) -> int:
        """The architectures the evolution evaluates when no generation falls short:
        another strategy given the same search gets as many."""
        return self.population + (self.generations - 1) * (self.mutations + self.crossovers)

    def identity(self) -> dict[str, Any]:
        d = asdict(self)
        if not d["min_fraction"]:  # searches stored before the field existed still resume
            del d["min_fraction"]
        return d


class BudgetTooLow(UserError):
    pass


@dataclass
class _State:
    generation: int = 0
    evaluated: dict[str, float] = field(default_factory=dict)  # arch -> fitness
    latency: dict[str, float] = field(default_factory=dict)  # arch -> predicted ms
    population: list[str] = field(default_factory=list)
    rejected: int = 0  # candidates made and dropped for being over budget
    below: int = 0  # ... or for being under min_fraction of it
    band_dropped: bool = False  # nothing lay inside the band: searched below the budget only
    seconds: float = 0.0


class EvolutionSearch:
    def __init__(
        self,
        space: SearchSpace,
        latency: Latency,
        fitness: Callable[[Arch], float],
        cfg: SearchConfig,
        out: str | Path | None = None,
        min_latency: Callable[[], tuple[float, Arch]] | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.space, self.latency, self.fitness, self.cfg = space, latency, fitness, cfg
        self.out = Path(out) if out else None
        self.min_latency = min_latency
        self.fixed = space.parse_arch(cfg.fixed) if cfg.fixed else None
        self.layers = cfg.layers if cfg.layers is not None else list(range(len(space.layers)))
        say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.log = say if is_main() else (lambda msg: None)
        self.state = _State()

    # --- making candidates ----------------------------------------------------------------
    def _fits(self, archs: list[Arch]) -> list[Arch]:
        if not archs:
            return []
        lat = self.latency(archs)
        lower = 0.0 if self.state.band_dropped else self.cfg.min_fraction * self.cfg.budget_ms
        keep = []
        for a, ms in zip(archs, lat):
            if ms > self.cfg.budget_ms:
                self.state.rejected += 1
            elif ms < lower:
                self.state.below += 1
            else:
                self.state.latency[str(a)] = float(ms)
                keep.append(a)
        return keep

    def _make(self, n: int, propose: Callable[[], Arch], taken: set[str]) -> list[Arch]:
        """``n`` new within-budget candidates from ``propose`` (batches of proposals are
        scored at once; the LUT predictor is vectorised)."""
        out: list[Arch] = []
        tries = 0
        while len(out) < n and tries < self.cfg.max_tries:
            batch = [propose() for _ in range(min(64, self.cfg.max_tries - tries))]
            tries += len(batch)
            for a in self._fits(batch):
                if str(a) not in taken and len(out) < n:
                    taken.add(str(a))
                    out.append(a)
        return out

    def _random(self, rng: random.Random) -> Callable[[], Arch]:
        return lambda: self.space.sample_arch(rng, self.layers, self.fixed, self.cfg.allowed)

    def _mutate(self, rng: random.Random, parents: list[Arch]) -> Callable[[], Arch]:
        def propose() -> Arch:
            p = rng.choice(parents)
            ops, widths = list(p.ops), list(p.widths)
            for i in self.layers:
                layer = self.space.layers[i]
                if rng.random() < self.cfg.mutate_prob:
                    ops[i] = rng.choice(self.cfg.allowed[i] if self.cfg.allowed else layer.ops)
                if rng.random() < self.cfg.mutate_prob:
                    widths[i] = rng.choice(layer.widths)
            return Arch(tuple(ops), tuple(widths))

        return propose

    def _cross(self, rng: random.Random, parents: list[Arch]) -> Callable[[], Arch]:
        def propose() -> Arch:
            a, b = rng.sample(parents, 2) if len(parents) > 1 else (parents[0], parents[0])
            pick = [rng.random() < 0.5 for _ in a.ops]
            ops = tuple(x if k else y for x, y, k in zip(a.ops, b.ops, pick))
            return Arch(ops, tuple(x if k else y for x, y, k in zip(a.widths, b.widths, pick)))

        return propose

    # --- persistence ----------------------------------------------------------------------
    def _save(self) -> None:
        if not self.out or not is_main():
            return
        self.out.mkdir(parents=True, exist_ok=True)
        tmp = self.out / "state.json.tmp"
        tmp.write_text(json.dumps({"config": self.cfg.identity(), **asdict(self.state)}))
        os.replace(tmp, self.out / "state.json")

    def _resume(self) -> None:
        if self.out is None:
            return
        path = self.out / "state.json"
        # Rank 0 reads, every rank resumes from what it read (its disk alone need hold it).
        saved = main_only(lambda: json.loads(path.read_text()) if path.exists() else None)
        if saved is None:
            return
        if saved.pop("config") != self.cfg.identity():
            raise UserError(
                f"{path}: a search with other settings is stored here; use another "
                "output folder or delete it"
            )
        self.state = _State(**saved)
        # Generations after the stored state did not finish: drop their history lines.
        hist = self.out / "history.jsonl"
        if hist.exists() and is_main():
            lines = [
                ln
                for ln in hist.read_text().splitlines()
                if json.loads(ln)["generation"] < self.state.generation
            ]
            hist.write_text("".join(ln + "\n" for ln in lines))

    def _record(self, gen: int, population: list[str]) -> None:
        if not self.out or not is_main():
            return
        self.out.mkdir(parents=True, exist_ok=True)
        row = {
            "generation": gen,
            "population": [
                {"arch": a, "fitness": self.state.evaluated[a], "latency_ms": self.state.latency[a]}
                for a in population
            ],
        }
        with open(self.out / "history.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")

    # --- the loop -------------------------------------------------------------------------
    def _evaluate(self, archs: list[Arch]) -> None:
        new = [a for a in archs if str(a) not in self.state.evaluated]
        for a in new:
            assert self.state.latency[str(a)] <= self.cfg.budget_ms  # made within budget
        for a, fit in zip(new, share(new, lambda a: float(self.fitness(a))), strict=True):
            self.state.evaluated[str(a)] = fit

    def _too_low(self) -> BudgetTooLow:
        msg = f"latency budget {self.cfg.budget_ms:g} ms: no architecture found within it"
        if self.min_latency:
            ms, arch = self.min_latency()
            msg += f"; the fastest in this space is {ms:.4g} ms ({arch})"
        return BudgetTooLow(msg + "; raise the budget (--budget, or budgets in a pipeline file)")

    def top(self, k: int) -> list[tuple[str, float]]:
        return sorted(self.state.evaluated.items(), key=lambda kv: -kv[1])[:k]

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        if group_size() > 1:
            self.log(f"{group_size()} processes share each generation's fitness evaluations")
        self._resume()
        t0 = time.perf_counter() - self.state.seconds
        if self.min_latency and self.min_latency()[0] > cfg.budget_ms:
            raise self._too_low()
        while self.state.generation < cfg.generations:
            gen = self.state.generation
            rng = random.Random(cfg.seed * 1_000_003 + gen)
            taken = set(self.state.evaluated)
            if gen == 0:
                pop = self._make(cfg.population, self._random(rng), taken)
                if not pop and cfg.min_fraction and not self.state.band_dropped:
                    self.log(
                        f"no architecture found between {cfg.min_fraction:g} x and 1 x the "
                        f"budget; searching everything under {cfg.budget_ms:g} ms"
                    )
                    self.state.band_dropped = True
                    pop = self._make(cfg.population, self._random(rng), taken)
                if not pop:
                    raise self._too_low()
            else:
                parents = [self.space.parse_arch(a) for a, _ in self.top(cfg.parents)]
                pop = self._make(cfg.mutations, self._mutate(rng, parents), taken)
                pop += self._make(cfg.crossovers, self._cross(rng, parents), taken)
                pop += self._make(cfg.population - len(pop), self._random(rng), taken)
            self._evaluate(pop)
            names = [str(a) for a in pop]
            self.state.population = names
            self._record(gen, names)
            self.state.generation = gen + 1
            self.state.seconds = time.perf_counter() - t0
            self._save()
            best, fit = self.top(1)[0]
            # A generation can make nothing new: every mutation over budget or seen before.
            mean = f"{np.mean([self.state.evaluated[a] for a in names]):.4f}" if names else "-"
            self.log(
                f"generation {gen + 1}/{cfg.generations}: {len(pop)} new, best fitness "
                f"{fit:.4f} at {self.state.latency[best]:.3f} ms, population mean {mean}, "
                f"{len(self.state.evaluated)} evaluated, {self.state.rejected} over budget "
                "rejected" + (f", {self.state.below} under the band" if cfg.min_fraction else "")
            )
        return self.result()

    def result(self) -> dict[str, Any]:
        best, fit = self.top(1)[0]
        return {
            "best": best,
            "fitness": fit,
            "latency_ms": self.state.latency[best],
            "budget_ms": self.cfg.budget_ms,
            "evaluated": len(self.state.evaluated),
            "rejected": self.state.rejected,
            "below_band": self.state.below,
            "band_dropped": self.state.band_dropped,
            "seconds": round(self.state.seconds, 1),
            "top": [
                {"arch": a, "fitness": f, "latency_ms": self.state.latency[a]}
                for a, f in self.top(10)
            ],
        }


def random_search(
    space: SearchSpace,
    latency: Latency,
    fitness: Callable[[Arch], float],
    cfg: SearchConfig,
    n: int | None = None,
    out: str | Path | None = None,
) -> dict[str, Any]:
    """The baseline: ``n`` (default population x generations) random architectures within
    the same budget, the same fitness."""
    n = n or cfg.population * cfg.generations
    # Proposals cost one vectorised LUT lookup: try hard to fill n under a tight budget.
    one_gen = SearchConfig(
        **{
            **cfg.identity(),
            "population": n,
            "generations": 1,
            "max_tries": max(cfg.max_tries, 500 * n),
        }
    )
    return EvolutionSearch(space, latency, fitness, one_gen, out).run()
