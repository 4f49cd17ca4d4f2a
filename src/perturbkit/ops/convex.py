"""Relaxations of functions of one curvature on each side of 0: tangent and chord, with domains and poles.

Exp, Log, Sqrt, Reciprocal and Pow are convex or concave on their whole domain (Reciprocal
and negative odd powers: one curvature on each side of their pole at 0).  For a box
``[l, u]`` inside one such part (Zhang et al., NeurIPS 2018, Sec. 3.3):

* convex: the upper line is the chord, the lower line the tangent at ``t``;
* concave: mirrored (lower chord, upper tangent).

CROWN takes the midpoint ``t = (l + u) / 2``, which minimises the area between tangent and
function (d/dt of the area is ``-f''(t) (l + u - 2t) (u - l) / 2``); alpha-CROWN moves ``t`` over
the box: ``t = t_l + alpha (t_u - t_l)``, alpha in [0, 1] (1/2: CROWN).  Any tangent of a convex
function lies below it on its whole (convex) domain, so every alpha is sound.  The chord's
intercept is recomputed from the end points (``max`` / ``min`` of ``f(x) - s x`` over ``{l, u}``,
exact for convex / concave ``f`` whatever the rounding of ``s``); every intercept is moved
outward by :func:`perturbkit.ops.util.rounding_slack`.

Domains (``domain``: "real", "nonnegative", "positive" or "nonzero").  A well-defined network
only feeds its domain to a partial function, so lines are made for the part of the box in the
domain, and hold there:

* Sqrt and fractional powers relax ``[max(l, 0), max(u, 0)]``; a box with no point in the
  domain gets the constant lines of the value at the domain's edge.
* A pole (``pole``: Log, Reciprocal, negative powers) at an end of the box's domain part
  makes the chord infinite: it is replaced by the constant line ``+-finfo.max`` (``+`` on a
  convex side, where ``f`` tends to ``+inf``; ``-`` on a concave side); a pole strictly inside
  (Reciprocal on ``l < 0 < u``) gives the constant lines of the interval, which has
  ``+-finfo.max`` for the unbounded ends.  The largest finite float, not ``inf``: the engine
  multiplies lines by coefficients, and ``0 * inf`` is NaN.  These lines (and intervals) hold
  wherever ``|f(x)| <= finfo.max``, i.e. everywhere the network's own value is finite in the
  working precision; closer to the pole the network computes ``+-inf`` itself.
* Tangent points avoid a pole or an infinite-derivative end (Sqrt at 0): the tangent range
  of a box ``[0, u]`` is ``[u / 256, u]`` (mirrored on the left).

Boxes with a huge bound (beyond :meth:`ConvexCurve.ok`), boxes within
:meth:`ConvexCurve.tiny_box` of a pole or singular edge (there ``f''`` of the tangent points,
hence alpha-CROWN's gradients, would overflow) and lines that come out non-finite (overflow)
get the constant lines of the interval.  Intervals are pushed outward by 4 ulps of ``|f|``
(and, for powers, of ``|x f'(x)|``: ``pow`` rounds ``p log x`` inside).  Computations run on sanitised inputs
(the box ``[1, 2]`` elsewhere), so no NaN reaches a line or a gradient.

Shapes: ``lo``, ``hi``: ``(*lead, *declared)``; ``alpha`` broadcasts with them; the lines have the
broadcast shape.
"""
from __future__ import annotations

from typing import ClassVar, Optional

import torch

from perturbkit.ops.base import Interval, Relaxation
from perturbkit.ops.line_util import clamp_to, constant_lines, grad_safe, margin, outward
from perturbkit.ops.util import finite_box, rounding_slack

Tensor = torch.Tensor

#: the shrink factor of the tangent range at a pole or an infinite-derivative end
POLE_SHRINK = 2.0 ** -8


class ConvexCurve:
    """``f`` convex (``sigma = +1``) or concave (-1) on its domain (on each side of 0 for "nonzero")."""

    domain: ClassVar[str] = "real"
    pole: ClassVar[bool] = False        # |f| -> inf at 0
    singular_edge: ClassVar[bool] = False  # f'(0) is infinite (Sqrt, powers in (0, 1))
    sigma: ClassVar[int] = 1            # curvature for x > 0 (and everywhere for "real")
    sigma_left: ClassVar[int] = 1       # curvature for x < 0 ("nonzero" domains)
    extrema: ClassVar[tuple[float, ...]] = ()

    def f(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def df(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def chord_slope(self, l: Tensor, u: Tensor, fl: Tensor, fu: Tensor) -> Tensor:
        """``(f(u) - f(l)) / (u - l)`` for ``l < u`` (subclasses: forms without cancellation)."""
        w = u - l
        return (fu - fl) / torch.where(w > 0, w, torch.ones_like(w))

    #: near a pole or singular edge, ``|f''(t)| ~ |t|^-pole_order``: boxes of smaller magnitude than
    #: :meth:`tiny_box` get constant lines (their tangents' derivatives would overflow)
    pole_order: ClassVar[float] = 0.0

    def ok(self, lo: Tensor, hi: Tensor) -> Tensor:
        return finite_box(lo, hi)

    def tiny_box(self, dtype: torch.dtype) -> float:
        """Smallest ``max(|l|, |u|)`` of a box touching a pole / singular edge whose lines are computed."""
        if self.pole_order <= 0:
            return 0.0
        return (2.0 ** 10 / torch.finfo(dtype).max) ** (1 / self.pole_order) / POLE_SHRINK

    def sensitivity(self, x: Tensor) -> Tensor:
        """``|x f'(x)|`` for :func:`perturbkit.ops.curvature.outward`: 0, as ``f`` is one library call
        on the exact ``x`` (a power overrides this)."""
        return torch.zeros_like(x)

    # -- the domain part of a box -------------------------------------------------------------
    def _part(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(l, u, empty)``: the box clipped to the domain, and whether that is empty."""
        if self.domain in ("nonnegative", "positive"):
            zero = torch.zeros_like(lo)
            l, u = torch.maximum(lo, zero), torch.maximum(hi, zero)
            empty = hi < 0 if self.domain == "nonnegative" else hi <= 0
            return l, u, empty
        if self.domain == "nonzero":
            return lo, hi, (lo == 0) & (hi == 0)
        return lo, hi, torch.zeros_like(lo, dtype=torch.bool)

    def _side_sign(self, l: Tensor) -> Tensor:
        """Curvature sign per element of a box on one side of 0 (``l`` its lower end)."""
        if self.domain == "nonzero" and self.sigma_left != self.sigma:
            return torch.where(l >= 0, torch.full_like(l, float(self.sigma)), torch.full_like(l, float(self.sigma_left)))
        return torch.full_like(l, float(self.sigma))

    # -- values at the domain's edge ---------------------------------------------------------
    def value(self, x: Tensor) -> Tensor:
        """``f(x)`` on points of the domain part; at 0 for a pole or singular edge, ``f(0)``'s
        limit as a constant (placeholder 0 at a pole), so that no infinite derivative reaches
        a gradient (alpha-CROWN differentiates lines and intervals by their bounds)."""
        if not (self.pole or self.singular_edge):
            return grad_safe(self.f, self.df, x)
        nz = x != 0
        inner = grad_safe(self.f, self.df, torch.where(nz, x, torch.ones_like(x)))
        edge = torch.zeros_like(x) if self.pole else self.f(torch.zeros((), dtype=x.dtype, device=x.device))
        return torch.where(nz, inner, edge)

    # -- the interval ------------------------------------------------------------------------
    def interval(self, lo: Tensor, hi: Tensor) -> Interval:
        big = torch.finfo(lo.dtype).max
        l, u, empty = self._part(lo, hi)
        fl, fu = self.value(l), self.value(u)  # at +-inf: inf, 0 or 1, never NaN
        crit = [self.value(clamp_to(e, l, u)) for e in self.extrema]
        if self.pole:
            at_l, at_u = (l == 0) & (u > 0), (u == 0) & (l < 0)  # the pole at an end of the box
            fl, fu = torch.where(at_l, fu, fl), torch.where(at_u, fl, fu)
        a, b = outward([fl, fu, *crit], [margin(self.sensitivity, x) for x in (l, u)])
        if self.pole:  # the unbounded side's limit at the pole: +-finfo.max (see the module docstring)
            lim_r, lim_l = float(self.sigma) * big, float(self.sigma_left) * big
            inner = (l < 0) & (u > 0)
            for mask, lim in ((at_l | inner, lim_r), (at_u | inner, lim_l)):
                a = torch.where(mask, a.clamp(max=lim), a)
                b = torch.where(mask, b.clamp(min=lim), b)
        if self.domain != "real":  # no point in the domain: the value at its edge
            edge = torch.full_like(a, float(self.sigma) * big) if self.pole else self.value(torch.zeros_like(a))
            a, b = torch.where(empty, edge, a), torch.where(empty, edge, b)
        return Interval(a, b)

    def unstable(self, lo: Tensor, hi: Tensor) -> Tensor:
        return torch.ones_like(lo, dtype=torch.bool)

    # -- the lines ------------------------------------------------------------------------
    def relax(self, lo: Tensor, hi: Tensor, alpha: Optional[Tensor] = None) -> Relaxation:
        big = torch.finfo(lo.dtype).max
        l_d, u_d, empty = self._part(lo, hi)
        inner_pole = (l_d < 0) & (u_d > 0) if self.domain == "nonzero" else torch.zeros_like(empty)
        ok = self.ok(lo, hi) & ~empty & ~inner_pole & (l_d < u_d)  # point boxes: constant lines
        if self.pole_order > 0:  # a box very close to the pole: its lines' derivatives would overflow
            small = self.tiny_box(lo.dtype)
            near = torch.minimum(l_d.abs(), u_d.abs())
            ok = ok & (torch.maximum(l_d.abs(), u_d.abs()) >= small) & ((near == 0) | (near >= small))
        one = torch.ones_like(lo)
        l, u = torch.where(ok, l_d, one), torch.where(ok, u_d, one + 1)
        t_lo, t_hi = l, u
        pole_l, pole_u = (l == 0), (u == 0)
        if self.pole or self.singular_edge:
            t_lo = torch.where(pole_l, u * POLE_SHRINK, l)
            t_hi = torch.where(pole_u, l * POLE_SHRINK, u)
        a = 0.5 if alpha is None else alpha
        t = t_lo + a * (t_hi - t_lo)
        ft = self.f(t)
        s_t = self.df(t)
        c_t = ft - s_t * t
        # the chord (replaced by a constant at a pole end, so computed there on the shrunk range)
        lc, uc = (t_lo, t_hi) if self.pole else (l, u)
        fl, fu = self.value(lc), self.value(uc)
        s_c = self.chord_slope(lc, uc, fl, fu)
        sig = self._side_sign(l)
        h_l, h_u = fl - s_c * lc, fu - s_c * uc
        c_c = torch.where(sig > 0, torch.maximum(h_l, h_u), torch.minimum(h_l, h_u))
        slack_t = margin(rounding_slack, s_t, c_t, l, u, fl, fu, ft)
        slack_c = margin(rounding_slack, s_c, c_c, l, u, fl, fu)
        tangent_lo, tangent_hi = (s_t, c_t - slack_t), (s_t, c_t + slack_t)
        chord_lo, chord_hi = (s_c, c_c - slack_c), (s_c, c_c + slack_c)
        if self.pole:  # the chord through a pole: the unbounded constant line on that side
            end = pole_l | pole_u
            zero = torch.zeros_like(s_c)
            chord_lo = (torch.where(end, zero, chord_lo[0]), torch.where(end, zero - big, chord_lo[1]))
            chord_hi = (torch.where(end, zero, chord_hi[0]), torch.where(end, zero + big, chord_hi[1]))
        convex = sig > 0
        lower = tuple(torch.where(convex, tl, cl) for tl, cl in zip(tangent_lo, chord_lo))
        upper = tuple(torch.where(convex, ch, th) for ch, th in zip(chord_hi, tangent_hi))
        return constant_lines((lower, upper), ok, self.interval(lo, hi))
