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
    return x.reshape(*x.shape[:k], *([1] * (rank - len(declared))), *declared)


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
    return A.reshape(*A.shape[:k], *in_shape)


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
