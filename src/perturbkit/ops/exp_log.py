"""Exp and Log: convex and concave, relaxed by tangent and chord (:mod:`perturbkit.ops.convex`).

* ``Exp``: convex on the reals; lower line the tangent, upper line the chord, whose slope
  ``exp(l) expm1(u - l) / (u - l)`` has no cancellation.  Boxes whose upper bound is within
  8 of ``log(finfo.max)`` get constant lines (the function or ``slope * x`` would overflow).
* ``Log``: concave on ``x > 0`` with a pole at 0; lower line the chord (slope
  ``log1p((u - l) / l) / (u - l)``), upper line the tangent.  Boxes reaching ``x <= 0`` are
  relaxed on their positive part: the lower line is then ``-finfo.max`` (see the domain
  rules in :mod:`perturbkit.ops.convex`).

Shapes: elementwise, ``(*lead, *declared)``.
"""
from __future__ import annotations

import math

import torch

from perturbkit.graph.ir import Node
from perturbkit.ops.convex import ConvexCurve
from perturbkit.ops.curvature import CurveRule
from perturbkit.ops.util import finite_box

Tensor = torch.Tensor


class ExpCurve(ConvexCurve):
    domain, sigma = "real", 1

    def f(self, x: Tensor) -> Tensor:
        return torch.exp(x)

    def df(self, x: Tensor) -> Tensor:
        return torch.exp(x)

    def chord_slope(self, l: Tensor, u: Tensor, fl: Tensor, fu: Tensor) -> Tensor:
        w = u - l
        narrow = (w > 0) & (w < 1)  # expm1 without cancellation; a wide box has no cancellation
        ws = torch.where(narrow, w, torch.ones_like(w))
        wide = torch.where(w >= 1, w, torch.ones_like(w))
        return torch.where(narrow, fl * (torch.expm1(ws) / ws), torch.where(w >= 1, (fu - fl) / wide, fl))

    def ok(self, lo: Tensor, hi: Tensor) -> Tensor:
        return finite_box(lo, hi) & (hi <= math.log(torch.finfo(lo.dtype).max) - 8)


class LogCurve(ConvexCurve):
    domain, pole, sigma, pole_order = "positive", True, -1, 2.0

    def f(self, x: Tensor) -> Tensor:
        return torch.log(x)

    def df(self, x: Tensor) -> Tensor:
        return 1 / x

    def chord_slope(self, l: Tensor, u: Tensor, fl: Tensor, fu: Tensor) -> Tensor:
        w = u - l
        pos = (w > 0) & (l > 0)
        ws = torch.where(pos, w, torch.ones_like(w))
        ls = torch.where(pos, l, torch.ones_like(l))
        return torch.where(pos, torch.log1p(ws / ls) / ws, 1 / ls)


EXP, LOG = ExpCurve(), LogCurve()


class Exp(CurveRule):
    op_type = "Exp"
    monotone = True
    lines_in_float64 = True

    def curve(self, node: Node, *consts) -> ExpCurve:
        return EXP


class Log(CurveRule):
    op_type = "Log"
    monotone = True

    def curve(self, node: Node, *consts) -> LogCurve:
        return LOG
