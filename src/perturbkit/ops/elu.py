"""Elu and Selu: ``gamma x`` for x > 0, ``gamma alpha (exp(x) - 1)`` for x <= 0.

Clevert, Unterthiner, Hochreiter, "Fast and Accurate Deep Network Learning by Exponential
Linear Units", ICLR 2016; Klambauer et al., "Self-Normalizing Neural Networks", NeurIPS 2017
(Selu's constants, ONNX defaults).  The left piece is convex for ``gamma alpha > 0``
(concave for < 0, linear for 0), the right one linear; at 0 the slope jumps from
``gamma alpha`` to ``gamma`` (a concave kink when ``alpha > 1``, e.g. Selu, so the function
is then S-shaped).  Relaxed by :class:`perturbkit.ops.curvature.Curve`; boxes with
``lo >= 0`` are exact (the identity times gamma) and need no CROWN bounds.

Shapes: elementwise, ``(*lead, *declared)``.
"""
from __future__ import annotations

import functools

import torch

from perturbkit.graph.ir import Node
from perturbkit.ops.curvature import Curve, CurveRule

Tensor = torch.Tensor

SELU_ALPHA = 1.67326319217681884765625
SELU_GAMMA = 1.05070102214813232421875


class EluCurve(Curve):
    breaks, extrema, smooth = (0.0,), (0.0,), False

    def __init__(self, alpha: float, gamma: float):
        self.alpha, self.gamma = alpha, gamma
        ga = gamma * alpha
        self.signs = ((ga > 0) - (ga < 0), 0)

    def f(self, x: Tensor) -> Tensor:
        return self.gamma * torch.where(x > 0, x, self.alpha * torch.expm1(x.clamp(max=0)))

    def df(self, x: Tensor) -> Tensor:
        return self.gamma * torch.where(x > 0, torch.ones_like(x), self.alpha * torch.exp(x.clamp(max=0)))

    def d2f(self, x: Tensor) -> Tensor:
        return self.gamma * torch.where(x > 0, torch.zeros_like(x), self.alpha * torch.exp(x.clamp(max=0)))


@functools.lru_cache(maxsize=16)
def elu_curve(alpha: float, gamma: float) -> EluCurve:
    return EluCurve(alpha, gamma)


class Elu(CurveRule):
    op_type = "Elu"
    lines_in_float64 = True

    def curve(self, node: Node, *consts) -> EluCurve:
        return elu_curve(float(node.attrs.get("alpha", 1.0)), 1.0)


class Selu(CurveRule):
    op_type = "Selu"
    lines_in_float64 = True

    def curve(self, node: Node, *consts) -> EluCurve:
        return elu_curve(float(node.attrs.get("alpha", SELU_ALPHA)), float(node.attrs.get("gamma", SELU_GAMMA)))
