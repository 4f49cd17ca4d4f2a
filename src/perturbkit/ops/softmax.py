"""Softmax and LogSoftmax: bounded through the pairwise-difference form.

``softmax(x)_i = 1 / sum_j exp(x_j - x_i)`` (Shi et al. 2020, "Robustness verification for
Transformers", bound softmax through exp, a sum and a reciprocal; writing every term as a
difference to ``x_i`` is the numerically stable form and needs no product of two perturbed
values).  The decomposition :meth:`Softmax.lower` emits, along the softmax axis ``a``::

    d = Unsqueeze(x, a) - Unsqueeze(x, a + 1)   # d[.., i, j, ..] = x_j - x_i   (affine)
    s = ReduceSum(Exp(d), axis a + 1)            # s_i >= 1 (the j = i term is exp(0))
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

from perturbkit.graph.ir import Node
from perturbkit.ops.base import CompositeRule
from perturbkit.ops.util import norm_axis

Tensor = torch.Tensor


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
        s = emit.node("ReduceSum", [e], {"axes": [a + 1], "keepdims": 0}, hint="sum")
        if self.log:
            ls = emit.node("Log", [s], hint="log_sum")
            emit.node("Neg", [ls], output=node.output)
        else:
            emit.node("Reciprocal", [s], output=node.output)
        return True


class LogSoftmax(Softmax):
    op_type = "LogSoftmax"
    log = True
