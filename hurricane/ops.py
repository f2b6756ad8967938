"""Candidate operators as torch modules, built from their names (see ``hurricane.opnames``).

Every block is built from sliceable layers, so one class serves both uses: built at a layer's
largest widths with ``dynamic=True`` it is a supernet choice that can run narrower
(``forward(x, cout)`` with fewer input channels) and, where the supernet shares one block
between a family's kernels and expansions, smaller (``kernel``, ``expansion``: the centre of
its kernels, the first channels of its hidden width); built at exact widths it is a plain block.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from hurricane.dynamic import ConvBN, SqueezeExcite, channel_shuffle, make_act
from hurricane.opnames import OpSpec, parse_op


def check_op(spec: OpSpec, cin: int, cout: int, stride: int) -> str | None:
    """Why ``spec`` cannot run with these channels and stride, or None if it can."""
    if stride not in (1, 2):
        return f"stride must be 1 or 2, got {stride}"
    if cin < 1 or cout < 1:
        return f"channels must be positive, got cin={cin} cout={cout}"
    if spec.family in ("shuffle", "shufflex") and stride == 2 and cout < 2:
        return (
            f"{spec.name} at stride 2 needs at least 2 output channels (two branches), got {cout}"
        )
    g = spec.channel_multiple()
    if g > 1:
        hidden = cin * (spec.expansion or 1)
        for what, c in (("input", cin), ("hidden", hidden), ("output", cout)):
            if c % g:
                return f"{spec.name} needs {what} channels divisible by {g} (groups), got {c}"
    return None


def _kernel(spec: OpSpec) -> int:
    """The kernel of a family whose names must give one (``parse_op`` enforces it)."""
    if spec.kernel is None:
        raise ValueError(f"{spec.family} needs a kernel size, got {spec.name}")
    return spec.kernel


def _expansion(spec: OpSpec) -> int:
    """The expansion of a family whose names must give one (``parse_op`` enforces it)."""
    if spec.expansion is None:
        raise ValueError(f"{spec.family} needs an expansion, got {spec.name}")
    return spec.expansion


class _Block(nn.Module):
    def __init__(self, spec: OpSpec, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.spec, self.max_in, self.max_out, self.stride = spec, cin, cout, stride

    def residual(self, cin: int, cout: int) -> bool:
        return self.stride == 1 and cin == cout

    def _projection(self, proj: ConvBN | None, cin: int, cout: int) -> ConvBN:
        """The 1x1 projection a block without a residual at these widths runs; a block built
        without one (exact widths, residual there) cannot run at other widths."""
        if proj is None:
            raise ValueError(
                f"{self.spec.name} built for {self.max_in}->{self.max_out} channels has no "
                f"projection for {cin}->{cout}; build it with dynamic=True"
            )
        return proj


class MBConv(_Block):
    """Inverted residual: 1x1 expand, k x k depthwise, optional SE, 1x1 linear project.
    With groups (FBNet's ``_g2``), the 1x1 convs are grouped and a channel shuffle follows
    the expansion. Expansion 1 keeps the 1x1 expansion conv, as FBNet's ``k3_e1`` does."""

    def __init__(self, spec: OpSpec, cin: int, cout: int, stride: int, act: str) -> None:
        super().__init__(spec, cin, cout, stride)
        self.expansion = e = _expansion(spec)
        g = spec.groups
        hidden = cin * e
        self.expand = ConvBN(cin, hidden, 1, groups=g, act=act)
        self.dw = ConvBN(hidden, hidden, _kernel(spec), stride, depthwise=True, act=act)
        self.se = SqueezeExcite(hidden) if spec.se else None
        self.project = ConvBN(hidden, cout, 1, groups=g)

    def forward(
        self,
        x: torch.Tensor,
        cout: int | None = None,
        kernel: int | None = None,
        expansion: int | None = None,
    ) -> torch.Tensor:
        cin, cout = x.shape[1], cout or self.max_out
        h = self.expand(x, cin * (expansion or self.expansion))
        if self.spec.groups > 1:
            h = channel_shuffle(h, self.spec.groups)
        h = self.dw(h, kernel=kernel)
        if self.se is not None:
            h = self.se(h)
        y = self.project(h, cout)
        return y + x if self.residual(cin, cout) else y


class DepthwiseSeparable(_Block):
    """k x k depthwise, optional SE, 1x1 linear project (MobileNetV2's expansion-1 block)."""

    def __init__(self, spec: OpSpec, cin: int, cout: int, stride: int, act: str) -> None:
        super().__init__(spec, cin, cout, stride)
        self.dw = ConvBN(cin, cin, _kernel(spec), stride, depthwise=True, act=act)
        self.se = SqueezeExcite(cin) if spec.se else None
        self.project = ConvBN(cin, cout, 1)

    def forward(
        self,
        x: torch.Tensor,
        cout: int | None = None,
        kernel: int | None = None,
        expansion: int | None = None,
    ) -> torch.Tensor:
        cin, cout = x.shape[1], cout or self.max_out
        h = self.dw(x, kernel=kernel)
        if self.se is not None:
            h = self.se(h)
        y = self.project(h, cout)
        return y + x if self.residual(cin, cout) else y


class FusedMBConv(_Block):
    """EfficientNet-EdgeTPU's fused block: dense k x k expansion, optional SE, 1x1 project."""

    def __init__(self, spec: OpSpec, cin: int, cout: int, stride: int, act: str) -> None:
        super().__init__(spec, cin, cout, stride)
        self.expansion = _expansion(spec)
        hidden = cin * self.expansion
        self.expand = ConvBN(cin, hidden, _kernel(spec), stride, act=act)
        self.se = SqueezeExcite(hidden) if spec.se else None
        self.project = ConvBN(hidden, cout, 1)

    def forward(
        self,
        x: torch.Tensor,
        cout: int | None = None,
        kernel: int | None = None,
        expansion: int | None = None,
    ) -> torch.Tensor:
        cin, cout = x.shape[1], cout or self.max_out
        h = self.expand(x, cin * (expansion or self.expansion), kernel)
        if self.se is not None:
            h = self.se(h)
        y = self.project(h, cout)
        return y + x if self.residual(cin, cout) else y


class ShuffleBlock(_Block):
    """ShuffleNetV2 unit (``shuffle_kK``) or its Xception-style variant (``shufflex``).

    Stride 1 passes ``min(cin//2, cout//2)`` channels through and transforms the rest, which
    is the paper's half split when cin == cout and still defined for odd or unequal widths.
    Stride 2 runs a depthwise projection branch beside the main branch on the whole input.
    """

    def __init__(
        self, spec: OpSpec, cin: int, cout: int, stride: int, act: str, dynamic: bool = False
    ) -> None:
        super().__init__(spec, cin, cout, stride)
        k = spec.kernel or 3
        self.proj: nn.ModuleList | None
        if stride == 1:
            # A supernet choice must hold every narrower split: size its branch for the widest.
            branch_in = cin if dynamic else cin - self.passthrough(cin, cout)
            branch_out = cout if dynamic else cout - self.passthrough(cin, cout)
            self.proj = None
        else:
            branch_in, branch_out = cin, cout - cout // 2
            self.proj = nn.ModuleList(
                [
                    ConvBN(cin, cin, k, stride, depthwise=True),
                    ConvBN(cin, cout // 2, 1, act=act),
                ]
            )
        mid = branch_out
        if spec.family == "shufflex":
            layers = [
                ConvBN(branch_in, branch_in, k, stride, depthwise=True),
                ConvBN(branch_in, mid, 1, act=act),
                ConvBN(mid, mid, k, depthwise=True),
                ConvBN(mid, mid, 1, act=act),
                ConvBN(mid, mid, k, depthwise=True),
                ConvBN(mid, branch_out, 1, act=act),
            ]
        else:
            layers = [
                ConvBN(branch_in, mid, 1, act=act),
                ConvBN(mid, mid, k, stride, depthwise=True),
                ConvBN(mid, branch_out, 1, act=act),
            ]
        self.branch = nn.ModuleList(layers)
        self.se = SqueezeExcite(branch_out) if spec.se else None

    @staticmethod
    def passthrough(cin: int, cout: int) -> int:
        return min(cin // 2, cout // 2)

    def _branch(self, x: torch.Tensor, out: int, kernel: int | None) -> torch.Tensor:
        for layer in self.branch:
            # Only pointwise convs choose a width; depthwise ones follow their input.
            depthwise = cast(ConvBN, layer).conv.depthwise  # the branch holds ConvBNs only
            x = layer(x, out) if not depthwise else layer(x, kernel=kernel)
        return self.se(x) if self.se is not None else x

    def forward(
        self,
        x: torch.Tensor,
        cout: int | None = None,
        kernel: int | None = None,
        expansion: int | None = None,
    ) -> torch.Tensor:
        cin, cout = x.shape[1], cout or self.max_out
        if self.proj is None:  # stride 1
            left = self.passthrough(cin, cout)
            y = torch.cat([x[:, :left], self._branch(x[:, left:], cout - left, kernel)], 1)
        else:
            dw, pw = self.proj
            y = torch.cat(
                [pw(dw(x, kernel=kernel), cout // 2), self._branch(x, cout - cout // 2, kernel)], 1
            )
        return channel_shuffle(y, 2)


class ConvBlock(_Block):
    """Plain k x k conv-bn-act."""

    def __init__(self, spec: OpSpec, cin: int, cout: int, stride: int, act: str) -> None:
        super().__init__(spec, cin, cout, stride)
        self.conv = ConvBN(cin, cout, _kernel(spec), stride, act=act)

    def forward(
        self,
        x: torch.Tensor,
        cout: int | None = None,
        kernel: int | None = None,
        expansion: int | None = None,
    ) -> torch.Tensor:
        return self.conv(x, cout or self.max_out, kernel)


class ResidualBlock(_Block):
    """ResNet basic block: two k x k convs and a shortcut (1x1 projection when shapes differ)."""

    def __init__(
        self, spec: OpSpec, cin: int, cout: int, stride: int, act: str, dynamic: bool = False
    ) -> None:
        super().__init__(spec, cin, cout, stride)
        k = _kernel(spec)
        self.conv1 = ConvBN(cin, cout, k, stride, act=act)
        self.conv2 = ConvBN(cout, cout, k)
        needs_proj = dynamic or not self.residual(cin, cout)
        self.shortcut = ConvBN(cin, cout, 1, stride) if needs_proj else None
        self.act = make_act(act)

    def forward(
        self,
        x: torch.Tensor,
        cout: int | None = None,
        kernel: int | None = None,
        expansion: int | None = None,
    ) -> torch.Tensor:
        cin, cout = x.shape[1], cout or self.max_out
        y = self.conv2(self.conv1(x, cout, kernel), cout, kernel)
        sc = x if self.residual(cin, cout) else self._projection(self.shortcut, cin, cout)(x, cout)
        return self.act(y + sc)


class Skip(_Block):
    """Identity where shapes match; otherwise FBNet's skip: a 1x1 conv-bn-act with the stride."""

    def __init__(
        self, spec: OpSpec, cin: int, cout: int, stride: int, act: str, dynamic: bool = False
    ) -> None:
        super().__init__(spec, cin, cout, stride)
        needs_proj = dynamic or not self.residual(cin, cout)
        self.proj = ConvBN(cin, cout, 1, stride, act=act) if needs_proj else None

    def forward(
        self,
        x: torch.Tensor,
        cout: int | None = None,
        kernel: int | None = None,
        expansion: int | None = None,
    ) -> torch.Tensor:
        cin, cout = x.shape[1], cout or self.max_out
        return x if self.residual(cin, cout) else self._projection(self.proj, cin, cout)(x, cout)


def build_op(
    name: str | OpSpec,
    cin: int,
    cout: int,
    stride: int,
    act: str = "relu",
    dynamic: bool = False,
) -> nn.Module:
    """Build operator ``name`` mapping ``cin`` to ``cout`` channels at ``stride``.

    ``act`` is the layer's activation unless the name carries its own. With ``dynamic`` the
    block can also run at any narrower input and output width (a supernet choice)."""
    spec = parse_op(name) if isinstance(name, str) else name
    problem = check_op(spec, cin, cout, stride)
    if problem:
        raise ValueError(
            f"cannot build {spec.name} (cin={cin}, cout={cout}, stride={stride}): {problem}"
        )
    act = spec.act or act
    fam = spec.family
    if fam == "mb":
        return MBConv(spec, cin, cout, stride, act)
    if fam == "ds":
        return DepthwiseSeparable(spec, cin, cout, stride, act)
    if fam == "fmb":
        return FusedMBConv(spec, cin, cout, stride, act)
    if fam in ("shuffle", "shufflex"):
        return ShuffleBlock(spec, cin, cout, stride, act, dynamic)
    if fam == "conv":
        return ConvBlock(spec, cin, cout, stride, act)
    if fam == "res":
        return ResidualBlock(spec, cin, cout, stride, act, dynamic)
    return Skip(spec, cin, cout, stride, act, dynamic)
