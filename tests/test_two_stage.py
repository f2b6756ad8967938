"""Two-stage schedule, single-stage SPOS and in-place distillation on real Fashion-MNIST
(tiny space, a few steps: the schedule and the bookkeeping, not the accuracy)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from hurricane.arch import Arch
from hurricane.latency import LutPredictor
from hurricane.search import SearchConfig
from hurricane.space_file import load_space
from hurricane.supernet import Supernet
from hurricane.train import TrainConfig, Trainer, train
from hurricane.two_stage import single_stage, two_stage
from tests.test_search import table_for

TINY = str(Path(__file__).parent / "spaces" / "tiny.toml")


def base_cfg(out: Path, **kw) -> TrainConfig:
    return TrainConfig(
        space=TINY,
        out=str(out),
        batch_size=32,
        train_limit=512,
        eval_limit=256,
        eval_paths=0,
        bn_batches=2,
        progress=False,
        threads=1,
        **kw,
    )


def test_two_stage_schedule(tmp_path: Path) -> None:
    space = load_space(TINY)
    lut = LutPredictor(space, table_for(space))
    lo, _ = lut.fastest()
    search = SearchConfig(
        budget_ms=lo * 2.5,
        population=4,
        generations=2,
        parents=2,
        mutations=2,
        crossovers=2,
        seed=0,
    )
    kw = dict(
        split=1,
        latency=lut.predict,
        search=search,
        out=tmp_path / "two",
        steps_a=6,
        steps_b=4,
        min_latency=lut.fastest,
    )
    res = two_stage(base_cfg(tmp_path / "x"), **kw)
    final = space.parse_arch(res["arch"])
    a_best = space.parse_arch(res["stage_a"]["best"])
    base = space.default_arch()
    # Stage A searched layers 1-2 with layer 0 fixed; stage B searched layer 0 only.
    for line in (tmp_path / "two" / "search_a" / "history.jsonl").read_text().splitlines():
        for cand in json.loads(line)["population"]:
            a = space.parse_arch(cand["arch"])
            assert (a.ops[0], a.widths[0]) == (base.ops[0], base.widths[0])
    assert final.ops[1:] == a_best.ops[1:] and final.widths[1:] == a_best.widths[1:]
    assert res["latency_ms"] <= search.budget_ms and lut.predict(final) <= search.budget_ms
    assert res["supernet_steps"] == 10
    a_sum = json.loads((tmp_path / "two" / "stage_a" / "summary.json").read_text())
    b_sum = json.loads((tmp_path / "two" / "stage_b" / "summary.json").read_text())
    assert a_sum["config"]["sample_layers"] == [1, 2] and b_sum["config"]["sample_layers"] == [0]
    assert b_sum["config"]["init"].endswith("stage_a/supernet.pt")
    # A second call finds everything done: same answer, no extra steps.
    again = two_stage(base_cfg(tmp_path / "x"), **kw)
    assert again["arch"] == res["arch"] and again["supernet_steps"] == 10
    one = single_stage(base_cfg(tmp_path / "y", steps=5), lut.predict, search, tmp_path / "one")
    assert one["supernet_steps"] == 5 and one["latency_ms"] <= search.budget_ms


def test_in_place_distillation(tmp_path: Path) -> None:
    space = load_space(TINY)
    net = Supernet(space)
    big = net.largest()
    assert big.widths == (1.0, 1.0, 1.0) and big.ops == ("mb_k3_e3",) * 3
    tr = Trainer(base_cfg(tmp_path / "d", steps=3, distill=True))
    assert tr.teacher == big
    summary = train(base_cfg(tmp_path / "d", steps=3, distill=True))
    plain = train(base_cfg(tmp_path / "p", steps=3))
    assert summary["steps"] == 3 and summary["state_sha256"] != plain["state_sha256"]
    # The teacher's own blocks learn too (they get the label loss every step).
    init = Supernet(space)
    torch.manual_seed(0)
    trained = torch.load(tmp_path / "d" / "supernet.pt", weights_only=True)["model"]
    key = next(k for k in trained if k.startswith("choices.0.0.") and k.endswith("weight"))
    assert not torch.equal(trained[key], init.state_dict()[key])


def test_stage_budget_too_low_names_the_stage_minimum(tmp_path: Path) -> None:
    """Feasible for the space but not with stage A's fixed layers: the error gives what the
    stage can reach, and the pipelines' choice of fixed layers keeps the stage feasible."""
    import pytest

    from hurricane.latency import LatencyModel
    from hurricane.search import BudgetTooLow
    from hurricane.stage_a import stage_a_base

    space = load_space(TINY)
    lut = LutPredictor(space, table_for(space))
    lo, _ = lut.fastest()
    stage_lo, _ = lut.fastest([2], space.default_arch())
    assert f"{stage_lo:.4g}" != f"{lo:.4g}"
    budget = (lo + stage_lo) / 2
    search = SearchConfig(
        budget_ms=budget, population=4, generations=1, parents=2, mutations=2, crossovers=2, seed=0
    )
    kw = dict(
        split=2, latency=lut.predict, search=search, steps_a=2, steps_b=2, min_latency=lut.fastest
    )
    with pytest.raises(BudgetTooLow, match=f"fastest in this space is {stage_lo:.4g} ms"):
        two_stage(base_cfg(tmp_path / "x"), out=tmp_path / "two", **kw)
    fixed = stage_a_base(LatencyModel(lut), 2, budget)
    res = two_stage(base_cfg(tmp_path / "y"), out=tmp_path / "ok", fixed=fixed, **kw)
    assert res["latency_ms"] <= budget


def test_stage_a_base_steps_down_to_fit_the_budget() -> None:
    """Typical when the typical network fits; under a tighter budget the early layers step
    down (not straight to the fastest) until the typical later layers fit."""
    from hurricane.latency import LatencyModel
    from hurricane.stage_a import stage_a_base

    space = load_space("demo")
    model = LatencyModel(LutPredictor(space, table_for(space)))
    typical = model.lut.typical()
    assert stage_a_base(model, 3, float(model.predict(typical)) * 1.01) == typical
    lo, fastest = model.fastest()
    early_fast = Arch(fastest.ops[:3] + typical.ops[3:], fastest.widths[:3] + typical.widths[3:])
    budget = (float(model.predict(typical)) + float(model.predict(early_fast))) / 2
    base = stage_a_base(model, 3, budget)
    assert base != typical and base != early_fast
    assert base.ops[3:] == typical.ops[3:] and base.widths[3:] == typical.widths[3:]
    assert model.predict(base) <= budget
    # Below every step: the old rule (typical if stage A stays feasible, else the fastest).
    assert stage_a_base(model, 3, lo * 1.01) == fastest
