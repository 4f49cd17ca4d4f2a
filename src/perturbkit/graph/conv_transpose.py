"""A convolution's transpose (its input gradient) by a kernel product and a sparse scatter.

oneDNN's transposed convolution, which autograd and the Conv rule use, is several times
slower than the forward convolution on layers with few channels.  :class:`ConvTranspose`
computes it in two steps on a cotangent in column layout ``(c_out * L, B)`` (``L`` output
positions): a dense product with the kernel gives every kernel tap's contribution, and a
0/1 CSR matrix adds each tap onto the input position it reads.  :func:`takes_fast_transpose`
says where that pays (measured in bench/conv_transpose.py, table in docs/benchmarks.md);
:class:`perturbkit.graph.vjp.GradientProgram` uses both.
"""
from __future__ import annotations

import math
import warnings

import torch

from perturbkit.graph.ir import Node
from perturbkit.ops.conv import conv_pads

Tensor = torch.Tensor

#: Conv nodes take :class:`ConvTranspose` (float32 on the CPU) when, per group, the product
#: of input and output channels is at most SMALL_CONV_CHANNELS, the layer is strided or has
#: at most FEW_INPUT_CHANNELS input channels (the rule's transposes are weakest there), an
#: input channel has at least MIN_TAPS kernel taps, and the cotangent arrives in columns or
#: is cheap to transpose (ROWS_TAPS_PER_CHANNEL).  Measured with one thread on the digits
#: CNN, the shared VNN-COMP CNNs and CIFAR/MNIST-sized layers (bench/conv_transpose.py,
#: table in docs/benchmarks.md): 1.2-5x faster than the rule's transpose where taken (5-20x
#: faster than autograd's); left out, e.g., a stride-1 3x3 layer with 8 channels (2.3x
#: slower) and a 1-channel 2x2 layer whose cotangent comes in rows (3x slower).
SMALL_CONV_CHANNELS = 256
FEW_INPUT_CHANNELS = 4
MIN_TAPS = 8
#: a cotangent that arrives in rows (after a dense layer, say) is transposed first; that
#: pays when the taps of an input channel are at least this many times the output channels
ROWS_TAPS_PER_CHANNEL = 2
#: largest scatter matrix built for a Conv node (non-zeros: input channels x kernel size x
#: output positions)
SMALL_CONV_MAX_NNZ = 1 << 24


def takes_fast_transpose(node: Node, W: Tensor, dtype: torch.dtype, device: torch.device,
                         columns_in: bool = False) -> bool:
    """Whether the program transposes this Conv node with :class:`ConvTranspose` rather
    than with the rule's transposed convolution (see :data:`SMALL_CONV_CHANNELS`).
    ``columns_in``: the output's cotangent arrives in the column layout; otherwise it must
    be transposed first, which pays only when an output channel has few taps to gather."""
    nd = W.dim() - 2
    in_shape = node.in_shapes[0]
    groups = int(node.attrs.get("group", 1))
    if torch.device(device).type != "cpu" or dtype != torch.float32 or W.shape[0] % groups:
        return False
    cig, cog = W.shape[1], W.shape[0] // groups
    strided = any(int(v) > 1 for v in node.attrs.get("strides", [1] * nd))
    taps = cig * math.prod(W.shape[2:])
    return (math.prod(in_shape[:-nd - 1]) == 1 and cig * cog <= SMALL_CONV_CHANNELS
            and (strided or cig <= FEW_INPUT_CHANNELS) and taps >= MIN_TAPS
            and (columns_in or taps >= ROWS_TAPS_PER_CHANNEL * cog)
            and taps * groups * math.prod(node.out_shape[-nd:]) <= SMALL_CONV_MAX_NNZ)


class ConvTranspose:
    """Transpose of a convolution on cotangents in column layout ``(c_out * L, B)`` (``L``
    output positions), for a node whose declared input has no batch beyond 1.

    ``taps = W_g^T @ A`` gives, per input channel and kernel tap, the contribution to the
    input position the tap reads, for every output position: ``(c_in * K, L * B)``, one
    dense (batched over groups) matrix product.  A 0/1 CSR matrix ``S (n_in, c_in * K * L)``
    then adds every tap onto its input position (taps that read padding are dropped).
    """

    def __init__(self, node: Node, W: Tensor, groups: int):
        nd = W.dim() - 2
        c_out, cig = W.shape[:2]
        kernel = tuple(W.shape[2:])
        spatial = tuple(node.in_shapes[0][-nd:])
        out_sp = tuple(node.out_shape[-nd:])
        pads = conv_pads(node, spatial, kernel)[:nd]
        strides = list(node.attrs.get("strides", [1] * nd))
        dil = list(node.attrs.get("dilations", [1] * nd))
        self.groups, self.c_out = groups, c_out
        K, L = math.prod(kernel), math.prod(out_sp)
        # (groups, cig * K, c_out / groups): the kernel of each group, transposed
        self.Wt = W.reshape(groups, c_out // groups, cig * K).transpose(1, 2).contiguous()
        ci = cig * groups
        shape = [ci, *kernel, *out_sp]
        flat = (torch.arange(ci) * math.prod(spatial)).view([ci] + [1] * (2 * nd))
        valid = torch.ones([1] * (1 + 2 * nd), dtype=torch.bool)
        for d in range(nd):
            v = torch.arange(out_sp[d])[None, :] * strides[d] - pads[d] + torch.arange(kernel[d])[:, None] * dil[d]
            vshape = [1] * (1 + 2 * nd)
            vshape[1 + d], vshape[1 + nd + d] = kernel[d], out_sp[d]
            v = v.view(vshape)
            valid = valid & (v >= 0) & (v < spatial[d])
            flat = flat + v * math.prod(spatial[d + 1:])
        flat, valid = flat.expand(shape), valid.expand(shape)
        rows = flat[valid]
        cols = torch.arange(ci * K * L).view(shape)[valid]
        n_in = ci * math.prod(spatial)
        with warnings.catch_warnings():  # "sparse CSR support is in beta": matmul is all we use
            warnings.simplefilter("ignore", UserWarning)
            S = torch.sparse_coo_tensor(torch.stack([rows, cols]), torch.ones(rows.numel(), dtype=W.dtype),
                                        (n_in, ci * K * L), check_invariants=False).coalesce()
            self.S = S.to_sparse_csr()

    def __call__(self, At: Tensor) -> Tensor:
        """``At (c_out * L, B)`` contiguous -> ``(n_in, B)``."""
        B = At.shape[1]
        g = self.groups
        if g == 1:
            taps = self.Wt[0] @ At.view(self.c_out, -1)
        else:
            taps = torch.bmm(self.Wt, At.view(g, self.c_out // g, -1))
        return self.S @ taps.view(-1, B)


__all__ = ["ConvTranspose", "takes_fast_transpose", "SMALL_CONV_CHANNELS", "FEW_INPUT_CHANNELS", "MIN_TAPS",
           "ROWS_TAPS_PER_CHANNEL", "SMALL_CONV_MAX_NNZ"]
