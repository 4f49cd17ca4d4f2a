"""ReduceSum and ReduceMean over declared axes.

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
from perturbkit.ops.base import AffineRule, Interval
from perturbkit.ops.util import int_list, n_lead, norm_axis

Tensor = torch.Tensor


class ReduceSum(AffineRule):
    op_type = "ReduceSum"
    mean = False

    def axes(self, node: Node) -> list[int] | None:
        """Sorted declared axes to reduce, or ``None`` for the identity."""
        r = len(node.in_shapes[0])
        axes = node.attrs.get("axes")
        axes = [] if axes is None else int_list(axes)
        if not axes:
            if int(node.attrs.get("noop_with_empty_axes", 0)):
                return None
            return list(range(r))
        return sorted({norm_axis(a, r, node) for a in axes})

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
