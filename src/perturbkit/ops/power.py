"""Sqrt, Reciprocal and Pow with a constant exponent.

Every power ``x^p`` is convex or concave on each part of its domain, or (odd ``p >= 3``)
S-shaped about 0:

==================  =========================  ==================================================
exponent            domain                     relaxation
==================  =========================  ==================================================
0, 1                reals                      exact (``1``, ``x``)
even ``p >= 2``     reals                      convex: tangent below, chord above
odd ``p >= 3``      reals                      concave for x < 0, convex for x > 0:
                                               :class:`perturbkit.ops.curvature.Curve`
integer ``p < 0``   ``x != 0`` (pole at 0)     convex for x > 0; for x < 0 convex (even) or
                                               concave (odd); a box around 0 is unbounded
fractional ``p``    ``x >= 0`` (``x > 0`` when  ``p > 1`` convex, ``0 < p < 1`` concave (Sqrt),
                    ``p < 0``)                 ``p < 0`` convex with a pole at 0
==================  =========================  ==================================================

Partial functions are relaxed on the part of the box inside their domain, poles give
``+-finfo.max`` constant lines (:mod:`perturbkit.ops.convex`).  Sqrt's chord slope is
``1 / (sqrt(l) + sqrt(u))`` and Reciprocal's ``-1 / (l u)``: no cancellation.  Boxes where
``x^p`` or ``p x^p`` would overflow get constant lines.

Pow's exponent must be a constant scalar (a tensor of one element); a perturbed exponent,
a perturbed base with a constant exponent tensor of several values, or a constant base are
refused with one line naming the node.

Shapes: elementwise, ``(*lead, *declared)``.
"""
from __future__ import annotations

import functools

import torch

from perturbkit.errors import UnsupportedOperatorError
from perturbkit.graph.ir import Node
from perturbkit.ops.base import Interval, Line, Relaxation
from perturbkit.ops.convex import ConvexCurve
from perturbkit.ops.curvature import Curve, CurveRule
from perturbkit.ops.util import broadcast_shapes, finite_box

Tensor = torch.Tensor


def _power_limit(p: float, dtype: torch.dtype) -> float:
    """Largest ``|x|`` for which ``8 |p| |x|^p`` stays below ``finfo.max`` (lines are computed there)."""
    big = torch.finfo(dtype).max
    return min(big ** 0.5, (big / (8 * abs(p))) ** (1 / abs(p)))


class _PowerMixin:
    p: float

    def f(self, x: Tensor) -> Tensor:
        return torch.pow(x, self.p)

    def df(self, x: Tensor) -> Tensor:
        return self.p * torch.pow(x, self.p - 1)

    def d2f(self, x: Tensor) -> Tensor:
        return self.p * (self.p - 1) * torch.pow(x, self.p - 2)

    def sensitivity(self, x: Tensor) -> Tensor:
        """``|x f'(x)| = |p x^p|``: ``pow`` rounds ``p log x`` inside (no overflow beyond ``f``'s own)."""
        return (self.p * torch.pow(x, self.p)).abs()

    def ok(self, lo: Tensor, hi: Tensor) -> Tensor:
        ok = finite_box(lo, hi)
        if self.p > 1:
            lim = _power_limit(self.p, lo.dtype)
            ok = ok & (lo.abs() <= lim) & (hi.abs() <= lim)
        return ok


class ConvexPower(_PowerMixin, ConvexCurve):
    """``x^p`` for even ``p >= 2``, integer ``p < 0`` and fractional ``p``."""

    def __init__(self, p: float):
        self.p = p
        if p == int(p) and p > 0:  # even
            self.domain, self.sigma, self.extrema = "real", 1, (0.0,)
        elif p == int(p):  # negative integer: a pole at 0
            self.domain, self.pole, self.sigma = "nonzero", True, 1
            self.sigma_left = 1 if int(p) % 2 == 0 else -1
        elif p > 1:
            self.domain, self.sigma = "nonnegative", 1
        elif p > 0:
            self.domain, self.sigma, self.singular_edge = "nonnegative", -1, True
        else:
            self.domain, self.pole, self.sigma = "positive", True, 1
        if p < 2 and p != int(p) or p < 0:  # f'' ~ x^(p - 2) is unbounded at 0
            self.pole_order = 2 - p


class OddPower(_PowerMixin, Curve):
    """``x^p`` for odd ``p >= 3``: concave for x < 0, convex for x > 0, increasing."""

    breaks, signs = (0.0,), (-1, 1)

    def sensitivity(self, x: Tensor) -> Tensor:
        return (self.p * torch.pow(x, self.p)).abs()

    def __init__(self, p: int):
        self.p = float(p)


class SqrtCurve(ConvexCurve):
    domain, sigma, singular_edge, pole_order = "nonnegative", -1, True, 1.5

    def f(self, x: Tensor) -> Tensor:
        return torch.sqrt(x)

    def df(self, x: Tensor) -> Tensor:
        return 0.5 / torch.sqrt(x)

    def chord_slope(self, l: Tensor, u: Tensor, fl: Tensor, fu: Tensor) -> Tensor:
        s = fl + fu
        pos = s > 0
        return torch.where(pos, 1 / torch.where(pos, s, torch.ones_like(s)), torch.zeros_like(s))


class ReciprocalCurve(ConvexCurve):
    domain, pole, sigma, sigma_left, pole_order = "nonzero", True, 1, -1, 3.0

    def f(self, x: Tensor) -> Tensor:
        return torch.reciprocal(x)

    def df(self, x: Tensor) -> Tensor:
        return -torch.reciprocal(x * x)

    def chord_slope(self, l: Tensor, u: Tensor, fl: Tensor, fu: Tensor) -> Tensor:
        return -(fl * fu)


class Affine:
    """``x^0 = 1`` and ``x^1 = x``: exact lines ``slope x + intercept``."""

    def __init__(self, slope: float, intercept: float):
        self.slope, self.intercept = slope, intercept

    def f(self, x: Tensor) -> Tensor:
        return torch.pow(x, self.slope)  # 1 for p = 0 (ONNX: also at 0 and NaN), x for p = 1

    def interval(self, lo: Tensor, hi: Tensor) -> Interval:
        if self.slope == 0:
            return Interval(torch.ones_like(lo), torch.ones_like(hi))
        return Interval(lo, hi)

    def relax(self, lo: Tensor, hi: Tensor, alpha=None) -> Relaxation:
        shape = lo.shape if alpha is None else broadcast_shapes(lo.shape, alpha.shape)
        line = Line(torch.full(shape, self.slope, dtype=lo.dtype, device=lo.device),
                    torch.full(shape, self.intercept, dtype=lo.dtype, device=lo.device))
        return Relaxation(lower=line, upper=line)

    def unstable(self, lo: Tensor, hi: Tensor) -> Tensor:
        return torch.zeros_like(lo, dtype=torch.bool)


@functools.lru_cache(maxsize=64)
def power_curve(p: float):
    """The curve of ``x^p`` (see the table in the module docstring)."""
    if p == 0 or p == 1:
        return Affine(p, 1.0 - p)
    if p == int(p) and p >= 3 and int(p) % 2 == 1:
        return OddPower(int(p))
    return ConvexPower(p)


SQRT, RECIPROCAL = SqrtCurve(), ReciprocalCurve()


class Sqrt(CurveRule):
    op_type = "Sqrt"
    monotone = True

    def curve(self, node: Node, *consts) -> SqrtCurve:
        return SQRT


class Reciprocal(CurveRule):
    op_type = "Reciprocal"
    monotone = True

    def curve(self, node: Node, *consts) -> ReciprocalCurve:
        return RECIPROCAL


class Pow(CurveRule):
    """``x^p``, base perturbed, exponent a constant scalar."""

    op_type = "Pow"

    def forward(self, node: Node, x: Tensor, p: Tensor, *consts) -> Tensor:
        return torch.pow(x, p)

    def curve(self, node: Node, p=None, *consts):
        if not isinstance(p, Tensor):
            raise UnsupportedOperatorError(
                f"Pow with a perturbed exponent is not supported at {node.where()}; the exponent must be a constant")
        if p.numel() != 1:
            raise UnsupportedOperatorError(
                f"Pow with an exponent of {p.numel()} values is not supported at {node.where()}; "
                "the exponent must be a constant scalar")
        return power_curve(float(p.reshape(())))

    def interval(self, node: Node, x: Interval, *consts) -> Interval:
        if not isinstance(x, Interval):
            raise UnsupportedOperatorError(
                f"Pow of a constant base is not supported at {node.where()}; the base must be the perturbed input")
        return self.curve(node, *consts).interval(x.lo, x.hi)
