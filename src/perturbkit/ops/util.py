"""Small shape helpers shared by operator rules."""
from __future__ import annotations

import math

import torch

from perturbkit.errors import UnsupportedOperatorError
from perturbkit.graph.ir import Node, Shape


def n_lead(x: torch.Tensor, declared: Shape) -> int:
    return x.dim() - len(declared)


def align(x: torch.Tensor, declared: Shape, rank: int) -> torch.Tensor:
    """View ``x`` (``(*lead, *declared)``) with its declared part padded by 1s to ``rank`` dims."""
    k = n_lead(x, declared)
    if len(declared) >= rank:
        return x
    return x.reshape((*x.shape[:k], *([1] * (rank - len(declared))), *declared))


def unbroadcast(A: torch.Tensor, out_shape: Shape, in_shape: Shape) -> torch.Tensor:
    """Sum coefficients ``A`` (``(*lead, *out_shape)``) down to ``(*lead, *in_shape)``.

    ``in_shape`` broadcasts to ``out_shape`` by the numpy rule (right-aligned).
    """
    k = A.dim() - len(out_shape)
    extra = len(out_shape) - len(in_shape)
    dims = [k + i for i in range(extra)]
    for j, d in enumerate(in_shape):
        if d == 1 and out_shape[extra + j] != 1:
            dims.append(k + extra + j)
    if dims:
        A = A.sum(dim=dims, keepdim=True)
    return A.reshape((*A.shape[:k], *in_shape))


def broadcast_shapes(*shapes) -> tuple[int, ...]:
    """numpy broadcasting of shapes (``torch.broadcast_shapes`` imports sympy on first use,
    a third of a second)."""
    rank = max((len(s) for s in shapes), default=0)
    out = [1] * rank
    for s in shapes:
        for i, d in enumerate(s, start=rank - len(s)):
            d = int(d)
            if d != 1:
                if out[i] not in (1, d):
                    raise ValueError(f"shapes {[tuple(x) for x in shapes]} do not broadcast")
                out[i] = d
    return tuple(out)


def numel(shape: Shape) -> int:
    return math.prod(shape)


def norm_axis(axis: int, rank: int, node: Node) -> int:
    """Declared-shape axis in [0, rank) from an ONNX axis that may be negative."""
    a = axis + rank if axis < 0 else axis
    if not 0 <= a < max(rank, 1):
        raise UnsupportedOperatorError(f"axis {axis} out of range for rank {rank} at {node.where()}")
    return a


def needs_constant(node: Node, xs, index: int, what: str) -> torch.Tensor:
    x = xs[index]
    if x is None or not isinstance(x, torch.Tensor):
        raise UnsupportedOperatorError(
            f"{node.op_type} with a perturbed {what} is not supported at {node.where()}; "
            f"the {what} must be a constant"
        )
    return x


def int_list(v) -> list[int]:
    """Attribute value (list, tuple, tensor, scalar) as a list of python ints."""
    if isinstance(v, torch.Tensor):
        return [int(t) for t in v.reshape(-1).tolist()]
    if isinstance(v, (list, tuple)):
        return [int(t) for t in v]
    return [int(v)]


def rounding_slack(slope: torch.Tensor, intercept: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
                   *scales: torch.Tensor, ulps: float = 16.0) -> torch.Tensor:
    """A bound on the floating-point error of a computed line on ``[lo, hi]``.

    Returns ``ulps * eps * (|intercept| + |slope| * max(|lo|, |hi|) + sum |scales|) + 4 * tiny``
    in the dtype of ``lo``: shifting the intercept outward by this much keeps a line that is
    sound in exact arithmetic sound after it has been computed in floating point, provided
    the slope, the intercept and the function values (``scales``) it came from each carry a
    relative error of a few ulps (the absolute ``tiny`` term covers underflow).
    """
    fi = torch.finfo(lo.dtype)
    m = torch.maximum(lo.abs(), hi.abs())
    total = intercept.abs() + slope.abs() * m
    for s in scales:
        total = total + s.abs()
    return ulps * fi.eps * total + 4 * fi.tiny


def widen(lo: torch.Tensor, hi: torch.Tensor, ulps: float = 4.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``[lo, hi]`` pushed outward by a few ulps, for bounds computed with a rounded function."""
    fi = torch.finfo(lo.dtype)
    return lo - ulps * fi.eps * lo.abs() - fi.tiny, hi + ulps * fi.eps * hi.abs() + fi.tiny


def finite_or_constant(relax_lower: tuple[torch.Tensor, torch.Tensor], relax_upper: tuple[torch.Tensor, torch.Tensor],
                       lo: torch.Tensor, hi: torch.Tensor, f_lo_bound: torch.Tensor, f_hi_bound: torch.Tensor):
    """Replace the lines of elements with an infinite or astronomically large bound by constant lines.

    Bounds beyond ``sqrt(finfo.max)`` (about 1.8e19 in float32, 1.3e154 in float64) are treated
    as unbounded: there chord slopes underflow and ``slope * bound`` loses every digit.
    ``f_lo_bound``/``f_hi_bound``: sound elementwise bounds of ``f`` on ``[lo, hi]`` (IBP).
    Returns ``((l_slope, l_int), (u_slope, u_int))``.
    """
    ok = finite_box(lo, hi)
    zero = torch.zeros_like(lo)
    ls = torch.where(ok, relax_lower[0], zero)
    li = torch.where(ok, relax_lower[1], f_lo_bound)
    us = torch.where(ok, relax_upper[0], zero)
    ui = torch.where(ok, relax_upper[1], f_hi_bound)
    return (ls, li), (us, ui)


def torch_pad_order(begin: list[int], end: list[int]) -> list[int]:
    """ONNX-style per-axis ``begin``/``end`` pads -> ``torch.nn.functional.pad`` order (last axis first)."""
    out: list[int] = []
    for b, e in zip(reversed(begin), reversed(end)):
        out += [int(b), int(e)]
    return out


def attr_str(node: Node, key: str, default: str) -> str:
    v = node.attrs.get(key, default)
    return v.decode() if isinstance(v, bytes) else str(v)


def finite_box(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Elements whose bounds are at most ``sqrt(finfo.max)`` in magnitude (lines are computed there)."""
    limit = math.sqrt(torch.finfo(lo.dtype).max)
    return (lo.abs() <= limit) & (hi.abs() <= limit)
