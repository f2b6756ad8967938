"""Operator names: a short block string per candidate operator, parsed into an ``OpSpec``.

Grammar (tokens joined by ``_``, in this order)::

    FAMILY [k<kernel>] [e<expansion>] [g<groups>] [se] [relu|relu6|hswish]

Families: ``mb`` (MobileNetV2 inverted residual; with ``e1`` it keeps FBNet's 1x1 expansion),
``ds`` (depthwise-separable), ``fmb`` (fused MBConv), ``shuffle`` (ShuffleNetV2 unit),
``shufflex`` (its Xception-style unit), ``conv`` (conv-bn-act), ``res`` (ResNet basic block)
and ``skip``. FBNet's own names (``k3_e1``, ``k5_e1_g2``, ...) are accepted as aliases of
``mb_...``. Torch-free, so device and latency code can read names without building modules.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hurricane.errors import UserError

FAMILIES = ("mb", "ds", "fmb", "shuffle", "shufflex", "conv", "res", "skip")
ACT_NAMES = ("relu", "relu6", "hswish")
KERNELS = (1, 3, 5, 7, 9)

# Which tokens each family takes: (kernel, expansion, groups, se).
_TOKENS = {
    "mb": ("required", "required", "optional", True),
    "ds": ("required", None, None, True),
    "fmb": ("required", "required", None, True),
    "shuffle": ("required", None, None, True),
    "shufflex": (None, None, None, True),
    "conv": ("required", None, None, False),
    "res": ("required", None, None, False),
    "skip": (None, None, None, False),
}

_FBNET_ALIAS = re.compile(r"^k\d+_e\d+(_g\d+)?$")

# The candidate vocabulary of the default space: 34 operators.
VOCABULARY: tuple[str, ...] = (
    *(f"mb_k{k}_e{e}{se}" for k in (3, 5, 7) for e in (3, 6) for se in ("", "_se")),
    "mb_k3_e1",
    "mb_k5_e1",
    "mb_k3_e1_g2",
    "mb_k5_e1_g2",
    "ds_k3",
    "ds_k5",
    "ds_k7",
    *(f"fmb_k{k}_e{e}" for k in (3, 5) for e in (3, 6)),
    *(f"shuffle_k{k}{se}" for k in (3, 5, 7) for se in ("", "_se")),
    "shufflex",
    "shufflex_se",
    "conv_k3",
    "res_k3",
    "skip",
)

FBNET_OPS: tuple[str, ...] = (
    "k3_e1",
    "k3_e1_g2",
    "k3_e3",
    "k3_e6",
    "k5_e1",
    "k5_e1_g2",
    "k5_e3",
    "k5_e6",
    "skip",
)


class OpNameError(UserError):
    """An operator name that does not follow the grammar."""


@dataclass(frozen=True)
class OpSpec:
    family: str
    kernel: int | None = None
    expansion: int | None = None
    groups: int = 1
    se: bool = False
    act: str | None = None

    @property
    def name(self) -> str:
        parts = [self.family]
        if self.kernel is not None:
            parts.append(f"k{self.kernel}")
        if self.expansion is not None:
            parts.append(f"e{self.expansion}")
        if self.groups != 1:
            parts.append(f"g{self.groups}")
        if self.se:
            parts.append("se")
        if self.act:
            parts.append(self.act)
        return "_".join(parts)

    def with_act(self, act: str | None) -> OpSpec:
        return OpSpec(self.family, self.kernel, self.expansion, self.groups, self.se, act)

    def channel_multiple(self) -> int:
        """Channel counts (in, out and hidden) must be multiples of this."""
        return self.groups


def parse_op(name: str) -> OpSpec:
    """Parse an operator name; raise ``OpNameError`` with a one-line reason."""
    if not isinstance(name, str) or not name:
        raise OpNameError(f"operator name must be a non-empty string, got {name!r}")
    if _FBNET_ALIAS.match(name):
        name = "mb_" + name
    family, *tokens = name.split("_")
    if family not in _TOKENS:
        raise OpNameError(
            f"unknown operator {name!r}: family {family!r} is not one of {', '.join(FAMILIES)}"
        )
    want_k, want_e, want_g, se_ok = _TOKENS[family]
    kernel = expansion = act = None
    groups, se = 1, False
    order = 0  # tokens must come in grammar order, so each name has one spelling
    for tok in tokens:
        m = re.fullmatch(r"([keg])(\d+)", tok)
        rank = {"k": 1, "e": 2, "g": 3}[m.group(1)] if m else 4 if tok == "se" else 5
        if tok not in ACT_NAMES and tok != "se" and not m:
            raise OpNameError(f"unknown operator {name!r}: token {tok!r} is not understood")
        if rank <= order:
            raise OpNameError(
                f"unknown operator {name!r}: token {tok!r} is repeated or out of order "
                "(order: family, k, e, g, se, activation)"
            )
        order = rank
        if m:
            letter, value = m.group(1), int(m.group(2))
            allowed = {"k": want_k, "e": want_e, "g": want_g}[letter]
            if allowed is None:
                raise OpNameError(
                    f"unknown operator {name!r}: {family!r} takes no {letter!r} token"
                )
            if letter == "k":
                if value not in KERNELS:
                    raise OpNameError(
                        f"unknown operator {name!r}: kernel {value} is not one of {KERNELS}"
                    )
                kernel = value
            elif letter == "e":
                if not 1 <= value <= 8:
                    raise OpNameError(f"unknown operator {name!r}: expansion must be 1..8")
                expansion = value
            else:
                if not 1 <= value <= 8:
                    raise OpNameError(f"unknown operator {name!r}: groups must be 1..8")
                groups = value
        elif tok == "se":
            if not se_ok:
                raise OpNameError(f"unknown operator {name!r}: {family!r} takes no squeeze-excite")
            se = True
        else:
            act = tok
    if want_k == "required" and kernel is None:
        raise OpNameError(f"unknown operator {name!r}: {family!r} needs a kernel token like k3")
    if want_e == "required" and expansion is None:
        raise OpNameError(f"unknown operator {name!r}: {family!r} needs an expansion token like e6")
    return OpSpec(family, kernel, expansion, groups, se, act)


def canonical(name: str) -> str:
    """The canonical spelling of an operator name (FBNet aliases become ``mb_...``)."""
    return parse_op(name).name
