"""Sin and Cos: periodic, with pieces of alternating curvature between inflection points.

``sin(x + phi)`` (``phi = 0`` for Sin, ``pi / 2`` for Cos) has ``f'' = -f``: on
``(k pi - phi, (k + 1) pi - phi)`` it is concave for even ``k`` and convex for odd ``k``.  A box
of width below ``PERIODS * 2 pi`` meets at most ``2 PERIODS + 1`` such pieces, found per
element (:meth:`TrigCurve.pieces`: per-element curvature signs) and relaxed by
:class:`perturbkit.ops.curvature.Curve`, with slope 0 as one more CROWN candidate (the
bitangent through two extrema of equal value; other bitangents of two valleys are not
candidates, so CROWN's line on a box spanning more than a period may be slightly short of
the least-area one; it is always sound).  Breakpoints and extrema are located in float64
and rounded to the working precision, so they are the representable points nearest to the
true ones.  Wider boxes, or boxes with a bound beyond ``2^20`` in magnitude (where float32
has too few points per period to locate them), get their interval as constant lines.  The interval includes ``+-1`` whenever
a maximum / minimum ``pi / 2 - phi + 2 k pi`` / ``3 pi / 2 - phi + 2 k pi`` lies in the box.

Shapes: elementwise, ``(*lead, *declared)``.
"""
from __future__ import annotations

import math
from typing import ClassVar

import torch

from perturbkit.graph.ir import Node
from perturbkit.ops.base import Interval
from perturbkit.ops.curvature import Curve, CurveRule, Sign
from perturbkit.ops.util import finite_box

Tensor = torch.Tensor

#: beyond this magnitude a box gets the interval [-1, 1]
LIMIT = 2.0 ** 20
#: boxes up to this many periods wide get lines (cost: 2 PERIODS + 1 pieces per element)
PERIODS = 2


class TrigCurve(Curve):
    phase: ClassVar[float] = 0.0

    def _small(self, lo: Tensor, hi: Tensor) -> Tensor:
        return finite_box(lo, hi) & (hi - lo < 2 * math.pi) & (lo.abs() <= LIMIT) & (hi.abs() <= LIMIT)

    def ok(self, lo: Tensor, hi: Tensor) -> Tensor:
        return finite_box(lo, hi) & (hi - lo < PERIODS * 2 * math.pi) & (lo.abs() <= LIMIT) & (hi.abs() <= LIMIT)

    def pieces(self, l: Tensor, u: Tensor) -> tuple[list[Tensor], list[Sign]]:
        l64 = l.detach().double()
        k0 = torch.floor((l64 + self.phase) / math.pi)
        pts = [l]
        for j in range(1, 2 * PERIODS + 1):
            b = ((k0 + j) * math.pi - self.phase).to(l.dtype)
            pts.append(torch.maximum(torch.minimum(b, u), l))
        pts.append(u)
        even = torch.remainder(k0, 2) == 0
        s_first = torch.where(even, -torch.ones_like(l), torch.ones_like(l))  # concave on even pieces
        return pts, [s_first if j % 2 == 0 else -s_first for j in range(2 * PERIODS + 1)]

    def critical(self, l: Tensor, u: Tensor) -> list[Tensor]:
        l64 = l.detach().double()
        out = []
        for peak in (math.pi / 2 - self.phase, 3 * math.pi / 2 - self.phase):
            c = (peak + 2 * math.pi * torch.ceil((l64 - peak) / (2 * math.pi))).to(l.dtype)
            out.append(torch.maximum(torch.minimum(c, u), l))
        return out

    def extra_slopes(self, l: Tensor, u: Tensor) -> list[Tensor]:
        return [torch.zeros_like(l)]

    def interval(self, lo: Tensor, hi: Tensor) -> Interval:
        small = self._small(lo, hi)
        zero = torch.zeros_like(lo)
        box = super().interval(torch.where(small, lo, zero), torch.where(small, hi, zero))
        one = torch.ones_like(lo)
        return Interval(torch.where(small, box.lo.clamp(min=-1.0), -one), torch.where(small, box.hi.clamp(max=1.0), one))


class SinCurve(TrigCurve):
    phase = 0.0

    def f(self, x: Tensor) -> Tensor:
        return torch.sin(x)

    def df(self, x: Tensor) -> Tensor:
        return torch.cos(x)

    def d2f(self, x: Tensor) -> Tensor:
        return -torch.sin(x)


class CosCurve(TrigCurve):
    phase = math.pi / 2

    def f(self, x: Tensor) -> Tensor:
        return torch.cos(x)

    def df(self, x: Tensor) -> Tensor:
        return -torch.sin(x)

    def d2f(self, x: Tensor) -> Tensor:
        return -torch.cos(x)


SIN, COS = SinCurve(), CosCurve()


class Sin(CurveRule):
    op_type = "Sin"
    lines_in_float64 = True

    def curve(self, node: Node, *consts) -> SinCurve:
        return SIN


class Cos(CurveRule):
    op_type = "Cos"
    lines_in_float64 = True

    def curve(self, node: Node, *consts) -> CosCurve:
        return COS
