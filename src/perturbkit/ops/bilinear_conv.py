"""BilinearConv: a 1-D or 2-D convolution whose weight is perturbed too (weight perturbations).

Made by lowering (``Conv.lower``) when the weight of a Conv is a runtime value, as
``perturbkit.bounds(..., weights={"conv1.weight": ...})`` makes it.  Like the other products
of two perturbed tensors (:mod:`perturbkit.ops.bilinear`) it gives ``forward``, ``interval``
and the two transposes with one operand fixed, and the engine builds McCormick planes
(:mod:`perturbkit.bounds.bilinear`).  Everything is one matrix product over the unfolded
input (``F.unfold``): ``y[o, p] = sum_k W[o, k] x_unf[k, p]``, ``k`` running over input
channels and kernel taps, ``p`` over output positions, so per-sample weights (the bound
algorithms' batched operands) cost nothing extra.  Groups other than 1 and 3-D convolutions
are refused with one line.

Shapes: x ``(*lead, N, C_in, *spatial)``; W ``(*lead, C_out, C_in, *kernel)`` (no leading
dims when the weight is constant in a call); y ``(*lead, N, C_out, *out_spatial)``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from perturbkit.errors import UnsupportedOperatorError
from perturbkit.graph.ir import Node
from perturbkit.ops.base import BilinearRule, Interval
from perturbkit.ops.conv import conv_pads

Tensor = torch.Tensor


def _geometry(node: Node):
    """``(nd, kernel, pads [b..., e...], strides, dilations)``, every list 2-D (1-D made 2-D)."""
    in_shape, w_shape = node.in_shapes[0], node.in_shapes[1]
    nd = len(w_shape) - 2
    group = int(node.attrs.get("group", 1))
    if nd not in (1, 2) or group != 1:
        raise UnsupportedOperatorError(
            f"Conv with a perturbed weight is supported for 1-D and 2-D convolutions without groups; "
            f"got {nd}-D, group {group} at {node.where()}")
    kernel = tuple(w_shape[2:])
    pads = conv_pads(node, tuple(in_shape[-nd:]), kernel)
    strides = [int(s) for s in node.attrs.get("strides", [1] * nd)]
    dil = [int(d) for d in node.attrs.get("dilations", [1] * nd)]
    if nd == 1:
        return 1, (1, kernel[0]), [0, pads[0], 0, pads[1]], [1, strides[0]], [1, dil[0]]
    return 2, kernel, pads, strides, dil


def _out_spatial(node: Node) -> tuple[int, ...]:
    """The output's spatial shape (1-D: its length only), from the geometry."""
    nd, kernel, pads, strides, dil = _geometry(node)
    in_sp = [1, node.in_shapes[0][-1]] if nd == 1 else list(node.in_shapes[0][-2:])
    out = [(in_sp[i] + pads[i] + pads[2 + i] - dil[i] * (kernel[i] - 1) - 1) // strides[i] + 1 for i in range(2)]
    return tuple(out[1:] if nd == 1 else out)


class BilinearConv(BilinearRule):
    op_type = "BilinearConv"

    def _unfold(self, node: Node, x: Tensor) -> Tensor:
        """``(*lead, N, C_in, *spatial)`` -> ``(*lead, N, C_in * taps, positions)``."""
        nd, kernel, pads, strides, dil = _geometry(node)
        in_shape = node.in_shapes[0]
        k = x.dim() - len(in_shape)
        lead = x.shape[:k + len(in_shape) - nd - 1]
        x2 = x.reshape(-1, in_shape[-nd - 1], *([1] if nd == 1 else []), *in_shape[-nd:])
        x2 = F.pad(x2, [pads[1], pads[3], pads[0], pads[2]])
        cols = F.unfold(x2, kernel, dilation=dil, stride=strides)
        return cols.reshape(*lead, cols.shape[1], cols.shape[2])

    def forward(self, node: Node, x: Tensor, W: Tensor) -> Tensor:
        cols = self._unfold(node, x)  # (*lead, N, K, P)
        w_shape = node.in_shapes[1]
        kw = W.dim() - len(w_shape)
        Wf = W.reshape(*W.shape[:kw], w_shape[0], -1)  # (*lead, C_out, K)
        if kw:  # per-sample weights: one product per leading index, over N
            Wf = Wf.reshape(*Wf.shape[:kw], *([1] * (cols.dim() - 2 - kw)), *Wf.shape[-2:])
        y = Wf @ cols  # (*lead, N, C_out, P)
        return y.reshape((*y.shape[:-1], *_out_spatial(node)))

    def interval(self, node: Node, x: Interval, W: Interval) -> Interval:
        # midpoint-radius (Rump 1999): |x W - xm Wm| <= |xm| Wr + xr |Wm| + xr Wr
        xm, xr = x.mid, x.rad
        Wm, Wr = W.mid, W.rad
        mid = self.forward(node, xm, Wm)
        rad = self.forward(node, xm.abs(), Wr) + self.forward(node, xr, Wm.abs()) + self.forward(node, xr, Wr)
        return Interval(mid - rad, mid + rad)

    def transpose(self, node: Node, A: Tensor, fixed: Tensor, side: int) -> Tensor:
        B, S = A.shape[:2]
        in_shape, w_shape = node.in_shapes
        P = math.prod(_out_spatial(node))
        Af = A.reshape(B, S, -1, w_shape[0], P)  # (B, S, N, C_out, P)
        if side == 1:  # coefficients on W, x fixed: sum over N and positions of A x_unf^T
            cols = self._unfold(node, fixed)  # (B, N, K, P)
            return torch.einsum("bsnop,bnkp->bsok", Af, cols).reshape(B, S, *w_shape)
        nd, kernel, pads, strides, dil = _geometry(node)
        Wf = fixed.reshape(B, 1, 1, w_shape[0], -1)  # (B, 1, 1, C_out, K)
        cols = Wf.transpose(-1, -2) @ Af  # (B, S, N, K, P)
        spatial = [1, in_shape[-1]] if nd == 1 else list(in_shape[-2:])
        padded = [spatial[0] + pads[0] + pads[2], spatial[1] + pads[1] + pads[3]]
        Ax = F.fold(cols.reshape(-1, cols.shape[-2], P), padded, kernel, dilation=dil, stride=strides)
        Ax = Ax[:, :, pads[0]:pads[0] + spatial[0], pads[1]:pads[1] + spatial[1]]
        return Ax.reshape(B, S, *in_shape)
