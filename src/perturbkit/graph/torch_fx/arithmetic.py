"""Converters for arithmetic: binary operators, reverse subtraction, matrix products, reductions.

Constant operands (Python numbers, tensors that do not depend on the input) become float
constants of the graph; ``alpha`` of ``add``/``sub`` is applied to the second operand.
"""
from __future__ import annotations

from typing import Any

import torch

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


# -- powers ----------------------------------------------------------------------------
def _pow(b: Builder, x: Any, exponent: Any) -> Var:
    if isinstance(exponent, Var):
        raise unsupported(b, "a power with an exponent that depends on the network input is not supported")
    x = as_var(b, x, "base")
    e = operand(exponent)
    if e.numel() != 1:
        raise unsupported(b, f"a power with a tensor exponent of shape {tuple(e.shape)} is not supported; use a scalar")
    return b.emit("Pow", [x, e.reshape(())])


def power(b: Builder, c: Call) -> Var:
    """``x ** c``, ``torch.pow(x, c)``, ``x.pow(c)`` with a constant exponent: ONNX ``Pow(x, c)``."""
    return _pow(b, c.arg(0, "input"), c.arg(1, "exponent"))


def rsqrt(b: Builder, c: Call) -> Var:
    """``1 / sqrt(x)`` as ``Pow(x, -0.5)``."""
    return _pow(b, c.arg(0, "input"), -0.5)


# -- max and min: of two tensors (elementwise) or along dimensions (a reduction) --------
class Refused:
    """A result the front end cannot represent (e.g. argmax indices); using it is an error.

    The walk raises ``UnsupportedOperatorError(f"{why} at {where}")`` when a call reads it."""

    def __init__(self, why: str):
        self.why = why


def extremum(op: str) -> Converter:
    """``torch.max``/``torch.min`` (and the methods): of two tensors -> ``Max``/``Min``; along a
    dimension -> ``(values, indices)`` with ``ReduceMax``/``ReduceMin`` values; of all elements
    -> a ``ReduceMax``/``ReduceMin`` over every axis."""
    binary_op = binary(op)
    reduce_op = reduce(f"Reduce{op}")

    def convert(b: Builder, c: Call) -> Any:
        other = c.arg(1, "other")
        if isinstance(other, (Var, torch.Tensor)):
            return binary_op(b, c)
        dim = c.arg(1, "dim")
        values = reduce_op(b, c)
        if dim is None:
            return values
        why = f"the indices of torch.{op.lower()}(x, dim) (an arg{op.lower()} of the perturbed value) are not supported"
        return type(c.value)((values, Refused(why)))
    return convert
