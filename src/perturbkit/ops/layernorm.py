"""LayerNormalization (ONNX opset 17): bounded through its decomposition.

``y = (x - mean(x)) / sqrt(var(x) + epsilon) * scale + bias`` over the axes ``axis, ...,
rank - 1``.  :meth:`LayerNormalization.lower` emits (as auto_LiRPA and Shi et al. 2020 bound
it, with the reciprocal square root fused into one convex function)::

    c = x - ReduceMean(x)              (affine)
    v = ReduceMean(Pow(c, 2))          (convex square, then affine)
    r = Pow(v + epsilon, -0.5)         (convex and decreasing on v + epsilon > 0)
    y = Mul(c, r) * scale + bias       (a product of two perturbed values: BilinearMul)

with the known range ``|c_i r| <= sqrt(N)`` (``sum_i c_i^2 = N var``, N normalised elements)
on the product (:class:`~perturbkit.ops.reshape.KnownRange`), which relaxations cannot see.

Inputs: ``X`` (runtime), ``Scale`` and optional ``B`` (constants or runtime values,
broadcast to the normalised shape).  Attributes ``axis`` (default -1), ``epsilon``
(default 1e-5); ``stash_type`` only sets the precision of ONNX Runtime's statistics.
"""
from __future__ import annotations

import math

import torch

from perturbkit.graph.ir import Node
from perturbkit.ops.base import CompositeRule
from perturbkit.ops.util import align, norm_axis

Tensor = torch.Tensor


def _axes(node: Node) -> list[int]:
    r = len(node.in_shapes[0])
    return list(range(norm_axis(int(node.attrs.get("axis", -1)), r, node), r))


class LayerNormalization(CompositeRule):
    op_type = "LayerNormalization"

    def forward(self, node: Node, x: Tensor, scale: Tensor, bias: Tensor | None = None) -> Tensor:
        r = len(node.in_shapes[0])
        dims = [a - r for a in _axes(node)]
        eps = float(node.attrs.get("epsilon", 1e-5))
        mean = x.mean(dim=dims, keepdim=True)
        c = x - mean
        var = (c * c).mean(dim=dims, keepdim=True)
        scale, bias = (t if t is None or t.dim() <= len(s) else align(t, s, r)
                       for t, s in zip((scale, bias), node.in_shapes[1:] + ((),)))
        y = c * torch.rsqrt(var + eps) * scale
        return y if bias is None else y + bias

    def lower(self, node: Node, runtime, emit) -> bool:
        axes = _axes(node)
        x, scale = node.inputs[0], node.inputs[1]
        bias = node.inputs[2] if len(node.inputs) > 2 else None
        eps = float(node.attrs.get("epsilon", 1e-5))
        m = emit.node("ReduceMean", [x], {"axes": axes, "keepdims": 1}, hint="mean")
        c = emit.node("Sub", [x, m], hint="centred")
        sq = emit.node("Pow", [c, emit.const(torch.tensor(2.0), "two")], hint="square")
        v = emit.node("ReduceMean", [sq], {"axes": axes, "keepdims": 1}, hint="var")
        ve = emit.node("Add", [v, emit.const(torch.tensor(eps, dtype=torch.float64), "epsilon")], hint="var_eps")
        rs = emit.node("Pow", [ve, emit.const(torch.tensor(-0.5), "minus_half")], hint="rsqrt")
        n = emit.node("Mul", [c, rs], hint="normalised_product")
        N = math.prod(node.in_shapes[0][a] for a in axes)
        n = emit.node("KnownRange", [n], {"lower": -math.sqrt(N), "upper": math.sqrt(N)}, hint="normalised")
        if bias is None:
            emit.node("Mul", [n, scale], output=node.output)
        else:
            y = emit.node("Mul", [n, scale], hint="scaled")
            emit.node("Add", [y, bias], output=node.output)
        return True
