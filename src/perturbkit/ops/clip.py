"""Clip (hardtanh): ``f(x) = min(max(x, a), b)`` with ``a = attrs['min']``, ``b = attrs['max']``.

Either bound may be absent (unbounded).  As in ONNX (and ``torch.clamp``), ``a > b`` gives
the constant ``b``, so the rule works with ``a' = min(a, b)``.

Piecewise linear with a convex kink at ``a`` and a concave kink at ``b``.  Lines for
pre-activation bounds ``[l, u]`` (each choice minimises the area between line and ``f``
among its two candidates, as the adaptive ReLU relaxation of CROWN, Zhang et al. 2018):

* inside one linear piece: exact (``a``, ``x`` or ``b``);
* only ``a`` inside: upper = chord ``(l, a)``-``(u, u)``; lower = ``x`` if ``u - a > a - l``
  else ``a``;
* only ``b`` inside: lower = chord ``(l, l)``-``(u, b)``; upper = ``x`` if ``u - b < b - l``
  else ``b``;
* both inside: upper = line through ``(l, a)`` and ``(b, b)`` if ``u - b < b - l`` else ``b``;
  lower = line through ``(a, a)`` and ``(u, b)`` if ``a - l < u - a`` else ``a``.

Chord intercepts are moved outward by a bound on their rounding error.

Shapes: ``lo``, ``hi``: ``(*lead, *declared)``; every line tensor has the same shape.
"""
from __future__ import annotations

import math

import torch

from perturbkit.graph.ir import Node
from perturbkit.ops.base import ActivationRule, Interval, Line, Relaxation
from perturbkit.ops.util import finite_or_constant, rounding_slack

Tensor = torch.Tensor


def _bound(node: Node, key: str):
    v = node.attrs.get(key)
    if v is None:
        return None
    v = float(v.reshape(()).item()) if isinstance(v, torch.Tensor) else float(v)
    return None if math.isinf(v) else v


class Clip(ActivationRule):
    op_type = "Clip"

    def bounds(self, node: Node) -> tuple[float, float]:
        """``(a', b)`` as floats (``-inf``/``inf`` when absent), with ``a' = min(a, b)``."""
        a, b = _bound(node, "min"), _bound(node, "max")
        a = -math.inf if a is None else a
        b = math.inf if b is None else b
        return min(a, b), b

    def forward(self, node: Node, x: Tensor, *consts) -> Tensor:
        a, b = _bound(node, "min"), _bound(node, "max")
        return x.clone() if a is None and b is None else torch.clamp(x, min=a, max=b)

    def interval(self, node: Node, x: Interval, *consts) -> Interval:
        return Interval(self.forward(node, x.lo), self.forward(node, x.hi))

    def unstable(self, node: Node, lo: Tensor, hi: Tensor, *consts) -> Tensor:
        a, b = self.bounds(node)
        return ((lo < a) & (hi > a)) | ((lo < b) & (hi > b))

    def relax(self, node: Node, lo: Tensor, hi: Tensor, *consts) -> Relaxation:
        a, b = self.bounds(node)
        l, u = lo, hi
        zero, one = torch.zeros_like(l), torch.ones_like(l)
        A, B = torch.full_like(l, a), torch.full_like(l, b)
        kink_a, kink_b = (l < a) & (u > a), (l < b) & (u > b)
        both = kink_a & kink_b
        only_a, only_b = kink_a & ~kink_b, kink_b & ~kink_a
        # exact lines of the piece the box lies in (also the default where a kink is inside)
        const = (u <= a) | (l >= b)
        ex_s = torch.where(const, zero, one)
        ex_c = torch.where(u <= a, A, torch.where(l >= b, B, zero))
        w = torch.where(u > l, u - l, one)

        def safe(t: Tensor) -> Tensor:
            return torch.where(torch.isfinite(t), t, zero)

        # only a inside: upper chord (l, a)-(u, u); lower x or a
        sa = safe((u - A) / w)
        ca = safe(A - sa * l)
        la_x = (u - A) > (A - l)
        # only b inside: lower chord (l, l)-(u, b); upper x or b
        sb = safe((B - l) / w)
        cb = safe(l - sb * l)
        ub_x = (u - B) < (B - l)
        # both inside
        up_slope = (u - B) < (B - l)
        s_up = safe((B - A) / torch.where(both, B - l, one))
        c_up = safe(A - s_up * l)
        lo_slope = (A - l) < (u - A)
        s_lo = safe((B - A) / torch.where(both, u - A, one))
        c_lo = safe(A - s_lo * A)

        us = torch.where(only_a, sa, torch.where(only_b, torch.where(ub_x, one, zero), ex_s))
        uc = torch.where(only_a, ca, torch.where(only_b, torch.where(ub_x, zero, B), ex_c))
        ls = torch.where(only_b, sb, torch.where(only_a, torch.where(la_x, one, zero), ex_s))
        lc = torch.where(only_b, cb, torch.where(only_a, torch.where(la_x, zero, A), ex_c))
        us = torch.where(both, torch.where(up_slope, s_up, zero), us)
        uc = torch.where(both, torch.where(up_slope, c_up, B), uc)
        ls = torch.where(both, torch.where(lo_slope, s_lo, zero), ls)
        lc = torch.where(both, torch.where(lo_slope, c_lo, A), lc)

        sc = (safe(A), safe(B))
        chord_u = only_a | (both & up_slope)
        chord_l = only_b | (both & lo_slope)
        uc = uc + torch.where(chord_u, rounding_slack(us, uc, l, u, *sc), zero)
        lc = lc - torch.where(chord_l, rounding_slack(ls, lc, l, u, *sc), zero)
        box = self.interval(node, Interval(lo, hi))
        (ls, lc), (us, uc) = finite_or_constant((ls, lc), (us, uc), lo, hi, box.lo, box.hi)
        return Relaxation(lower=Line(ls, lc), upper=Line(us, uc))
