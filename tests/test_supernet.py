"""The weight-sharing supernet (hurricane.supernet) and standalone subnets (hurricane.subnet)."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

from hurricane.arch import Arch
from hurricane.space import SearchSpace
from hurricane.space_file import load_space, parse_space
from hurricane.subnet import build_subnet
from hurricane.supernet import Supernet

pytestmark = pytest.mark.usefixtures("single_thread")

# Odd widths (channel_divisor = 1), width multipliers, and many op families. Layer 3 holds the
# FBNet grouped ops: every channel count it can see (6 or 10 in, 6 or 12 out) is even.
TINY = """\
name = "tiny"
channel_divisor = 1

[input]
resolution = [12, 10]
channels = 3
classes = 5

[stem]
cout = 7

[[layers]]
cout = 13
widths = [0.6, 1.0]
ops = ["mb_k3_e3", "shuffle_k3", "res_k3", "skip", "ds_k5_se", "shufflex"]

[[layers]]
cout = 13
stride = 2
widths = [0.5, 1.0]
ops = ["mb_k5_e3_se", "shuffle_k5_se", "res_k3", "skip", "fmb_k3_e3", "conv_k3"]

[[layers]]
cout = 10
widths = [0.6, 1.0]
ops = ["mb_k3_e6_hswish", "shuffle_k3", "skip", "res_k3", "shufflex_se", "mb_k3_e1"]

[[layers]]
cout = 12
widths = [0.5, 1.0]
ops = ["mb_k3_e1_g2", "mb_k5_e1_g2", "shuffle_k7", "skip", "res_k3", "mb_k3_e3"]

[[layers]]
cout = 9
stride = 2
act = "relu6"
ops = ["shuffle_k3", "skip", "mb_k3_e3", "res_k3", "fmb_k5_e6_se"]
"""


@pytest.fixture(scope="module")
def tiny() -> SearchSpace:
    return parse_space(TINY, source="tiny.toml")


@pytest.fixture(scope="module")
def demo() -> SearchSpace:
    return load_space("demo")


def test_tiny_space_has_odd_channels(tiny: SearchSpace) -> None:
    chans = [layer.channels(tiny.channel_divisor) for layer in tiny.layers]
    assert chans == [(8, 13), (7, 13), (6, 10), (6, 12), (9,)]
    assert any(c % 2 for cs in chans for c in cs)


def _randomise(model: nn.Module, seed: int) -> None:
    """Random weights and BN statistics, scaled so activations stay O(1) through the net."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / fan_in**0.5)
            elif name.endswith("bn.weight"):
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g) * 0.2)
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g) + 0.5)


def _archs(space: SearchSpace, seed: int, n_random: int) -> list[Arch]:
    """Archs that visit every candidate of every layer, plus random ones."""
    rng = random.Random(seed)
    most = max(len(layer.ops) for layer in space.layers)
    archs = []
    for j in range(most):
        ops = tuple(layer.ops[j % len(layer.ops)] for layer in space.layers)
        widths = tuple(layer.widths[rng.randrange(len(layer.widths))] for layer in space.layers)
        archs.append(Arch(ops, widths))
    narrowest = Arch(
        tuple(layer.ops[0] for layer in space.layers),
        tuple(min(layer.widths) for layer in space.layers),
    )
    archs.append(narrowest)
    archs += [space.sample_arch(rng) for _ in range(n_random)]
    return archs


def _input(space: SearchSpace, n: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, space.in_channels, *space.resolution, generator=g)


@pytest.fixture(scope="module")
def nets(tiny: SearchSpace, demo: SearchSpace) -> dict[str, tuple[SearchSpace, Supernet]]:
    out = {}
    for space in (tiny, demo):
        for share in ("none", "family"):
            torch.manual_seed(0)
            net = Supernet(space, share)
            _randomise(net, 1)
            out[space.name + ("" if share == "none" else "-family")] = (space, net)
    return out


SHARED = ["tiny", "demo", "tiny-family", "demo-family"]


@pytest.mark.parametrize("name", SHARED)
def test_extract_matches_supernet_eval(nets: dict, name: str) -> None:
    space, net = nets[name]
    net.eval()
    x = _input(space)
    for arch in _archs(space, seed=2, n_random=4):
        with torch.no_grad():
            expected = net(x, arch)
            sub = net.extract(arch)
            assert not sub.training
            got = sub(x)
        assert got.shape == (x.shape[0], space.classes)
        assert torch.isfinite(expected).all()
        assert torch.allclose(got, expected, atol=1e-5), (
            f"{arch}: max diff {(got - expected).abs().max():.3g}"
        )


@pytest.mark.parametrize("name", SHARED)
def test_extract_matches_supernet_train(nets: dict, name: str) -> None:
    space, net = nets[name]
    net.train()
    x = _input(space, n=4, seed=1)
    for arch in _archs(space, seed=3, n_random=3):
        sub = net.extract(arch)
        assert sub.training
        with torch.no_grad():
            torch.manual_seed(5)  # same dropout mask for both
            expected = net(x, arch)
            torch.manual_seed(5)
            got = sub(x)
        assert torch.allclose(got, expected, atol=1e-5), (
            f"{arch}: max diff {(got - expected).abs().max():.3g}"
        )
    net.eval()


def test_family_sharing_gives_a_familys_kernels_and_expansions_one_block(demo) -> None:
    net = Supernet(demo, "family")
    mb = {"mb_k3_e3", "mb_k3_e6", "mb_k5_e3", "mb_k5_e6", "mb_k7_e3"}
    for i in range(len(demo.layers)):
        index = net._index[i]
        assert len(net.choices[i]) == 6  # mb, mb_se, ds, fmb, shuffle, skip
        assert len({index[op][0] for op in mb}) == 1
        assert index["ds_k3"][0] == index["ds_k5"][0] != index["mb_k3_e3_se"][0]
        assert index["shuffle_k3"][0] == index["shuffle_k5"][0]
        block = net.choices[i][index["mb_k3_e3"][0]]
        assert (block.dw.conv.kernel, block.expansion) == (7, 6)
    assert len(Supernet(demo).choices[0]) == len(demo.layers[0].ops)
    with pytest.raises(ValueError, match="not one of none, family"):
        Supernet(demo, "all")


def test_a_smaller_kernel_runs_the_centre_of_the_shared_one(nets: dict) -> None:
    """mb_k3 reads only the centre 3x3 taps of the shared 7x7 depthwise kernel: a corner
    tap moves mb_k7's output and leaves mb_k3's alone."""
    space, net = nets["demo-family"]
    net.eval()
    x = _input(space)
    base = space.default_arch()
    k3 = Arch(("mb_k3_e3",) + base.ops[1:], base.widths)
    k7 = Arch(("mb_k7_e3",) + base.ops[1:], base.widths)
    dw = net.choices[0][net._index[0]["mb_k3_e3"][0]].dw.conv.weight
    with torch.no_grad():
        before = net(x, k3), net(x, k7)
        saved = dw[:, :, 0, 0].clone()
        dw[:, :, 0, 0] += 1.0
        after = net(x, k3), net(x, k7)
        dw[:, :, 0, 0] = saved
    assert torch.equal(before[0], after[0])
    assert (before[1] - after[1]).abs().max() > 1e-3


def test_eval_outputs_depend_on_arch(nets: dict) -> None:
    """Guard against a vacuous comparison: different paths give different outputs."""
    space, net = nets["tiny"]
    net.eval()
    x = _input(space)
    archs = _archs(space, seed=4, n_random=0)
    with torch.no_grad():
        outs = [net(x, a) for a in archs[:3]]
    assert not torch.allclose(outs[0], outs[1])
    assert not torch.allclose(outs[1], outs[2])


def test_extract_is_independent_copy(tiny: SearchSpace) -> None:
    torch.manual_seed(0)
    net = Supernet(tiny).eval()
    _randomise(net, 7)
    arch = tiny.sample_arch(random.Random(8))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = _input(tiny)
    with torch.no_grad():
        y0 = net(x, arch)
        sub = net.extract(arch)
        for p in sub.parameters():
            p.add_(1.0)
        for b in sub.buffers():
            if b.is_floating_point():
                b.mul_(3.0)
        y1 = net(x, arch)
    assert torch.equal(y0, y1)
    after = net.state_dict()
    for k, v in before.items():
        assert torch.equal(v, after[k]), k
    sub_ptrs = {p.data_ptr() for p in sub.parameters()}
    assert not sub_ptrs & {p.data_ptr() for p in net.parameters()}
    # and the subnet really changed
    with torch.no_grad():
        assert not torch.allclose(sub(x), y0)


@pytest.mark.parametrize("name", ["tiny", "demo"])
def test_build_subnet_shapes_match_extract(nets: dict, name: str) -> None:
    space, net = nets[name]
    for arch in _archs(space, seed=6, n_random=3):
        fresh = build_subnet(space, arch)
        fresh_from_str = build_subnet(space, str(arch))
        extracted = net.extract(arch)
        a = {k: tuple(v.shape) for k, v in fresh.state_dict().items()}
        b = {k: tuple(v.shape) for k, v in extracted.state_dict().items()}
        c = {k: tuple(v.shape) for k, v in fresh_from_str.state_dict().items()}
        assert a == b == c
        assert fresh.arch_str == extracted.arch_str == str(space.validate_arch(arch))
        # a standalone subnet holds no more than its path: fewer parameters than the supernet
        assert sum(p.numel() for p in fresh.parameters()) < sum(p.numel() for p in net.parameters())


def test_subnet_forward_shape(tiny: SearchSpace) -> None:
    sub = build_subnet(tiny, tiny.sample_arch(random.Random(0)))
    y = sub(_input(tiny, n=2))
    assert y.shape == (2, 5)
    y.sum().backward()
    assert all(p.grad is not None for p in sub.parameters())


@pytest.mark.parametrize("name", ["tiny", "demo"])
def test_training_one_path_changes_only_that_path(
    tiny: SearchSpace, demo: SearchSpace, name: str
) -> None:
    space = tiny if name == "tiny" else demo
    torch.manual_seed(0)
    net = Supernet(space).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    rng = random.Random(9)
    x = _input(space, n=4)
    target = torch.arange(4) % space.classes
    for _ in range(2):  # the second step starts from grads set to None by the first
        arch = space.sample_arch(rng)
        chosen = {
            i: space.layers[i].ops.index(op) for i, op in enumerate(space.validate_arch(arch).ops)
        }
        params_before = {k: v.detach().clone() for k, v in net.named_parameters()}
        buffers_before = {k: v.detach().clone() for k, v in net.named_buffers()}
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(net(x, arch), target)
        loss.backward()
        opt.step()
        changed_chosen = 0
        for k, v in net.named_parameters():
            parts = k.split(".")
            if parts[0] == "choices":
                layer, j = int(parts[1]), int(parts[2])
                if chosen[layer] != j:
                    assert torch.equal(v, params_before[k]), f"unchosen {k} changed"
                    assert v.grad is None, f"unchosen {k} has a gradient"
                elif not torch.equal(v, params_before[k]):
                    changed_chosen += 1
        assert changed_chosen > 0
        for k, v in net.named_buffers():
            parts = k.split(".")
            if parts[0] == "choices" and chosen[int(parts[1])] != int(parts[2]):
                assert torch.equal(v, buffers_before[k]), f"unchosen buffer {k} changed"
        # stem and head are on every path
        assert not torch.equal(net.stem.conv.weight, params_before["stem.conv.weight"])
        assert not torch.equal(net.head.fc.weight, params_before["head.fc.weight"])


def test_path_parameters(tiny: SearchSpace) -> None:
    net = Supernet(tiny)
    arch = tiny.sample_arch(random.Random(1))
    ids = {id(p) for p in net.path_parameters(arch)}
    chosen = [tiny.layers[i].ops.index(op) for i, op in enumerate(arch.ops)]
    for i, choices in enumerate(net.choices):
        for j, block in enumerate(choices):
            inside = all(id(p) in ids for p in block.parameters())
            outside = all(id(p) not in ids for p in block.parameters())
            assert inside if j == chosen[i] else outside


def test_supernet_rejects_invalid_arch(tiny: SearchSpace) -> None:
    net = Supernet(tiny)
    x = _input(tiny, n=2)
    with pytest.raises(ValueError, match="layer 0"):
        net(x, Arch.of(["conv_k3", "skip", "skip", "skip", "skip"]))
    with pytest.raises(ValueError):
        net(x, Arch.of(["skip"] * 4))
    with pytest.raises(ValueError, match="layer 1"):
        net.extract(Arch.of(["skip"] * 5, [1.0, 0.7, 1.0, 1.0, 1.0]))
