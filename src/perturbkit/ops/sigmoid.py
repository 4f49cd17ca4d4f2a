"""Sigmoid and Tanh: the linear relaxation of S-shaped functions from CROWN.

Zhang, Weng, Chen, Hsieh, Daniel. "Efficient Neural Network Robustness Certification with
General Activation Functions", NeurIPS 2018, Sec. 3.3 and Table 1.

Both functions are ``f(x) = a * sigmoid(k x) + b``: convex on ``x <= 0``, concave on
``x >= 0``, increasing, and point-symmetric about ``(0, f(0))``: ``f(x) = 2 f(0) - f(-x)``.
For pre-activation bounds ``[l, u]`` the upper line is

* ``u <= 0`` (convex part): the chord through ``(l, f(l))`` and ``(u, f(u))``;
* ``l >= 0`` (concave part): the tangent at the midpoint;
* ``l < 0 < u``: the tangent at the point ``d`` in ``[0, u]`` whose tangent passes through
  ``(l, f(l))``, found by a fixed number of bisection steps (the upper end of the final
  bracket, whose tangent passes above ``(l, f(l))``); when no such ``d <= u`` exists the
  chord is already above ``f`` and is used instead.

The lower line is the upper line of ``[-u, -l]`` reflected through ``(0, f(0))``.  Every
intercept is finally moved outward by a bound on its rounding error
(:func:`perturbkit.ops.util.rounding_slack`), so the lines are sound as computed in
float32 and float64, including ``l == u`` and very wide boxes.  Derivatives and chord
slopes are evaluated in forms without cancellation (``sigmoid(x) sigmoid(-x)``, ``expm1``).
Elements with an infinite (or beyond ``sqrt(finfo.max)``) bound get constant lines (their
IBP bounds).

Shapes: ``lo``, ``hi``: ``(*lead, *declared)``; every line tensor has the same shape.
"""
from __future__ import annotations

from typing import ClassVar

import torch

from perturbkit.graph.ir import Node
from perturbkit.ops.base import ActivationRule, Interval, Line, Relaxation
from perturbkit.ops.util import finite_box, finite_or_constant, rounding_slack, widen

Tensor = torch.Tensor


class SShaped(ActivationRule):
    """``f(x) = a * sigmoid(k * x) + b`` with ``a, k > 0``."""

    lines_in_float64 = True
    monotone = True
    a: ClassVar[float] = 1.0
    k: ClassVar[float] = 1.0
    b: ClassVar[float] = 0.0
    bisection_steps: ClassVar[int] = 32

    # -- the function -------------------------------------------------------------------
    def f(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, node: Node, x: Tensor, *consts) -> Tensor:
        return self.f(x)

    def df(self, x: Tensor) -> Tensor:
        """``f'(x) = a k sigmoid(kx) sigmoid(-kx)``, accurate to a few ulps everywhere."""
        kx = self.k * x
        return (self.a * self.k) * torch.sigmoid(kx) * torch.sigmoid(-kx)

    def chord_slope(self, l: Tensor, u: Tensor) -> Tensor:
        """``(f(u) - f(l)) / (u - l)`` without cancellation (``f'(l)`` when ``l == u``).

        Uses ``sigmoid(p) - sigmoid(q) = sigmoid(p) sigmoid(-q) (1 - exp(-(p - q)))``.
        """
        z = self.k * (u - l)
        pos = z > 0
        zs = torch.where(pos, z, torch.ones_like(z))
        r = torch.where(pos, -torch.expm1(-zs) / zs, torch.ones_like(z))
        return (self.a * self.k) * torch.sigmoid(self.k * u) * torch.sigmoid(-self.k * l) * r

    # -- intervals and lines ------------------------------------------------------------
    def interval(self, node: Node, x: Interval, *consts) -> Interval:
        return Interval(*widen(self.f(x.lo), self.f(x.hi)))

    def _tangent_through(self, l: Tensor, fl: Tensor, u: Tensor) -> Tensor:
        """For ``l < 0 < u``: a point ``d`` in ``(0, u]`` whose tangent passes on or above ``(l, f(l))``.

        ``phi(d) = f(d) + f'(d) (l - d) - f(l)`` is increasing on ``d >= 0`` (``f'' < 0`` there);
        the caller guarantees ``phi(u) > 0``.  Bisection keeps ``phi(hi) > 0``.  It runs outside
        autograd (32 steps of small operations would dominate alpha-CROWN's backward pass); the
        returned value is the bisection's, with the derivative of ``d`` in ``l`` of the implicit
        function theorem, ``-phi_l / phi_d = (f'(l) - f'(d)) / (f''(d) (l - d))`` (one Newton
        step's, taken straight through).
        """
        with torch.no_grad():
            ld, fld = l.detach(), fl.detach()
            a = torch.zeros_like(ld)
            b = u.detach().clone()

            def phi(z):
                return self.f(z) + self.df(z) * (ld - z) - fld

            pb = phi(b)
            tol = 4 * torch.finfo(b.dtype).eps * self.a
            for step in range(self.bisection_steps):
                # a Newton step from b (phi(b) > 0, phi increasing) when it lands inside (a, b),
                # else bisection; whichever side the point falls on becomes the new a or b
                m = a / 2 + b / 2
                if step % 2 == 1:
                    sb = torch.sigmoid(self.k * b)
                    dphi = (self.a * self.k * self.k) * sb * (1 - sb) * (1 - 2 * sb) * (ld - b)
                    zn = b - pb / torch.where(dphi > 0, dphi, torch.ones_like(dphi))
                    m = torch.where((dphi > 0) & (zn > a) & (zn < b), zn, m)
                pm = phi(m)
                pos = pm > 0
                b, pb = torch.where(pos, m, b), torch.where(pos, pm, pb)
                a = torch.where(pos, a, m)
                if bool((pb <= tol).all()):  # the tangent passes within a few ulps of (l, f(l))
                    break
        if not (torch.is_grad_enabled() and (l.requires_grad or fl.requires_grad)):
            return b
        with torch.no_grad():
            kb = self.k * b
            sb = torch.sigmoid(kb)
            d2 = (self.a * self.k * self.k) * sb * (1 - sb) * (1 - 2 * sb) * (ld - b)  # phi_d at b
            d2 = torch.where(d2.abs() > 0, d2, torch.ones_like(d2))
        phi = self.f(b) + self.df(b) * (l - b) - fl
        step = b - phi / d2
        return b + (step - step.detach())

    def upper_line(self, l: Tensor, u: Tensor, alpha: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Slope and intercept of a sound upper line of ``f`` on ``[l, u]`` (finite bounds).

        ``alpha`` (alpha-CROWN, in [0, 1], broadcast with l, u) moves the tangent point over
        every sound choice: ``t = t0 + alpha (u - t0)`` with ``t0 = l`` on the concave part
        and ``t0 = d`` (the tangent through ``(l, f(l))``) when the box crosses 0; any
        tangent of the concave part at ``t >= t0`` lies above ``f`` on ``[l, u]``.  Without
        alpha: the midpoint (concave part) and ``d`` (crossing), CROWN's choices.
        """
        fl, fu = self.f(l), self.f(u)
        s_chord = self.chord_slope(l, u)
        t = l / 2 + u / 2 if alpha is None else l + alpha * (u - l)  # tangent point on the concave part
        chord = u <= 0
        cross = (l < 0) & (u > 0)
        if bool(cross.any()):
            lc, uc, flc = l[cross], u[cross], fl[cross]
            phi_u = self.f(uc) + self.df(uc) * (lc - uc) - flc
            use_chord = phi_u <= 0
            d = torch.zeros_like(l)
            d[cross] = self._tangent_through(lc, flc, uc)
            t = torch.where(cross, d if alpha is None else d + alpha * (u - d), t)
            chord = chord.clone()
            chord[cross] = use_chord
        s_tan = self.df(t)
        c_tan = self.f(t) - s_tan * t
        c_chord = fl - s_chord * l
        s = torch.where(chord, s_chord, s_tan)
        c = torch.where(chord, c_chord, c_tan)
        return s, c + rounding_slack(s, c, l, u, fl, fu)

    def relax(self, node: Node, lo: Tensor, hi: Tensor, *consts) -> Relaxation:
        return self._relax(node, lo, hi, None)

    # alpha-CROWN: one free parameter per element moves the tangent point of both lines (a
    # bound row uses one of the two lines per element, so one parameter per row suffices)
    def alpha_range(self, node: Node) -> tuple[float, float]:
        return (0.0, 1.0)

    def alpha_init(self, node: Node, lo: Tensor, hi: Tensor, *consts) -> Tensor:
        return torch.full_like(lo, 0.5)

    def relax_alpha(self, node: Node, lo: Tensor, hi: Tensor, alpha: Tensor, *consts) -> Relaxation:
        # lo, hi are not broadcast to alpha's rows: what depends on the box alone (the tangent
        # point d through (l, f(l)), by bisection) is computed once, not once per row
        return self._relax(node, lo, hi, alpha)

    def _relax(self, node: Node, lo: Tensor, hi: Tensor, alpha: Tensor | None) -> Relaxation:
        ok = finite_box(lo, hi)
        zero = torch.zeros_like(lo)
        l, u = torch.where(ok, lo, zero), torch.where(ok, hi, zero)
        us, uc = self.upper_line(l, u, alpha)
        ls, lc = self.upper_line(-u, -l, alpha)
        lc = (self.a + 2 * self.b) - lc  # reflect through (0, f(0)): f(x) = 2 f(0) - f(-x)
        lc = lc - 4 * torch.finfo(lc.dtype).eps * lc.abs()
        box = self.interval(node, Interval(lo, hi))
        (ls, lc), (us, uc) = finite_or_constant((ls, lc), (us, uc), lo, hi, box.lo, box.hi)
        return Relaxation(lower=Line(ls, lc), upper=Line(us, uc))


class Sigmoid(SShaped):
    op_type = "Sigmoid"
    a, k, b = 1.0, 1.0, 0.0

    def f(self, x: Tensor) -> Tensor:
        return torch.sigmoid(x)


class Tanh(SShaped):
    """``tanh(x) = 2 sigmoid(2x) - 1``."""

    op_type = "Tanh"
    a, k, b = 2.0, 2.0, -1.0

    def f(self, x: Tensor) -> Tensor:
        return torch.tanh(x)
