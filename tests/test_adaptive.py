"""GoldenNets: depth variants, per-depth batch-norm statistics, the distillation loss, the
sandwich schedule and resume, on real Fashion-MNIST."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from hurricane.adaptive import (
    AdaptiveNet,
    DepthBN,
    DepthError,
    load_adaptive,
    parse_depths,
    stages,
    variants,
)
from hurricane.arch import Arch
from hurricane.final import train_final
from hurricane.space_file import load_space
from hurricane.subnet import Subnet
from hurricane.train import TrainConfig, Trainer, distill_loss

TINY = str(Path(__file__).parent / "spaces" / "tiny.toml")
DEEP = str(Path(__file__).parent / "spaces" / "deep.toml")


def deep_arch(space, ops=None) -> Arch:
    ops = ops or ["mb_k3_e3", "ds_k3", "mb_k3_e3", "ds_k3", "mb_k3_e3", "ds_k3", "mb_k3_e3"]
    return Arch(tuple(ops), tuple(1.0 for _ in ops))


def test_variants_drop_trailing_shape_keeping_blocks() -> None:
    space = load_space(DEEP)
    assert stages(space) == [[0, 1, 2], [3, 4, 5], [6]]
    arch = deep_arch(space)
    found = variants(space, arch)
    names = [v.name for v in found]
    # Two stages may drop one or two blocks each: 3 x 3 combinations, deepest first.
    assert names[0] == "full" and len(names) == 9
    assert [v.blocks for v in found] == sorted((v.blocks for v in found), reverse=True)
    two = {v.name: v for v in found}["s1-2+s2-1"]
    assert two.dropped == (1, 2, 5)
    assert [two.arch.ops[i] for i in (1, 2, 5)] == ["skip"] * 3
    assert two.arch.ops[0] == arch.ops[0] and two.arch.widths == arch.widths
    # A number limits the blocks per stage; names pick variants.
    assert [v.name for v in variants(space, arch, 1)] == ["full", "s1-1", "s2-1", "s1-1+s2-1"]
    assert [v.name for v in variants(space, arch, ["s2-2"])] == ["full", "s2-2"]
    assert parse_depths("s1-1, s2-1") == ["s1-1", "s2-1"] and parse_depths("1") == 1


def test_a_narrower_width_or_a_skip_is_not_dropped() -> None:
    space = load_space(DEEP)
    arch = deep_arch(space)
    # Layer 2 narrower than layer 1: it changes the shape, and layer 1 is then not trailing.
    narrow = Arch(arch.ops, (1.0, 1.0, 0.5, 1.0, 1.0, 1.0, 1.0))
    assert {v.name for v in variants(space, narrow, 2)} == {"full", "s2-1", "s2-2"}
    skipped = Arch(("mb_k3_e3", "ds_k3", "skip", *arch.ops[3:]), arch.widths)
    assert "s1-1" in {v.name for v in variants(space, skipped)}
    assert {v.dropped for v in variants(space, skipped) if v.name == "s1-1"} == {(1,)}


def test_bad_depths_name_the_stage_and_what_it_can_drop() -> None:
    space = load_space(DEEP)
    arch = deep_arch(space)
    with pytest.raises(DepthError) as err:
        variants(space, arch, ["s1-3"])
    msg = str(err.value)
    assert "stage 1" in msg and "can drop 2 block(s)" in msg and "layer 1 (ds_k3)" in msg
    assert "\n" not in msg
    with pytest.raises(DepthError, match=r"stage 3 .*can drop no block \(layer 6 changes"):
        variants(space, arch, ["s3-1"])
    with pytest.raises(DepthError, match="has 3 stages, not 5"):
        variants(space, arch, ["s5-1"])
    with pytest.raises(DepthError, match="expected 'full' or stages to drop"):
        variants(space, arch, ["stage1"])
    tiny = load_space(TINY)
    flat = Arch(("mb_k3_e3", "skip", "ds_k3"), (1.0, 1.0, 1.0))
    with pytest.raises(DepthError, match="has no block to drop"):
        variants(tiny, flat)


def _golden(space, arch, **kw) -> AdaptiveNet:
    torch.manual_seed(0)
    return AdaptiveNet(space, Subnet(space, arch), variants(space, arch, 1), **kw)


def test_each_depth_keeps_its_own_statistics() -> None:
    space = load_space(DEEP)
    arch = deep_arch(space)
    net = _golden(space, arch).train()
    bns = [m for m in net.modules() if isinstance(m, DepthBN)]
    assert bns and all(len(m.bns) == 4 for m in bns)
    # Affine parameters are one set, shared: the same Parameter in every depth.
    assert all(m.bns[0].weight is m.bns[3].weight for m in bns)
    before = [[b.running_mean.clone() for b in m.bns] for m in bns]
    shallow = net.variants[3]
    with torch.no_grad():
        net(torch.randn(8, 1, 28, 28) * 3 + 1, shallow.arch)
    last = bns[-1]  # the head's BN: after every dropped block
    changed = [not torch.equal(before[-1][k], last.bns[k].running_mean) for k in range(4)]
    assert changed == [False, False, False, True]
    # The extracted variant carries that depth's statistics, and runs as the GoldenNet does.
    net.eval()
    sub = net.extract(shallow.arch).eval()
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(sub(x), net(x, shallow.arch), atol=1e-5)
        assert not torch.allclose(net(x, net.variants[0].arch), net(x, shallow.arch))
    assert sum(1 for _ in sub.blocks[5].parameters()) == 0  # the dropped block is a skip
    # One shared set without adaptive BN; per-depth affine parameters on request.
    assert all(
        len(m.bns) == 1
        for m in _golden(space, arch, adaptive_bn=False).modules()
        if isinstance(m, DepthBN)
    )
    own = [
        m for m in _golden(space, arch, per_depth_affine=True).modules() if isinstance(m, DepthBN)
    ]
    assert own[0].bns[0].weight is not own[0].bns[1].weight


def test_distill_loss_mixes_kl_and_cross_entropy() -> None:
    torch.manual_seed(0)
    logits, teacher = torch.randn(16, 10), torch.randn(16, 10)
    y = torch.randint(0, 10, (16,))
    t = 2.0
    soft = F.softmax(teacher / t, 1)
    ce = F.cross_entropy(logits, y, label_smoothing=0.1)
    kl = F.kl_div(F.log_softmax(logits / t, 1), soft, reduction="batchmean")
    got = distill_loss(logits, y, soft, 0.3, t, 0.1)
    assert torch.allclose(got, 0.3 * t * t * kl + 0.7 * ce)
    assert torch.allclose(distill_loss(logits, y, soft, 0.0, t, 0.1), ce)
    # The student that matches its teacher pays no KL.
    same = distill_loss(teacher, y, F.softmax(teacher / t, 1), 1.0, t, 0.1)
    assert float(same) == pytest.approx(0.0, abs=1e-6)


def _cfg(tmp_path: Path, **kw) -> TrainConfig:
    space = load_space(DEEP)
    base = dict(
        space=DEEP,
        out=str(tmp_path / "g"),
        steps=6,
        batch_size=32,
        train_limit=256,
        eval_paths=0,
        progress=False,
        sample_layers=[],
        fixed=str(deep_arch(space)),
        depths="1",
        sandwich=True,
        distill=True,
        kd_weight=0.5,
    )
    return TrainConfig(**{**base, **kw})


def test_sandwich_trains_full_shallowest_and_one_more(tmp_path: Path, single_thread) -> None:
    tr = Trainer(_cfg(tmp_path))
    seen: list[str] = []
    inner = tr.model.forward

    def record(x, arch=None):
        seen.append(tr.net.variants[tr.net.index(arch)].name)
        return inner(x, arch)

    tr.model.forward = record  # type: ignore[method-assign]
    tr.train()
    per_step = [seen[i : i + 3] for i in range(0, len(seen), 3)]
    assert len(per_step) == 6
    assert all(s[0] == "full" and s[1] == "s1-1+s2-1" for s in per_step)
    assert {s[2] for s in per_step} <= {"s1-1", "s2-1"} and len({s[2] for s in per_step}) == 2
    # Without distillation the full depth trains as a member, not as the teacher.
    seen.clear()
    tr2 = Trainer(_cfg(tmp_path, out=str(tmp_path / "n"), distill=False))
    inner = tr2.model.forward
    tr2.model.forward = lambda x, arch=None: (  # type: ignore[method-assign]
        seen.append(tr2.net.variants[tr2.net.index(arch)].name) or inner(x, arch)
    )
    tr2.train()
    assert seen[:3][0] == "full" and len(seen) == 18


def test_golden_final_scores_every_depth_and_resumes(
    tmp_path: Path, single_thread, monkeypatch
) -> None:
    from hurricane.adaptive import AdaptiveSettings

    space = load_space(TINY)
    arch = Arch(("mb_k3_e3", "ds_k3", "ds_k3"), (1.0, 1.0, 1.0))
    kw = dict(steps=8, data="fashion-mnist", seed=0, batch_size=32, progress=False)
    adaptive = AdaptiveSettings(depths="default")
    whole = train_final(TINY, arch, tmp_path / "whole", adaptive=adaptive, **kw)
    assert [d["name"] for d in whole["depths"]] == ["full", "s1-1"]
    assert all(0.0 < d["test_acc"] <= 1.0 for d in whole["depths"])
    assert whole["test_acc"] == whole["depths"][0]["test_acc"]
    net = load_adaptive(space, whole["adaptive"]).eval()
    x = torch.randn(4, 1, 28, 28)
    saved = torch.load(whole["model"], weights_only=True)["model"]
    full = Subnet(space, arch).eval()
    full.load_state_dict(saved)
    with torch.no_grad():
        assert torch.allclose(full(x), net(x, net.variants[0].arch), atol=1e-5)
    # Interrupted at step 4 (Ctrl-C saves a checkpoint), then run again: the same GoldenNet.
    part = tmp_path / "part"
    lr_at = Trainer.lr_at

    def stop_at_4(self, step):
        if step == 4:
            raise KeyboardInterrupt
        return lr_at(self, step)

    monkeypatch.setattr(Trainer, "lr_at", stop_at_4)
    with pytest.raises(KeyboardInterrupt):
        train_final(TINY, arch, part, adaptive=adaptive, **kw)
    monkeypatch.setattr(Trainer, "lr_at", lr_at)
    assert torch.load(part / "train" / "checkpoint.pt", weights_only=True)["step"] == 4
    resumed = train_final(TINY, arch, part, adaptive=adaptive, **kw)
    assert resumed["steps"] == 8
    assert [d["test_acc"] for d in resumed["depths"]] == [d["test_acc"] for d in whole["depths"]]


def test_supernet_sandwich_trains_largest_smallest_and_a_sampled_path(
    tmp_path: Path, single_thread, capsys
) -> None:
    from hurricane.errors import UserError
    from pipelines.cli import main

    args = ["train", "--space", TINY, "--steps", "3", "--batch-size", "16", "--train-limit"]
    args += ["64", "--eval-paths", "0", "--no-progress", "--threads", "1", "--sandwich"]
    assert main([*args, "--out", str(tmp_path / "cli")]) == 0
    summary = (tmp_path / "cli" / "summary.json").read_text()
    assert '"sandwich": true' in summary
    cfg = TrainConfig(
        space=TINY,
        out=str(tmp_path / "s"),
        steps=4,
        batch_size=16,
        train_limit=64,
        eval_paths=0,
        progress=False,
        sandwich=True,
    )
    tr = Trainer(cfg)
    seen: list[Arch] = []
    inner = tr.model.forward
    tr.model.forward = lambda x, arch: seen.append(arch) or inner(x, arch)  # type: ignore
    tr.train()
    big, small = tr.net.largest(), tr.net.smallest()
    assert big != small and len(seen) == 12
    assert seen[0::3] == [big] * 4 and seen[1::3] == [small] * 4
    assert seen[2::3] == [tr.path_at(s) for s in range(4)]
    assert small.widths == (0.5, 0.5, 0.5) and big.widths == (1.0, 1.0, 1.0)
    with pytest.raises(UserError, match="kd_weight 1.5 must be within 0..1"):
        Trainer(TrainConfig(**{**cfg.__dict__, "kd_weight": 1.5}))


def test_fair_sampling_trains_every_candidate_once_and_sums_gradients(
    tmp_path: Path, single_thread
) -> None:
    cfg = TrainConfig(
        space=TINY,
        out=str(tmp_path / "f"),
        steps=2,
        batch_size=16,
        train_limit=64,
        eval_paths=0,
        progress=False,
        fair=True,
        augment=False,
    )
    tr = Trainer(cfg)
    space = tr.space
    for step in range(5):
        paths = tr.paths_at(step)
        assert len(paths) == 4 == len(tr.paths_at(step))
        assert paths == tr.paths_at(step)  # seeded by the step
        for i, layer in enumerate(space.layers):
            assert sorted(p.ops[i] for p in paths) == sorted(layer.ops)
    assert tr.paths_at(0) != tr.paths_at(1)
    torch.manual_seed(0)
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    paths = tr.paths_at(0)
    tr.opt.zero_grad(set_to_none=True)
    tr._shard_step(x, y, paths, sync=True)
    fair = {n: p.grad.clone() for n, p in tr.net.named_parameters() if p.grad is not None}
    tr.opt.zero_grad(set_to_none=True)
    for path in paths:  # the single-path steps, one after another
        F.cross_entropy(tr.net(x, path), y, label_smoothing=cfg.label_smoothing).backward()
    alone = {n: p.grad for n, p in tr.net.named_parameters() if p.grad is not None}
    assert fair.keys() == alone.keys() and len(fair) > 0
    for n in fair:
        assert torch.allclose(fair[n], alone[n], atol=1e-6), n
    # Every candidate of every layer got a gradient in that one step (a skip where shapes
    # match is the identity and has none to get).
    for i, layer in enumerate(space.layers):
        for j in range(len(layer.ops)):
            if layer.ops[j] == "skip":
                continue
            block = tr.net.choices[i][j]
            params = list(block.parameters())
            assert not params or any(f"choices.{i}.{j}." in n for n in fair), (i, layer.ops[j])
