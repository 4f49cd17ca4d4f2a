"""Constant folding at ONNX import: the operators of exporters' shape arithmetic.

Exporters compute shapes, masks and scales with small subgraphs on constants (``Shape``
of a value is a constant too: declared shapes are static), e.g. ``nn.MultiheadAttention``
exported by ``torch.onnx.export(..., dynamo=False)``::

    Shape -> Slice -> Concat -> Reshape          (the heads' shape)
    Mod(Constant, Constant) -> Add -> Slice       (a negative axis made positive)
    Shape -> Cast -> Sqrt -> Div -> Sqrt -> Mul   (the 1 / sqrt(head_dim) scale)

:data:`FOLD` maps an op type to a function ``(node, *inputs) -> tensor`` that follows the
ONNX operator definition exactly on constant tensors of any dtype: integer ``Div``
truncates toward zero, ``Mod`` takes the sign of the divisor unless ``fmod=1`` (C's
``fmod``, sign of the dividend), ``Range`` has ``max(ceil((limit - start) / delta), 0)``
elements of the inputs' dtype, ``Pow`` keeps the base's dtype, comparisons and logic
broadcast (numpy rules) and give booleans.  The importer folds a node whose inputs are
all constant with this table first and with the operator's rule otherwise (Reshape,
Slice, Gather, Concat, ... on constants); operators that are only here are refused on
runtime values.

Inputs that configure an operator (Reshape's shape, Slice's starts, ...) are already in
``node.attrs`` when a function here is called (see ``from_onnx._ABSORB``); the others are
positional tensors.  Shapes: every function broadcasts its inputs by the numpy rule.
"""
from __future__ import annotations

import math
from types import MappingProxyType
from typing import Callable, Mapping

import torch

from perturbkit.errors import ModelError, UnsupportedOperatorError
from perturbkit.graph.ir import Node
from perturbkit.ops.reduce import reduce_axes

Tensor = torch.Tensor

#: ONNX TensorProto data type -> torch dtype (strings and 4-bit types are not supported)
ONNX_DTYPES: Mapping[int, torch.dtype] = MappingProxyType({
    1: torch.float32, 2: torch.uint8, 3: torch.int8, 4: torch.uint16, 5: torch.int16, 6: torch.int32,
    7: torch.int64, 9: torch.bool, 10: torch.float16, 11: torch.float64, 12: torch.uint32, 13: torch.uint64,
    16: torch.bfloat16,
})


def _cast(node: Node, x: Tensor) -> Tensor:
    to = int(node.attrs["to"])
    if to not in ONNX_DTYPES:
        raise UnsupportedOperatorError(f"Cast to ONNX type {to} is not supported at {node.where()}")
    return x.to(ONNX_DTYPES[to])


def _constant_of_shape(node: Node, shape: Tensor) -> Tensor:
    value = node.attrs.get("value")
    value = torch.zeros(1, dtype=torch.float32) if value is None else value
    return value.reshape(-1)[0].expand(tuple(int(s) for s in shape.reshape(-1).tolist())).clone()


def _range(node: Node, start: Tensor, limit: Tensor, delta: Tensor) -> Tensor:
    """``max(ceil((limit - start) / delta), 0)`` elements ``start, start + delta, ...`` in
    start's dtype; floating-point ones accumulated one ``+ delta`` at a time in that dtype, as
    the operator's function body (and ONNX Runtime) does."""
    s, l, d = (t.reshape(-1)[0].item() for t in (start, limit, delta))
    if d == 0:
        raise ModelError(f"Range with delta 0 at {node.where()}")
    if start.is_floating_point():
        n = max(math.ceil((l - s) / d), 0)
        v, step = start.reshape(()).clone(), delta.reshape(()).to(start.dtype)
        out = torch.empty(n, dtype=start.dtype)
        for i in range(n):
            out[i] = v
            v = v + step
        return out
    n = max(-((s - l) // d), 0)  # exact integer ceil((l - s) / d)
    return torch.arange(n, dtype=torch.int64).mul_(d).add_(s).to(start.dtype)


def _mod(node: Node, a: Tensor, b: Tensor) -> Tensor:
    if int(node.attrs.get("fmod", 0)):
        return torch.fmod(a, b)
    if a.is_floating_point() or b.is_floating_point():
        raise ModelError(f"Mod of floating-point tensors needs fmod=1 (ONNX) at {node.where()}")
    return torch.remainder(a, b)


def _div(node: Node, a: Tensor, b: Tensor) -> Tensor:
    if a.is_floating_point():
        return a / b
    return torch.div(a, b, rounding_mode="trunc")


def _pow(node: Node, a: Tensor, b: Tensor) -> Tensor:
    return torch.pow(a, b).to(a.dtype)


def _where(node: Node, c: Tensor, a: Tensor, b: Tensor) -> Tensor:
    return torch.where(c.to(torch.bool), a, b)


def _variadic(f: Callable[[Tensor, Tensor], Tensor]) -> Callable[..., Tensor]:
    def run(node: Node, *xs: Tensor) -> Tensor:
        out = xs[0]
        for x in xs[1:]:
            out = f(out, x)
        return out
    return run


def _mean(node: Node, *xs: Tensor) -> Tensor:
    return _variadic(torch.add)(node, *xs) / len(xs)


def _trilu(node: Node, x: Tensor, k: Tensor | None = None) -> Tensor:
    diag = 0 if k is None else int(k.reshape(-1)[0].item())
    return torch.triu(x, diag) if int(node.attrs.get("upper", 1)) else torch.tril(x, diag)


def _cumsum(node: Node, x: Tensor, axis: Tensor) -> Tensor:
    a = int(axis.reshape(-1)[0].item())
    a = a + x.dim() if a < 0 else a
    if int(node.attrs.get("reverse", 0)):
        x = x.flip(a)
    y = torch.cumsum(x, a).to(x.dtype)
    if int(node.attrs.get("exclusive", 0)):
        y = y - x
    return y.flip(a) if int(node.attrs.get("reverse", 0)) else y


def _reduce(f: Callable[[Tensor, int], Tensor]) -> Callable[..., Tensor]:
    def run(node: Node, x: Tensor) -> Tensor:
        axes = reduce_axes(node)
        if axes is None:
            return x
        keep = bool(int(node.attrs.get("keepdims", 1)))
        for a in sorted(axes, reverse=True):
            x = f(x, a)
            x = x.unsqueeze(a) if keep else x
        return x
    return run


def _unary(f: Callable[[Tensor], Tensor]) -> Callable[..., Tensor]:
    return lambda node, x: f(x)


def _binary(f: Callable[[Tensor, Tensor], Tensor]) -> Callable[..., Tensor]:
    return lambda node, a, b: f(a, b)


_TABLE: dict[str, Callable[..., Tensor]] = {
    # types and shapes
    "Cast": _cast,
    "CastLike": lambda n, x, like: x.to(like.dtype),
    "ConstantOfShape": _constant_of_shape,
    "Range": _range,
    "Size": lambda n, x: torch.tensor(x.numel(), dtype=torch.int64),
    "Trilu": _trilu,
    "NonZero": lambda n, x: torch.nonzero(x).T.contiguous(),
    "CumSum": _cumsum,
    # arithmetic (integer semantics as in ONNX)
    "Add": _binary(torch.add),
    "Sub": _binary(torch.sub),
    "Mul": _binary(torch.mul),
    "Div": _div,
    "Mod": _mod,
    "Pow": _pow,
    "Neg": _unary(torch.neg),
    "Abs": _unary(torch.abs),
    "Sign": _unary(torch.sign),
    "Floor": _unary(torch.floor),
    "Ceil": _unary(torch.ceil),
    "Round": _unary(torch.round),  # half to even, as ONNX
    "Sqrt": _unary(torch.sqrt),
    "Reciprocal": _unary(torch.reciprocal),
    "Exp": _unary(torch.exp),
    "Log": _unary(torch.log),
    "Sin": _unary(torch.sin),
    "Cos": _unary(torch.cos),
    "Tanh": _unary(torch.tanh),
    "Sigmoid": _unary(torch.sigmoid),
    "Erf": _unary(torch.erf),
    "Min": _variadic(torch.minimum),
    "Max": _variadic(torch.maximum),
    "Sum": _variadic(torch.add),
    "Mean": _mean,
    # comparisons and logic
    "Equal": _binary(torch.eq),
    "Less": _binary(torch.lt),
    "LessOrEqual": _binary(torch.le),
    "Greater": _binary(torch.gt),
    "GreaterOrEqual": _binary(torch.ge),
    "And": _binary(torch.logical_and),
    "Or": _binary(torch.logical_or),
    "Xor": _binary(torch.logical_xor),
    "Not": _unary(torch.logical_not),
    "IsNaN": _unary(torch.isnan),
    "IsInf": _unary(torch.isinf),
    "Where": _where,
    # reductions that have no affine rule
    "ReduceProd": _reduce(lambda x, a: x.prod(a)),
    "ReduceMax": _reduce(lambda x, a: x.amax(a)),
    "ReduceMin": _reduce(lambda x, a: x.amin(a)),
}

#: op type -> folding function (ONNX semantics on constants; see the module docstring)
FOLD: Mapping[str, Callable[..., Tensor]] = MappingProxyType(_TABLE)


def split_sizes(node: Node, dim: int, n_outputs: int) -> list[int]:
    """Sizes of the parts of ONNX ``Split`` along an axis of size ``dim``.

    ``attrs['split']`` (the opset-13 input, or the attribute of older opsets) gives them;
    otherwise ``num_outputs`` (opset 18: parts of ``ceil(dim / n)``, the last one smaller)
    or the number of outputs (equal parts) does.
    """
    split = node.attrs.get("split")
    if split is not None:
        sizes = [int(s) for s in (split.reshape(-1).tolist() if isinstance(split, Tensor) else split)]
        if sum(sizes) != dim or len(sizes) != n_outputs:
            raise ModelError(f"Split sizes {sizes} do not fit an axis of size {dim} into {n_outputs} outputs "
                             f"at {node.where()}")
        return sizes
    n = int(node.attrs.get("num_outputs", n_outputs))
    if n != n_outputs:
        raise ModelError(f"Split with num_outputs={n} has {n_outputs} outputs at {node.where()}")
    if "num_outputs" in node.attrs:
        part = -(-dim // n)
        sizes = [min(part, dim - i * part) for i in range(n)]
        if sizes[-1] <= 0:
            raise ModelError(f"Split of an axis of size {dim} into {n} outputs at {node.where()}")
        return sizes
    if dim % n:
        raise ModelError(f"Split of an axis of size {dim} into {n} equal parts at {node.where()}")
    return [dim // n] * n
