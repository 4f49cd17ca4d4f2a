"""HardSigmoid ``clip(alpha x + beta, 0, 1)`` and HardSwish ``x clip(x / 6 + 1 / 2, 0, 1)``.

HardSigmoid is piecewise linear (kinks at ``-beta / alpha`` and ``(1 - beta) / alpha``):
its lines are the convex and concave envelopes' supporting lines, chords between the box's
ends and the kinks inside it (:class:`perturbkit.ops.curvature.Curve` with linear pieces),
and only boxes with a kink strictly inside need CROWN bounds.  HardSwish (Howard et al.,
"Searching for MobileNetV3", ICCV 2019) is 0 for x <= -3, the convex parabola
``x (x + 3) / 6`` on ``[-3, 3]`` (minimum -3/8 at -3/2) and ``x`` for x >= 3, with concave
kinks at +-3; boxes inside one linear piece are exact.

Shapes: elementwise, ``(*lead, *declared)``.
"""
from __future__ import annotations

import functools

import torch

from perturbkit.graph.ir import Node
from perturbkit.ops.curvature import Curve, CurveRule

Tensor = torch.Tensor


class HardSigmoidCurve(Curve):
    smooth = False

    def __init__(self, alpha: float, beta: float):
        self.alpha, self.beta = alpha, beta
        if alpha == 0:
            self.breaks, self.signs = (), (0,)
        else:
            self.breaks, self.signs = tuple(sorted((-beta / alpha, (1 - beta) / alpha))), (0, 0, 0)

    def f(self, x: Tensor) -> Tensor:
        return (self.alpha * x + self.beta).clamp(0.0, 1.0)

    def df(self, x: Tensor) -> Tensor:
        y = self.alpha * x + self.beta
        return torch.where((y > 0) & (y < 1), torch.full_like(x, self.alpha), torch.zeros_like(x))

    def d2f(self, x: Tensor) -> Tensor:
        return torch.zeros_like(x)

    def unstable(self, lo: Tensor, hi: Tensor) -> Tensor:
        out = torch.zeros_like(lo, dtype=torch.bool)
        for b in self.breaks:
            out |= (lo < b) & (hi > b)
        return out


class HardSwishCurve(Curve):
    breaks, signs, extrema, smooth = (-3.0, 3.0), (0, 1, 0), (-1.5,), False

    def f(self, x: Tensor) -> Tensor:
        return x * (x / 6 + 0.5).clamp(0.0, 1.0)

    def df(self, x: Tensor) -> Tensor:
        return torch.where(x <= -3, torch.zeros_like(x), torch.where(x >= 3, torch.ones_like(x), x / 3 + 0.5))

    def d2f(self, x: Tensor) -> Tensor:
        return torch.where((x > -3) & (x < 3), torch.full_like(x, 1 / 3), torch.zeros_like(x))


@functools.lru_cache(maxsize=16)
def hard_sigmoid_curve(alpha: float, beta: float) -> HardSigmoidCurve:
    return HardSigmoidCurve(alpha, beta)


HARD_SWISH = HardSwishCurve()


class HardSigmoid(CurveRule):
    op_type = "HardSigmoid"
    monotone = True

    def curve(self, node: Node, *consts) -> HardSigmoidCurve:
        return hard_sigmoid_curve(float(node.attrs.get("alpha", 0.2)), float(node.attrs.get("beta", 0.5)))


class HardSwish(CurveRule):
    op_type = "HardSwish"
    lines_in_float64 = True

    def curve(self, node: Node, *consts) -> HardSwishCurve:
        return HARD_SWISH
