"""Sliceable layers: one weight tensor at the largest width, used at any smaller width.

As in Once-for-All's dynamic operators, a layer running with ``c`` channels uses the first
``c`` of its weight along that axis. The same classes serve the supernet (built at the largest
width, run narrower) and a standalone subnet (built at its own width, where no slicing happens),
so a subnet extracted by copying ``active_*`` tensors computes exactly what the supernet path did.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "hswish": nn.Hardswish,
}


def make_act(name: str) -> nn.Module:
    return ACTIVATIONS[name]()


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round to a multiple of ``divisor`` without dropping more than 10% (MobileNet's rule)."""
    min_value = divisor if min_value is None else min_value
    new = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


_SHUFFLE_PERMS: dict[tuple[int, int], torch.Tensor] = {}


def channel_shuffle(x: torch.Tensor, groups: int = 2) -> torch.Tensor:
    """ShuffleNet's channel shuffle; channel counts not divisible by ``groups`` interleave
    unequal groups by an index permutation instead of a reshape."""
    n, c, h, w = x.shape
    if groups <= 1:
        return x
    if c % groups == 0:
        return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)
    perm = _SHUFFLE_PERMS.get((c, groups))
    if perm is None:
        size = math.ceil(c / groups)
        order = [g * size + i for i in range(size) for g in range(groups) if g * size + i < c]
        perm = torch.tensor(order, dtype=torch.long)
        _SHUFFLE_PERMS[(c, groups)] = perm
    return x.index_select(1, perm.to(x.device))


class DynConv2d(nn.Module):
    """k x k convolution with 'same' padding whose in/out channels can be sliced.

    ``depthwise`` convs have one filter per channel and follow their input width; grouped
    convs slice each group separately so the group structure survives narrowing.
    """

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int = 1,
        stride: int = 1,
        groups: int = 1,
        depthwise: bool = False,
        bias: bool = False,
    ) -> None:
        super().__init__()
        if depthwise:
            cout, groups = cin, 1
        self.max_in, self.max_out = cin, cout
        self.kernel, self.stride, self.groups, self.depthwise = kernel, stride, groups, depthwise
        self.padding = kernel // 2
        fan_in = 1 if depthwise else cin // groups
        self.weight = nn.Parameter(torch.empty(cout, fan_in, kernel, kernel))
        # He init over the fan-out of one group (timm's rule): torch's own fan_out ignores
        # groups and would start depthwise filters ~sqrt(channels) times too small.
        fan_out = kernel * kernel * (1 if depthwise else cout // groups)
        nn.init.normal_(self.weight, std=math.sqrt(2.0 / fan_out))
        self.bias = nn.Parameter(torch.zeros(cout)) if bias else None

    def active_weight(self, cin: int, cout: int, kernel: int | None = None) -> torch.Tensor:
        """The first ``cin``/``cout`` channels and the centre ``kernel`` x ``kernel`` taps
        (Single-Path NAS's superkernel: a smaller kernel is the centre of the largest)."""
        w = self._channels(cin, cout)
        if kernel is None or kernel == self.kernel:
            return w
        if kernel > self.kernel or kernel % 2 != self.kernel % 2:
            raise ValueError(f"a {self.kernel}x{self.kernel} conv has no {kernel}x{kernel} centre")
        c = (self.kernel - kernel) // 2
        return w[:, :, c : c + kernel, c : c + kernel]

    def _channels(self, cin: int, cout: int) -> torch.Tensor:
        if self.depthwise:
            return self.weight if cin == self.max_out else self.weight[:cin]
        if cin == self.max_in and cout == self.max_out:
            return self.weight
        g, k = self.groups, self.kernel
        if g == 1:
            return self.weight[:cout, :cin]
        per_group = self.weight.view(g, self.max_out // g, self.max_in // g, k, k)
        return per_group[:, : cout // g, : cin // g].reshape(cout, cin // g, k, k)

    def active_bias(self, cout: int) -> torch.Tensor | None:
        if self.bias is None or cout == self.max_out:
            return self.bias
        return self.bias[:cout]

    def forward(
        self, x: torch.Tensor, cout: int | None = None, kernel: int | None = None
    ) -> torch.Tensor:
        cin = x.shape[1]
        if self.depthwise:
            cout = cin
        elif cout is None:
            cout = self.max_out
        groups = cin if self.depthwise else self.groups
        k = kernel or self.kernel
        return F.conv2d(
            x,
            self.active_weight(cin, cout, k),
            self.active_bias(cout),
            self.stride,
            k // 2,
            1,
            groups,
        )

    def load_active_from(self, other: DynConv2d) -> None:
        """Copy ``other``'s weights, sliced to this layer's size and kernel, into this layer."""
        with torch.no_grad():
            self.weight.copy_(other.active_weight(self.max_in, self.max_out, self.kernel))
            if self.bias is not None:
                bias = other.active_bias(self.max_out)
                if bias is None:
                    raise ValueError("cannot load a conv with a bias from one without")
                self.bias.copy_(bias)


def _tracked(buffer: torch.Tensor | None) -> torch.Tensor:
    """A running-statistics buffer, which torch leaves None without track_running_stats."""
    if buffer is None:
        raise ValueError("DynBatchNorm2d weights are copied with their running statistics")
    return buffer


class DynBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm whose statistics and affine parameters are sliced to the input width."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        if c == self.num_features:
            return super().forward(x)
        if self.momentum is None:  # a cumulative average would need num_batches_tracked kept
            raise ValueError("DynBatchNorm2d runs narrower only with a momentum")
        mean, var = self.running_mean, self.running_var
        training = self.training or mean is None
        # Slices of the first c entries are contiguous views, so the running statistics
        # are updated in place in the full buffers, as Once-for-All does.
        return F.batch_norm(
            x,
            mean[:c] if mean is not None else None,
            var[:c] if var is not None else None,
            self.weight[:c],
            self.bias[:c],
            training,
            self.momentum,
            self.eps,
        )

    def load_active_from(self, other: DynBatchNorm2d) -> None:
        c = self.num_features
        with torch.no_grad():
            self.weight.copy_(other.weight[:c])
            self.bias.copy_(other.bias[:c])
            _tracked(self.running_mean).copy_(_tracked(other.running_mean)[:c])
            _tracked(self.running_var).copy_(_tracked(other.running_var)[:c])
            _tracked(self.num_batches_tracked).copy_(_tracked(other.num_batches_tracked))


class DynLinear(nn.Linear):
    """Linear layer whose input features are sliced to the input width."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cin = x.shape[-1]
        if cin == self.in_features:
            return super().forward(x)
        return F.linear(x, self.weight[:, :cin], self.bias)

    def load_active_from(self, other: DynLinear) -> None:
        with torch.no_grad():
            self.weight.copy_(other.weight[:, : self.in_features])
            if self.bias is not None:
                self.bias.copy_(other.bias)


class ConvBN(nn.Module):
    """conv -> batch norm -> optional activation, the unit most blocks are made of."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int = 1,
        stride: int = 1,
        groups: int = 1,
        depthwise: bool = False,
        act: str | None = None,
    ) -> None:
        super().__init__()
        self.conv = DynConv2d(cin, cout, kernel, stride, groups, depthwise)
        self.bn = DynBatchNorm2d(self.conv.max_out)
        self.act = make_act(act) if act else nn.Identity()

    def forward(
        self, x: torch.Tensor, cout: int | None = None, kernel: int | None = None
    ) -> torch.Tensor:
        return self.act(self.bn(self.conv(x, cout, kernel)))


class SqueezeExcite(nn.Module):
    """Squeeze-excite with hard-sigmoid gating (MobileNetV3); the bottleneck width follows
    the active channel count, so narrowing keeps the same 1/4 ratio."""

    def __init__(self, channels: int, ratio: float = 0.25, divisor: int = 8) -> None:
        super().__init__()
        self.ratio, self.divisor = ratio, divisor
        hidden = self.hidden(channels)
        self.reduce = DynConv2d(channels, hidden, bias=True)
        self.expand = DynConv2d(hidden, channels, bias=True)
        self.act = nn.ReLU()
        self.gate = nn.Hardsigmoid()

    def hidden(self, channels: int) -> int:
        return make_divisible(channels * self.ratio, self.divisor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        s = x.mean((2, 3), keepdim=True)
        s = self.act(self.reduce(s, self.hidden(c)))
        return x * self.gate(self.expand(s, c))


def load_active_weights(target: nn.Module, source: nn.Module) -> None:
    """Fill every sliceable layer of ``target`` from the same-named layer of ``source``.

    ``target`` is built at the active widths; ``source`` may be wider and may hold extra
    layers (a projection the narrower shape does not need)."""
    source_modules = dict(source.named_modules())
    for name, module in target.named_modules():
        if hasattr(module, "load_active_from"):
            module.load_active_from(source_modules[name])
