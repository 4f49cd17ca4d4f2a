"""Linear relaxations of piecewise convex/concave functions, and the rule that serves them.

A :class:`Curve` is an elementwise function given by ``f``, ``f'``, ``f''`` and *pieces*:
breakpoints (inflection points or kinks) with the sign of ``f''`` on each piece (+1 convex,
-1 concave, 0 linear).  From that alone this module computes, vectorised over elements:

* the exact range of ``f`` on a box (``f`` at the end points and at the extrema inside);
* for any slope ``s`` the tightest sound intercept of a lower line, ``c(s) = min_[l, u] f(x) - s x``:
  on a concave or linear piece the minimum is at an end point, and so on a convex piece when
  ``s`` is outside the range of ``f'`` there (``h = f - s x`` is monotone); otherwise it is at the
  point where ``f'(x) = s``, found by safeguarded Newton on the increasing ``f'`` (a few
  bisection steps first, and whenever Newton leaves the bracket) and bounded rigorously by
  the tangent of ``h`` at the iterate ``z`` nearest to the root: ``h(z) - |h'(z)| max(z - a, b - z)``
  over the final bracket ``[a, b]`` (below ``h`` on ``[a, b]`` by convexity; outside the bracket
  ``h`` is monotone away from it).  Upper lines are the lower lines of ``-f``;
* CROWN's line (Zhang et al., "Efficient Neural Network Robustness Certification with
  General Activation Functions", NeurIPS 2018, generalised): among candidate slopes, the one
  whose line is highest at the midpoint, i.e. encloses the least area with ``f``.  The
  candidates contain every supporting line of the convex envelope of ``f`` on ``[l, u]``
  that can pass through the midpoint, except bitangents of two convex pieces (only periodic
  functions have those): the tangent at the midpoint, the chord, the lines from ``(l, f(l))``
  and from ``(u, f(u))`` that touch a convex piece (Newton on the tangent-through-a-point
  condition), and for kinked functions the chords to the breakpoints;
* alpha-CROWN's lines (Xu et al., "Fast and Complete", ICLR 2021): ``alpha`` in [0, 1] maps
  piecewise linearly onto the envelope's slopes ``[s_l, s_CROWN]`` (``alpha <= 1/2``) and
  ``[s_CROWN, s_u]`` (``alpha >= 1/2``), ``s_l``/``s_u`` its slopes at ``l``/``u``; the intercept
  is recomputed optimally for every slope, so every ``alpha`` is sound and ``alpha = 1/2`` is
  CROWN's line, for both lines (the tangent point moves from ``l`` to ``u`` as alpha grows).

Every intercept is moved outward by :func:`perturbkit.ops.util.rounding_slack`, so lines
computed in float32 hold against the exact function at float32 points.  Elements whose box
is beyond :meth:`Curve.ok` (infinite, astronomically large, or where the function overflows)
and elements whose lines came out non-finite get constant lines from the interval.  All
computations run on sanitised inputs, so no NaN reaches a line or a gradient.

Cost: ``O((pieces + candidates) * steps)`` elementwise operations per call (``steps``
solver iterations), with the candidates and pieces stacked into one tensor per loop; only the
(element, piece) pairs whose optimum is inside the piece are iterated (gathered, then
scattered back).  Measured on one CPU thread: relax_alpha of GELU on ``(1, 32, 8192)`` takes
2-3x the time of Sigmoid's (whose tangent points need no per-row solve).

Shapes: ``lo``, ``hi``: ``(*lead, *declared)``; ``alpha`` broadcasts with them (alpha-CROWN:
``lo, hi`` ``(B, 1, *shape)``, ``alpha`` ``(B, S, *shape)``); the lines have the broadcast shape.
"""
from __future__ import annotations

import math
from typing import ClassVar, Optional, Sequence, Union

import torch

from perturbkit.graph.ir import Node
from perturbkit.ops.base import ActivationRule, Interval, Relaxation
from perturbkit.ops.line_util import (FINITE, alpha_slope, at_bound, chord, clamp_to, constant_lines, grad_safe, margin,
                                      outward)
from perturbkit.ops.util import broadcast_shapes, finite_box, rounding_slack

Tensor = torch.Tensor
Sign = Union[int, Tensor]  # curvature sign of a piece: static, or per element (periodic functions)


class Curve:
    """An elementwise function with pieces of constant curvature sign (see the module docstring).

    Subclasses give ``f``, ``df`` and either the static ``breaks``/``signs`` (``len(signs) ==
    len(breaks) + 1``) or their own :meth:`pieces`; ``extrema``: the points where ``f`` has a
    local extremum (for :meth:`interval`); ``smooth``: ``f'`` is continuous (no kinks), so
    chords to breakpoints are no candidates.
    """

    breaks: ClassVar[tuple[float, ...]] = ()
    signs: ClassVar[tuple[int, ...]] = (1,)
    extrema: ClassVar[tuple[float, ...]] = ()
    smooth: ClassVar[bool] = True
    #: safeguarded Newton iterations of the one-dimensional solves (each falls back to bisection)
    steps: ClassVar[int] = 12
    #: of which the first are bisection steps (a good start for Newton on wide pieces)
    bisect_first: ClassVar[int] = 4

    # -- the function ------------------------------------------------------------------------
    def f(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def df(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def d2f(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        """``f''`` inside the pieces (its sign is the piece's curvature sign)."""
        raise NotImplementedError

    def df_d2f(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(f'(x), f''(x))`` (override to share work between them)."""
        return self.df(x), self.d2f(x)

    def get_breaks(self) -> tuple[float, ...]:
        return self.breaks

    def get_signs(self) -> tuple[int, ...]:
        return self.signs

    def get_extrema(self) -> tuple[float, ...]:
        return self.extrema

    def pieces(self, l: Tensor, u: Tensor) -> tuple[list[Tensor], list[Sign]]:
        """Points ``l = p_0 <= p_1 <= ... <= p_K = u`` and the curvature sign of ``f`` on each ``[p_{j-1}, p_j]``."""
        return [l, *(clamp_to(b, l, u) for b in self.get_breaks()), u], list(self.get_signs())

    def critical(self, l: Tensor, u: Tensor) -> list[Tensor]:
        """Points of ``[l, u]`` where the extrema of ``f`` on ``[l, u]`` are attained, besides ``l`` and ``u``."""
        return [clamp_to(c, l, u) for c in self.get_extrema()]

    def extra_slopes(self, l: Tensor, u: Tensor) -> list[Tensor]:
        """More candidate slopes of ``f`` for CROWN's choice (periodic functions: 0)."""
        return []

    def ok(self, lo: Tensor, hi: Tensor) -> Tensor:
        """Elements whose lines are computed (others get constant lines from the interval)."""
        return finite_box(lo, hi)

    def sensitivity(self, x: Tensor) -> Tensor:
        """``|x f'(x)|``: how much rounding inside the formula of ``f`` can move it (see :func:`outward`)."""
        return (x * self.df(x)).abs()

    # -- the interval ------------------------------------------------------------------------
    def interval(self, lo: Tensor, hi: Tensor) -> Interval:
        l, u = lo.clamp(*FINITE[lo.dtype]), hi.clamp(*FINITE[lo.dtype])
        vals = [at_bound(self.f, self.df, lo, l), at_bound(self.f, self.df, hi, u),
                *(grad_safe(self.f, self.df, c) for c in self.critical(l, u))]
        return Interval(*outward(vals, [margin(self.sensitivity, l), margin(self.sensitivity, u)]))

    def unstable(self, lo: Tensor, hi: Tensor) -> Tensor:
        """All elements, except boxes inside one linear piece (their lines are exact)."""
        bounds = (-math.inf, *self.get_breaks(), math.inf)
        stable = torch.zeros_like(lo, dtype=torch.bool)
        for j, s in enumerate(self.get_signs()):
            if s == 0:
                stable |= (lo >= bounds[j]) & (hi <= bounds[j + 1])
        return ~stable

    # -- the lines ------------------------------------------------------------------------
    def relax(self, lo: Tensor, hi: Tensor, alpha: Optional[Tensor] = None) -> Relaxation:
        """CROWN's lines (``alpha`` None) or alpha-CROWN's lines for ``alpha`` in [0, 1]."""
        ok = self.ok(lo, hi)
        zero = torch.zeros_like(lo)
        l, u = torch.where(ok, lo, zero), torch.where(ok, hi, zero)
        pts, signs = self.pieces(l, u)
        fp = [self.f(p) for p in pts]
        m = l + (u - l) / 2
        ranges = self._crown(l, u, m, pts, fp, signs)  # per line: (s_lo, s_crown, s_hi, c_crown), in g = d f
        if alpha is None:
            (sl, cl), (su, cu) = [(r[1], r[3]) for r in ranges]
        else:
            sl, su = (alpha_slope(alpha, r[0], r[1], r[2]) for r in ranges)
            cl, cu = self._intercepts([sl, su], [1, -1], pts, fp, signs)
        fl, fu = fp[0], fp[-1]
        lower = (sl, cl - margin(rounding_slack, sl, cl, l, u, fl, fu))
        upper = (-su, -cu + margin(rounding_slack, su, cu, l, u, fl, fu))  # upper line of f = -(lower line of -f)
        return constant_lines((lower, upper), ok, self.interval(lo, hi))

    def _crown(self, l, u, m, pts, fp, signs):
        """Per line (lower d=+1, upper d=-1) in terms of ``g = d f``: ``(s_l, s_crown, s_u, c_crown)``."""
        K = len(pts) - 1
        fl, fu = fp[0], fp[-1]
        dfl = self.df(l)
        dfm = self.df(m)
        extra = self.extra_slopes(l, u)
        # touch lanes: for each line d and convex (for d f) piece j, the lines from (l, f(l)) and (u, f(u))
        touch_req = [(d, j) for d in (1, -1) for j in range(K) if _maybe_convex(d, signs[j])]
        touches = self._touch(l, u, fl, fu, pts, fp, signs, touch_req)
        per_line = []
        slopes, ds = [], []
        for d in (1, -1):
            ch = d * chord(l, fl, u, fu, dfl)
            from_l, from_u = [ch], [ch]
            for (dd, j), (tl, tu) in zip(touch_req, touches):
                if dd == d:
                    from_l.append(tl)
                    from_u.append(tu)
            if not self.smooth:
                for j in range(1, K):
                    from_l.append(d * chord(l, fl, pts[j], fp[j], dfl))
                    from_u.append(d * chord(pts[j], fp[j], u, fu, self.df(pts[j])))
            s_lo = torch.stack(from_l).amin(0)
            s_hi = torch.stack(from_u).amax(0)
            cands = [d * dfm, *from_l, *from_u[1:], *(d * e for e in extra)]
            per_line.append((s_lo, s_hi, len(cands)))
            slopes += cands
            ds += [d] * len(cands)
        cs = self._intercepts(slopes, ds, pts, fp, signs)
        out, k = [], 0
        for s_lo, s_hi, n in per_line:
            S = torch.stack(torch.broadcast_tensors(*slopes[k:k + n]))
            C = torch.stack(torch.broadcast_tensors(*cs[k:k + n]))
            best = (C + S * m).argmax(0, keepdim=True)
            out.append((s_lo, S.gather(0, best)[0], s_hi, C.gather(0, best)[0]))
            k += n
        return out

    def _inside_slopes(self, A: Tensor, B: Tensor) -> tuple[Tensor, Tensor]:
        """``f'`` at the ends of pieces ``[A, B]``, taken one float inside (the piece's own side of a kink)."""
        with torch.no_grad():
            return self.df(torch.nextafter(A, B)), self.df(torch.nextafter(B, A))

    def _newton(self, phi, a: Tensor, b: Tensor, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Root of the increasing ``phi`` in ``[a, b]`` (``phi(a) < 0 < phi(b)``), from ``z``.

        ``phi(x) -> (value, derivative)``.  Safeguarded Newton (a bisection step whenever the
        Newton step leaves the bracket, and for the first ``bisect_first`` steps); runs outside
        autograd.  Returns ``(z, a, b)``: the iterate with the smallest ``|phi|`` and the final
        bracket around the root, which contains every iterate.
        """
        with torch.no_grad():
            lo_end, hi_end = a, b  # the piece's ends: never an iterate (f' may jump there)
            best, best_v = z, torch.full_like(z, torch.inf)
            for k in range(self.steps):
                v, dv = phi(z)
                closer = v.abs() < best_v
                best, best_v = torch.where(closer, z, best), torch.where(closer, v.abs(), best_v)
                neg = v < 0
                a = torch.where(neg, z, a)
                b = torch.where(neg, b, z)
                pos = dv > 0
                zn = z - v / torch.where(pos, dv, torch.ones_like(dv))
                take = pos & (zn >= a) & (zn <= b) & (zn > lo_end) & (zn < hi_end) & (k >= self.bisect_first)
                z_new = torch.where(take, zn, a + (b - a) / 2)
                # converged everywhere (Newton steps below a few ulps): the rest would not move
                done = k >= self.bisect_first and bool(take.all()) and bool(
                    ((z_new - z).abs() <= 4 * torch.finfo(z.dtype).eps * (1 + z.abs())).all())
                z = z_new
                if done:
                    break
            v, _ = phi(z)
            z = torch.where(v.abs() < best_v, z, best)  # the iterate nearest to the root (all lie in [a, b])
        return z, a, b

    def _touch(self, l, u, fl, fu, pts, fp, signs, req) -> list[tuple[Tensor, Tensor]]:
        """Slopes (of ``g = d f``) of the lines from ``(l, g(l))`` and ``(u, g(u))`` touching piece ``j``.

        From ``l``: the least chord slope ``(g(x) - g(l)) / (x - l)`` over the piece, at the root of
        ``psi(x) = g'(x) (x - l) - (g(x) - g(l))`` (increasing on a convex piece of ``g``), or at
        an end of the piece (``g'(l)`` when the piece starts at ``l``); from ``u`` the greatest chord
        slope to ``(u, g(u))``, mirrored.  Only (element, piece) pairs with an interior root are
        solved; a last Newton step under autograd gives the touching point its derivative in
        ``l`` and ``u`` (implicit function theorem).
        """
        if not req:
            return []
        shape = broadcast_shapes(l.shape, u.shape)
        cols = {k: [] for k in ("A", "B", "FA", "FB", "X0", "F0", "E", "D")}
        for d, j in req:
            for e, x0, f0 in ((1.0, l, fl), (-1.0, u, fu)):
                for k, v in (("A", pts[j]), ("B", pts[j + 1]), ("FA", fp[j]), ("FB", fp[j + 1]), ("X0", x0), ("F0", f0)):
                    cols[k].append(v.expand(shape))
                cols["E"].append(torch.full(shape, e, dtype=l.dtype, device=l.device))
                cols["D"].append(torch.full(shape, float(d), dtype=l.dtype, device=l.device))
        A, B, FA, FB, X0, F0, E, D = (torch.stack(cols[k]) for k in ("A", "B", "FA", "FB", "X0", "F0", "E", "D"))
        left = E > 0
        inner = B > A
        ED = E * D
        with torch.no_grad():  # phi = E * psi_g at the piece's ends (one-sided slopes)
            dA, dB = self._inside_slopes(A, B)
            phiA = ED * (dA * (A - X0) - (FA - F0))
            phiB = ED * (dB * (B - X0) - (FB - F0))
        # the piece contains the fixed point: the tangent there; else the chord to the nearer / farther end
        at_end = torch.where(phiA >= 0, chord(X0, F0, A, FA, self.df(X0)), chord(X0, F0, B, FB, self.df(X0)))
        out = D * torch.where(inner & torch.where(left, A == X0, B == X0), self.df(X0), at_end)
        need = inner & torch.where(left, A > X0, B < X0) & (phiA < 0) & (phiB > 0)
        idx = need.nonzero(as_tuple=True)
        a, b, x0, f0, ed = A[idx], B[idx], X0[idx], F0[idx], ED[idx]
        dd = D[idx]

        def psi(x):
            g1, g2 = self.df_d2f(x)
            return ed * (g1 * (x - x0) - (self.f(x) - f0)), ed * g2 * (x - x0)

        # phi' = E g''(x) (x - x0) with g'' = d f'': >= 0 on the piece
        za = a.detach() + (b.detach() - a.detach()) / 2
        z, _, _ = self._newton(psi, a.detach(), b.detach(), za)
        v, dv = psi(z)  # one Newton step under autograd: d(root)/d(l, u)
        pos = dv > 0
        z = torch.where(pos, z - v / torch.where(pos, dv, torch.ones_like(dv)), z)
        out = out.index_put(idx, dd * self.df(z))
        res = []
        for i, (d, j) in enumerate(req):
            tl, tu = out[2 * i], out[2 * i + 1]
            if isinstance(signs[j], Tensor):  # periodic: piece j may not be convex for this line here
                conv = d * signs[j] > 0
                ch = d * chord(l, fl, u, fu, self.df(l))
                tl, tu = torch.where(conv, tl, ch), torch.where(conv, tu, ch)
            res.append((tl, tu))
        return res

    def _intercepts(self, slopes: Sequence[Tensor], ds: Sequence[int], pts, fp, signs) -> list[Tensor]:
        """For each slope ``s`` (of ``g = d f``): a lower bound of ``min_[l, u] g(x) - s x``, tight to rounding.

        Concave and linear pieces count by their end points, and so do convex pieces where
        ``s`` is outside ``[g'(p_{j-1}), g'(p_j)]`` (``g - s x`` is monotone there); elsewhere the
        minimiser ``g'(x) = s`` is found by safeguarded Newton (only those (element, piece)
        pairs), and bounded rigorously by the tangent of ``h = g - s x`` at the last iterate ``z``:
        ``h(z) - |h'(z)| max(z - a, b - z)`` over the final bracket ``[a, b]``.
        """
        shape = broadcast_shapes(*(s.shape for s in slopes), pts[0].shape)
        out = []
        for s, d in zip(slopes, ds):
            out.append(torch.stack(torch.broadcast_tensors(*(d * fv - s * p for p, fv in zip(pts, fp)))).amin(0))
        lanes = [(r, j) for r, d in enumerate(ds) for j, sg in enumerate(signs) if _maybe_convex(d, sg)]
        if not lanes:
            return out
        L = len(lanes)
        pad = (1,) * (len(shape) - pts[0].dim())  # piece points broadcast against the slopes' shape
        A = torch.stack([pts[j] for _, j in lanes]).reshape(L, *pad, *pts[0].shape)
        B = torch.stack([pts[j + 1] for _, j in lanes]).reshape(L, *pad, *pts[0].shape)
        D = torch.tensor([float(ds[r]) for r, _ in lanes], dtype=A.dtype, device=A.device).view((L,) + (1,) * (A.dim() - 1))
        with torch.no_grad():
            gA, gB = self._inside_slopes(A, B)
            gA, gB = D * gA, D * gB
        full = (L,) + tuple(shape)
        S = torch.stack([slopes[r].expand(shape) for r, _ in lanes])
        need = (B > A).expand(full) & (gA.expand(full) < S) & (S < gB.expand(full))
        for i, (r, j) in enumerate(lanes):
            if isinstance(signs[j], Tensor):
                need[i] &= (ds[r] * signs[j] > 0).expand(shape)
        idx = need.nonzero(as_tuple=True)
        a, b = A.expand(full)[idx], B.expand(full)[idx]
        s_c, d_c = S[idx], D.expand(full)[idx]
        ga, gb = gA.expand(full)[idx], gB.expand(full)[idx]

        def phi(x):
            g1, g2 = self.df_d2f(x)
            return d_c * g1 - s_c, d_c * g2

        with torch.no_grad():  # start at the secant's root
            z0 = a + (b - a) * ((s_c - ga) / (gb - ga)).clamp(0.0, 1.0)
        z, za, zb = self._newton(phi, a.detach(), b.detach(), z0)
        h = d_c * self.f(z) - s_c * z
        bound_c = h - margin(lambda v, zz, aa, bb: v.abs() * torch.maximum(zz - aa, bb - zz), phi(z)[0], z, za, zb)
        bound = torch.full(full, torch.inf, dtype=A.dtype, device=A.device).index_put(idx, bound_c)
        for i, (r, _) in enumerate(lanes):
            out[r] = torch.minimum(out[r], bound[i])
        return out


def _maybe_convex(d: int, sign: Sign) -> bool:
    """Whether piece ``sign`` may be convex for ``g = d f`` (always possible for per-element signs)."""
    return isinstance(sign, Tensor) or d * sign > 0


class CurveRule(ActivationRule):
    """An activation rule whose function is a :class:`Curve` (or any object with the same
    ``f``/``interval``/``relax``/``unstable`` methods) chosen from the node (and its constants).

    alpha-CROWN: one parameter per element in [0, 1]; 1/2 is CROWN's choice.  Rules set
    ``lines_in_float64`` (float32 bounds get lines computed in float64, bounds/precision.py)
    unless their lines may hold ``+-finfo.max`` pole constants (Log, Reciprocal, Pow: float64's
    largest float is ``inf`` in float32, and ``0 * inf`` is NaN in the engine) or are made for
    the domain part of a box (Sqrt: the rounding shift is sized by the whole box)."""

    def curve(self, node: Node, *consts: Tensor):  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, node: Node, x: Tensor, *consts) -> Tensor:
        return self.curve(node, *consts).f(x)

    def interval(self, node: Node, x: Interval, *consts) -> Interval:
        return self.curve(node, *consts).interval(x.lo, x.hi)

    def relax(self, node: Node, lo: Tensor, hi: Tensor, *consts) -> Relaxation:
        return self.curve(node, *consts).relax(lo, hi)

    def unstable(self, node: Node, lo: Tensor, hi: Tensor, *consts) -> Tensor:
        return self.curve(node, *consts).unstable(lo, hi)

    def alpha_range(self, node: Node) -> tuple[float, float]:
        return (0.0, 1.0)

    def alpha_init(self, node: Node, lo: Tensor, hi: Tensor, *consts) -> Tensor:
        return torch.full_like(lo, 0.5)

    def relax_alpha(self, node: Node, lo: Tensor, hi: Tensor, alpha: Tensor, *consts) -> Relaxation:
        return self.curve(node, *consts).relax(lo, hi, alpha)
