"""Linear relaxations of piecewise convex/concave functions, and the rule that serves them.

A :class:`Curve` is an elementwise function given by ``f``, ``f'`` and *pieces*: breakpoints
(inflection points or kinks) with the sign of ``f''`` on each piece (+1 convex, -1 concave,
0 linear).  From that alone this module computes, vectorised over elements:

* the exact range of ``f`` on a box (``f`` at the end points and at the extrema inside);
* for any slope ``s`` the tightest sound intercept of a lower line, ``c(s) = min_[l, u] f(x) - s x``:
  on a concave or linear piece the minimum is at an end point; on a convex piece it is at the
  point where ``f'(x) = s``, bracketed by bisection on the monotone ``f'`` and bounded
  rigorously from the final bracket ``[a, b]`` by the tangent at its centre ``c``:
  ``h(c) - |h'(c)| (b - a) / 2`` with ``h = f - s x`` (below ``h`` on ``[a, b]`` by convexity;
  outside the bracket ``h`` is monotone away from it).  Upper lines are the lower lines of ``-f``;
* CROWN's line (Zhang et al., "Efficient Neural Network Robustness Certification with
  General Activation Functions", NeurIPS 2018, generalised): among candidate slopes, the one
  whose line is highest at the midpoint, i.e. encloses the least area with ``f``.  The
  candidates contain every supporting line of the convex envelope of ``f`` on ``[l, u]``
  that can pass through the midpoint, except bitangents of two convex pieces (only periodic
  functions have those): the tangent at the midpoint, the chord, the lines from ``(l, f(l))``
  and from ``(u, f(u))`` that touch a convex piece (bisection on the tangent-through-a-point
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
bisection steps), with the candidates and pieces stacked into one tensor per loop.

Shapes: ``lo``, ``hi``: ``(*lead, *declared)``; ``alpha`` broadcasts with them (alpha-CROWN:
``lo, hi`` ``(B, 1, *shape)``, ``alpha`` ``(B, S, *shape)``); the lines have the broadcast shape.
"""
from __future__ import annotations

import math
from typing import ClassVar, Optional, Sequence, Union

import torch

from perturbkit.graph.ir import Node
from perturbkit.ops.base import ActivationRule, Interval, Line, Relaxation
from perturbkit.ops.util import finite_box, rounding_slack

Tensor = torch.Tensor
Sign = Union[int, Tensor]  # curvature sign of a piece: static, or per element (periodic functions)


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


_FINITE = {dt: (-torch.finfo(dt).max, torch.finfo(dt).max) for dt in (torch.float16, torch.bfloat16, torch.float32, torch.float64)}


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
    steps: ClassVar[int] = 24

    # -- the function ------------------------------------------------------------------------
    def f(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def df(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

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
        l, u = lo.clamp(*_FINITE[lo.dtype]), hi.clamp(*_FINITE[lo.dtype])
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

    def _touch(self, l, u, fl, fu, pts, fp, signs, req) -> list[tuple[Tensor, Tensor]]:
        """Slopes (of ``g = d f``) of the lines from ``(l, g(l))`` and ``(u, g(u))`` touching piece ``j``.

        From ``l``: the least chord slope ``(g(x) - g(l)) / (x - l)`` over the piece, at the root of
        ``psi(x) = g'(x) (x - l) - (g(x) - g(l))`` (increasing on a convex piece of ``g``), or at
        its right end; from ``u`` the greatest chord slope to ``(u, g(u))``, mirrored.
        """
        if not req:
            return []
        shape = torch.broadcast_shapes(l.shape, u.shape)
        lanes_a, lanes_b, x0s, f0s, es, ds = [], [], [], [], [], []
        for d, j in req:
            for e, x0, f0 in ((1, l, fl), (-1, u, fu)):
                lanes_a.append(pts[j].expand(shape))
                lanes_b.append(pts[j + 1].expand(shape))
                x0s.append(x0.expand(shape))
                f0s.append(f0.expand(shape))
                es.append(e)
                ds.append(d)
        A, B = torch.stack(lanes_a), torch.stack(lanes_b)
        X0, F0 = torch.stack(x0s), torch.stack(f0s)
        view = (-1,) + (1,) * len(shape)
        E = torch.tensor(es, dtype=l.dtype, device=l.device).view(view)
        D = torch.tensor(ds, dtype=l.dtype, device=l.device).view(view)
        ED = E * D
        a, b = A, B
        for _ in range(self.steps):
            mid = a + (b - a) / 2
            move_a = ED * (self.df(mid) * (mid - X0) - (self.f(mid) - F0)) < 0
            a = torch.where(move_a, mid, a)
            b = torch.where(move_a, b, mid)
        c = a + (b - a) / 2
        g_c = D * self.df(c)
        out = []
        for i, (d, j) in enumerate(req):
            il, iu = 2 * i, 2 * i + 1
            # from l: the root is inside when b moved, else the least chord is to the piece's right end
            end_l = d * chord(l, fl, pts[j + 1], fp[j + 1], self.df(l))
            tl = torch.where(b[il] < B[il], g_c[il], end_l)
            end_u = d * chord(pts[j], fp[j], u, fu, self.df(u))
            tu = torch.where(a[iu] > A[iu], g_c[iu], end_u)
            if isinstance(signs[j], Tensor):  # periodic: piece j may not be convex for this line here
                conv = d * signs[j] > 0
                ch = d * chord(l, fl, u, fu, self.df(l))
                tl, tu = torch.where(conv, tl, ch), torch.where(conv, tu, ch)
            out.append((tl, tu))
        return out

    def _intercepts(self, slopes: Sequence[Tensor], ds: Sequence[int], pts, fp, signs) -> list[Tensor]:
        """For each slope ``s`` (of ``g = d f``): a lower bound of ``min_[l, u] g(x) - s x``, tight to the bisection."""
        shape = torch.broadcast_shapes(*(s.shape for s in slopes), pts[0].shape)
        ends = []
        for s, d in zip(slopes, ds):
            h = torch.stack(torch.broadcast_tensors(*(d * fv - s * p for p, fv in zip(pts, fp)))).amin(0)
            ends.append(h)
        lanes_a, lanes_b, lanes_s, lanes_d, owner, masks = [], [], [], [], [], []
        for r, (s, d) in enumerate(zip(slopes, ds)):
            for j, sg in enumerate(signs):
                if _maybe_convex(d, sg):
                    lanes_a.append(pts[j].expand(shape))
                    lanes_b.append(pts[j + 1].expand(shape))
                    lanes_s.append(s.expand(shape))
                    lanes_d.append(d)
                    owner.append(r)
                    masks.append(d * sg > 0 if isinstance(sg, Tensor) else None)
        if not lanes_a:
            return ends
        A, B, S = torch.stack(lanes_a), torch.stack(lanes_b), torch.stack(lanes_s)
        D = torch.tensor(lanes_d, dtype=A.dtype, device=A.device).view((-1,) + (1,) * len(shape))
        a, b = A, B
        for _ in range(self.steps):
            mid = a + (b - a) / 2
            right = D * self.df(mid) < S  # h'(mid) < 0: the minimiser is right of mid
            a = torch.where(right, mid, a)
            b = torch.where(right, b, mid)
        c = a + (b - a) / 2
        bound = (D * self.f(c) - S * c) - (D * self.df(c) - S).abs() * ((b - a) / 2)
        out = list(ends)
        for i, r in enumerate(owner):
            bi = bound[i] if masks[i] is None else torch.where(masks[i], bound[i], out[r])
            out[r] = torch.minimum(out[r], bi)
        return out


def _maybe_convex(d: int, sign: Sign) -> bool:
    """Whether piece ``sign`` may be convex for ``g = d f`` (always possible for per-element signs)."""
    return isinstance(sign, Tensor) or d * sign > 0


class CurveRule(ActivationRule):
    """An activation rule whose function is a :class:`Curve` (or any object with the same
    ``f``/``interval``/``relax``/``unstable`` methods) chosen from the node (and its constants).

    alpha-CROWN: one parameter per element in [0, 1]; 1/2 is CROWN's choice."""

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
