"""Stage one (space reduction) and stage two (constrained evolution) on synthetic tables."""

from __future__ import annotations

import itertools
import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from hurricane.arch import Arch
from hurricane.costs import instance_cost
from hurricane.errors import UserError
from hurricane.latency import LutPredictor, MissingEntries
from hurricane.reduce import reduce_space, score_ops
from hurricane.search import BudgetTooLow, EvolutionSearch, SearchConfig, random_search
from hurricane.space_file import load_space, parse_space, space_to_toml

TINY = Path(__file__).parent / "spaces" / "tiny.toml"


def table_for(space, slow: dict[str, float] | None = None) -> dict[str, float]:
    """A made-up device: latency from FLOPs and bytes, some ops slowed down by a factor."""
    slow = slow or {}
    out = {}
    insts = [*space.fixed_instances(), *space.op_instances()]
    for inst in insts:
        flops, _, moved = instance_cost(inst)
        out[inst.key] = (0.002 + flops / 5e8 + moved / 1e9) * slow.get(inst.op, 1.0)
    return out


def all_archs(space):
    per_layer = [[(op, w) for op in layer.ops for w in layer.widths] for layer in space.layers]
    for combo in itertools.product(*per_layer):
        yield Arch(tuple(o for o, _ in combo), tuple(w for _, w in combo))


def test_fastest_is_the_true_minimum() -> None:
    space = load_space(TINY)
    lut = LutPredictor(space, table_for(space))
    archs = list(all_archs(space))
    lat = lut.predict(archs)
    ms, arch = lut.fastest()
    assert ms == pytest.approx(lat.min()) and lut.predict(arch) == pytest.approx(ms)
    fixed = Arch.of(["mb_k3_e3", "ds_k3", "mb_k3_e3"])
    ms2, arch2 = lut.fastest(layers=[1], fixed=fixed)
    sub = [
        a
        for a in archs
        if a.ops[0] == "mb_k3_e3"
        and a.ops[2] == "mb_k3_e3"
        and a.widths[0] == 1.0
        and a.widths[2] == 1.0
    ]
    assert ms2 == pytest.approx(lut.predict(sub).min())
    assert (arch2.ops[0], arch2.ops[2]) == ("mb_k3_e3", "mb_k3_e3")


def test_reduction_keeps_the_front_and_differs_per_device(tmp_path) -> None:
    space = load_space("demo")
    fast_dw = table_for(space)
    # A runtime that runs large depthwise kernels badly (as XNNPACK does 7x7 here).
    slow_dw = table_for(
        space,
        {op: 3.0 for op in ("mb_k5_e3", "mb_k5_e6", "mb_k7_e3", "mb_k7_e6", "ds_k5", "ds_k7")},
    )
    a, scores = reduce_space(space, fast_dw, k=3, name="a", skip="all")
    b, _ = reduce_space(space, slow_dw, k=3, name="b", skip="all")
    assert a.layers != b.layers
    for layer in a.layers:
        assert len(layer.ops) == 4 and "skip" in layer.ops  # top 3 + skip
    for layer in b.layers:
        assert not {"mb_k7_e6", "mb_k7_e3", "ds_k7"} & set(layer.ops)
    # Nothing kept is beaten on both latency and multiply-adds by something dropped.
    for row in scores:
        kept = [s for s in row if s.kept and s.op != "skip"]
        dropped = [s for s in row if not s.kept]
        for s in kept:
            assert not any(d.latency_ms < s.latency_ms and d.mflops > s.mflops for d in dropped)
    # The reduced space is a space file like any other.
    text = space_to_toml(a, header="reduced for a test")
    again = parse_space(text, "reduced.toml")
    assert again.layers == a.layers and again.structure_hash() == a.structure_hash()
    # Device rules as patterns.
    c, _ = reduce_space(space, fast_dw, k=2, exclude=["*_se", "fmb_*"])
    assert all(
        not op.endswith("_se") and not op.startswith("fmb") for lay in c.layers for op in lay.ops
    )
    with pytest.raises(UserError, match="layer 0: every candidate is excluded"):
        reduce_space(space, fast_dw, exclude=["*"])
    with pytest.raises(UserError, match="unknown reduction rule"):
        reduce_space(space, fast_dw, rule="best")
    fastest = score_ops(space, fast_dw, "fastest")[0]
    assert max(fastest, key=lambda s: s.score).op == "skip"


def test_skip_identity_keeps_skip_only_where_shapes_match() -> None:
    space = load_space("demo")
    table = table_for(space)
    everywhere, _ = reduce_space(space, table, k=3, skip="all")
    ident, scores = reduce_space(space, table, k=3)  # the default
    for i, (a, b) in enumerate(zip(everywhere.layers, ident.layers)):
        layer, cin = space.layers[i], max(space.in_channel_choices(i))
        same = layer.stride == 1 and cin == max(layer.channels(space.channel_divisor))
        assert ("skip" in b.ops) == same, i
        assert [op for op in a.ops if op != "skip"] == [op for op in b.ops if op != "skip"]
    # demo: 16->24, 24->32 s2, 32->32, 32->64 s2, 64->64, 64->96
    assert [("skip" in lay.ops) for lay in ident.layers] == [False, False, True, False, True, False]
    why = {s.why for row in scores for s in row if s.op == "skip" and not s.kept}
    assert why == {"skip=identity: this layer changes shape"}
    with pytest.raises(UserError, match="skip must be one of all, identity"):
        reduce_space(space, table, skip="some")


def test_reduction_names_missing_entries() -> None:
    space = load_space("demo")
    table = table_for(space)
    gone = next(k for k in table if k.startswith(space.layers[2].ops[1] + ":"))
    del table[gone]
    with pytest.raises(MissingEntries, match="hurricane profile"):
        reduce_space(space, table)


def flops_fitness(space):
    """Bigger networks are 'more accurate': a stand-in with a known optimum."""

    def fitness(arch: Arch) -> float:
        return sum(instance_cost(i).macs for i in space.arch_instances(arch))

    return fitness


def test_no_candidate_over_budget_is_ever_evaluated(tmp_path) -> None:
    space = load_space("demo")
    lut = LutPredictor(space, table_for(space))
    lo, _ = lut.fastest()
    hi = float(lut.predict([Arch.of([lay.ops[-2] for lay in space.layers])])[0])
    budget = lo + 0.4 * (hi - lo)
    seen, archs = [], []

    def fitness(arch: Arch) -> float:
        seen.append(float(lut.predict(arch)))
        archs.append(str(arch))
        return flops_fitness(space)(arch)

    cfg = SearchConfig(
        budget_ms=budget, population=12, generations=4, parents=4, mutations=6, crossovers=6, seed=1
    )
    res = EvolutionSearch(
        space,
        lut.predict,
        fitness,
        cfg,
        tmp_path / "s",
        min_latency=lut.fastest,
        log=lambda m: None,
    ).run()
    assert seen and max(seen) <= budget and res["latency_ms"] <= budget
    assert res["rejected"] > 0  # the budget did bite
    # Every evaluation is counted, and no architecture is evaluated twice.
    assert len(archs) == res["evaluated"] == len(set(archs))
    history = (tmp_path / "s" / "history.jsonl").read_text().splitlines()
    assert len(history) == 4
    widths = {w for a in res["top"] for w in space.parse_arch(a["arch"]).widths}
    assert len(widths) > 1  # widths are searched too
    rnd = random_search(space, lut.predict, fitness, cfg, out=tmp_path / "r")
    assert rnd["latency_ms"] <= budget and rnd["evaluated"] == 48


def test_budget_band_keeps_candidates_near_the_budget(tmp_path) -> None:
    space = load_space("demo")
    lut = LutPredictor(space, table_for(space))
    rng = random.Random(0)
    lat = lut.predict([space.sample_arch(rng) for _ in range(500)])
    budget = float(np.percentile(lat, 50))
    assert np.mean(lat < 0.95 * budget) > 0.1  # the band excludes something
    seen: list[float] = []

    def smallest_wins(arch: Arch) -> float:  # a supernet's bias, made extreme
        seen.append(float(lut.predict(arch)))
        return -seen[-1]

    cfg = SearchConfig(
        budget_ms=budget,
        population=12,
        generations=3,
        parents=4,
        mutations=6,
        crossovers=6,
        seed=1,
        min_fraction=0.95,
    )
    logs: list[str] = []
    res = EvolutionSearch(
        space, lut.predict, smallest_wins, cfg, tmp_path / "band", log=logs.append
    ).run()
    assert seen and min(seen) >= 0.95 * budget and max(seen) <= budget
    assert res["below_band"] > 0 and not res["band_dropped"] and "under the band" in logs[-1]
    free = EvolutionSearch(
        space, lut.predict, smallest_wins, replace(cfg, min_fraction=0.0), log=lambda m: None
    ).run()
    assert free["latency_ms"] < 0.95 * budget  # without the band the bias wins
    # A band nothing can reach (every architecture is far under the budget) is dropped.
    wide = replace(cfg, budget_ms=100 * float(lat.max()), min_fraction=0.99, generations=1)
    res = EvolutionSearch(space, lut.predict, smallest_wins, wide, log=logs.append).run()
    assert res["band_dropped"] and res["evaluated"] > 0 and "searching everything" in " ".join(logs)


def test_budget_below_the_fastest_says_the_minimum() -> None:
    space = load_space("demo")
    lut = LutPredictor(space, table_for(space))
    lo, arch = lut.fastest()
    cfg = SearchConfig(budget_ms=lo * 0.9, population=4, generations=1)
    with pytest.raises(BudgetTooLow, match=f"fastest in this space is {lo:.4g} ms"):
        EvolutionSearch(space, lut.predict, lambda a: 0.0, cfg, min_latency=lut.fastest).run()


class Killed(Exception):
    pass


def test_search_resumes_after_a_kill_with_the_same_result(tmp_path) -> None:
    space = load_space("demo")
    lut = LutPredictor(space, table_for(space))
    lo, _ = lut.fastest()
    cfg = SearchConfig(
        budget_ms=lo * 3,
        population=8,
        generations=5,
        parents=3,
        mutations=4,
        crossovers=4,
        seed=3,
        layers=[3, 4, 5],
        fixed=str(space.default_arch()),
    )
    fit = flops_fitness(space)
    whole = EvolutionSearch(space, lut.predict, fit, cfg, tmp_path / "a", log=lambda m: None).run()
    calls = []

    def dies(arch: Arch) -> float:
        calls.append(arch)
        if len(calls) == 20:  # in the middle of the third generation
            raise Killed
        return fit(arch)

    with pytest.raises(Killed):
        EvolutionSearch(space, lut.predict, dies, cfg, tmp_path / "b", log=lambda m: None).run()
    resumed = EvolutionSearch(space, lut.predict, fit, cfg, tmp_path / "b", log=lambda m: None)
    assert resumed._resume() is None and resumed.state.generation == 2
    again = EvolutionSearch(space, lut.predict, fit, cfg, tmp_path / "b", log=lambda m: None).run()
    assert again["best"] == whole["best"] and again["evaluated"] == whole["evaluated"]
    assert (tmp_path / "a" / "history.jsonl").read_text() == (
        tmp_path / "b" / "history.jsonl"
    ).read_text()
    # Only layers 3-5 were searched; the others are the fixed architecture's.
    default = space.default_arch()
    for line in (tmp_path / "a" / "history.jsonl").read_text().splitlines():
        for cand in __import__("json").loads(line)["population"]:
            a = space.parse_arch(cand["arch"])
            assert a.ops[:3] == default.ops[:3] and a.widths[:3] == default.widths[:3]
    # Other settings in the same folder: refused, not mixed.
    other = SearchConfig(**{**cfg.identity(), "budget_ms": lo * 2})
    with pytest.raises(UserError, match="other settings"):
        EvolutionSearch(space, lut.predict, fit, other, tmp_path / "a").run()
    assert np.isfinite(whole["fitness"])
