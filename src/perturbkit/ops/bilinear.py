"""Products of two perturbed tensors: BilinearMul (elementwise) and BilinearMatMul.

They come from lowering (:mod:`perturbkit.graph.lower`): a Mul or MatMul whose two operands
are runtime values becomes one of these (a Div by a runtime value becomes a Reciprocal and a
BilinearMul; a Gemm with a runtime weight a BilinearMatMul).  The relaxation, McCormick's
planes as Shi et al. 2020 ("Robustness verification for Transformers") choose them, is built
by the engine (:mod:`perturbkit.bounds.bilinear`) from the two transposes of the product
with one operand fixed, which are the transposes of the affine Mul / MatMul rules applied
to batched operands: no operator algebra is written twice.

Intervals are exact: every output element is a sum of products of distinct pairs of
operand elements, so the sum of the products' exact ranges is the exact range.  For a
MatMul whose expanded product would be very large the interval falls back to the midpoint-
radius form (Rump 1999), still sound.  With ``attrs['stochastic_rows']`` (set by
:mod:`perturbkit.graph.fuse` when the left operand is a softmax along its last axis, as the
attention weights are) the interval is also intersected with the range of the convex
combinations of the right operand's rows.

Shapes: runtime operands ``(*lead, *declared)``; a "fixed" operand in :meth:`transpose` is
``(B, *declared)`` and the coefficients ``(B, S, *declared)``.
"""
from __future__ import annotations

import math

import torch

from perturbkit.graph.ir import Node
from perturbkit.ops.arith import Mul
from perturbkit.ops.base import BilinearRule, Interval
from perturbkit.ops.linear import MatMul
from perturbkit.ops.util import align, broadcast_shapes

Tensor = torch.Tensor

#: above this many elements of the expanded product, MatMul intervals use midpoint-radius
_EXACT_MATMUL_ELEMENTS = 2 ** 24


def _corners(alo: Tensor, ahi: Tensor, blo: Tensor, bhi: Tensor) -> Interval:
    p = (alo * blo, alo * bhi, ahi * blo, ahi * bhi)
    lo = torch.minimum(torch.minimum(p[0], p[1]), torch.minimum(p[2], p[3]))
    hi = torch.maximum(torch.maximum(p[0], p[1]), torch.maximum(p[2], p[3]))
    return Interval(lo, hi)


class BilinearMul(BilinearRule):
    """``a * b`` elementwise (numpy broadcasting), both operands perturbed."""

    op_type = "BilinearMul"
    _affine = Mul()

    def _aligned(self, node: Node, xs):
        r = len(node.out_shape) if node.out_shape else max(len(s) for s in node.in_shapes)
        return [align(x, s, r) if x.dim() > len(s) else x for x, s in zip(xs, node.in_shapes)]

    def forward(self, node: Node, a: Tensor, b: Tensor) -> Tensor:
        a, b = self._aligned(node, (a, b))
        return a * b

    def interval(self, node: Node, a: Interval, b: Interval) -> Interval:
        alo, blo = self._aligned(node, (a.lo, b.lo))
        ahi, bhi = self._aligned(node, (a.hi, b.hi))
        return _corners(alo, ahi, blo, bhi)

    def transpose(self, node: Node, A: Tensor, fixed: Tensor, side: int) -> Tensor:
        c = fixed.unsqueeze(1)  # (B, 1, *declared): broadcasts over the specifications
        r = len(node.out_shape)
        c = align(c, node.in_shapes[1 - side], r)
        args = (None, c) if side == 0 else (c, None)
        return self._affine.backward(node, A, *args)[side]


class BilinearMatMul(BilinearRule):
    """``a @ b`` (numpy matmul semantics, 1-D operands promoted), both operands perturbed."""

    op_type = "BilinearMatMul"
    _affine = MatMul()

    def forward(self, node: Node, a: Tensor, b: Tensor) -> Tensor:
        return MatMul._mm(node, a, b)

    def interval(self, node: Node, a: Interval, b: Interval) -> Interval:
        va, vb, pa, pb, r = MatMul._promote(node)
        alo, ahi = (align(t.unsqueeze(-2) if va else t, pa, r) for t in (a.lo, a.hi))
        blo, bhi = (align(t.unsqueeze(-1) if vb else t, pb, r) for t in (b.lo, b.hi))
        M, K, N = pa[-2], pa[-1], pb[-1]
        lead = math.prod(broadcast_shapes(alo.shape[:-2], blo.shape[:-2]))
        if lead * M * K * N <= _EXACT_MATMUL_ELEMENTS:
            # (.., M, K, 1) x (.., 1, K, N): the exact range of every product, summed over K
            box = _corners(alo.unsqueeze(-1), ahi.unsqueeze(-1), blo.unsqueeze(-3), bhi.unsqueeze(-3))
            lo, hi = box.lo.sum(-2), box.hi.sum(-2)
        else:
            am, ar = (ahi + alo) / 2, (ahi - alo) / 2
            bm, br = (bhi + blo) / 2, (bhi - blo) / 2
            mid = am @ bm
            rad = am.abs() @ br + ar @ bm.abs() + ar @ br
            # midpoint-radius in floating point: widen by the rounding of the products
            slack = (am.abs() @ bm.abs() + rad) * (4 * K * torch.finfo(mid.dtype).eps)
            lo, hi = mid - rad - slack, mid + rad + slack
        if node.attrs.get("stochastic_rows") and not va:
            # rows of a are probability vectors (a softmax along its last axis): every output is
            # a convex combination of b's rows, so it lies between their smallest and largest
            lo = torch.maximum(lo, blo.amin(-2, keepdim=True))
            hi = torch.minimum(hi, bhi.amax(-2, keepdim=True))
        if vb:
            lo, hi = lo.squeeze(-1), hi.squeeze(-1)
        if va:
            lo, hi = lo.squeeze(-1 if vb else -2), hi.squeeze(-1 if vb else -2)
        return Interval(lo, hi)

    def transpose(self, node: Node, A: Tensor, fixed: Tensor, side: int) -> Tensor:
        c = fixed.unsqueeze(1)  # (B, 1, *declared): broadcasts over the specifications
        args = (None, c) if side == 0 else (c, None)
        return self._affine.backward(node, A, *args)[side]
