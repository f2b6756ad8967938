"""Hardware/software co-exploration (Jiang et al., arXiv 1907.04650): the two-level loop.

*Fast exploration* tunes the hardware for one architecture from the latency tables alone,
with no training: among the configurations within the resource limits it takes the one with
the lowest predicted latency (ties: fewer resources), and a pair whose best configuration is
still over the budget is pruned before anything evaluates it. *Slow exploration* evaluates
what survives, with the supernet's fitness, in one of two strategies:

- ``evolution``: today's constrained evolution over architectures, each carrying the
  configuration fast exploration tuned for it (the joint genome is (architecture, its best
  configuration); a mutation changes the architecture and the hardware half follows).
- ``rl``: the paper's controller, a recurrent policy that emits one token per architecture
  layer (op and width) and one per hardware knob, trained with REINFORCE and a
  moving-average baseline. Reward ``a * accuracy + (1 - a) * efficiency``; ``-1`` for a pair
  fast exploration rejects (its configuration over the resource limits, or over budget).

Where the paper's rule is not given, the choices are ours and replaceable: ``efficiency`` is
``1 - latency / budget`` (and, where energy is modelled, the mean of that and ``1 - energy /
energy budget``); the baseline is an exponential moving average (decay 0.9); the policy is a
one-layer LSTM over token embeddings, as in NAS with reinforcement learning.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hurricane.arch import Arch
from hurricane.errors import UserError
from hurricane.search import EvolutionSearch, SearchConfig
from hurricane.space import SearchSpace

Latency = Callable[[Sequence[Arch]], np.ndarray]


@dataclass(frozen=True)
class HardwareConfig:
    """One hardware half of a pair: a named configuration, the knob values that make it and
    the resources it uses (for limits; empty for a deployment configuration)."""

    name: str
    knobs: Mapping[str, Any]
    resources: Mapping[str, float] = field(default_factory=dict)

    def within(self, limits: Mapping[str, float]) -> bool:
        return all(self.resources.get(k, 0.0) <= v for k, v in limits.items())


@dataclass
class Tuned:
    """Fast exploration's answer for one architecture."""

    arch: str
    config: str | None  # None: pruned
    latency_ms: float
    energy_mj: float | None = None
    reason: str = ""

    @property
    def feasible(self) -> bool:
        return self.config is not None


def _fastest(lat: np.ndarray, energy: np.ndarray | None, cost: np.ndarray) -> int:
    return int(np.argmin(lat))


def _least_energy(lat: np.ndarray, energy: np.ndarray | None, cost: np.ndarray) -> int:
    if energy is None:
        raise UserError("--tune least-energy needs energy tables (an accelerator space)")
    return int(np.argmin(energy))


def _fewest_resources(lat: np.ndarray, energy: np.ndarray | None, cost: np.ndarray) -> int:
    return int(np.lexsort((lat, cost))[0])  # the cheapest; ties: the faster


# How fast exploration picks among the configurations that meet the budget (each gets the
# candidates' latencies, energies or None, and resource costs; it returns an index). The
# paper tunes the design to meet the specification; which of those it keeps is ours.
TUNE_RULES: dict[str, Callable[[np.ndarray, np.ndarray | None, np.ndarray], int]] = {
    "fastest": _fastest,
    "least-energy": _least_energy,
    "fewest-resources": _fewest_resources,
}


class FastExplorer:
    """Tunes configurations for architectures from per-configuration latency tables
    (``latency[config name]``: a vectorised predictor, e.g. ``LatencyModel.predict``) and,
    where modelled, energy tables; counts what it prunes. Among the configurations that
    meet the budget, ``rule`` (``TUNE_RULES``) picks the one a pair takes."""

    def __init__(
        self,
        configs: Sequence[HardwareConfig],
        latency: Mapping[str, Latency],
        budget_ms: float,
        limits: Mapping[str, float] | None = None,
        energy: Mapping[str, Latency] | None = None,
        rule: str = "fastest",
    ) -> None:
        if rule not in TUNE_RULES:
            raise UserError(f"tuning rule {rule!r}: expected one of {', '.join(TUNE_RULES)}")
        self.rule = TUNE_RULES[rule]
        self.limits = dict(limits or {})
        self.all = list(configs)
        self.configs = [c for c in self.all if c.within(self.limits)]
        if not self.configs:
            raise UserError(
                "no hardware configuration is within the resource limits "
                f"{self.limits}; raise the limits or add smaller configurations"
            )
        missing = [c.name for c in self.configs if c.name not in latency]
        if missing:
            raise UserError(f"no latency table for configuration(s) {', '.join(missing)}")
        self.latency, self.energy, self.budget_ms = latency, energy or {}, budget_ms
        # One number per configuration for "fewest resources": its resources summed, each
        # relative to the largest value of that resource among the configurations.
        keys = sorted({k for c in self.configs for k in c.resources})
        peak = {k: max(c.resources.get(k, 0.0) for c in self.configs) or 1.0 for k in keys}
        self.cost = np.array(
            [sum(c.resources.get(k, 0.0) / peak[k] for k in keys) for c in self.configs]
        )
        self.tuned = 0
        self.pruned = 0
        # Per architecture seen: how many of its pairs (one per configuration, those over
        # the limits included) fast exploration rejected, and how many there were.
        self.pairs: dict[str, tuple[int, int]] = {}

    def table(self, archs: Sequence[Arch]) -> np.ndarray:
        """Predicted latency of every architecture under every configuration within limits:
        shape (len(archs), len(configs))."""
        lat = np.stack([self.latency[c.name](archs) for c in self.configs], axis=1)
        over_limits = len(self.all) - len(self.configs)
        for a, row in zip(archs, lat):
            self.pairs[str(a)] = (int((row > self.budget_ms).sum()) + over_limits, len(self.all))
        return lat

    def pair_pruned_share(self) -> float:
        """The share of (architecture, configuration) pairs of the architectures seen that
        fast exploration rejected without an evaluation: over budget or over the limits."""
        pruned = sum(p for p, _ in self.pairs.values())
        total = sum(n for _, n in self.pairs.values())
        return round(pruned / total, 4) if total else 0.0

    def tune(self, archs: Sequence[Arch]) -> list[Tuned]:
        if not archs:
            return []
        lat = self.table(archs)
        modelled = all(c.name in self.energy for c in self.configs)
        en = (
            np.stack([self.energy[c.name](archs) for c in self.configs], axis=1)
            if modelled
            else None
        )
        out = []
        for i, a in enumerate(archs):
            fits = np.flatnonzero(lat[i] <= self.budget_ms)  # declared order: ties keep the first
            if len(fits) == 0:
                j = int(np.argmin(lat[i]))
                best, cfg = float(lat[i, j]), self.configs[j]
                e = None if en is None else float(en[i, j])
                out.append(Tuned(str(a), None, best, e, f"{best:.4g} ms on {cfg.name}"))
                self.pruned += 1
            else:
                k = self.rule(lat[i, fits], None if en is None else en[i, fits], self.cost[fits])
                j = int(fits[k])
                e = None if en is None else float(en[i, j])
                out.append(Tuned(str(a), self.configs[j].name, float(lat[i, j]), e))
            self.tuned += 1
        return out

    def best_latency(self, archs: Sequence[Arch]) -> np.ndarray:
        """Each architecture's latency on its best configuration: the constrained
        evolution's latency, so an architecture no configuration fits is never made."""
        return self.table(archs).min(axis=1) if archs else np.zeros(0)

    def pruned_share(self) -> float:
        return self.pruned / self.tuned if self.tuned else 0.0


def fronts(
    space: SearchSpace, explorer: FastExplorer, default: str, evaluated: Mapping[str, float]
) -> list[dict[str, Any]]:
    """Every evaluated architecture with its fitness, on the configuration fast exploration
    tunes for it and on ``default`` (the fixed hardware of an architecture-only search):
    latency, and energy where modelled. The report draws both fronts from these."""
    archs = list(evaluated)
    parsed = [space.parse_arch(a) for a in archs]
    if not parsed:
        return []
    own_ms = explorer.latency[default](parsed)
    own_mj = explorer.energy[default](parsed) if default in explorer.energy else None
    rows = []
    for i, (a, t) in enumerate(zip(archs, explorer.tune(parsed))):
        row = {"arch": a, "fitness": evaluated[a], "config": t.config}
        row["own_ms"], row["ms"] = float(own_ms[i]), t.latency_ms if t.feasible else None
        if own_mj is not None:
            row["own_energy_mj"] = float(own_mj[i])
            row["energy_mj"] = t.energy_mj if t.feasible else None
        rows.append(row)
    return rows


def efficiency(
    latency_ms: float,
    budget_ms: float,
    energy_mj: float | None = None,
    energy_budget_mj: float | None = None,
) -> float:
    """How much of the budget a feasible pair leaves unused, in [0, 1]."""
    eff = max(0.0, 1.0 - latency_ms / budget_ms)
    if energy_mj is not None and energy_budget_mj:
        eff = 0.5 * (eff + max(0.0, 1.0 - energy_mj / energy_budget_mj))
    return eff


def reward(accuracy: float | None, tuned: Tuned, budget_ms: float, a: float = 0.8) -> float:
    """The paper's reward: ``a * accuracy + (1 - a) * efficiency``; -1 for a pruned pair."""
    if not tuned.feasible or accuracy is None:
        return -1.0
    return a * accuracy + (1 - a) * efficiency(tuned.latency_ms, budget_ms)


class Controller(nn.Module):
    """A recurrent policy over a fixed sequence of decisions, each a choice among its own
    tokens (an architecture layer's (op, width) pairs, then each hardware knob's values)."""

    def __init__(self, choices: Sequence[int], hidden: int = 64, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.choices = list(choices)
        self.hidden = hidden
        self.start = nn.Parameter(torch.zeros(1, hidden))
        self.embed = nn.ModuleList(nn.Embedding(n, hidden) for n in self.choices)
        self.cell = nn.LSTMCell(hidden, hidden)
        self.heads = nn.ModuleList(nn.Linear(hidden, n) for n in self.choices)

    def _step_logits(self, tokens: Sequence[int] | None, gen: torch.Generator | None):
        h = c = torch.zeros(1, self.hidden)
        x = self.start
        out, logps = [], []
        for i in range(len(self.choices)):
            h, c = self.cell(x, (h, c))
            logits = self.heads[i](h)[0]
            logp = torch.log_softmax(logits, 0)
            if tokens is None:
                t = int(torch.multinomial(logp.exp(), 1, generator=gen))
            else:
                t = int(tokens[i])
            out.append(t)
            logps.append(logp[t])
            x = self.embed[i](torch.tensor([t]))
        return out, torch.stack(logps).sum()

    def sample(self, gen: torch.Generator) -> list[int]:
        with torch.no_grad():
            return self._step_logits(None, gen)[0]

    def log_prob(self, tokens: Sequence[int]) -> torch.Tensor:
        return self._step_logits(tokens, None)[1]

    def first_probs(self) -> torch.Tensor:
        """The first decision's distribution (the later ones depend on earlier tokens)."""
        with torch.no_grad():
            zeros = torch.zeros(1, self.hidden)
            h, _ = self.cell(self.start, (zeros, zeros))
            return torch.softmax(self.heads[0](h)[0], 0)


class Reinforce:
    """REINFORCE with an exponential-moving-average baseline over a ``Controller``."""

    def __init__(self, controller: Controller, lr: float = 0.05, decay: float = 0.9) -> None:
        self.controller, self.decay = controller, decay
        self.opt = torch.optim.Adam(controller.parameters(), lr=lr)
        self.baseline: float | None = None

    def update(self, episodes: Sequence[tuple[Sequence[int], float]]) -> float:
        """One policy-gradient step over ``(tokens, reward)`` episodes; the mean advantage."""
        rewards = [r for _, r in episodes]
        if self.baseline is None:
            self.baseline = float(np.mean(rewards))
        adv = [r - self.baseline for r in rewards]
        terms = [a * self.controller.log_prob(t) for (t, _), a in zip(episodes, adv)]
        loss = -torch.stack(terms).mean()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        for r in rewards:
            self.baseline = self.decay * self.baseline + (1 - self.decay) * r
        return float(np.mean(adv))

    def state_dict(self) -> dict[str, Any]:
        return {
            "controller": self.controller.state_dict(),
            "opt": self.opt.state_dict(),
            "baseline": self.baseline,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.controller.load_state_dict(state["controller"])
        self.opt.load_state_dict(state["opt"])
        self.baseline = state["baseline"]


class JointTokens:
    """The token sequence of a pair: per searched layer one (op, width) index, then one
    configuration index (the hardware half, as fast exploration would tune it)."""

    def __init__(self, space: SearchSpace, configs: Sequence[HardwareConfig]) -> None:
        self.space = space
        self.options = [
            [(op, w) for op in layer.ops for w in layer.widths] for layer in space.layers
        ]
        self.configs = list(configs)

    @property
    def choices(self) -> list[int]:
        return [len(o) for o in self.options] + [len(self.configs)]

    def decode(self, tokens: Sequence[int]) -> tuple[Arch, HardwareConfig]:
        picks = [self.options[i][t] for i, t in enumerate(tokens[:-1])]
        arch = Arch(tuple(op for op, _ in picks), tuple(w for _, w in picks))
        return arch, self.configs[tokens[-1]]


def rl_search(
    space: SearchSpace,
    explorer: FastExplorer,
    fitness: Callable[[Arch], float],
    episodes: int,
    out: str | Path | None = None,
    batch: int = 4,
    a: float = 0.8,
    seed: int = 0,
    lr: float = 0.05,
    evaluations: int | None = None,
) -> dict[str, Any]:
    """The controller's search: ``episodes`` pairs in batches of ``batch``, its hardware
    tokens over the configurations within the limits; a pair over budget on its
    configuration gets -1 without an evaluation. With ``evaluations`` it stops once that
    many architectures are evaluated (``episodes`` then caps it), so it can be given the
    evolution's count. Resumable after every batch from ``out/rl_state.pt`` (each batch
    samples from its own seeded generator)."""
    tokens_of = JointTokens(space, explorer.configs)
    agent = Reinforce(Controller(tokens_of.choices, seed=seed), lr=lr)
    done: list[dict[str, Any]] = []
    evaluated: dict[str, float] = {}
    seconds, t0 = 0.0, time.perf_counter()
    state_file = Path(out) / "rl_state.pt" if out else None
    # States stored before ``evaluations`` existed still resume.
    identity = [episodes, batch, a, seed, lr] + ([evaluations] if evaluations else [])
    if state_file is not None and state_file.exists():
        saved = torch.load(state_file, weights_only=True)
        if saved["identity"] != identity:
            raise UserError(f"{state_file}: a search with other settings is stored here")
        agent.load_state_dict(saved["agent"])
        done, evaluated = json.loads(saved["history"]), json.loads(saved["evaluated"])
        seconds = float(saved.get("seconds", 0.0))

    def enough() -> bool:
        return len(done) >= episodes or bool(evaluations and len(evaluated) >= evaluations)

    while not enough():
        b = len(done) // batch
        gen = torch.Generator().manual_seed(seed * 1_000_003 + b)
        eps = []
        for _ in range(min(batch, episodes - len(done))):
            tokens = agent.controller.sample(gen)
            arch, cfg = tokens_of.decode(tokens)
            lat = float(explorer.latency[cfg.name]([arch])[0])
            fits = lat <= explorer.budget_ms
            explorer.tuned += 1
            explorer.pruned += not fits
            tuned = Tuned(str(arch), cfg.name if fits else None, lat)
            acc = None
            if fits:
                if str(arch) not in evaluated:
                    evaluated[str(arch)] = float(fitness(arch))
                acc = evaluated[str(arch)]
            r = reward(acc, tuned, explorer.budget_ms, a)
            eps.append((tokens, r))
            row = {"arch": str(arch), "config": cfg.name, "latency_ms": lat}
            done.append({**row, "fitness": acc, "reward": r})
            if enough():
                break
        agent.update(eps)
        if state_file is not None:
            state_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = state_file.with_suffix(".tmp")
            torch.save(
                {
                    "identity": identity,
                    "agent": agent.state_dict(),
                    "history": json.dumps(done),
                    "evaluated": json.dumps(evaluated),
                    "seconds": seconds + time.perf_counter() - t0,
                },
                tmp,
            )
            os.replace(tmp, state_file)
    feasible = [d for d in done if d["fitness"] is not None]
    best = max(feasible, key=lambda d: (d["reward"], -d["latency_ms"])) if feasible else None
    return {
        "best": best,
        "episodes": len(done),
        "evaluations": len(evaluated),
        "pruned_share": round(sum(d["fitness"] is None for d in done) / max(1, len(done)), 4),
        "history": done,
        "seconds": round(seconds + time.perf_counter() - t0, 1),
        "mean_reward_last": round(float(np.mean([d["reward"] for d in done[-batch:]])), 4)
        if done
        else math.nan,
    }


@dataclass
class PairResult:
    """A slow exploration's best pair (its hardware half as fast exploration tunes it)."""

    arch: str
    fitness: float
    evaluations: int
    pruned_share: float
    seconds: float
    # The best evaluated architectures, fittest first (arch, fitness): the device checks
    # these when the best one does not measure within budget.
    top: list[dict[str, Any]] = field(default_factory=list)
    evaluated: dict[str, float] = field(default_factory=dict)  # every architecture's fitness
    # (architecture, configuration) pairs rejected before evaluation; ``pruned_share``
    # counts architectures (made and dropped: no configuration fits).
    pair_pruned_share: float = 0.0


def evolve_pairs(
    space: SearchSpace,
    explorer: FastExplorer,
    fitness: Callable[[Arch], float],
    cfg: SearchConfig,
    out: str | Path | None = None,
    latency: Latency | None = None,
    a: float = 1.0,
) -> PairResult | None:
    """The constrained evolution over architectures, each with its best configuration
    (``latency``: search one fixed configuration's table instead, as architecture-only
    search does). The pruned share counts candidates made and dropped before evaluation.
    It ranks by accuracy within the budget, so the reward weight ``a`` has no part in it."""
    # The pairs counted so far are kept beside the search's state, so a resumed search
    # reports the share over everything it made.
    counts = Path(out) / "pairs.json" if out else None
    explorer.pairs.clear()
    if counts is not None and counts.exists():
        explorer.pairs.update({k: tuple(v) for k, v in json.loads(counts.read_text()).items()})

    def best_latency(archs: Sequence[Arch]) -> np.ndarray:
        lat = explorer.best_latency(archs)
        if counts is not None:
            counts.parent.mkdir(parents=True, exist_ok=True)
            tmp = counts.with_suffix(".tmp")
            tmp.write_text(json.dumps(explorer.pairs))
            os.replace(tmp, counts)
        return lat

    search = EvolutionSearch(space, latency or best_latency, fitness, cfg, out)
    res = search.run()
    made = res["evaluated"] + res["rejected"]
    pruned = round(res["rejected"] / made, 4) if made else 0.0
    pairs = pruned if latency is not None else explorer.pair_pruned_share()
    top = [{"arch": c["arch"], "fitness": c["fitness"]} for c in res["top"]]
    return PairResult(
        res["best"],
        res["fitness"],
        res["evaluated"],
        pruned,
        float(res["seconds"]),  # over every session of a resumed search
        top,
        dict(search.state.evaluated),
        pairs,
    )


# How many episodes the controller may spend per evaluation it is owed: pruned pairs and
# repeats cost no evaluation, and a policy that settles on few architectures must still stop.
EPISODES_PER_EVALUATION = 20


def reinforce_pairs(
    space: SearchSpace,
    explorer: FastExplorer,
    fitness: Callable[[Arch], float],
    cfg: SearchConfig,
    out: str | Path | None = None,
    latency: Latency | None = None,
    a: float = 0.8,
) -> PairResult | None:
    """The controller until it has evaluated as many architectures as the evolution plans
    to, in at most ``EPISODES_PER_EVALUATION`` episodes per evaluation; None when no
    episode found a pair within budget."""
    if latency is not None:
        raise UserError("the controller chooses the configuration: it takes no fixed table")
    n = cfg.planned_evaluations()
    episodes = EPISODES_PER_EVALUATION * n
    res = rl_search(space, explorer, fitness, episodes, out, seed=cfg.seed, a=a, evaluations=n)
    if res["best"] is None:
        return None
    best = res["best"]
    fit = {d["arch"]: d["fitness"] for d in res["history"] if d["fitness"] is not None}
    ranked = sorted(fit.items(), key=lambda kv: -kv[1])[:10]
    return PairResult(
        best["arch"],
        best["fitness"],
        res["evaluations"],
        res["pruned_share"],
        res["seconds"],
        [{"arch": a, "fitness": f} for a, f in ranked],
        fit,
        res["pruned_share"],  # each episode is one pair
    )


# The slow explorations, by the name ``--strategy`` gives them.
STRATEGIES: dict[str, Callable[..., PairResult | None]] = {
    "evolution": evolve_pairs,
    "rl": reinforce_pairs,
}
