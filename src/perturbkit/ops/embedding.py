"""TableLookup: rows of a constant table picked by perturbed indices (embeddings).

A Gather whose ``indices`` are a runtime value and whose ``data`` is a constant (an
``nn.Embedding``, or ONNX ``Gather(table, ids)``) is lowered to ``TableLookup(ids, table)``.
Indices arrive as floating-point values (a Network's input is floating point) and are
rounded to the nearest integer, as the forward pass does; an index box ``[lo, hi]`` reaches
exactly the rows ``round(lo) .. round(hi)`` (rounding is monotone), so the interval of each
output element is the minimum and maximum of its column over those rows: exact.  A lookup is
not linear in its index, so bound propagation uses that interval as constant lines
(:class:`~perturbkit.ops.base.IntervalRule`); with fixed indices (a point box) the output
is exact.  Perturbing the table itself (``bounds(..., weights={"embed.weight": ...})``)
is bounded the same way, from the table's interval.

Shapes: indices ``(*lead, *I)``; table ``(*T0, V, *T1)`` with the looked-up axis of size V;
output ``(*lead, *T0, *I, *T1)``.
"""
from __future__ import annotations

import math

import torch

from perturbkit.errors import UnsupportedOperatorError
from perturbkit.graph.ir import Node
from perturbkit.ops.base import Interval, IntervalRule
from perturbkit.ops.util import n_lead, norm_axis

Tensor = torch.Tensor

#: elements of the (index, row) mask above which intervals are computed in chunks
_CHUNK = 2 ** 22


def _axis(node: Node) -> int:
    return norm_axis(int(node.attrs.get("axis", 0)), len(node.in_shapes[1]), node)


def lookup(node: Node, idx: Tensor, table: Tensor, ishape: tuple[int, ...], axis: int) -> Tensor:
    """``table`` gathered along ``axis`` by ``idx`` ``(*lead, *ishape)`` (rounded)."""
    V = table.shape[axis]
    k = idx.dim() - len(ishape)
    lead = idx.shape[:k]
    i = torch.round(idx).to(torch.int64).reshape(-1)
    i = torch.where(i < 0, i + V, i)
    if bool(((i < 0) | (i >= V)).any()):
        raise UnsupportedOperatorError(f"index out of range for a table axis of size {V} at {node.where()}")
    y = table.index_select(axis, i.to(table.device))
    y = y.reshape((*table.shape[:axis], *lead, *ishape, *table.shape[axis + 1:]))
    return y.movedim(tuple(range(axis, axis + k)), tuple(range(k))) if k and axis else y


def _row_range(a: Tensor, b: Tensor, tlo: Tensor, thi: Tensor, axis: int) -> tuple[Tensor, Tensor]:
    """Min of ``tlo`` and max of ``thi`` over rows ``a..b`` along ``axis``, per index.

    ``a``, ``b``: ``(n,)`` integer-valued row ranges; tables ``(*T0, V, *T1)``.
    Returns ``(*T0, *T1, n)`` each.
    """
    V = tlo.shape[axis]
    rows = torch.arange(V, device=a.device, dtype=a.dtype)
    Tl, Th = tlo.movedim(axis, -1).unsqueeze(-2), thi.movedim(axis, -1).unsqueeze(-2)  # (*T0, *T1, 1, V)
    inf = torch.tensor(math.inf, dtype=tlo.dtype, device=tlo.device)
    los, his = [], []
    step = max(1, _CHUNK // max(1, tlo.numel()))
    for s in range(0, a.shape[0], step):
        m = (rows >= a[s:s + step, None]) & (rows <= b[s:s + step, None])  # (n, V)
        los.append(torch.where(m, Tl, inf).amin(-1))
        his.append(torch.where(m, Th, -inf).amax(-1))
    return torch.cat(los, -1), torch.cat(his, -1)


class TableLookup(IntervalRule):
    op_type = "TableLookup"

    def forward(self, node: Node, idx: Tensor, table: Tensor) -> Tensor:
        axis = _axis(node)
        k = table.dim() - len(node.in_shapes[1])
        if k == 0:
            return lookup(node, idx, table, node.in_shapes[0], axis)
        # a perturbed table (weights) carries the leading dims too: one lookup per entry
        lead = table.shape[:k]
        t, i = table.reshape(-1, *table.shape[k:]), idx.reshape(-1, *node.in_shapes[0])
        return torch.stack([lookup(node, i[j], t[j], node.in_shapes[0], axis) for j in range(t.shape[0])]).reshape(
            *lead, *node.out_shape)

    def interval(self, node: Node, idx: Interval, table) -> Interval:
        axis = _axis(node)
        ishape = node.in_shapes[0]
        if isinstance(table, Interval):  # a perturbed table: one batch entry at a time
            parts = [self._interval(node, Interval(idx.lo[j:j + 1], idx.hi[j:j + 1]), table.lo[j], table.hi[j], axis)
                     for j in range(idx.lo.shape[0])]
            return Interval(torch.cat([p.lo for p in parts]), torch.cat([p.hi for p in parts]))
        return self._interval(node, idx, table, table, axis)

    def _interval(self, node: Node, idx: Interval, tlo: Tensor, thi: Tensor, axis: int) -> Interval:
        V = tlo.shape[axis]
        ishape = node.in_shapes[0]
        a = torch.round(idx.lo).clamp(-V, V - 1)
        b = torch.round(idx.hi).clamp(-V, V - 1)
        a = torch.where(a < 0, a + V, a)
        b = torch.where(b < 0, b + V, b)
        if bool((a > b).any()):
            raise UnsupportedOperatorError(f"an index box mixing negative and non-negative indices at {node.where()}")
        k = n_lead(idx.lo, ishape)
        lo, hi = _row_range(a.reshape(-1), b.reshape(-1), tlo, thi, axis)  # (*T0, *T1, n)
        out_lead = (*idx.lo.shape[:k], *ishape)
        t0, t1 = tlo.shape[:axis], tlo.shape[axis + 1:]
        n0, n1, nl = len(t0), len(t1), len(out_lead)
        # (*T0, *T1, *lead, *I) -> (*lead, *T0, *I, *T1)
        perm = (list(range(n0 + n1, n0 + n1 + k)) + list(range(n0)) + list(range(n0 + n1 + k, n0 + n1 + nl))
                + list(range(n0, n0 + n1)))
        return Interval(lo.reshape((*t0, *t1, *out_lead)).permute(perm), hi.reshape((*t0, *t1, *out_lead)).permute(perm))
