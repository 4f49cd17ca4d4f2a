"""Elementwise affine arithmetic: Add, Sub (any operands, residual connections included),
Mul and Div by a constant, Neg.  Numpy broadcasting throughout.

Mul of two runtime values and Div by a runtime value are not affine: lowering rewrites
them (``Mul(x, x) -> Pow(x, 2)``, ``Mul(a, b) -> BilinearMul(a, b)``,
``Div(a, b) -> Mul(a, Reciprocal(b))``; see :mod:`perturbkit.graph.lower`)."""
from __future__ import annotations

import torch

from perturbkit.errors import UnsupportedOperatorError
from perturbkit.graph.ir import Node
from perturbkit.ops.base import AffineRule, Interval
from perturbkit.ops.util import align, unbroadcast


def _aligned(node: Node, xs):
    r = len(node.out_shape)
    return [align(x, s, r) if isinstance(x, torch.Tensor) and x.dim() > len(s) else x
            for x, s in zip(xs, node.in_shapes)]


class Add(AffineRule):
    op_type = "Add"
    sign = 1.0
    coordinatewise = True  # with one runtime input (the engine checks that)

    def forward(self, node: Node, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        a, b = _aligned(node, (a, b))
        return a + b if self.sign > 0 else a - b

    def interval(self, node: Node, a, b) -> Interval:
        r = len(node.out_shape)
        def lohi(x, s):
            if isinstance(x, Interval):
                return align(x.lo, s, r), align(x.hi, s, r)
            return x, x
        alo, ahi = lohi(a, node.in_shapes[0])
        blo, bhi = lohi(b, node.in_shapes[1])
        if self.sign > 0:
            return Interval(alo + blo, ahi + bhi)
        return Interval(alo - bhi, ahi - blo)

    def backward(self, node: Node, A: torch.Tensor, a, b):
        out = []
        for x, s, sg in ((a, node.in_shapes[0], 1.0), (b, node.in_shapes[1], self.sign)):
            if x is not None:
                out.append(None)
                continue
            Ax = unbroadcast(A, node.out_shape, s)  # sum first: the negation then acts on fewer entries
            out.append(Ax if sg > 0 else -Ax)
        return out


class Sub(Add):
    op_type = "Sub"
    sign = -1.0


class Mul(AffineRule):
    """Product with a constant (either side)."""

    op_type = "Mul"
    coordinatewise = True

    def _const(self, node: Node, a, b):
        ca, cb = isinstance(a, torch.Tensor), isinstance(b, torch.Tensor)
        if not (ca or cb):
            raise UnsupportedOperatorError(
                f"{node.op_type} of two perturbed tensors is not supported at {node.where()}; one side must be constant")
        return (1, a) if ca else (0, b)  # (index of the perturbed operand, constant)

    def _scale(self, c: torch.Tensor) -> torch.Tensor:
        return c

    def forward(self, node: Node, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        a, b = _aligned(node, (a, b))
        return a * b

    def lower(self, node: Node, runtime, emit) -> bool:
        if not all(runtime):
            return False
        a, b = node.inputs
        if a == b:  # a square: one convex function, far tighter than a product
            emit.node("Pow", [a, emit.const(torch.tensor(2.0), "two")], output=node.output)
        else:
            emit.node("BilinearMul", [a, b], output=node.output)
        return True

    def interval(self, node: Node, a, b) -> Interval:
        i, c = self._const(node, a, b)
        x = (a, b)[i]
        r = len(node.out_shape)
        s = self._scale(c)
        lo, hi = align(x.lo, node.in_shapes[i], r), align(x.hi, node.in_shapes[i], r)
        p, q = lo * s, hi * s
        return Interval(torch.minimum(p, q), torch.maximum(p, q))

    def backward(self, node: Node, A: torch.Tensor, a, b):
        i, c = self._const(node, a, b)
        Ax = unbroadcast(A * self._scale(c), node.out_shape, node.in_shapes[i])
        return [Ax, None] if i == 0 else [None, Ax]


class Div(Mul):
    """Division of a perturbed tensor by a constant."""

    op_type = "Div"

    def _const(self, node: Node, a, b):
        if not isinstance(b, torch.Tensor):
            raise UnsupportedOperatorError(
                f"Div by a perturbed tensor is not supported at {node.where()}; the divisor must be constant")
        return 0, b

    def _scale(self, c: torch.Tensor) -> torch.Tensor:
        return 1.0 / c

    def lower(self, node: Node, runtime, emit) -> bool:
        if not runtime[1]:
            return False
        r = emit.node("Reciprocal", [node.inputs[1]], hint="reciprocal")
        emit.node("Mul", [node.inputs[0], r], output=node.output)
        return True

    def forward(self, node: Node, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        a, b = _aligned(node, (a, b))
        if not a.is_floating_point():
            return torch.div(a, b, rounding_mode="trunc")
        return a / b


class Neg(AffineRule):
    op_type = "Neg"
    coordinatewise = True

    def forward(self, node: Node, x: torch.Tensor) -> torch.Tensor:
        return -x

    def interval(self, node: Node, x: Interval) -> Interval:
        return Interval(-x.hi, -x.lo)

    def backward(self, node: Node, A: torch.Tensor, x):
        return [-A]
