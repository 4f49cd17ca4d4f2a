"""Pooling: AveragePool, GlobalAveragePool (affine) and MaxPool (selection).

AveragePool and MaxPool share one geometry (1-D, 2-D, 3-D): ``kernel_shape``, ``strides``,
``pads`` (also asymmetric), ``dilations``, ``auto_pad`` and ``ceil_mode``.  The output size
per axis is ``floor`` (or ``ceil``) of ``(in + pad_begin + pad_end - ((k - 1) d + 1)) / s``
plus one; with ``ceil_mode`` a window that would start in the end padding is dropped.

Every pooling window is described by a cached table of flat spatial input indices
(``-1`` outside the input), so ``forward`` is a gather, the transpose of AveragePool is a
scatter-add, and MaxPool's relaxation picks one element per window.

AveragePool divides by the number of window elements inside the input, or, with
``count_include_pad``, inside the padded input (positions beyond the end padding that a
``ceil_mode`` window reaches are not counted).

MaxPool relaxation (for input bounds ``lo``, ``hi``): with ``j*`` the window element of
largest ``lo`` (padding excluded), ``y >= x[j*]`` always, and ``y == x[j*]`` when
``lo[j*] >= hi[j]`` for every other window element ``j``; otherwise ``y <= max_j hi[j]``.
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import torch

from perturbkit.errors import UnsupportedOperatorError
from perturbkit.graph.ir import Node, Shape
from perturbkit.ops.base import AffineRule, Interval, Line, Relaxation, SelectionRule
from perturbkit.ops.conv import conv_pads
from perturbkit.ops.util import int_list, n_lead

Tensor = torch.Tensor


@functools.lru_cache(maxsize=256)
def _window_table(in_sp: Shape, kernel: Shape, strides: Shape, dil: Shape, pb: Shape, pe: Shape,
                  out_sp: Shape) -> tuple[Tensor, Tensor]:
    """``(index, in_padded)``, both ``(n_out, K)``: flat spatial input index (-1 outside the
    input) and whether the position lies in the padded input ``[-pb, in + pe)``."""
    nd = len(in_sp)
    flat = torch.zeros((), dtype=torch.int64)
    valid = torch.ones((), dtype=torch.bool)
    padded = torch.ones((), dtype=torch.bool)
    for i in range(nd):
        o = torch.arange(out_sp[i]).reshape(-1, 1)
        kk = torch.arange(kernel[i]).reshape(1, -1)
        pos = o * strides[i] - pb[i] + kk * dil[i]  # (out_i, k_i)
        # place axis i: out dims first (nd of them), then kernel dims (nd of them)
        shape = [1] * (2 * nd)
        shape[i], shape[nd + i] = out_sp[i], kernel[i]
        pos = pos.reshape(shape)
        flat = flat * in_sp[i] + pos
        valid = valid & (pos >= 0) & (pos < in_sp[i])
        padded = padded & (pos >= -pb[i]) & (pos < in_sp[i] + pe[i])
    n_out, K = math.prod(out_sp), math.prod(kernel)
    flat = torch.where(valid, flat, torch.full_like(flat, -1)).reshape(n_out, K)
    return flat, padded.expand(*out_sp, *kernel).reshape(n_out, K).clone()


@functools.lru_cache(maxsize=256)
def _tile_index(out_sp: Shape, kernel: Shape, in_sp: Shape) -> Tensor:
    """For every flat input position, the flat index of the window holding it (the last
    window for positions that no window covers; :func:`spread_tiles` zeroes those)."""
    flat = torch.zeros((), dtype=torch.int64)
    for i, (o, k, n) in enumerate(zip(out_sp, kernel, in_sp)):
        w = (torch.arange(n) // k).clamp(max=o - 1)
        flat = flat.unsqueeze(-1) * o + w
    return flat.reshape(-1)


def spread_tiles(A: Tensor, kernel: Sequence[int], in_sp: Sequence[int]) -> Tensor:
    """Transpose of summing non-overlapping windows (stride = kernel, no padding, no
    dilation): every entry of ``A`` (..., *out_spatial) copied to each element of the window
    it sums -> (..., *in_spatial); elements no window covers (the ends that floor division
    leaves) get 0.  One indexed copy along the flattened spatial axes (much cheaper than a
    scatter, or than strided copies of small maps)."""
    nd = len(kernel)
    out_sp = tuple(A.shape[-nd:])
    idx = _tile_index(out_sp, tuple(kernel), tuple(in_sp)).to(A.device)
    out = A.reshape(-1, math.prod(out_sp)).index_select(1, idx).reshape(*A.shape[:-nd], *in_sp)
    for i, (o, k, n) in enumerate(zip(out_sp, kernel, in_sp)):
        if o * k < n:
            out.narrow(out.dim() - nd + i, o * k, n - o * k).zero_()
    return out


def tiles(kernel: Sequence[int], strides: Sequence[int], dil: Sequence[int], pads: Sequence[int],
          in_sp: Sequence[int], out_sp: Sequence[int]) -> bool:
    """Whether a pooling's windows tile its input without overlap: stride = kernel, no
    dilation, no padding, and every window inside the input (also with ``ceil_mode``)."""
    return (tuple(strides) == tuple(kernel) and all(d == 1 for d in dil) and not any(pads)
            and all(o * k <= n for o, k, n in zip(out_sp, kernel, in_sp)))


class _Pool:
    """Geometry shared by AveragePool and MaxPool."""

    def attributes(self, node: Node) -> tuple[Shape, Shape, Shape, Shape, tuple[int, ...]]:
        """``(in_spatial, kernel, strides, dilations, pads)`` (pads: begins, then ends)."""
        in_shape = node.in_shapes[0]
        kernel = tuple(int_list(node.attrs["kernel_shape"]))
        nd = len(kernel)
        if nd not in (1, 2, 3) or len(in_shape) != nd + 2:
            raise UnsupportedOperatorError(
                f"{node.op_type} with kernel {kernel} on input {in_shape} is not supported at {node.where()}; "
                f"1-D, 2-D and 3-D pooling of (N, C, ...) inputs are")
        in_sp = tuple(in_shape[2:])
        strides = tuple(int_list(node.attrs.get("strides", [1] * nd)))
        dil = tuple(int_list(node.attrs.get("dilations", [1] * nd)))
        return in_sp, kernel, strides, dil, tuple(conv_pads(node, in_sp, kernel))

    def geometry(self, node: Node):
        in_sp, kernel, strides, dil, pads = self.attributes(node)
        nd = len(kernel)
        pb, pe = tuple(pads[:nd]), tuple(pads[nd:])
        ceil = bool(int(node.attrs.get("ceil_mode", 0)))
        out_sp = []
        for i in range(nd):
            num = in_sp[i] + pb[i] + pe[i] - ((kernel[i] - 1) * dil[i] + 1)
            if ceil:
                o = -(-num // strides[i]) + 1
                if (o - 1) * strides[i] >= in_sp[i] + pb[i]:
                    o -= 1
            else:
                o = num // strides[i] + 1
            out_sp.append(o)
        out_sp = tuple(out_sp)
        idx, padded = _window_table(in_sp, kernel, strides, dil, pb, pe, out_sp)
        return in_sp, out_sp, idx, padded

    def infer_shape(self, node: Node, *xs) -> Shape:
        _, out_sp, _, _ = self.geometry(node)
        return tuple(node.in_shapes[0][:2]) + out_sp

    def gather(self, node: Node, x: Tensor, fill: float):
        """Window values ``(*lead, N, C, n_out, K)`` (``fill`` outside the input), and the geometry."""
        in_shape = node.in_shapes[0]
        in_sp, out_sp, idx, padded = self.geometry(node)
        k = n_lead(x, in_shape)
        rows = x.reshape((*x.shape[:k + 2], math.prod(in_sp)))
        ext = torch.cat([rows, torch.full_like(rows[..., :1], fill)], dim=-1)
        idx = idx.to(x.device)
        g = ext[..., torch.where(idx >= 0, idx, torch.full_like(idx, rows.shape[-1]))]
        return g, (k, in_sp, out_sp, idx, padded.to(x.device))


class AveragePool(_Pool, AffineRule):
    op_type = "AveragePool"

    def _count(self, node: Node, idx: Tensor, padded: Tensor, dtype) -> Tensor:
        if int(node.attrs.get("count_include_pad", 0)):
            return padded.sum(-1).to(dtype)
        return (idx >= 0).sum(-1).to(dtype)

    def forward(self, node: Node, x: Tensor) -> Tensor:
        g, (k, in_sp, out_sp, idx, padded) = self.gather(node, x, 0.0)
        y = g.sum(-1) / self._count(node, idx, padded, x.dtype)
        return y.reshape((*x.shape[:k + 2], *out_sp))

    def interval(self, node: Node, x: Interval) -> Interval:
        return Interval(self.forward(node, x.lo), self.forward(node, x.hi))

    def backward(self, node: Node, A: Tensor, x):
        in_shape = node.in_shapes[0]
        in_sp, out_sp, idx, padded = self.geometry(node)
        k = n_lead(A, node.out_shape)
        _, kernel, strides, dil, pads = self.attributes(node)
        if tiles(kernel, strides, dil, pads, in_sp, out_sp):
            return [spread_tiles(A * (1.0 / math.prod(kernel)), kernel, in_sp)]
        idx, padded = idx.to(A.device), padded.to(A.device)
        rows = A.reshape(-1, math.prod(out_sp), 1) / self._count(node, idx, padded, A.dtype).unsqueeze(-1)
        src = rows.expand(-1, *idx.shape).reshape(rows.shape[0], -1)
        n_in = math.prod(in_sp)
        tgt = torch.where(idx >= 0, idx, torch.full_like(idx, n_in)).reshape(-1)
        out = torch.zeros(rows.shape[0], n_in + 1, dtype=A.dtype, device=A.device)
        out.index_add_(1, tgt, src)
        return [out[:, :n_in].reshape((*A.shape[:k], *in_shape))]


class GlobalAveragePool(AffineRule):
    """Mean over all spatial axes (declared axes 2, 3, ...), kept as size-1 axes."""

    op_type = "GlobalAveragePool"

    def forward(self, node: Node, x: Tensor) -> Tensor:
        r = len(node.in_shapes[0])
        dims = list(range(x.dim() - r + 2, x.dim()))
        return x.mean(dim=dims, keepdim=True) if dims else x

    def interval(self, node: Node, x: Interval) -> Interval:
        return Interval(self.forward(node, x.lo), self.forward(node, x.hi))

    def backward(self, node: Node, A: Tensor, x):
        in_shape = node.in_shapes[0]
        n = math.prod(in_shape[2:])
        k = n_lead(A, node.out_shape)
        return [(A / n).expand(*A.shape[:k], *in_shape).contiguous()]


class MaxPool(_Pool, SelectionRule):
    op_type = "MaxPool"

    def forward(self, node: Node, x: Tensor) -> Tensor:
        g, (k, in_sp, out_sp, idx, padded) = self.gather(node, x, -math.inf)
        return g.amax(-1).reshape((*x.shape[:k + 2], *out_sp))

    def interval(self, node: Node, x: Interval) -> Interval:
        return Interval(self.forward(node, x.lo), self.forward(node, x.hi))

    def unstable(self, node: Node, lo: Tensor, hi: Tensor) -> Tensor:
        """Input elements that can change the relaxation: an element whose upper bound is
        below the largest lower bound of every window holding it (or that no window reads)
        is never the chosen element, never the largest upper bound of its window and never
        decides whether the chosen one is exact, and tighter bounds keep it so (they only
        lower its upper bound and raise the others' lower bounds).  ``lo``, ``hi``:
        ``(*lead, N, C, *in_spatial)`` -> a mask of that shape."""
        glo, (k, in_sp, out_sp, idx, padded) = self.gather(node, lo, -math.inf)
        ghi, _ = self.gather(node, hi, -math.inf)
        live = (ghi >= glo.amax(-1, keepdim=True)) & (idx >= 0)  # (*lead, N, C, n_out, K)
        n_in = math.prod(in_sp)
        target = torch.where(idx >= 0, idx, torch.full_like(idx, n_in)).reshape(-1).expand(*live.shape[:-2], -1)
        hits = torch.zeros((*live.shape[:-2], n_in + 1), dtype=lo.dtype, device=lo.device)
        hits.scatter_add_(-1, target, live.flatten(-2).to(lo.dtype))
        return (hits[..., :n_in] > 0).reshape(lo.shape)

    def relax(self, node: Node, lo: Tensor, hi: Tensor) -> Relaxation:
        """Lines over the flat per-sample output, reading one flat per-sample input element each.

        Shapes: ``lo``, ``hi``: ``(*lead, N, C, *in_spatial)``; slope, intercept and index:
        ``(*lead, N * C * n_out_spatial)``.
        """
        glo, (k, in_sp, out_sp, idx, padded) = self.gather(node, lo, -math.inf)
        ghi, _ = self.gather(node, hi, -math.inf)
        lead = lo.shape[:k]
        j = glo.argmax(-1, keepdim=True)  # (*lead, N, C, n_out, 1)
        lo_j = glo.gather(-1, j).squeeze(-1)
        others = ghi.scatter(-1, j, torch.full_like(lo_j.unsqueeze(-1), -math.inf))
        hi_other = others.amax(-1)
        hi_all = ghi.amax(-1)
        exact = lo_j >= hi_other
        one, zero = torch.ones_like(lo_j), torch.zeros_like(lo_j)
        # flat spatial input index of j*, then per-sample flat index over (N, C, *in_spatial)
        win = idx.expand(*j.shape[:-2], *idx.shape)
        sp = win.gather(-1, j).squeeze(-1)
        real = sp >= 0  # False only for a window with no finite lower bound at all
        sp = torch.where(real, sp, torch.zeros_like(sp))
        exact = exact & real
        nc = lo.shape[k] * lo.shape[k + 1]
        n_in = math.prod(in_sp)
        base = (torch.arange(nc, device=lo.device) * n_in).reshape(lo.shape[k], lo.shape[k + 1], 1)
        index = (sp + base).reshape((*lead, -1))
        flat = (*lead, -1)
        lower = Line(torch.where(real, one, zero).reshape(flat),
                     torch.where(real, zero, torch.full_like(zero, -math.inf)).reshape(flat), index)
        upper = Line(torch.where(exact, one, zero).reshape(flat),
                     torch.where(exact, zero, hi_all).reshape(flat), index)
        return Relaxation(lower=lower, upper=upper)
