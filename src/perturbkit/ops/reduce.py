"""ReduceSum and ReduceMean (affine), ReduceMax (selection) and ReduceMin over declared axes.

``attrs['axes']`` (ONNX attribute, or the absorbed ``axes`` input) lists the axes; absent or
empty means every declared axis, unless ``noop_with_empty_axes`` is set, which makes the
operator the identity.  ``keepdims`` (default 1) keeps reduced axes with size 1.
The transpose broadcasts the coefficients back over the reduced axes (divided by the count
for the mean).
"""
from __future__ import annotations

import math

import torch

from perturbkit.graph.ir import Node
from perturbkit.ops.base import AffineRule, CompositeRule, Interval, Line, Relaxation, SelectionRule
from perturbkit.ops.util import int_list, n_lead, norm_axis

Tensor = torch.Tensor


def reduce_axes(node: Node) -> list[int] | None:
    """Sorted declared axes to reduce, or ``None`` for the identity."""
    r = len(node.in_shapes[0])
    axes = node.attrs.get("axes")
    axes = [] if axes is None else int_list(axes)
    if not axes:
        if int(node.attrs.get("noop_with_empty_axes", 0)):
            return None
        return list(range(r))
    return sorted({norm_axis(a, r, node) for a in axes})


class ReduceSum(AffineRule):
    op_type = "ReduceSum"
    mean = False

    def axes(self, node: Node) -> list[int] | None:
        return reduce_axes(node)

    def forward(self, node: Node, x: Tensor, *rest) -> Tensor:
        axes = self.axes(node)
        if axes is None:
            return x
        k = n_lead(x, node.in_shapes[0])
        keep = bool(int(node.attrs.get("keepdims", 1)))
        if not axes:
            return x
        dims = [k + a for a in axes]
        return x.mean(dim=dims, keepdim=keep) if self.mean else x.sum(dim=dims, keepdim=keep)

    def interval(self, node: Node, x: Interval, *rest) -> Interval:
        return Interval(self.forward(node, x.lo), self.forward(node, x.hi))

    def backward(self, node: Node, A: Tensor, x, *rest):
        in_shape = node.in_shapes[0]
        axes = self.axes(node)
        if axes is None:
            return [A] + [None] * len(rest)
        k = n_lead(A, node.out_shape)
        if not int(node.attrs.get("keepdims", 1)):
            for a in axes:
                A = A.unsqueeze(k + a)
        if self.mean:
            A = A / math.prod(in_shape[a] for a in axes)
        return [A.expand(*A.shape[:k], *in_shape).contiguous()] + [None] * len(rest)


class ReduceMean(ReduceSum):
    op_type = "ReduceMean"
    mean = True


class ReduceMax(SelectionRule):
    """The maximum over declared axes, relaxed like MaxPool over one window per output element.

    With ``j*`` the reduced element of largest lower bound, ``y >= x[j*]``; ``y == x[j*]``
    when ``lo[j*] >= hi[j]`` for every other element ``j`` of the window, else
    ``y <= max_j hi[j]``.
    """

    op_type = "ReduceMax"

    def forward(self, node: Node, x: Tensor, *rest) -> Tensor:
        axes = reduce_axes(node)
        if not axes:
            return x
        k = n_lead(x, node.in_shapes[0])
        return x.amax(dim=[k + a for a in axes], keepdim=bool(int(node.attrs.get("keepdims", 1))))

    def interval(self, node: Node, x: Interval, *rest) -> Interval:
        return Interval(self.forward(node, x.lo), self.forward(node, x.hi))

    def _windows(self, node: Node, t: Tensor) -> tuple[Tensor, Tensor]:
        """``t`` (*lead, *in) -> (*lead, n_out, K) and the flat input index table (n_out, K)."""
        in_shape = node.in_shapes[0]
        axes = reduce_axes(node) or []
        kept = [a for a in range(len(in_shape)) if a not in axes]
        k = n_lead(t, in_shape)
        K = math.prod(in_shape[a] for a in axes)
        perm = list(range(k)) + [k + a for a in kept + axes]
        w = t.permute(perm).reshape((*t.shape[:k], -1, K))
        idx = torch.arange(math.prod(in_shape), device=t.device).reshape(in_shape).permute(kept + axes).reshape(-1, K)
        return w, idx

    def relax(self, node: Node, lo: Tensor, hi: Tensor) -> Relaxation:
        """Shapes: ``lo``, ``hi``: ``(*lead, *in)``; line tensors ``(*lead, n_out)``."""
        glo, idx = self._windows(node, lo)
        ghi, _ = self._windows(node, hi)
        j = glo.argmax(-1, keepdim=True)
        lo_j = glo.gather(-1, j).squeeze(-1)
        hi_other = ghi.scatter(-1, j, torch.full(j.shape, -math.inf, dtype=ghi.dtype, device=ghi.device)).amax(-1)
        hi_all = ghi.amax(-1)
        exact = lo_j >= hi_other
        index = idx.expand(*j.shape[:-2], *idx.shape).gather(-1, j).squeeze(-1)
        one, zero = torch.ones_like(lo_j), torch.zeros_like(lo_j)
        lower = Line(one, zero, index)
        upper = Line(torch.where(exact, one, zero), torch.where(exact, zero, hi_all), index)
        return Relaxation(lower=lower, upper=upper)

    def unstable(self, node: Node, lo: Tensor, hi: Tensor) -> Tensor:
        return torch.ones_like(lo, dtype=torch.bool)


class ReduceMin(CompositeRule):
    """``min(x) = -max(-x)``: lowered to Neg, ReduceMax, Neg."""

    op_type = "ReduceMin"

    def forward(self, node: Node, x: Tensor, *rest) -> Tensor:
        return -ReduceMax().forward(node, -x)

    def lower(self, node: Node, runtime, emit) -> bool:
        n = emit.node("Neg", [node.inputs[0]], hint="neg")
        m = emit.node("ReduceMax", [n], dict(node.attrs), hint="max")
        emit.node("Neg", [m], output=node.output)
        return True
