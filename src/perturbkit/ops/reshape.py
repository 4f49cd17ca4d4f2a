"""Operators that only move elements: Reshape, Flatten, Squeeze, Unsqueeze, Identity, Dropout.

Their output is the input reshaped to the declared output shape (same elements, same
order), so forward, interval and backward are all one reshape with the leading dimensions
kept.  Each class only says how its declared output shape follows from its attributes.
"""
from __future__ import annotations

import math

import torch

from perturbkit.graph.ir import Node, Shape
from perturbkit.ops.base import AffineRule, Interval
from perturbkit.ops.util import n_lead


class ReshapeLike(AffineRule):
    """Output = input reshaped to ``node.out_shape``."""

    coordinatewise = True

    def forward(self, node: Node, x: torch.Tensor, *rest) -> torch.Tensor:
        k = n_lead(x, node.in_shapes[0])
        return x.reshape((*x.shape[:k], *node.out_shape))

    def interval(self, node: Node, x: Interval, *rest) -> Interval:
        return Interval(self.forward(node, x.lo), self.forward(node, x.hi))

    def backward(self, node: Node, A: torch.Tensor, *xs):
        k = n_lead(A, node.out_shape)
        return [A.reshape((*A.shape[:k], *node.in_shapes[0]))] + [None] * (len(xs) - 1)

    def infer_shape(self, node: Node, *xs) -> Shape:
        return tuple(node.in_shapes[0])


class Reshape(ReshapeLike):
    """ONNX Reshape; ``attrs['shape']`` holds the (constant) target, 0 copies, -1 infers."""

    op_type = "Reshape"

    def infer_shape(self, node: Node, *xs) -> Shape:
        in_shape = node.in_shapes[0]
        allowzero = bool(node.attrs.get("allowzero", 0))
        out = [in_shape[i] if (int(t) == 0 and not allowzero) else int(t)
               for i, t in enumerate(node.attrs["shape"])]
        if -1 in out:
            known = math.prod(d for d in out if d != -1)
            out[out.index(-1)] = math.prod(in_shape) // known if known else 0
        return tuple(out)


class Flatten(ReshapeLike):
    op_type = "Flatten"

    def infer_shape(self, node: Node, *xs) -> Shape:
        s = node.in_shapes[0]
        axis = int(node.attrs.get("axis", 1))
        axis = axis + len(s) if axis < 0 else axis
        return (math.prod(s[:axis]), math.prod(s[axis:]))


class Squeeze(ReshapeLike):
    op_type = "Squeeze"

    def infer_shape(self, node: Node, *xs) -> Shape:
        s = node.in_shapes[0]
        axes = node.attrs.get("axes")
        if axes is None:
            return tuple(d for d in s if d != 1)
        drop = {int(a) + len(s) if int(a) < 0 else int(a) for a in axes}
        return tuple(d for i, d in enumerate(s) if i not in drop)


class Unsqueeze(ReshapeLike):
    op_type = "Unsqueeze"

    def infer_shape(self, node: Node, *xs) -> Shape:
        s = list(node.in_shapes[0])
        r = len(s) + len(node.attrs["axes"])
        for a in sorted(int(a) + r if int(a) < 0 else int(a) for a in node.attrs["axes"]):
            s.insert(a, 1)
        return tuple(s)


class Identity(ReshapeLike):
    op_type = "Identity"


class Dropout(ReshapeLike):
    """Inference-mode Dropout is the identity."""

    op_type = "Dropout"


class KnownRange(ReshapeLike):
    """The identity on a value whose range is known a priori: ``lower <= x <= upper`` for
    every input of the network (attrs ``lower``, ``upper``; ``-inf``/``inf`` for none).

    Lowerings emit it where the mathematics bounds a value that relaxations cannot see:
    a softmax denominator ``sum_j exp(x_j - x_i) >= 1`` (its ``j = i`` term is 1), a layer
    norm's normalised value ``|c_i| / sqrt(var + eps) <= sqrt(N)`` (``sum_i c_i^2 = N var``).
    Its interval is the input's intersected with the range (sound because the range holds
    for the true value); everything else is the identity, so linear bounds pass through it.
    """

    op_type = "KnownRange"

    def interval(self, node: Node, x: Interval, *rest) -> Interval:
        lo = float(node.attrs.get("lower", -math.inf))
        hi = float(node.attrs.get("upper", math.inf))
        return Interval(x.lo.clamp(min=lo) if lo > -math.inf else x.lo, x.hi.clamp(max=hi) if hi < math.inf else x.hi)
