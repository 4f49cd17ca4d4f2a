"""Softsign ``x / (1 + |x|)``: increasing, convex for x < 0, concave for x > 0 (S-shaped),
``f' = 1 / (1 + |x|)^2``; relaxed by :class:`perturbkit.ops.curvature.Curve`.

Shapes: elementwise, ``(*lead, *declared)``.
"""
from __future__ import annotations

import torch

from perturbkit.graph.ir import Node
from perturbkit.ops.curvature import Curve, CurveRule

Tensor = torch.Tensor


class SoftsignCurve(Curve):
    breaks, signs = (0.0,), (1, -1)

    def f(self, x: Tensor) -> Tensor:
        return x / (1 + x.abs())

    def df(self, x: Tensor) -> Tensor:
        d = 1 + x.abs()
        return 1 / (d * d)

    def d2f(self, x: Tensor) -> Tensor:
        d = 1 + x.abs()
        return -2 * torch.sign(x) / (d * d * d)


SOFTSIGN = SoftsignCurve()


class Softsign(CurveRule):
    op_type = "Softsign"
    monotone = True
    lines_in_float64 = True

    def curve(self, node: Node, *consts) -> SoftsignCurve:
        return SOFTSIGN
