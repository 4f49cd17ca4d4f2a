"""Converters for shape operations: reshape, flatten, transpose, squeeze, concat, indexing, split.

Target shapes are read from the example value PyTorch computed for the call
(``Call.value``), so shape arithmetic in the module (``x.view(x.size(0), -1)``) needs no
symbolic treatment.
"""
from __future__ import annotations

from typing import Any, Optional

import torch

from perturbkit.graph.ir import Shape
from perturbkit.graph.torch_fx.builder import Builder, Call, Var, as_const, as_var, norm_axis, operand, unsupported


# -- reshapes ------------------------------------------------------------------------
def reshape_to(b: Builder, x: Var, shape: Shape) -> Var:
    return b.emit("Reshape", [x], {"shape": [int(d) for d in shape]}, out_shape=tuple(shape))


def reshape(b: Builder, c: Call) -> Var:
    return reshape_to(b, as_var(b, c.args[0]), tuple(c.value.shape))


def _flatten(b: Builder, x: Any, start: int, end: int, value: torch.Tensor) -> Var:
    x = as_var(b, x)
    r = x.rank
    if r == 0:
        return reshape_to(b, x, tuple(value.shape))
    s, e = norm_axis(b, start, r), norm_axis(b, end, r)
    if s == 1 and e == r - 1:
        return b.emit("Flatten", [x], {"axis": 1})
    return reshape_to(b, x, tuple(value.shape))


def flatten_fn(b: Builder, c: Call) -> Var:
    return _flatten(b, c.arg(0, "input"), int(c.arg(1, "start_dim", 0)), int(c.arg(2, "end_dim", -1)), c.value)


def flatten_module(b: Builder, c: Call) -> Var:
    return _flatten(b, c.args[0], c.module.start_dim, c.module.end_dim, c.value)


def flatten_method(b: Builder, c: Call) -> Var:
    return _flatten(b, c.args[0], int(c.arg(1, "start_dim", 0)), int(c.arg(2, "end_dim", -1)), c.value)


# -- transposes ----------------------------------------------------------------------
def _transpose_perm(b: Builder, x: Var, perm: list[int]) -> Var:
    return b.emit("Transpose", [x], {"perm": [int(p) for p in perm]})


def permute(b: Builder, c: Call) -> Var:
    x = as_var(b, c.args[0])
    dims = c.args[1:] if len(c.args) > 1 else c.kwargs.get("dims")
    if len(dims) == 1 and not isinstance(dims[0], int):
        dims = dims[0]
    return _transpose_perm(b, x, [norm_axis(b, int(d), x.rank) for d in dims])


def transpose(b: Builder, c: Call) -> Var:
    x = as_var(b, c.arg(0, "input"))
    d0, d1 = norm_axis(b, int(c.arg(1, "dim0")), x.rank), norm_axis(b, int(c.arg(2, "dim1")), x.rank)
    perm = list(range(x.rank))
    perm[d0], perm[d1] = perm[d1], perm[d0]
    return _transpose_perm(b, x, perm)


def t(b: Builder, c: Call) -> Var:
    x = as_var(b, c.args[0])
    if x.rank < 2:
        return x
    return _transpose_perm(b, x, list(range(x.rank))[::-1])


def tensor_attr(b: Builder, c: Call) -> Any:
    x, attr = c.args[0], c.args[1]
    if attr in ("T", "mT") and isinstance(x, Var):
        perm = list(range(x.rank))
        perm = perm[::-1] if attr == "T" else perm[:-2] + perm[-2:][::-1]
        return _transpose_perm(b, x, perm) if x.rank >= 2 else x
    if attr == "data" and isinstance(x, Var):
        return x
    raise unsupported(b, f"reading the attribute '{attr}' of a perturbed value is not supported")


# -- squeeze, unsqueeze, concat --------------------------------------------------------
def squeeze(b: Builder, c: Call) -> Var:
    x = as_var(b, c.arg(0, "input"))
    dim = c.arg(1, "dim")
    if dim is None:
        axes = [i for i, d in enumerate(x.shape) if d == 1]
    else:
        dims = [dim] if isinstance(dim, int) else list(dim)
        axes = sorted({norm_axis(b, int(d), x.rank) for d in dims if x.shape[norm_axis(b, int(d), x.rank)] == 1})
    if not axes:
        return b.emit("Identity", [x])
    return b.emit("Squeeze", [x], {"axes": axes})


def unsqueeze(b: Builder, c: Call) -> Var:
    x = as_var(b, c.arg(0, "input"))
    d = int(c.arg(1, "dim"))
    return b.emit("Unsqueeze", [x], {"axes": [norm_axis(b, d, x.rank + 1)]})


def _unsqueeze_any(b: Builder, x: Any, axis: int) -> Any:
    if isinstance(x, Var):
        return b.emit("Unsqueeze", [x], {"axes": [axis]})
    return operand(x).unsqueeze(axis)


def _concat(b: Builder, xs: list[Any], dim: int, rank: int) -> Var:
    xs = [x for x in xs if isinstance(x, Var) or operand(x).numel() > 0]  # torch.cat skips empty tensors
    if len(xs) == 1:
        return b.emit("Identity", [as_var(b, xs[0])])
    return b.emit("Concat", [operand(x) for x in xs], {"axis": norm_axis(b, dim, rank)})


def cat(b: Builder, c: Call) -> Var:
    xs = list(c.arg(0, "tensors"))
    return _concat(b, xs, int(c.arg(1, "dim", 0)), c.value.dim())


def stack(b: Builder, c: Call) -> Var:
    xs = list(c.arg(0, "tensors"))
    r = c.value.dim()
    axis = norm_axis(b, int(c.arg(1, "dim", 0)), r)
    return _concat(b, [_unsqueeze_any(b, x, axis) for x in xs], axis, r)


# -- indexing ------------------------------------------------------------------------
def _slice(b: Builder, x: Var, starts: list[int], ends: list[int], axes: list[int], steps: list[int],
           out_shape: Optional[Shape] = None) -> Var:
    return b.emit("Slice", [x], {"starts": starts, "ends": ends, "axes": axes, "steps": steps}, out_shape=out_shape)


def getitem(b: Builder, c: Call) -> Any:
    obj, idx = c.args[0], c.args[1]
    if not isinstance(obj, Var):  # indexing a tuple of runtime values (split, chunk, ...)
        return obj[idx]
    x = obj
    idx = idx if isinstance(idx, tuple) else (idx,)
    tensors = [i for i, it in enumerate(idx) if isinstance(it, (torch.Tensor, list))]
    if tensors:
        return _gather_index(b, x, idx, tensors, c.value)
    consumed = sum(1 for it in idx if it is not None and it is not Ellipsis)
    if consumed > x.rank:
        raise unsupported(b, f"too many indices for a value of rank {x.rank}")
    full: list[Any] = []
    for it in idx:
        if it is Ellipsis:
            full += [slice(None)] * (x.rank - consumed)
        else:
            full.append(it)
    if Ellipsis not in idx:
        full += [slice(None)] * (x.rank - consumed)
    starts, ends, axes, steps, drop = [], [], [], [], []
    d = 0
    has_none = False
    for it in full:
        if it is None:
            has_none = True
            continue
        n = x.shape[d]
        if isinstance(it, bool) or not isinstance(it, (int, slice)):
            raise unsupported(b, f"indexing with {type(it).__name__} is not supported")
        if isinstance(it, int):
            i = it + n if it < 0 else it
            if not 0 <= i < n:
                raise unsupported(b, f"index {it} out of range for dimension {d} of size {n}")
            starts.append(i)
            ends.append(i + 1)
            axes.append(d)
            steps.append(1)
            drop.append(d)
        else:
            s, e, st = it.indices(n)
            if st <= 0:
                raise unsupported(b, "slicing with a non-positive step is not supported")
            if (s, e, st) != (0, n, 1):
                starts.append(s)
                ends.append(max(e, s))
                axes.append(d)
                steps.append(st)
        d += 1
    y = _slice(b, x, starts, ends, axes, steps) if axes else x
    target = tuple(c.value.shape)
    if y.shape == target:
        return y if y is not x else b.emit("Identity", [x])
    if drop and not has_none:
        return b.emit("Squeeze", [y], {"axes": drop})
    return reshape_to(b, y, target)


def _gather_index(b: Builder, x: Var, idx: tuple, tensors: list[int], value: torch.Tensor) -> Var:
    if len(tensors) != 1 or any(it is None for it in idx):
        raise unsupported(b, "advanced indexing is supported with one index tensor and full slices only")
    pos = tensors[0]
    if Ellipsis in idx:
        e = idx.index(Ellipsis)
        if e < pos:
            pos = x.rank - (len(idx) - 1 - pos)
    others = [it for i, it in enumerate(idx) if i != tensors[0]]
    if any(not (it is Ellipsis or (isinstance(it, slice) and it == slice(None))) for it in others):
        raise unsupported(b, "advanced indexing is supported with one index tensor and full slices only")
    return _gather(b, x, idx[tensors[0]], pos, value)


def _gather(b: Builder, x: Var, index: Any, axis: int, value: torch.Tensor) -> Var:
    index = as_const(b, index, "index")
    index = torch.as_tensor(index)
    if index.dtype == torch.bool:
        if index.dim() != 1:
            raise unsupported(b, "boolean masks of more than one dimension are not supported")
        index = index.nonzero().reshape(-1)
    n = x.shape[axis]
    index = torch.where(index < 0, index + n, index).to(torch.int64)
    return b.emit("Gather", [x], {"indices": index, "axis": int(axis)}, out_shape=tuple(value.shape))


def index_select(b: Builder, c: Call) -> Var:
    x = as_var(b, c.arg(0, "input"))
    return _gather(b, x, c.arg(2, "index"), norm_axis(b, int(c.arg(1, "dim")), x.rank), c.value)


# -- splitting -----------------------------------------------------------------------
def split(b: Builder, c: Call) -> tuple:
    """``split`` and ``chunk``: one Slice per piece, the pieces' sizes read from the example value."""
    dim = int(c.arg(2, "dim", 0))
    x = as_var(b, c.args[0])
    axis = norm_axis(b, dim, x.rank)
    out, start = [], 0
    for piece in c.value:
        n = int(piece.shape[axis])
        out.append(_slice(b, x, [start], [start + n], [axis], [1]))
        start += n
    return tuple(out)


def unbind(b: Builder, c: Call) -> tuple:
    x = as_var(b, c.arg(0, "input"))
    axis = norm_axis(b, int(c.arg(1, "dim", 0)), x.rank)
    return tuple(b.emit("Squeeze", [_slice(b, x, [i], [i + 1], [axis], [1])], {"axes": [axis]})
                 for i in range(x.shape[axis]))


def result_attr(b: Builder, c: Call) -> Any:
    """``getattr``: a named field of a multi-value result (``torch.max(x, 1).values``), else
    :func:`tensor_attr`."""
    obj, attr = c.args[0], c.args[1]
    if isinstance(obj, tuple) and not isinstance(obj, Var) and hasattr(obj, attr):
        return getattr(obj, attr)
    return tensor_attr(b, c)


# -- broadcasting and repetition ----------------------------------------------------------
def expand(b: Builder, c: Call) -> Var:
    """``x.expand(*sizes)`` / ``x.expand_as(y)``: ONNX ``Expand`` to the result's shape."""
    x = as_var(b, c.args[0])
    return b.emit("Expand", [x], {"shape": [int(d) for d in c.value.shape]}, out_shape=tuple(c.value.shape))


def _sizes(args: tuple, kwargs: dict, name: str) -> list[int]:
    sizes = args if args else kwargs.get(name, ())
    if len(sizes) == 1 and not isinstance(sizes[0], int):
        sizes = sizes[0]
    return [int(s) for s in sizes]


def _tile(b: Builder, x: Var, repeats: list[int]) -> Var:
    if len(repeats) > x.rank:  # new leading axes of size 1 first, as torch does
        new = len(repeats) - x.rank
        x = b.emit("Unsqueeze", [x], {"axes": list(range(new))})
    elif len(repeats) < x.rank:  # torch.tile: missing repeats are 1 (leading)
        repeats = [1] * (x.rank - len(repeats)) + repeats
    if all(r == 1 for r in repeats):
        return b.emit("Identity", [x])
    return b.emit("Tile", [x], {"repeats": repeats})


def repeat(b: Builder, c: Call) -> Var:
    """``x.repeat(*sizes)``: ONNX ``Tile`` (with leading axes added when there are more sizes than axes)."""
    return _tile(b, as_var(b, c.args[0]), _sizes(c.args[1:], c.kwargs, "repeats"))


def tile(b: Builder, c: Call) -> Var:
    """``torch.tile(x, dims)`` / ``x.tile(dims)``."""
    return _tile(b, as_var(b, c.arg(0, "input")), _sizes(c.args[1:], c.kwargs, "dims"))


# -- selection by a constant condition --------------------------------------------------------
def _where(b: Builder, cond: Any, x: Any, y: Any) -> Var:
    if isinstance(cond, Var):
        raise unsupported(b, "torch.where with a condition that depends on the network input is not supported; "
                             "it must be constant")
    cond = torch.as_tensor(cond)
    if cond.dtype != torch.bool:
        cond = cond != 0
    return b.emit("Where", [cond, operand(x), operand(y)])


def where(b: Builder, c: Call) -> Var:
    """``torch.where(cond, x, y)`` with a constant ``cond``: ONNX ``Where(cond, x, y)``."""
    if len(c.args) + len(c.kwargs) < 3:
        raise unsupported(b, "torch.where(condition) (the indices of nonzero elements) is not supported")
    return _where(b, c.arg(0, "condition"), c.arg(1, "input"), c.arg(2, "other"))


def where_method(b: Builder, c: Call) -> Var:
    """``x.where(cond, y)`` = ``torch.where(cond, x, y)``."""
    return _where(b, c.arg(1, "condition"), c.args[0], c.arg(2, "other"))


def masked_fill(b: Builder, c: Call) -> Var:
    """``x.masked_fill(mask, value)`` with a constant mask: ``Where(mask, value, x)``."""
    x = as_var(b, c.args[0])
    value = c.arg(2, "value")
    if isinstance(value, Var):
        raise unsupported(b, "masked_fill with a fill value that depends on the network input is not supported")
    return _where(b, c.arg(1, "mask"), value, x)
