"""Max and Min of several tensors (numpy broadcasting), bounded through ReLU.

``max(a, b) = b + relu(a - b)`` and ``min(a, b) = a - relu(a - b)``: exact identities, so
the ReLU relaxation (its alpha-CROWN slopes included) bounds them; the lower line
``alpha a + (1 - alpha) b`` and the upper chord are symmetric in ``a`` and ``b``.  With a
constant operand this is the ReLU of a shifted value, which the relaxation handles exactly
on stable elements.  More than two operands are folded left to right.
"""
from __future__ import annotations

import torch

from perturbkit.graph.ir import Node
from perturbkit.ops.base import CompositeRule
from perturbkit.ops.util import align

Tensor = torch.Tensor


class Max(CompositeRule):
    op_type = "Max"
    sign = 1

    def forward(self, node: Node, *xs: Tensor) -> Tensor:
        r = max(len(s) for s in node.in_shapes)
        xs = [align(x, s, r) if x.dim() > len(s) else x for x, s in zip(xs, node.in_shapes)]
        out = xs[0]
        for x in xs[1:]:
            out = torch.maximum(out, x) if self.sign > 0 else torch.minimum(out, x)
        return out

    def lower(self, node: Node, runtime, emit) -> bool:
        acc = node.inputs[0]
        if len(node.inputs) == 1:
            emit.node("Identity", [acc], output=node.output)
            return True
        for k, b in enumerate(node.inputs[1:], start=1):
            last = k == len(node.inputs) - 1
            out = dict(output=node.output) if last else dict(hint=f"acc{k}")
            d = emit.node("Sub", [acc, b], hint=f"diff{k}")
            r = emit.node("Relu", [d], hint=f"relu{k}")
            acc = emit.node("Add", [b, r], **out) if self.sign > 0 else emit.node("Sub", [acc, r], **out)
        return True


class Min(Max):
    op_type = "Min"
    sign = -1
