"""Conv (1-D, 2-D, 3-D): strides, pads (also asymmetric), dilations, groups, auto_pad.

The weight and bias are constants.  Leading dimensions are folded into the ONNX batch
dimension.  The transpose (``backward``) is the gradient of the convolution with respect
to its input, computed by ``torch.nn.grad.conv{1,2,3}d_input`` on the padded input and
cropped back.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from perturbkit.errors import UnsupportedOperatorError
from perturbkit.graph.ir import Node, Shape
from perturbkit.ops.base import AffineRule, Interval
from perturbkit.ops.util import n_lead, needs_constant

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def _conv_input(size, W, A, *, stride, padding, dilation, groups):
    """Gradient of a convolution with respect to its input (its transpose), as a transposed
    convolution with the output padding that restores the input size ``size[2:]``."""
    nd = W.dim() - 2
    out_pad = []
    for i in range(nd):
        natural = (A.shape[2 + i] - 1) * stride[i] - 2 * padding[i] + dilation[i] * (W.shape[2 + i] - 1) + 1
        out_pad.append(size[2 + i] - natural)
    if all(0 <= p < max(stride[i], dilation[i]) for i, p in enumerate(out_pad)):
        return _CONV_T[nd](A, W, stride=stride, padding=padding, output_padding=out_pad, groups=groups,
                           dilation=dilation)
    return _CONV_INPUT[nd](size, W, A, stride=stride, padding=padding, dilation=dilation, groups=groups)


_CONV_INPUT = {1: torch.nn.grad.conv1d_input, 2: torch.nn.grad.conv2d_input, 3: torch.nn.grad.conv3d_input}


def conv_pads(node: Node, in_spatial: Shape, kernel: Shape) -> list[int]:
    """ONNX pads ``[b_1, ..., b_n, e_1, ..., e_n]`` after resolving ``auto_pad``."""
    n = len(in_spatial)
    strides = list(node.attrs.get("strides", [1] * n))
    dil = list(node.attrs.get("dilations", [1] * n))
    auto = node.attrs.get("auto_pad", "NOTSET")
    if isinstance(auto, bytes):
        auto = auto.decode()
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads_b, pads_e = [], []
        for i in range(n):
            out = math.ceil(in_spatial[i] / strides[i])
            total = max(0, (out - 1) * strides[i] + (kernel[i] - 1) * dil[i] + 1 - in_spatial[i])
            small, big = total // 2, total - total // 2
            pads_b.append(small if auto == "SAME_UPPER" else big)
            pads_e.append(big if auto == "SAME_UPPER" else small)
        return pads_b + pads_e
    if auto == "VALID":
        return [0] * (2 * n)
    return [int(p) for p in node.attrs.get("pads", [0] * (2 * n))]


def _torch_pad(pads: list[int]) -> list[int]:
    """ONNX ``[b1..bn, e1..en]`` -> torch.nn.functional.pad order (last dim first)."""
    n = len(pads) // 2
    out: list[int] = []
    for i in reversed(range(n)):
        out += [pads[i], pads[n + i]]
    return out


class Conv(AffineRule):
    op_type = "Conv"

    def _geometry(self, node: Node, W: torch.Tensor):
        nd = W.dim() - 2
        if nd not in _CONV:
            raise UnsupportedOperatorError(f"Conv with {nd} spatial dims is not supported at {node.where()}")
        in_shape = node.in_shapes[0]
        spatial = tuple(in_shape[-nd:])
        kernel = tuple(W.shape[2:])
        pads = conv_pads(node, spatial, kernel)
        strides = list(node.attrs.get("strides", [1] * nd))
        dil = list(node.attrs.get("dilations", [1] * nd))
        group = int(node.attrs.get("group", 1))
        return nd, pads, strides, dil, group

    def _conv(self, node: Node, x: torch.Tensor, W: torch.Tensor, b):
        nd, pads, strides, dil, group = self._geometry(node, W)
        in_shape = node.in_shapes[0]
        k = n_lead(x, in_shape)
        lead = x.shape[:k]
        x = x.reshape(-1, *in_shape[-nd - 1:])
        sym = all(pads[i] == pads[nd + i] for i in range(nd))
        if sym:
            y = _CONV[nd](x, W, b, stride=strides, padding=pads[:nd], dilation=dil, groups=group)
        else:
            y = _CONV[nd](F.pad(x, _torch_pad(pads)), W, b, stride=strides, dilation=dil, groups=group)
        return y.reshape((*lead, *in_shape[:-nd - 1], *y.shape[1:]))

    def forward(self, node: Node, x: torch.Tensor, W: torch.Tensor, b=None) -> torch.Tensor:
        if W.dim() > len(node.in_shapes[1]) or (b is not None and b.dim() > len(node.in_shapes[2])):
            return self._lowered_forward(node, x, W, b)  # a perturbed weight or bias (before lowering)
        return self._conv(node, x, W, b)

    def _lowered_forward(self, node: Node, x, W, b):
        from perturbkit.ops.bilinear_conv import BilinearConv

        y = BilinearConv().forward(node, x, W) if W.dim() > len(node.in_shapes[1]) else self._conv(node, x, W, None)
        if b is None:
            return y
        nd = len(node.in_shapes[1]) - 2
        return y + b.reshape((*b.shape[:b.dim() - 1], b.shape[-1], *([1] * nd)))

    def lower(self, node: Node, runtime, emit) -> bool:
        """A perturbed weight -> BilinearConv; a perturbed bias -> an Add after the Conv."""
        w_rt = runtime[1]
        b_rt = len(runtime) > 2 and runtime[2]
        if not (w_rt or b_rt):
            return False
        if not runtime[0]:
            raise UnsupportedOperatorError(f"Conv of a constant input by a perturbed weight at {node.where()}")
        x, W = node.inputs[0], node.inputs[1]
        has_bias = len(node.inputs) > 2 and node.inputs[2]
        last = {} if has_bias else {"output": node.output}
        attrs = dict(node.attrs)
        y = (emit.node("BilinearConv", [x, W], attrs, hint="product", **last) if w_rt
             else emit.node("Conv", [x, W], attrs, hint="conv", **last))
        if has_bias:
            nd = len(node.in_shapes[1]) - 2
            shape = torch.tensor([node.in_shapes[1][0]] + [1] * nd, dtype=torch.int64)
            bias = emit.node("Reshape", [node.inputs[2]], {"shape": shape}, hint="bias")
            emit.node("Add", [y, bias], output=node.output)
        return True

    def local_geometry(self, node: Node, W: torch.Tensor) -> dict:
        """Geometry for the engine's patch (local coefficient) mode: a 2-D convolution maps
        input position ``y*stride - pad_begin + k*dilation`` to output position ``y``."""
        nd, pads, strides, dil, group = self._geometry(node, W)
        return {"nd": nd, "pads_begin": pads[:nd], "strides": strides, "dilations": dil, "groups": group}

    def interval(self, node: Node, x: Interval, W: torch.Tensor, b=None) -> Interval:
        mid = self._conv(node, x.mid, W, b)
        rad = self._conv(node, x.rad, W.abs(), None)
        return Interval(mid - rad, mid + rad)

    def backward(self, node: Node, A: torch.Tensor, x, W=None, b=None):
        W = needs_constant(node, (x, W, b), 1, "weight")
        nd, pads, strides, dil, group = self._geometry(node, W)
        in_shape = node.in_shapes[0]
        out_shape = node.out_shape
        k = n_lead(A, out_shape)
        lead = A.shape[:k]
        A2 = A.reshape(-1, *out_shape[-nd - 1:])
        if nd == 2 and group == 1 and W.shape[1] <= 4 and A2.shape[0] >= 32:
            # few input channels (an image's first layer): unfold-free matmul + fold is much
            # faster than the library's transposed convolution on CPU (measured in bench/)
            N, Co = A2.shape[:2]
            spatial = [in_shape[-2 + i] + pads[i] + pads[2 + i] for i in range(2)]
            cols = W.reshape(Co, -1).t() @ A2.reshape(N, Co, -1)
            Ax = F.fold(cols, spatial, tuple(W.shape[-2:]), dilation=dil, stride=strides)
            Ax = Ax[:, :, pads[0]:pads[0] + in_shape[-2], pads[1]:pads[1] + in_shape[-1]]
        elif all(pads[i] == pads[nd + i] for i in range(nd)):
            size = [A2.shape[0], *in_shape[-nd - 1:]]
            Ax = _conv_input(size, W, A2, stride=strides, padding=pads[:nd], dilation=dil, groups=group)
        else:
            spatial = [in_shape[-nd + i] + pads[i] + pads[nd + i] for i in range(nd)]
            size = [A2.shape[0], in_shape[-nd - 1], *spatial]
            Ax = _conv_input(size, W, A2, stride=strides, padding=[0] * nd, dilation=dil, groups=group)
            crop = (slice(None), slice(None)) + tuple(
                slice(pads[i], pads[i] + in_shape[-nd + i]) for i in range(nd))
            Ax = Ax[crop]
        out = [Ax.reshape((*lead, *in_shape)), None]
        if b is not None:
            out.append(None)
        return out
