"""Converters for arithmetic: binary operators, reverse subtraction, matrix products, reductions.

Constant operands (Python numbers, tensors that do not depend on the input) become float
constants of the graph; ``alpha`` of ``add``/``sub`` is applied to the second operand.
"""
from __future__ import annotations

from typing import Any

from perturbkit.graph.torch_fx.builder import Builder, Call, Converter, Var, as_var, norm_axis, operand, unsupported


def _scaled(b: Builder, y: Any, alpha: Any) -> Any:
    if alpha is None or alpha == 1:
        return y
    if isinstance(y, Var):
        return b.emit("Mul", [y, operand(alpha)])
    return operand(y) * alpha


def binary(op: str) -> Converter:
    def convert(b: Builder, c: Call) -> Var:
        a, y = c.arg(0, "input"), c.arg(1, "other")
        if op == "Div" and c.kwargs.get("rounding_mode") is not None:
            raise unsupported(b, f"division with rounding_mode='{c.kwargs['rounding_mode']}' is not supported")
        y = _scaled(b, y, c.kwargs.get("alpha"))
        return b.emit(op, [operand(a), operand(y)])
    return convert


def rsub(b: Builder, c: Call) -> Var:
    a, y = c.arg(0, "input"), c.arg(1, "other")
    return b.emit("Sub", [operand(y), operand(_scaled(b, a, c.kwargs.get("alpha")))])


def matmul(b: Builder, c: Call) -> Var:
    return b.emit("MatMul", [operand(c.arg(0, "input")), operand(c.arg(1, "other"))])


def reduce(op: str) -> Converter:
    def convert(b: Builder, c: Call) -> Var:
        x = as_var(b, c.arg(0, "input"))
        dim = c.arg(1, "dim")
        keep = bool(c.arg(2, "keepdim", False))
        if dim is None or (isinstance(dim, (tuple, list)) and len(dim) == 0):
            axes = list(range(x.rank))
        else:
            dims = [dim] if isinstance(dim, int) else list(dim)
            axes = sorted({norm_axis(b, int(d), x.rank) for d in dims})
        return b.emit(op, [x], {"axes": axes, "keepdims": int(keep)})
    return convert
