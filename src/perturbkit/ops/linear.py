"""Gemm and MatMul with a constant weight.

Gemm: ``Y = alpha * A' @ B' + beta * C`` with ``A' = A`` or ``A^T`` (transA) and
``B' = B`` or ``B^T`` (transB); A is the perturbed input, B and C constants.
MatMul: ``X @ W`` or ``W @ X`` with one constant side (numpy matmul semantics).

With two runtime operands (attention scores, a perturbed weight) lowering rewrites them:
``MatMul -> BilinearMatMul``; a Gemm with a runtime ``B`` or ``C`` becomes Transposes, a
MatMul, a scaling and an Add (see :mod:`perturbkit.graph.lower`).
"""
from __future__ import annotations

import math

import torch

from perturbkit.errors import UnsupportedOperatorError
from perturbkit.graph.ir import Node
from perturbkit.ops.base import AffineRule, Interval
from perturbkit.ops.util import align, n_lead, needs_constant, unbroadcast


def _t(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(-1, -2)


#: fold broadcast leading dims into the matrix rows when they number at least this many
_FOLD_MIN = 8


def _matmul(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``x @ y``; leading dims along which one operand broadcasts (a matrix ``y``, or the
    specification rows of coefficients against a per-sample constant) are folded into the
    rows of fewer, larger matrix products (torch would otherwise run one small product per
    broadcast index)."""
    if y.dim() == 2 and x.dim() > 2:
        return (x.reshape(-1, x.shape[-1]) @ y).reshape((*x.shape[:-1], y.shape[-1]))
    if x.dim() == 2 and y.dim() > 2:
        return _t(_matmul(_t(y), _t(x)))
    if x.dim() == y.dim() > 2:
        lx, ly = x.shape[:-2], y.shape[:-2]
        if math.prod(a for a, b in zip(lx, ly) if b == 1) >= _FOLD_MIN:
            return _fold_rows(x, y)
        if math.prod(b for a, b in zip(lx, ly) if a == 1) >= _FOLD_MIN:
            return _t(_fold_rows(_t(y), _t(x)))
    return x @ y


def _fold_rows(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``x @ y`` (same rank) with the leading dims where ``y`` is 1 moved into ``x``'s rows."""
    nd = x.dim()
    lx, ly = x.shape[:-2], y.shape[:-2]
    fold = [i for i in range(nd - 2) if ly[i] == 1 and lx[i] > 1]
    keep = [i for i in range(nd - 2) if i not in fold]
    M, K = x.shape[-2:]
    F = math.prod(lx[i] for i in fold)
    xs = x.permute(*keep, *fold, nd - 2, nd - 1).reshape(*(lx[i] for i in keep), F * M, K)
    ys = y.permute(*keep, *fold, nd - 2, nd - 1).reshape(*(ly[i] for i in keep), *y.shape[-2:])
    r = (xs @ ys).reshape(*(max(lx[i], ly[i]) for i in keep), *(lx[i] for i in fold), M, y.shape[-1])
    inv = [0] * nd
    for j, i in enumerate([*keep, *fold, nd - 2, nd - 1]):
        inv[i] = j
    return r.permute(*inv)


class Gemm(AffineRule):
    op_type = "Gemm"

    def _weight(self, node: Node, xs) -> torch.Tensor:
        W = needs_constant(node, xs, 1, "B operand")
        W = _t(W) if node.attrs.get("transB", 0) else W
        alpha = float(node.attrs.get("alpha", 1.0))
        return W if alpha == 1.0 else W * alpha

    def _bias(self, node: Node, xs):
        if len(xs) < 3 or xs[2] is None:
            return None
        beta = float(node.attrs.get("beta", 1.0))
        return xs[2] if beta == 1.0 else xs[2] * beta

    def _a(self, node: Node, x: torch.Tensor) -> torch.Tensor:
        return _t(x) if node.attrs.get("transA", 0) else x

    def lower(self, node: Node, runtime, emit) -> bool:
        if not any(runtime[1:]):
            return False
        a, b = node.inputs[0], node.inputs[1]
        if node.attrs.get("transA", 0):
            a = emit.node("Transpose", [a], {"perm": [1, 0]}, hint="a_t")
        if node.attrs.get("transB", 0):
            b = emit.node("Transpose", [b], {"perm": [1, 0]}, hint="b_t")
        alpha = float(node.attrs.get("alpha", 1.0))
        last = len(node.inputs) < 3 or not node.inputs[2]
        y = emit.node("MatMul", [a, b], **({"output": node.output} if last and alpha == 1.0 else {"hint": "product"}))
        if alpha != 1.0:
            y = emit.node("Mul", [y, emit.const(torch.tensor(alpha), "alpha")],
                          **({"output": node.output} if last else {"hint": "scaled"}))
        if not last:
            c = node.inputs[2]
            beta = float(node.attrs.get("beta", 1.0))
            if beta != 1.0:
                c = emit.node("Mul", [c, emit.const(torch.tensor(beta), "beta")], hint="c_scaled")
            emit.node("Add", [y, c], output=node.output)
        return True

    def forward(self, node: Node, *xs: torch.Tensor) -> torch.Tensor:
        return self.apply(self._a(node, xs[0]), self._weight(node, xs), self._bias(node, xs))

    @staticmethod
    def apply(a: torch.Tensor, W: torch.Tensor, b) -> torch.Tensor:
        """``a @ W + b`` with the operands prepared by ``_a``, ``_weight``, ``_bias`` (callers
        that run the node many times prepare them once)."""
        if b is not None and b.dim() <= 1 and W.dim() == 2 and a.dim() >= 2:
            # one fused call (the common case: a vector bias); leading dims folded into rows
            y = torch.addmm(b, a.reshape(-1, a.shape[-1]), W)
            return y.reshape((*a.shape[:-1], W.shape[-1]))
        y = _matmul(a, W)
        return y if b is None else y + b

    def interval(self, node: Node, x: Interval, *consts) -> Interval:
        xs = (None, *consts)
        W = self._weight(node, xs)
        mid = _matmul(self._a(node, x.mid), W)
        rad = _matmul(self._a(node, x.rad), W.abs())
        b = self._bias(node, xs)
        if b is not None:
            mid = mid + b
        return Interval(mid - rad, mid + rad)

    def backward(self, node: Node, A: torch.Tensor, *xs):
        W = self._weight(node, xs)
        Ax = _matmul(A, _t(W))
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
    def _promote(node: Node):
        """Declared shapes with 1-D operands promoted to matrices (numpy rules), and the common rank."""
        sa, sb = (tuple(s) for s in node.in_shapes)
        va, vb = len(sa) == 1, len(sb) == 1
        pa = (1, *sa) if va else sa
        pb = (*sb, 1) if vb else sb
        return va, vb, pa, pb, max(len(pa), len(pb))

    @classmethod
    def _mm(cls, node: Node, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """numpy ``matmul`` of the declared operands; leading dims of either stay in front.

        Both operands are promoted to matrices and aligned to a common rank before ``@``, so a
        constant with more batch dims than the perturbed side broadcasts behind the leading dims.
        """
        va, vb, pa, pb, r = cls._promote(node)
        a = align(a.unsqueeze(-2) if va else a, pa, r)
        b = align(b.unsqueeze(-1) if vb else b, pb, r)
        y = _matmul(a, b)
        if vb:
            y = y.squeeze(-1)
        if va:
            y = y.squeeze(-1 if vb else -2)
        return y

    def forward(self, node: Node, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self._mm(node, a, b)

    def lower(self, node: Node, runtime, emit) -> bool:
        if not all(runtime):
            return False
        emit.node("BilinearMatMul", list(node.inputs), dict(node.attrs), output=node.output)
        return True

    def interval(self, node: Node, a, b) -> Interval:
        side = self._side(node, (a, b))
        if side == 0:
            mid, rad = self._mm(node, a.mid, b), self._mm(node, a.rad, b.abs())
        else:
            mid, rad = self._mm(node, a, b.mid), self._mm(node, a.abs(), b.rad)
        return Interval(mid - rad, mid + rad)

    def backward(self, node: Node, A: torch.Tensor, a, b):
        side = self._side(node, (a, b))
        va, vb, pa, pb, r = self._promote(node)
        k = n_lead(A, node.out_shape)
        if vb:
            A = A.unsqueeze(-1)
        if va:
            A = A.unsqueeze(-2)
        full_out = tuple(A.shape[k:])  # (*batch, M, N) of the promoted product
        if side == 0:
            W = align(b.unsqueeze(-1) if vb else b, pb, r)
            Ax = unbroadcast(_matmul(A, _t(W)), (*full_out[:-2], pa[-2], pa[-1]), pa)
            return [Ax.squeeze(-2) if va else Ax, None]
        W = align(a.unsqueeze(-2) if va else a, pa, r)
        Ax = unbroadcast(_matmul(_t(W), A), (*full_out[:-2], pb[-2], pb[-1]), pb)
        return [None, Ax.squeeze(-1) if vb else Ax]
