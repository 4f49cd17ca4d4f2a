"""Helpers of the elementwise relaxations (:mod:`perturbkit.ops.curvature`, :mod:`perturbkit.ops.convex`):
chords without division by zero, constant fall-back lines, outward-rounded intervals, rounding
margins and function values kept out of autograd where their derivatives would be NaN.

Shapes: elementwise; every tensor broadcasts with the others.
"""
from __future__ import annotations

from typing import Sequence

import torch

from perturbkit.ops.base import Interval, Line, Relaxation

Tensor = torch.Tensor


def clamp_to(v: float, l: Tensor, u: Tensor) -> Tensor:
    """The constant ``v`` clamped into ``[l, u]`` elementwise."""
    return torch.maximum(u.clamp(max=v), l)


def chord(x0: Tensor, g0: Tensor, x1: Tensor, g1: Tensor, slope_at_x0: Tensor) -> Tensor:
    """``(g1 - g0) / (x1 - x0)``, or ``slope_at_x0`` where ``x1 == x0``."""
    w = x1 - x0
    nz = w != 0
    return torch.where(nz, (g1 - g0) / torch.where(nz, w, torch.ones_like(w)), slope_at_x0)


def constant_lines(rel: tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]], keep: Tensor, box: Interval):
    """Lines where ``keep`` and finite, else the constant lines ``box.lo <= f <= box.hi``."""
    (ls, lc), (us, uc) = rel
    ls, lc, us, uc, box_lo, box_hi, keep = torch.broadcast_tensors(ls, lc, us, uc, box.lo, box.hi, keep)
    kl = keep & torch.isfinite(ls) & torch.isfinite(lc)
    ku = keep & torch.isfinite(us) & torch.isfinite(uc)
    zero = torch.zeros_like(ls)
    return Relaxation(lower=Line(torch.where(kl, ls, zero), torch.where(kl, lc, box_lo)),
                      upper=Line(torch.where(ku, us, zero), torch.where(ku, uc, box_hi)))


#: the finite range of each floating dtype
FINITE = {dt: (-torch.finfo(dt).max, torch.finfo(dt).max) for dt in (torch.float16, torch.bfloat16, torch.float32, torch.float64)}


def margin(fn, *args: Tensor) -> Tensor:
    """A rounding margin ``fn(*args)``, outside autograd: it carries no useful derivative, and
    where it overflows its derivative would be NaN."""
    with torch.no_grad():
        return fn(*(a.detach() for a in args))


def grad_safe(f, df, x: Tensor) -> Tensor:
    """``f(x)``; under autograd, where ``f(x)`` or ``f'(x)`` is not finite (overflow, a pole),
    the value without a derivative, so that no ``0 * inf`` NaN reaches a gradient."""
    if not x.requires_grad:
        return f(x)
    with torch.no_grad():
        y0 = f(x.detach())
        good = torch.isfinite(y0) & torch.isfinite(df(x.detach()))
    return torch.where(good, f(torch.where(good, x, torch.ones_like(x))), y0)


def at_bound(f, df, x: Tensor, x_finite: Tensor) -> Tensor:
    """``f`` at a bound that may be infinite: ``f(x)``, or where that is NaN (``0 * inf`` in the
    formula) ``f`` at the largest finite float, its limit up to rounding."""
    y = grad_safe(f, df, x)
    return torch.where(torch.isnan(y), grad_safe(f, df, x_finite), y)


def outward(values: Sequence[Tensor], sensitivities: Sequence[Tensor] = ()) -> tuple[Tensor, Tensor]:
    """Sound ``[min, max]`` of rounded function values, pushed outward by 4 ulps of ``|f| + |x f'(x)|``.

    ``sensitivities[i]`` is ``|x f'(x)|`` at the point of ``values[i]`` (missing: 0, e.g. at an
    extremum): rounding the arguments inside a formula (``sigmoid(c x (1 + a x^2))``,
    ``exp(p log x)``) acts like a relative perturbation of ``x`` of a few ulps, which moves ``f``
    by that many ulps of ``x f'(x)``, far more than of ``f`` in exponential tails.  A lower bound
    that overflowed to ``+inf`` becomes ``finfo.max`` (an upper one at ``-inf``, ``-finfo.max``), never NaN.
    """
    fi = torch.finfo(values[0].dtype)
    V = torch.stack(torch.broadcast_tensors(*values))
    with torch.no_grad():
        A = torch.zeros_like(V)
        for i, a in enumerate(sensitivities):
            A[i] = torch.nan_to_num(a.detach(), nan=0.0)
        gap = 4 * fi.eps * (V.detach().abs() + A) + fi.tiny
    lo = torch.where(V == torch.inf, fi.max, V - gap).amin(0)
    hi = torch.where(V == -torch.inf, -fi.max, V + gap).amax(0)
    return lo, hi


def alpha_slope(alpha: Tensor, s_lo: Tensor, s_crown: Tensor, s_hi: Tensor) -> Tensor:
    """Piecewise-linear map of ``alpha`` in [0, 1] onto ``[s_lo, s_crown, s_hi]`` (exactly ``s_crown`` at 1/2)."""
    return s_crown + (2 * alpha - 1) * torch.where(alpha < 0.5, s_crown - s_lo, s_hi - s_crown)
