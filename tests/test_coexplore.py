"""Co-exploration's core (hurricane.coexplore): fast exploration from latency tables, its
pruning inside the constrained evolution, the REINFORCE controller and its resume.

The tables are a real LUT (the tiny space profiled on ONNX Runtime) under three
configurations; two are scaled copies of it, standing in for the per-configuration tables a
configuration campaign or the accelerator model fills."""

from __future__ import annotations

import json
import random
import sqlite3
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

from hurricane.coexplore import (
    Controller,
    FastExplorer,
    HardwareConfig,
    JointTokens,
    Reinforce,
    reward,
    rl_search,
)
from hurricane.errors import UserError
from hurricane.latency import LatencyModel
from hurricane.search import EvolutionSearch, SearchConfig
from hurricane.space_file import load_space

TINY = str(Path(__file__).parent / "spaces" / "tiny.toml")
CONFIGS = [
    HardwareConfig("threads1", {"threads": 1}, {"cores": 1}),
    HardwareConfig("threads2", {"threads": 2}, {"cores": 2}),
    HardwareConfig("threads4", {"threads": 4}, {"cores": 4}),
]


@pytest.fixture
def tables(ort_lut):
    db, _, _ = ort_lut
    space = load_space(TINY)
    base = LatencyModel.from_db(space, db, "ort").predict
    scale = {"threads1": 1.0, "threads2": 0.6, "threads4": 0.4}
    return space, {n: (lambda archs, k=k: base(archs) * k) for n, k in scale.items()}


def test_fast_exploration_tunes_and_prunes_from_the_tables(tables) -> None:
    space, latency = tables
    archs = [space.parse_arch(a) for a in ("skip-skip-skip", "mb_k3_e3-mb_k3_e3-mb_k3_e3")]
    one = latency["threads1"](archs)
    assert one[1] > one[0]
    # Between the two on two threads: the small one fits there, the big one nowhere.
    budget = float(0.6 * (one[0] * one[1]) ** 0.5)
    explorer = FastExplorer(CONFIGS, latency, budget, limits={"cores": 2})
    assert [c.name for c in explorer.configs] == ["threads1", "threads2"]  # four is over
    small, big = explorer.tune(archs)
    assert small.config == "threads2" and small.latency_ms == pytest.approx(one[0] * 0.6)
    assert big.config is None and big.latency_ms == pytest.approx(one[1] * 0.6)
    assert explorer.pruned == 1 and explorer.pruned_share() == 0.5
    # Pairs: threads4 is over the limits for both; the big one is over budget on the other
    # two; the small one on threads1 exactly when its one-thread figure is over budget.
    small_over = int(one[0] > budget)
    assert explorer.pairs == {str(archs[0]): (1 + small_over, 3), str(archs[1]): (3, 3)}
    assert explorer.pair_pruned_share() == round((4 + small_over) / 6, 4)
    assert reward(0.9, big, budget) == -1.0 and reward(0.9, small, budget) > 0.7
    with pytest.raises(UserError, match="no hardware configuration is within the resource"):
        FastExplorer(CONFIGS, latency, budget, limits={"cores": 0})
    with pytest.raises(UserError, match="no latency table for configuration"):
        FastExplorer(CONFIGS, {"threads1": latency["threads1"]}, budget)


def test_no_pruned_pair_is_ever_evaluated(tables) -> None:
    space, latency = tables
    rng = random.Random(0)
    best = latency["threads2"]([space.sample_arch(rng) for _ in range(50)])
    budget = float(np.percentile(best, 30))  # most pairs fit no configuration
    explorer = FastExplorer(CONFIGS[:2], latency, budget)
    evaluated: list[str] = []

    def fitness(arch) -> float:
        evaluated.append(str(arch))
        return len(str(arch)) / 100  # any deterministic score: pruning is what is checked

    cfg = SearchConfig(budget_ms=budget, population=8, generations=3, mutations=4, crossovers=4)
    res = EvolutionSearch(space, explorer.best_latency, fitness, cfg).run()
    assert evaluated and res["rejected"] > 0  # some candidates were made and pruned
    tuned = explorer.tune([space.parse_arch(a) for a in evaluated])
    assert all(t.feasible for t in tuned), [t for t in tuned if not t.feasible]


def test_the_controller_moves_toward_a_rewarded_token() -> None:
    controller = Controller([3, 4], seed=0)
    agent = Reinforce(controller, lr=0.05)
    before = controller.first_probs()[2].item()
    gen = torch.Generator().manual_seed(0)
    for _ in range(40):
        eps = [(t, 1.0 if t[0] == 2 else 0.0) for t in (controller.sample(gen) for _ in range(8))]
        agent.update(eps)
    after = controller.first_probs()[2].item()
    assert before < 0.5 and after > 0.8, (before, after)


def test_rl_search_prunes_without_evaluating_and_resumes(tables, tmp_path: Path) -> None:
    space, latency = tables
    arch_lat = latency["threads1"]([space.default_arch()])[0]
    explorer = FastExplorer(CONFIGS[:2], latency, float(arch_lat))
    budget = explorer.budget_ms
    calls: list[str] = []

    def fitness(arch) -> float:
        assert min(latency[c.name]([arch])[0] for c in CONFIGS[:2]) <= budget  # never pruned
        calls.append(str(arch))
        return (sum(map(ord, str(arch))) % 97) / 97

    whole = rl_search(space, explorer, fitness, episodes=16, batch=4, seed=3)
    assert whole["episodes"] == 16 and 0 < whole["pruned_share"] < 1
    assert whole["evaluations"] == len(set(calls)) == len(calls)  # each arch scored once
    # Interrupted after two batches, then resumed: the same episodes, in order.
    stop = {"n": 0}

    def dies(arch) -> float:
        stop["n"] += 1
        if stop["n"] > len({d["arch"] for d in whole["history"][:8] if d["fitness"] is not None}):
            raise KeyboardInterrupt
        return fitness(arch)

    out = tmp_path / "rl"
    with pytest.raises(KeyboardInterrupt):
        rl_search(space, FastExplorer(CONFIGS[:2], latency, budget), dies, 16, out, 4, seed=3)
    assert (out / "rl_state.pt").exists()
    again = FastExplorer(CONFIGS[:2], latency, budget)
    resumed = rl_search(space, again, fitness, 16, out, 4, seed=3)
    assert resumed["history"] == whole["history"] and resumed["best"] == whole["best"]
    with pytest.raises(UserError, match="other settings"):
        rl_search(space, explorer, fitness, 16, out, 4, seed=4)


def test_joint_tokens_name_both_halves() -> None:
    space = load_space(TINY)
    tokens = JointTokens(space, CONFIGS)
    assert tokens.choices == [8, 8, 8, 3]  # four ops x two widths per layer, three configs
    arch, cfg = tokens.decode([0, 1, 7, 2])
    assert str(arch).startswith("mb_k3_e3") and cfg.name == "threads4"
    space.validate_arch(arch)


@pytest.fixture(scope="module")
def mini_supernet(tmp_path_factory) -> Path:
    from hurricane.train import TrainConfig, train

    out = tmp_path_factory.mktemp("mini") / "sup"
    mini = str(Path(__file__).parent / "spaces" / "mini.toml")
    train(
        TrainConfig(
            space=mini,
            out=str(out),
            steps=3,
            batch_size=32,
            train_limit=256,
            eval_paths=0,
            progress=False,
            threads=1,
        )
    )
    return out


@pytest.mark.parametrize("strategy", ["evolution", "rl"])
def test_coexplore_cli_names_both_halves(mini_supernet, tmp_path: Path, strategy, capsys) -> None:
    """Real zigzag tables for every design within the limits (8x8 is in, 8x16 out), fast
    exploration, then the slow exploration's best pair, written and printed."""
    from pipelines.cli import main

    spaces = Path(__file__).parent / "spaces"
    out, db = tmp_path / "co", tmp_path / "lut.sqlite"
    args = ["coexplore", "--space", str(spaces / "mini.toml")]
    args += ["--hw-space", str(spaces / "accel-two.toml"), "--supernet", str(mini_supernet)]
    args += ["--db", str(db), "--out", str(out), "--strategy", strategy, "--no-progress"]
    args += [
        "--population",
        "4",
        "--generations",
        "2",
        "--eval-limit",
        "100",
        "--cost-workers",
        "1",
    ]
    final = ["--final-steps", "5"] if strategy == "evolution" else []
    assert main([*args, *final, "--latency-ms", "0.2"]) == 0
    res = json.loads((out / "result.json").read_text())
    assert res["hardware"]["pe_rows"] * res["hardware"]["pe_cols"] <= 64
    assert res["hardware"]["name"].startswith("pe") and res["configurations"] == 3
    assert 0 < res["latency_ms"] <= 0.2 and res["energy_mj"] > 0
    assert 0 <= res["pruned_share"] <= 1 and res["evaluations"] >= 1
    assert res["arch"] in capsys.readouterr().out
    design = tomllib.loads((out / "hardware.toml").read_text())
    assert design["name"] == res["hardware"]["name"] and design["kind"] == "accelerator"
    assert design["pe_rows"] == res["hardware"]["pe_rows"]
    assert "memories" in (out / "accelerator.yaml").read_text()
    assert "spatial_mapping_hint" in (out / "mapping.yaml").read_text()
    # The fronts: each evaluated architecture on its tuned design and on the default one.
    pairs = res["pairs"]
    assert len(pairs) == res["evaluations"] and res["default"] == "pe8x8-gb64k-rf16-bw32-c500-i8"
    for p in pairs:
        assert p["ms"] <= p["own_ms"] + 1e-12 and p["own_energy_mj"] > 0 and p["energy_mj"] > 0
    assert Path(res["fronts"]).name == "fronts.png" and Path(res["fronts"]).stat().st_size > 1000
    if final:  # the accelerator's bundle: the ONNX copy, the design's files, modelled figures
        from pipelines.handoff import BundleError, check_files, read_manifest, verify_bundle

        bundle = Path(res["final"]["bundle"])
        m = read_manifest(bundle)
        assert check_files(bundle) == []
        assert {"model.onnx", "accelerator.yaml", "mapping.yaml"} <= set(m["files"])
        assert m["device"] == {
            "name": res["hardware"]["config"],
            "kind": "accelerator",
            "modelled": True,
        }
        assert m["latency"]["modelled_ms"] == res["latency_ms"] and m["latency"]["energy_mj"] > 0
        assert m["latency"]["measured_ms"] is None and m["verification"]["onnx"]["passed"]
        assert m["hardware"]["knobs"]["pe_rows"] == res["hardware"]["pe_rows"]
        assert verify_bundle(bundle)["ok"] is m["accepted"] is True
        with pytest.raises(BundleError, match="no device to time it on"):
            verify_bundle(bundle, "local-onnxruntime")
    with sqlite3.connect(db) as conn:  # every (instance, design) costed once, and kept
        assert conn.execute("SELECT COUNT(*) FROM accel_entries").fetchone()[0] >= 3 * 5


def test_coexplore_refuses_a_hardware_space_it_does_not_know(tmp_path: Path, capsys) -> None:
    from pipelines.cli import main

    hw = tmp_path / "threads.toml"
    hw.write_text('name = "farm"\nkind = "fpga-farm"\nthreads = [1, 2]\n')
    args = ["coexplore", "--space", TINY, "--hw-space", str(hw), "--supernet", str(tmp_path)]
    assert main([*args, "--latency-ms", "1"]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "kind: 'fpga-farm': expected 'accelerator'" in err


def test_the_tuning_rule_picks_among_the_configurations_that_fit() -> None:
    """Three designs: the fastest uses the most energy and resources. Within a budget the
    two fastest meet, each rule keeps its own; the pruning does not depend on the rule."""
    space = load_space(TINY)
    arch = [space.default_arch()]
    scale = {"big": (1.0, 3.0, 4), "mid": (2.0, 2.0, 2), "small": (3.0, 1.0, 1)}
    configs = [HardwareConfig(n, {}, {"pes": p}) for n, (_, _, p) in scale.items()]
    latency = {n: (lambda a, k=k: np.full(len(a), k)) for n, (k, _, _) in scale.items()}
    energy = {n: (lambda a, k=k: np.full(len(a), k)) for n, (_, k, _) in scale.items()}
    picked = {}
    for rule in ("fastest", "least-energy", "fewest-resources"):
        explorer = FastExplorer(configs, latency, 2.5, energy=energy, rule=rule)
        picked[rule] = explorer.tune(arch)[0].config
        assert (
            not FastExplorer(configs, latency, 0.5, energy=energy, rule=rule).tune(arch)[0].feasible
        )
    assert picked == {"fastest": "big", "least-energy": "mid", "fewest-resources": "mid"}
    with pytest.raises(UserError, match="least-energy needs energy tables"):
        FastExplorer(configs, latency, 2.5, rule="least-energy").tune(arch)
    with pytest.raises(UserError, match="tuning rule 'cheapest'"):
        FastExplorer(configs, latency, 2.5, rule="cheapest")


def test_a_resumed_evolution_reports_the_same_pruned_pairs(tables, tmp_path: Path) -> None:
    from hurricane.coexplore import evolve_pairs

    space, latency = tables
    rng = random.Random(1)
    budget = float(
        np.percentile(latency["threads2"]([space.sample_arch(rng) for _ in range(50)]), 40)
    )
    cfg = SearchConfig(budget_ms=budget, population=6, generations=2, mutations=3, crossovers=3)

    def fitness(arch) -> float:
        return len(str(arch)) / 100

    first = evolve_pairs(space, FastExplorer(CONFIGS, latency, budget), fitness, cfg, tmp_path)
    again = evolve_pairs(space, FastExplorer(CONFIGS, latency, budget), fitness, cfg, tmp_path)
    assert 0 < first.pair_pruned_share < 1 and first.pair_pruned_share >= first.pruned_share
    assert (again.arch, again.pair_pruned_share, again.seconds) == (
        first.arch,
        first.pair_pruned_share,
        first.seconds,
    )


def test_the_controller_gets_as_many_evaluations_as_the_evolution(tables) -> None:
    from hurricane.coexplore import evolve_pairs, reinforce_pairs

    space, latency = tables
    rng = random.Random(2)
    budget = float(
        np.percentile(latency["threads2"]([space.sample_arch(rng) for _ in range(50)]), 50)
    )
    cfg = SearchConfig(budget_ms=budget, population=6, generations=2, mutations=3, crossovers=3)
    assert cfg.planned_evaluations() == 12
    calls: list[str] = []

    def fitness(arch) -> float:
        calls.append(str(arch))
        return len(str(arch)) / 100

    evo = evolve_pairs(space, FastExplorer(CONFIGS, latency, budget), fitness, cfg)
    assert evo is not None and evo.evaluations == 12
    calls.clear()
    rl = reinforce_pairs(space, FastExplorer(CONFIGS, latency, budget), fitness, cfg)
    # Pruned pairs and repeats are free, so it runs more episodes than evaluations.
    assert rl is not None and rl.evaluations == len(calls) == 12
