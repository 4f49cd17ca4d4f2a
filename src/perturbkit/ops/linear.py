"""Gemm and MatMul with a constant weight.

Gemm: ``Y = alpha * A' @ B' + beta * C`` with ``A' = A`` or ``A^T`` (transA) and
``B' = B`` or ``B^T`` (transB); A is the perturbed input, B and C constants.
MatMul: ``X @ W`` or ``W @ X`` with one constant side (numpy matmul semantics).
"""
from __future__ import annotations

import torch

from perturbkit.errors import UnsupportedOperatorError
from perturbkit.graph.ir import Node
from perturbkit.ops.base import AffineRule, Interval
from perturbkit.ops.util import n_lead, needs_constant, unbroadcast


def _t(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(-1, -2)


class Gemm(AffineRule):
    op_type = "Gemm"

    def _weight(self, node: Node, xs) -> torch.Tensor:
        W = needs_constant(node, xs, 1, "B operand")
        W = _t(W) if node.attrs.get("transB", 0) else W
        return W * float(node.attrs.get("alpha", 1.0))

    def _bias(self, node: Node, xs):
        if len(xs) < 3 or xs[2] is None:
            return None
        return xs[2] * float(node.attrs.get("beta", 1.0))

    def _a(self, node: Node, x: torch.Tensor) -> torch.Tensor:
        return _t(x) if node.attrs.get("transA", 0) else x

    def forward(self, node: Node, *xs: torch.Tensor) -> torch.Tensor:
        y = self._a(node, xs[0]) @ self._weight(node, xs)
        b = self._bias(node, xs)
        return y if b is None else y + b

    def interval(self, node: Node, x: Interval, *consts) -> Interval:
        xs = (None, *consts)
        W = self._weight(node, xs)
        mid = self._a(node, x.mid) @ W
        rad = self._a(node, x.rad) @ W.abs()
        b = self._bias(node, xs)
        if b is not None:
            mid = mid + b
        return Interval(mid - rad, mid + rad)

    def backward(self, node: Node, A: torch.Tensor, *xs):
        W = self._weight(node, xs)
        Ax = A @ _t(W)
        if node.attrs.get("transA", 0):
            Ax = _t(Ax)
        return [Ax] + [None] * (len(xs) - 1)


class MatMul(AffineRule):
    op_type = "MatMul"

    @staticmethod
    def _side(node: Node, xs) -> int:
        """Index of the perturbed operand (0: X @ W, 1: W @ X)."""
        c0 = isinstance(xs[0], torch.Tensor)
        c1 = isinstance(xs[1], torch.Tensor)
        if not c1 and not c0:
            raise UnsupportedOperatorError(
                f"MatMul of two perturbed tensors is not supported at {node.where()}; one side must be constant")
        return 0 if c1 else 1

    @staticmethod
    def _mm(node: Node, side: int, x: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
        s = node.in_shapes[side]
        if side == 0:
            return x @ W
        if len(s) == 1:  # W @ x with x a vector: treat x as a column
            return (W @ x.unsqueeze(-1)).squeeze(-1)
        return W @ x

    def forward(self, node: Node, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if len(node.in_shapes[0]) == 1 and n_lead(a, node.in_shapes[0]) > 0 and b.dim() == len(node.in_shapes[1]):
            return a @ b  # (lead, K) @ (K, N): vector semantics per sample
        if len(node.in_shapes[1]) == 1 and b.dim() > 1 and n_lead(b, node.in_shapes[1]) > 0:
            return (a @ b.unsqueeze(-1)).squeeze(-1)
        return torch.matmul(a, b)

    def interval(self, node: Node, a, b) -> Interval:
        side = self._side(node, (a, b))
        x, W = (a, b) if side == 0 else (b, a)
        mid = self._mm(node, side, x.mid, W)
        rad = self._mm(node, side, x.rad, W.abs())
        return Interval(mid - rad, mid + rad)

    def backward(self, node: Node, A: torch.Tensor, a, b):
        side = self._side(node, (a, b))
        out_shape = node.out_shape
        x_shape = node.in_shapes[side]
        if side == 0:
            W = b
            if len(x_shape) == 1:  # y[n] = sum_k x[k] W[k, n]
                return [A @ _t(W) if W.dim() == 2 else A @ _t(W), None]
            Ax = A @ _t(W)
            full = (*out_shape[:-1], x_shape[-1])
            return [unbroadcast(Ax, full, x_shape), None]
        W = a
        if len(x_shape) == 1:
            return [None, A @ W]
        Ax = _t(W) @ A
        full = (*out_shape[:-2], x_shape[-2], out_shape[-1])
        return [None, unbroadcast(Ax, full, x_shape)]
