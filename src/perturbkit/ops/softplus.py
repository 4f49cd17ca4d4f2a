"""Softplus ``f(x) = log(1 + exp(x))``: convex and increasing.

Relaxation for a convex function (as in CROWN, Zhang et al., NeurIPS 2018): the upper line
is the chord through ``(l, f(l))`` and ``(u, f(u))``; the lower line is the tangent at the
midpoint ``(l + u) / 2``, the tangent point that minimises the area between the tangent and
``f`` on ``[l, u]`` (d/dt of that area is ``-f''(t) (l + u - 2t) (u - l) / 2``).
The chord slope of a narrow box is computed without cancellation,
``f(u) - f(l) = log1p(sigmoid(l) expm1(u - l))``; intercepts are moved outward by a bound on
their rounding error, so the lines are sound in float32 and float64, ``l == u`` included.

Shapes: ``lo``, ``hi``: ``(*lead, *declared)``; every line tensor has the same shape.
"""
from __future__ import annotations

import torch

from perturbkit.graph.ir import Node
from perturbkit.ops.base import ActivationRule, Interval, Line, Relaxation
from perturbkit.ops.util import finite_box, finite_or_constant, rounding_slack, widen

Tensor = torch.Tensor


def softplus(x: Tensor) -> Tensor:
    """``log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|))``: accurate, no overflow, no threshold."""
    return torch.clamp(x, min=0) + torch.log1p(torch.exp(-x.abs()))


class Softplus(ActivationRule):
    op_type = "Softplus"
    lines_in_float64 = True
    monotone = True

    def forward(self, node: Node, x: Tensor, *consts) -> Tensor:
        return softplus(x)

    def interval(self, node: Node, x: Interval, *consts) -> Interval:
        return Interval(*widen(softplus(x.lo), softplus(x.hi)))

    @staticmethod
    def chord_slope(l: Tensor, u: Tensor, fl: Tensor, fu: Tensor) -> Tensor:
        w = u - l
        narrow = w < 1
        w1 = torch.where(narrow, w, torch.zeros_like(w))
        delta = torch.where(narrow, torch.log1p(torch.sigmoid(l) * torch.expm1(w1)), fu - fl)
        pos = w > 0
        ws = torch.where(pos, w, torch.ones_like(w))
        return torch.where(pos, delta / ws, torch.sigmoid(l))

    def relax(self, node: Node, lo: Tensor, hi: Tensor, *consts) -> Relaxation:
        ok = finite_box(lo, hi)
        zero = torch.zeros_like(lo)
        l, u = torch.where(ok, lo, zero), torch.where(ok, hi, zero)
        fl, fu = softplus(l), softplus(u)
        us = self.chord_slope(l, u, fl, fu)
        uc = fl - us * l
        uc = uc + rounding_slack(us, uc, l, u, fl, fu)
        m = l / 2 + u / 2
        ls = torch.sigmoid(m)
        lc = softplus(m) - ls * m
        lc = lc - rounding_slack(ls, lc, l, u, fl, fu)
        box = self.interval(node, Interval(lo, hi))
        (ls, lc), (us, uc) = finite_or_constant((ls, lc), (us, uc), lo, hi, box.lo, box.hi)
        return Relaxation(lower=Line(ls, lc), upper=Line(us, uc))
