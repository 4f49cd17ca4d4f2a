"""ConvTranspose (1-D, 2-D, 3-D): strides, pads, dilations, group, output_padding,
output_shape, auto_pad.  The weight ``W`` (``(C_in, C_out / group, *kernel)``) and the bias
are constants.

The ONNX output is a window of the *full* transposed convolution (no padding, length
``F_i = s_i (in_i - 1) + (k_i - 1) d_i + 1`` per axis): it starts ``pads_begin_i`` into it
and has length ``F_i + output_padding_i - pads_begin_i - pads_end_i``; positions past the
end of the full result are zero (plus the bias).  So ``forward`` is the full transposed
convolution followed by a pad with ``(-pads_begin, output_padding - pads_end)``
(``torch.nn.functional.pad`` crops on negative amounts), and ``backward`` is the transpose
of each step in reverse: a pad with ``(pads_begin, pads_end - output_padding)``, then the
ordinary convolution with the same weight, strides, dilations and groups.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from perturbkit.errors import UnsupportedOperatorError
from perturbkit.graph.ir import Node
from perturbkit.ops.base import AffineRule, Interval
from perturbkit.ops.util import attr_str, int_list, n_lead, needs_constant, torch_pad_order

Tensor = torch.Tensor

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def _half(t: int) -> int:
    """``t / 2`` rounded toward zero, as C integer division."""
    return int(t / 2)


def convtranspose_geometry(node: Node, kernel: tuple[int, ...]):
    """``(strides, dilations, group, pads_begin, pads_end, output_padding)`` per the ONNX spec."""
    nd = len(kernel)
    spatial = node.in_shapes[0][-nd:]
    strides = int_list(node.attrs.get("strides", [1] * nd))
    dil = int_list(node.attrs.get("dilations", [1] * nd))
    group = int(node.attrs.get("group", 1))
    opad = int_list(node.attrs.get("output_padding", [0] * nd))
    auto = attr_str(node, "auto_pad", "NOTSET")
    full = [strides[i] * (spatial[i] - 1) + (kernel[i] - 1) * dil[i] + 1 for i in range(nd)]
    target = None
    if "output_shape" in node.attrs:
        target = int_list(node.attrs["output_shape"])[-nd:]
    elif auto in ("SAME_UPPER", "SAME_LOWER"):
        target = [spatial[i] * strides[i] for i in range(nd)]
    if target is not None:
        total = [full[i] + opad[i] - target[i] for i in range(nd)]
        if any(t < 0 for t in total):
            raise UnsupportedOperatorError(
                f"ConvTranspose output_shape {target} exceeds the full output {full} (+ output_padding {opad}) "
                f"at {node.where()}; it must not be larger than the unpadded transposed convolution")
        if auto == "SAME_UPPER":
            pb = [_half(t) for t in total]
            pe = [t - _half(t) for t in total]
        else:
            pb = [t - _half(t) for t in total]
            pe = [_half(t) for t in total]
    elif auto == "VALID":
        pb, pe = [0] * nd, [0] * nd
    else:
        pads = int_list(node.attrs.get("pads", [0] * (2 * nd)))
        pb, pe = pads[:nd], pads[nd:]
    return strides, dil, group, pb, pe, opad


class ConvTranspose(AffineRule):
    op_type = "ConvTranspose"

    def _geometry(self, node: Node, W: Tensor):
        nd = W.dim() - 2
        if nd not in _CONV:
            raise UnsupportedOperatorError(
                f"ConvTranspose with {nd} spatial dims is not supported at {node.where()}; supported: 1, 2, 3")
        return nd, convtranspose_geometry(node, tuple(W.shape[2:]))

    def _apply(self, node: Node, x: Tensor, W: Tensor, b) -> Tensor:
        nd, (strides, dil, group, pb, pe, opad) = self._geometry(node, W)
        in_shape = node.in_shapes[0]
        k = n_lead(x, in_shape)
        lead = x.shape[:k]
        x2 = x.reshape(-1, *in_shape[-nd - 1:])
        y = _CONV_T[nd](x2, W, None, stride=strides, padding=0, output_padding=0, groups=group, dilation=dil)
        y = F.pad(y, torch_pad_order([-p for p in pb], [opad[i] - pe[i] for i in range(nd)]))
        if b is not None:
            y = y + b.reshape(-1, *([1] * nd))
        return y.reshape((*lead, *in_shape[:-nd - 1], *y.shape[1:]))

    def forward(self, node: Node, x: Tensor, W: Tensor, b=None) -> Tensor:
        return self._apply(node, x, W, b)

    def interval(self, node: Node, x: Interval, W: Tensor, b=None) -> Interval:
        mid = self._apply(node, x.mid, W, b)
        rad = self._apply(node, x.rad, W.abs(), None)
        return Interval(mid - rad, mid + rad)

    def backward(self, node: Node, A: Tensor, x, W=None, b=None):
        W = needs_constant(node, (x, W, b), 1, "weight")
        nd, (strides, dil, group, pb, pe, opad) = self._geometry(node, W)
        out_shape = node.out_shape
        k = n_lead(A, out_shape)
        lead = A.shape[:k]
        A2 = A.reshape(-1, *out_shape[-nd - 1:])
        A2 = F.pad(A2, torch_pad_order(pb, [pe[i] - opad[i] for i in range(nd)]))
        Ax = _CONV[nd](A2, W, None, stride=strides, padding=0, dilation=dil, groups=group)
        out = [Ax.reshape((*lead, *node.in_shapes[0])), None]
        if b is not None:
            out.append(None)
        return out
