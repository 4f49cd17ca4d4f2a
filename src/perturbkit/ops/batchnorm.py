"""BatchNormalization in inference mode: a per-channel affine map.

``y = scale * (x - mean) / sqrt(var + epsilon) + B`` along the channel axis, which is
declared axis 1 of ``X`` (``(N, C, D1, ...)``).  ``scale``, ``B``, ``mean`` and ``var`` are
constants of shape ``(C,)``.  With ``g = scale / sqrt(var + epsilon)`` and
``h = B - mean * g`` the rule is ``y = g * x + h``, so the transpose is ``A * g``.
"""
from __future__ import annotations

import torch

from perturbkit.errors import UnsupportedOperatorError
from perturbkit.graph.ir import Node
from perturbkit.ops.base import AffineRule, Interval
from perturbkit.ops.util import needs_constant

Tensor = torch.Tensor


def gain_shift(scale: Tensor, bias: Tensor, mean: Tensor, var: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """The per-channel affine map of inference BatchNormalization: ``y = g x + h`` with
    ``g = scale / sqrt(var + eps)``, ``h = bias - mean g`` (all (C,))."""
    g = scale / torch.sqrt(var + eps)
    return g, bias - mean * g


class BatchNormalization(AffineRule):
    op_type = "BatchNormalization"
    coordinatewise = True

    def gain_shift(self, node: Node, xs) -> tuple[Tensor, Tensor]:
        """``g``, ``h`` shaped to broadcast along the channel axis of the node's input
        (``xs``: the node's inputs, the runtime one may be None)."""
        if int(node.attrs.get("training_mode", 0)):
            raise UnsupportedOperatorError(
                f"BatchNormalization in training mode is not supported at {node.where()}; export in eval mode")
        scale, bias, mean, var = (needs_constant(node, xs, i, w)
                                  for i, w in ((1, "scale"), (2, "bias"), (3, "mean"), (4, "var")))
        g, h = gain_shift(scale, bias, mean, var, float(node.attrs.get("epsilon", 1e-5)))
        rank = len(node.in_shapes[0])
        view = (-1,) + (1,) * max(rank - 2, 0)  # channel axis 1 of the declared shape
        return g.reshape(view), h.reshape(view)

    def forward(self, node: Node, x: Tensor, *consts: Tensor) -> Tensor:
        g, h = self.gain_shift(node, (x, *consts))
        return x * g + h

    def interval(self, node: Node, x: Interval, *consts: Tensor) -> Interval:
        g, h = self.gain_shift(node, (None, *consts))
        mid = x.mid * g + h
        rad = x.rad * g.abs()
        return Interval(mid - rad, mid + rad)

    def backward(self, node: Node, A: Tensor, x, *consts):
        g, _ = self.gain_shift(node, (x, *consts))
        return [A * g] + [None] * len(consts)
