"""Abs: convex, piecewise linear, not monotone.

Stable elements (``l >= 0`` or ``u <= 0``) are exact.  For ``l < 0 < u`` the upper line is
the chord through ``(l, -l)`` and ``(u, u)`` (slope ``(u + l) / (u - l)``, intercept
``-2 u l / (u - l)``), and the lower line passes through the origin with slope ``+1`` when
``u >= -l`` and ``-1`` otherwise (the choice of smaller area, as for ReLU in CROWN,
Zhang et al. 2018).  The chord intercept is moved up by a bound on its rounding error.

Shapes: ``lo``, ``hi``: ``(*lead, *declared)``; every line tensor has the same shape.
"""
from __future__ import annotations

import torch

from perturbkit.graph.ir import Node
from perturbkit.ops.base import ActivationRule, Interval, Line, Relaxation
from perturbkit.ops.util import finite_or_constant, rounding_slack

Tensor = torch.Tensor


class Abs(ActivationRule):
    op_type = "Abs"

    def forward(self, node: Node, x: Tensor, *consts) -> Tensor:
        return x.abs()

    def interval(self, node: Node, x: Interval, *consts) -> Interval:
        a, b = x.lo.abs(), x.hi.abs()
        cross = (x.lo < 0) & (x.hi > 0)
        lo = torch.where(cross, torch.zeros_like(a), torch.minimum(a, b))
        return Interval(lo, torch.maximum(a, b))

    def unstable(self, node: Node, lo: Tensor, hi: Tensor, *consts) -> Tensor:
        return (lo < 0) & (hi > 0)

    def relax(self, node: Node, lo: Tensor, hi: Tensor, *consts) -> Relaxation:
        one, zero = torch.ones_like(lo), torch.zeros_like(lo)
        cross = self.unstable(node, lo, hi)
        sign = torch.where(lo >= 0, one, -one)  # stable: x or -x
        w = torch.where(cross, hi - lo, one)
        cs = torch.where(cross, (hi + lo) / w, sign)
        cc = torch.where(cross, -2 * (hi * (lo / w)), zero)
        cc = cc + torch.where(cross, rounding_slack(cs, cc, lo, hi), zero)
        ls = torch.where(cross, torch.where(hi >= -lo, one, -one), sign)
        box = self.interval(node, Interval(lo, hi))
        (ls, lc), (cs, cc) = finite_or_constant((ls, zero), (cs, cc), lo, hi, box.lo, box.hi)
        return Relaxation(lower=Line(ls, lc), upper=Line(cs, cc))
