"""Swish ``x sigmoid(alpha x)`` (ONNX opset 24; SiLU is alpha = 1).

Ramachandran, Zoph, Le, "Searching for Activation Functions", 2017.  With ``y = alpha x``:
``f' = sigmoid(y) (1 + y sigmoid(-y))``, and ``f''`` has the sign of ``alpha (2 - y tanh(y / 2))``,
so for ``alpha > 0`` the function is concave for ``|y| > 2.39935728...``, convex between
(mirrored for ``alpha < 0``); its extremum is at ``y = -1.27846454...`` (both constants
to 40 digits by mpmath).  ``alpha = 0`` is the line ``x / 2``.  Relaxed by
:class:`perturbkit.ops.curvature.Curve`.

Shapes: elementwise, ``(*lead, *declared)``.
"""
from __future__ import annotations

import functools

import torch

from perturbkit.graph.ir import Node
from perturbkit.ops.curvature import Curve, CurveRule
from perturbkit.ops.util import finite_box

Tensor = torch.Tensor

#: the root of ``y tanh(y / 2) = 2`` (inflection points of ``y sigmoid(y)`` at +-it)
INFLECTION = 2.399357280515467667833
#: the minimiser of ``y sigmoid(y)``
MINIMISER = -1.278464542761073795109


class SwishCurve(Curve):
    def __init__(self, alpha: float):
        self.alpha = alpha
        if alpha == 0:
            self.breaks, self.signs, self.extrema = (), (0,), ()
        else:
            b = INFLECTION / abs(alpha)
            s = 1 if alpha > 0 else -1
            self.breaks, self.signs, self.extrema = (-b, b), (-s, s, -s), (MINIMISER / alpha,)

    def f(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(self.alpha * x)

    def df(self, x: Tensor) -> Tensor:
        y = self.alpha * x
        s = torch.sigmoid(y)
        return s * (1 + y * torch.sigmoid(-y))

    def d2f(self, x: Tensor) -> Tensor:
        return self.df_d2f(x)[1]

    def df_d2f(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y = self.alpha * x
        s, sn = torch.sigmoid(y), torch.sigmoid(-y)
        return s * (1 + y * sn), self.alpha * s * sn * (2 + y * (1 - 2 * s))

    def ok(self, lo: Tensor, hi: Tensor) -> Tensor:
        lim = torch.finfo(lo.dtype).max ** 0.5 / max(1.0, abs(self.alpha))
        return finite_box(lo, hi) & (lo.abs() <= lim) & (hi.abs() <= lim)


@functools.lru_cache(maxsize=16)
def swish_curve(alpha: float) -> SwishCurve:
    return SwishCurve(alpha)


class Swish(CurveRule):
    op_type = "Swish"
    lines_in_float64 = True

    def curve(self, node: Node, *consts) -> SwishCurve:
        return swish_curve(float(node.attrs.get("alpha", 1.0)))
