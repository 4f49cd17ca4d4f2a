"""Softmax and LogSoftmax: bounded through the pairwise-difference form.

``softmax(x)_i = 1 / sum_j exp(x_j - x_i)`` (Shi et al. 2020, "Robustness verification for
Transformers", bound softmax through exp, a sum and a reciprocal; writing every term as a
difference to ``x_i`` is the numerically stable form and needs no product of two perturbed
values).  The decomposition :meth:`Softmax.lower` emits, along the softmax axis ``a``::

    d = Unsqueeze(x, a) - Unsqueeze(x, a + 1)   # d[.., i, j, ..] = x_j - x_i   (affine)
    s = ReduceSum(Exp(d), axis a + 1)            # s_i >= 1 (the j = i term is exp(0)): KnownRange
    y = Reciprocal(s)                            # softmax;  LogSoftmax: y = -Log(s)

Every piece is a rule with a sound relaxation, so IBP, CROWN and alpha-CROWN bound it with
no further code.  Against the textbook decomposition ``exp(x) / sum exp(x)`` (a product of
two perturbed values) this form is much tighter (``bench/transformer_bounds.py`` measures
both) and cannot overflow: ``d_ii = 0`` and ``s >= 1``.

The forward pass is torch's softmax.  Axis semantics: opset 13 (one axis, default -1); the
older opsets' default (axis 1 of inputs coerced to 2-D) is the same on ``(1, n)`` outputs.

Shapes: runtime inputs ``(*lead, *declared)``; ``d`` has the softmax axis doubled.
"""
from __future__ import annotations

import torch

from perturbkit.errors import UnsupportedOperatorError
from perturbkit.graph.ir import Node
from perturbkit.ops.base import CompositeRule
from perturbkit.ops.util import align, norm_axis

Tensor = torch.Tensor

#: additive mask entries at or below this are masked out exactly (``-inf``, ``finfo.min``,
#: ``-1e9``, ``-1e4``): ``exp(s - 1e4)`` underflows to exactly 0 in float32 and float64 for
#: any score difference below about 9e3, so the network's own arithmetic gives them weight 0
MASKED = -1e4


def _axis(node: Node) -> int:
    """The softmax axis in the declared shape, in ``[0, rank)``."""
    return norm_axis(int(node.attrs.get("axis", -1)), len(node.in_shapes[0]), node)


class Softmax(CompositeRule):
    op_type = "Softmax"
    log = False

    def forward(self, node: Node, x: Tensor) -> Tensor:
        dim = _axis(node) - len(node.in_shapes[0])
        return torch.log_softmax(x, dim=dim) if self.log else torch.softmax(x, dim=dim)

    def lower(self, node: Node, runtime, emit) -> bool:
        a = _axis(node)
        x = node.inputs[0]
        xj = emit.node("Unsqueeze", [x], {"axes": [a]}, hint="x_j")
        xi = emit.node("Unsqueeze", [x], {"axes": [a + 1]}, hint="x_i")
        d = emit.node("Sub", [xj, xi], hint="diff")
        e = emit.node("Exp", [d], hint="exp")
        s = emit.node("ReduceSum", [e], {"axes": [a + 1], "keepdims": 0}, hint="sum_terms")
        s = emit.node("KnownRange", [s], {"lower": 1.0}, hint="sum")  # the j = i term is exp(0)
        if self.log:
            ls = emit.node("Log", [s], hint="log_sum")
            emit.node("Neg", [ls], output=node.output)
        else:
            emit.node("Reciprocal", [s], output=node.output)
        return True


class LogSoftmax(Softmax):
    op_type = "LogSoftmax"
    log = True


class MaskedSoftmax(CompositeRule):
    """``softmax(x + M)`` with a constant additive mask ``M`` (made by :mod:`perturbkit.graph.fuse`
    from exported attention masks).  Entries with ``M <= MASKED`` are dropped exactly::

        keep = M > MASKED,  x' = x + where(keep, M, 0)
        s_i = sum_j K_ij exp(x'_j - x'_i),  K_ij = keep_j or i == j      (affine mask on the pairs)
        y_i = keep_i / s_i

    so no ``-inf`` reaches the bound algorithms.  A row with every entry masked is refused
    (softmax is undefined there: torch and ONNX Runtime give NaN).

    Inputs: x (runtime), M (constant, broadcast to x's declared shape).
    """

    op_type = "MaskedSoftmax"

    def forward(self, node: Node, x: Tensor, mask: Tensor) -> Tensor:
        dim = _axis(node) - len(node.in_shapes[0])
        keep = mask > MASKED
        m = torch.where(keep, mask, torch.zeros_like(mask))
        y = torch.softmax(x + m.to(x.dtype), dim=dim)
        return y * keep.to(y.dtype) / (y * keep.to(y.dtype)).sum(dim=dim, keepdim=True)

    def lower(self, node: Node, runtime, emit) -> bool:
        a = _axis(node)
        shape = node.in_shapes[0]
        M = torch.broadcast_to(emit.value(node.inputs[1]).to(torch.float64), shape)
        keep = M > MASKED
        if not bool(keep.any(dim=a).all()):
            raise UnsupportedOperatorError(f"a softmax row with every entry masked at {node.where()}")
        x = node.inputs[0]
        shift = torch.where(keep, M, torch.zeros_like(M))
        if bool(shift.any()):
            x = emit.node("Add", [x, emit.const(shift, "shift")], hint="shifted")
        xj = emit.node("Unsqueeze", [x], {"axes": [a]}, hint="x_j")
        xi = emit.node("Unsqueeze", [x], {"axes": [a + 1]}, hint="x_i")
        d = emit.node("Sub", [xj, xi], hint="diff")
        e = emit.node("Exp", [d], hint="exp")
        n = shape[a]
        K = keep.unsqueeze(a) | torch.eye(n, dtype=torch.bool).reshape((1,) * a + (n, n) + (1,) * (len(shape) - a - 1))
        e = emit.node("Mul", [e, emit.const(K.to(torch.float64), "pairs")], hint="kept")
        s = emit.node("ReduceSum", [e], {"axes": [a + 1], "keepdims": 0}, hint="sum_terms")
        s = emit.node("KnownRange", [s], {"lower": 1.0}, hint="sum")  # K_ii = 1: the j = i term
        r = emit.node("Reciprocal", [s], hint="softmax")
        emit.node("Mul", [r, emit.const(keep.to(torch.float64), "keep")], output=node.output)
        return True
