"""Operator names (hurricane.opnames), operator modules (hurricane.ops) and their costs
(hurricane.costs, checked against the modules)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from hurricane.costs import Block, Conv, instance_cost
from hurricane.dynamic import DynConv2d, SqueezeExcite
from hurricane.lutkeys import OpInstance
from hurricane.opnames import (
    FBNET_OPS,
    VOCABULARY,
    OpNameError,
    OpSpec,
    canonical,
    parse_op,
)
from hurricane.ops import build_op, check_op
from hurricane.space_file import load_space
from hurricane.subnet import instance_module

H, W = 9, 8  # odd height, even width: exercises ceil(H / stride) for both parities

ODD_CHANNELS = [(7, 13), (13, 13), (9, 5)]
EVEN_CHANNELS = [(6, 12), (12, 12), (10, 6)]


def _channels(op: str) -> list[tuple[int, int]]:
    return EVEN_CHANNELS if "_g2" in op else ODD_CHANNELS


def _cases() -> list[tuple[str, int, int, int]]:
    return [
        (op, cin, cout, stride)
        for op in VOCABULARY
        for cin, cout in _channels(op)
        for stride in (1, 2)
    ]


def _ids(case: tuple[str, int, int, int]) -> str:
    op, cin, cout, stride = case
    return f"{op}-{cin}to{cout}-s{stride}"


pytestmark = pytest.mark.usefixtures("single_thread")

# --- every op: forward and backward -----------------------------------------------------------


@pytest.mark.parametrize("case", _cases(), ids=_ids)
def test_op_forward_backward(case: tuple[str, int, int, int]) -> None:
    op, cin, cout, stride = case
    torch.manual_seed(0)
    block = build_op(op, cin, cout, stride)
    block.train()
    x = torch.randn(2, cin, H, W, requires_grad=True)
    y = block(x)
    assert y.shape == (2, cout, math.ceil(H / stride), math.ceil(W / stride))
    assert torch.isfinite(y).all()
    # A loss that is not invariant to anything the block does (a plain sum would give zero
    # gradients through a BN bias-free path), so every used parameter gets a gradient.
    (y * torch.randn_like(y)).sum().backward()
    assert x.grad is not None
    assert torch.isfinite(x.grad).all()
    assert x.grad.abs().sum() > 0
    # Built at exact widths, a block holds only what its forward uses.
    for name, p in block.named_parameters():
        assert p.grad is not None, f"{op}: parameter {name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{op}: parameter {name} has a non-finite gradient"


@pytest.mark.parametrize("op", [op for op in VOCABULARY if "_g2" in op])
@pytest.mark.parametrize("cin,cout", ODD_CHANNELS)
def test_grouped_ops_reject_odd_channels(op: str, cin: int, cout: int) -> None:
    with pytest.raises(ValueError, match="divisible"):
        build_op(op, cin, cout, 1)


@pytest.mark.parametrize("cin,cout", [(7, 12), (12, 7), (6, 13)])
def test_grouped_ops_reject_any_odd_side(cin: int, cout: int) -> None:
    with pytest.raises(ValueError, match="divisible"):
        build_op("mb_k3_e1_g2", cin, cout, 2)


def test_check_op_rejects_bad_stride_and_channels() -> None:
    spec = parse_op("mb_k3_e3")
    assert check_op(spec, 8, 8, 1) is None
    assert check_op(spec, 8, 8, 2) is None
    assert "stride" in check_op(spec, 8, 8, 3)
    assert "positive" in check_op(spec, 0, 8, 1)
    assert "positive" in check_op(spec, 8, 0, 1)
    with pytest.raises(ValueError, match="stride"):
        build_op("mb_k3_e3", 8, 8, 3)


@pytest.mark.parametrize("op", ["mb_k3_e3", "shuffle_k3_se", "shufflex", "res_k3", "skip"])
def test_dynamic_ops_run_narrower(op: str) -> None:
    """A supernet choice built at the widest widths runs at any narrower (cin, cout)."""
    block = build_op(op, 13, 13, 1, dynamic=True)
    for cin, cout in [(13, 13), (7, 13), (13, 5), (6, 9), (9, 9)]:
        y = block(torch.randn(2, cin, 5, 5), cout)
        assert y.shape == (2, cout, 5, 5)


# --- activations --------------------------------------------------------------------------------

ACT_TYPES = {"relu": nn.ReLU, "relu6": nn.ReLU6, "hswish": nn.Hardswish}


def _act_counts(module: nn.Module) -> dict[str, int]:
    return {name: sum(type(m) is cls for m in module.modules()) for name, cls in ACT_TYPES.items()}


@pytest.mark.parametrize("act", list(ACT_TYPES))
@pytest.mark.parametrize(
    "op", ["mb_k3_e6", "ds_k3", "fmb_k3_e3", "shuffle_k3", "conv_k3", "res_k3"]
)
def test_activation_argument(op: str, act: str) -> None:
    block = build_op(op, 8, 8, 1, act=act)
    counts = _act_counts(block)
    assert counts[act] > 0
    assert all(n == 0 for name, n in counts.items() if name != act), counts
    y = block(torch.randn(2, 8, 6, 6))
    assert y.shape == (2, 8, 6, 6)


@pytest.mark.parametrize("act", list(ACT_TYPES))
def test_activation_name_token(act: str) -> None:
    # The token wins over the act argument: pick an argument that differs from the token.
    other = "relu" if act != "relu" else "hswish"
    name = f"mb_k3_e6_{act}"
    assert parse_op(name).act == act
    block = build_op(name, 8, 8, 1, act=other)
    counts = _act_counts(block)
    assert counts[act] > 0
    assert counts[other] == 0
    y = block(torch.randn(2, 8, 6, 6))
    assert y.shape == (2, 8, 6, 6)


def test_activation_outputs_differ() -> None:
    """The chosen activation is actually applied (not just constructed)."""
    torch.manual_seed(0)
    x = torch.randn(2, 8, 6, 6)
    outs = {}
    for act in ACT_TYPES:
        torch.manual_seed(1)
        block = build_op("conv_k3", 8, 8, 1, act=act).eval()
        outs[act] = block(x)
    assert (outs["relu"] >= 0).all()
    assert (outs["relu6"] <= 6).all() and (outs["relu6"] >= 0).all()
    assert (outs["hswish"] < 0).any()  # hard-swish dips below zero
    assert not torch.equal(outs["relu"], outs["hswish"])


# --- names -------------------------------------------------------------------------------------


def test_vocabulary_size_and_families() -> None:
    assert len(VOCABULARY) >= 32
    assert len(set(VOCABULARY)) == len(VOCABULARY)
    vocab = set(VOCABULARY)
    required = [
        *(f"mb_k{k}_e{e}{se}" for k in (3, 5, 7) for e in (3, 6) for se in ("", "_se")),
        "ds_k3",
        "ds_k5",
        "ds_k7",
        *(f"fmb_k{k}_e{e}" for k in (3, 5) for e in (3, 6)),
        *(f"shuffle_k{k}{se}" for k in (3, 5, 7) for se in ("", "_se")),
        "shufflex",
        "shufflex_se",
        canonical("k3_e1_g2"),
        canonical("k5_e1_g2"),
        "conv_k3",
        "res_k3",
        "skip",
    ]
    missing = [op for op in required if op not in vocab]
    assert not missing, missing
    # the twelve MBConv k{3,5,7} x e{3,6} (x SE) candidates
    mb = [op for op in VOCABULARY if op.startswith("mb_") and parse_op(op).expansion in (3, 6)]
    assert len(mb) == 12
    assert all(
        parse_op(op).family in ("mb", "ds", "fmb", "shuffle", "shufflex", "conv", "res", "skip")
        for op in VOCABULARY
    )


def test_vocabulary_names_are_canonical() -> None:
    for op in VOCABULARY:
        assert canonical(op) == op
        assert parse_op(op).name == op


@pytest.mark.parametrize(
    "alias,expected",
    [
        ("k3_e1", "mb_k3_e1"),
        ("k5_e1_g2", "mb_k5_e1_g2"),
        ("k3_e1_g2", "mb_k3_e1_g2"),
        ("k5_e6", "mb_k5_e6"),
    ],
)
def test_fbnet_aliases(alias: str, expected: str) -> None:
    assert canonical(alias) == expected
    assert parse_op(alias) == parse_op(expected)


def test_fbnet_ops_all_parse() -> None:
    assert len(FBNET_OPS) == 9
    names = {canonical(op) for op in FBNET_OPS}
    assert len(names) == 9
    assert "skip" in names
    assert all(n == "skip" or n.startswith("mb_") for n in names)


def test_parse_op_fields() -> None:
    assert parse_op("mb_k5_e6_se_hswish") == OpSpec("mb", 5, 6, 1, True, "hswish")
    assert parse_op("k5_e1_g2") == OpSpec("mb", 5, 1, 2, False, None)
    assert parse_op("shufflex_se") == OpSpec("shufflex", None, None, 1, True, None)
    assert parse_op("skip") == OpSpec("skip")
    assert parse_op("mb_k3_e1_g2").channel_multiple() == 2
    assert parse_op("mb_k3_e1").channel_multiple() == 1


@pytest.mark.parametrize(
    "bad",
    [
        "foo_k3",  # unknown family
        "bogus",
        "mb_k4_e3",  # kernel not offered
        "ds_k4",
        "mb_e3_k3",  # out of order
        "mb_k3_e3_relu_se",  # activation before se
        "mb_k3_k3_e3",  # duplicate token
        "mb_k3_e3_se_se",
        "mb_k3_e3_relu_hswish",  # two activations
        "mb_k3",  # missing expansion
        "ds_e3",  # ds takes no expansion (and has no kernel)
        "conv_k3_se",  # conv takes no se
        "skip_k3",  # skip takes no kernel
        "mb_k3_e3_swish",  # unknown token
        "mb_k3_e0",  # expansion out of range
        "mb_k3_e1_g9",  # groups out of range
    ],
)
def test_bad_names_raise(bad: str) -> None:
    with pytest.raises(OpNameError) as info:
        parse_op(bad)
    msg = str(info.value)
    assert bad in msg
    assert "\n" not in msg
    with pytest.raises(OpNameError):
        canonical(bad)
    with pytest.raises(ValueError):  # OpNameError is a ValueError, so build_op raises one too
        build_op(bad, 8, 8, 1)


def test_bad_fbnet_alias_names_the_name() -> None:
    with pytest.raises(OpNameError, match="k4_e1"):
        parse_op("k4_e1")


@pytest.mark.parametrize("bad", ["", None, 3])
def test_non_string_names_raise(bad: object) -> None:
    with pytest.raises(OpNameError):
        parse_op(bad)  # type: ignore[arg-type]


# --- skip and residuals ---------------------------------------------------------------------


def test_skip_is_identity_when_shape_kept() -> None:
    block = build_op("skip", 13, 13, 1)
    assert list(block.parameters()) == []
    x = torch.randn(2, 13, H, W)
    assert torch.equal(block(x), x)


@pytest.mark.parametrize("cin,cout,stride", [(7, 13, 1), (13, 13, 2), (9, 5, 2)])
def test_skip_projects_when_shape_changes(cin: int, cout: int, stride: int) -> None:
    block = build_op("skip", cin, cout, stride)
    params = list(block.parameters())
    assert params
    assert any(p.dim() == 4 and p.shape[-2:] == (1, 1) for p in params)  # a 1x1 conv
    y = block(torch.randn(2, cin, H, W))
    assert y.shape == (2, cout, math.ceil(H / stride), math.ceil(W / stride))


def _zero_project(block: nn.Module) -> None:
    with torch.no_grad():
        block.project.bn.weight.zero_()
        block.project.bn.bias.zero_()


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_mbconv_residual_connection(mode: str) -> None:
    torch.manual_seed(0)
    block = build_op("mb_k3_e3", 13, 13, 1)
    block.train(mode == "train")
    _zero_project(block)
    x = torch.randn(2, 13, H, W)
    assert torch.equal(block(x), x)


@pytest.mark.parametrize("cin,cout,stride", [(13, 13, 2), (7, 13, 1)])
def test_mbconv_no_residual_when_shape_changes(cin: int, cout: int, stride: int) -> None:
    block = build_op("mb_k3_e3", cin, cout, stride).eval()
    _zero_project(block)
    y = block(torch.randn(2, cin, H, W))
    assert torch.equal(y, torch.zeros_like(y))


@pytest.mark.parametrize("op", ["ds_k3", "fmb_k3_e3", "mb_k5_e6_se"])
def test_other_residual_blocks(op: str) -> None:
    block = build_op(op, 12, 12, 1).eval()
    _zero_project(block)
    x = torch.randn(2, 12, H, W)
    assert torch.equal(block(x), x)


def test_resnet_block_identity_shortcut() -> None:
    block = build_op("res_k3", 13, 13, 1).eval()
    assert block.shortcut is None
    with torch.no_grad():
        block.conv2.bn.weight.zero_()
        block.conv2.bn.bias.zero_()
    x = torch.randn(2, 13, H, W)
    assert torch.equal(block(x), torch.relu(x))


def test_shuffle_stride1_passes_half_through() -> None:
    """ShuffleNetV2 at stride 1, cin == cout: half the channels pass unchanged (shuffled)."""
    block = build_op("shuffle_k3", 12, 12, 1).eval()
    x = torch.randn(2, 12, H, W)
    y = block(x)
    # channel_shuffle(groups=2) of cat([left(6), branch(6)]) puts left channel i at 2*i.
    assert torch.equal(y[:, 0::2], x[:, :6])


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
@pytest.mark.parametrize("op", ["shuffle_k3", "shufflex"])
def test_shuffle_stride2_single_output_channel(op: str) -> None:
    spec = parse_op(op)
    if check_op(spec, 4, 1, 2) is not None:
        return  # rejecting the shape up front is an acceptable fix
    block = build_op(op, 4, 1, 2)
    y = block(torch.randn(2, 4, 6, 6))
    assert y.shape == (2, 1, 3, 3)


# --- block costs (hurricane.costs) against the modules -------------------------------------------


def _run_convs(module: nn.Module, x: torch.Tensor) -> tuple[list[Conv], dict[str, int]]:
    """The convolutions (and classifiers) a module really runs outside its squeeze-excites,
    recorded by forward hooks, and the work they did: multiply-adds, weights, activations."""
    ses = [m for m in module.modules() if isinstance(m, SqueezeExcite)]
    in_se = {id(m) for se in ses for m in se.modules()}
    seen: list[Conv] = []
    work = {"macs": 0, "params": 0, "activations": 0}

    def on_conv(m: DynConv2d, args: tuple, out: torch.Tensor) -> None:
        inp = args[0]
        groups = inp.shape[1] if m.depthwise else m.groups
        seen.append(Conv(inp.shape[1], out.shape[1], m.kernel, m.stride, groups, *inp.shape[2:]))
        weight = m.active_weight(inp.shape[1], out.shape[1])
        work["macs"] += out[0].numel() * weight[0].numel()
        work["params"] += weight.numel()
        work["activations"] += inp[0].numel() + out[0].numel()

    def on_linear(m: nn.Linear, args: tuple, out: torch.Tensor) -> None:
        inp = args[0]
        seen.append(Conv(inp.shape[-1], out.shape[-1], 1, 1, 1, 1, 1))
        work["macs"] += m.weight.numel()
        work["params"] += m.weight.numel()
        work["activations"] += inp[0].numel() + out[0].numel()

    handles = [
        m.register_forward_hook(on_conv if isinstance(m, DynConv2d) else on_linear)
        for m in module.modules()
        if isinstance(m, (DynConv2d, nn.Linear)) and id(m) not in in_se
    ]
    with torch.no_grad():
        module.eval()(x)
    for h in handles:
        h.remove()
    return seen, work


def _uncounted_params(module: nn.Module) -> int:
    """Parameters the cost formulas leave out by design: batch norm, classifier biases and the
    squeeze-excite (whose convs hold biases of their own, no batch norm)."""
    mods = list(module.modules())
    se = sum(p.numel() for m in mods if isinstance(m, SqueezeExcite) for p in m.parameters())
    bn = sum(m.weight.numel() + m.bias.numel() for m in mods if isinstance(m, nn.BatchNorm2d))
    return se + bn + sum(m.bias.numel() for m in mods if isinstance(m, nn.Linear))


def _check_block_cost(module: nn.Module, block: Block, x: torch.Tensor) -> None:
    seen, work = _run_convs(module, x)
    assert sorted(seen) == sorted(block.convs()), (seen, block.convs())
    macs, params, moved = block.cost()
    se = block.se_channels()
    se_term = 2 * se * max(1, se // 4)  # the estimate the formulas use for squeeze-excite
    assert macs - se_term == work["macs"]
    assert params - se_term == work["params"]
    assert moved == 4.0 * (work["activations"] + params)
    # Every other parameter is one the formulas leave out on purpose.
    total = sum(p.numel() for p in module.parameters())
    assert total == work["params"] + _uncounted_params(module)
    ses = [m for m in module.modules() if isinstance(m, SqueezeExcite)]
    assert [m.reduce.max_in for m in ses] == ([se] if se else [])


@pytest.mark.parametrize("case", _cases(), ids=_ids)
def test_block_cost_matches_the_module(case: tuple[str, int, int, int]) -> None:
    """hurricane.costs describes each block as the convolutions its module runs: the same
    shapes, multiply-adds, weights and activations, counted by hooks on the real module."""
    op, cin, cout, stride = case
    torch.manual_seed(0)
    _check_block_cost(
        build_op(op, cin, cout, stride),
        Block.of(op, cin, cout, H, W, stride),
        torch.randn(1, cin, H, W),
    )


@pytest.mark.parametrize("op", ["head_c0", "head_c24"])
def test_head_cost_matches_the_module(op: str) -> None:
    inst = OpInstance(op, 12, 10, 5, 4, 1, "relu")
    module, x = instance_module(inst)
    _check_block_cost(module, Block.of(op, 12, 10, 5, 4), x)
    assert instance_cost(inst) == Block.of(op, 12, 10, 5, 4).cost()


def test_stem_and_other_families_cost_a_plain_conv() -> None:
    """The stem (``conv_k3``) and a family another tool names (``dwconv``: a k x k grouped
    conv) cost what torch's own Conv2d of that shape does."""
    space = load_space("demo")
    stem = space.stem_instance()
    module, x = instance_module(stem)
    block = Block.of(stem.op, stem.cin, stem.cout, stem.h, stem.w, stem.stride)
    assert block.stride == 2
    _check_block_cost(module, block, x)
    conv = nn.Conv2d(16, 16, 3, 2, padding=1, groups=16, bias=False)
    y = conv(torch.randn(1, 16, H, W))
    macs, params, moved = Block("dwconv", 16, 16, H, W, 2, kernel=3, groups=16).cost()
    assert params == sum(p.numel() for p in conv.parameters())
    assert macs == y.numel() * conv.weight[0].numel()
    assert moved == 4.0 * (16 * H * W + y.numel() + params)
