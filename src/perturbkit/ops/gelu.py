"""Erf and GELU (ONNX ``Gelu``, opset 20, ``approximate`` = "none" | "tanh").

* ``erf``: increasing, convex for x < 0 and concave for x > 0 (S-shaped), ``erf'(x) = 2 / sqrt(pi) exp(-x^2)``.
* ``gelu(x) = x Phi(x)`` with ``Phi(x) = erfc(-x / sqrt(2)) / 2`` (erfc: accurate for very
  negative x, where ``1 + erf`` cancels); ``gelu' = Phi + x phi``, ``gelu'' = phi (2 - x^2)``:
  concave on ``x < -sqrt(2)``, convex on ``|x| < sqrt(2)``, concave on ``x > sqrt(2)``; minimum
  at ``x = -0.75179...``.  Hendrycks and Gimpel, "Gaussian Error Linear Units", 2016.
* the tanh form ``x sigmoid(2 z)``, ``z = sqrt(2 / pi) (x + 0.044715 x^3)`` (equal to
  ``x (1 + tanh z) / 2`` without its cancellation): the same curvature pattern with
  inflection points ``+-1.41850400879...`` and minimum at ``-0.75246...`` (computed to 40
  digits with mpmath; ``f''`` checked negative beyond them).

Both are relaxed by :class:`perturbkit.ops.curvature.Curve`, split at the inflection points.

Shapes: elementwise, ``(*lead, *declared)``.
"""
from __future__ import annotations

import math

import torch

from perturbkit.errors import UnsupportedOperatorError
from perturbkit.graph.ir import Node
from perturbkit.ops.curvature import Curve, CurveRule
from perturbkit.ops.util import attr_str

Tensor = torch.Tensor

_SQRT2 = math.sqrt(2.0)
_INV_SQRT2 = 1 / math.sqrt(2.0)
_INV_SQRT_2PI = 1 / math.sqrt(2 * math.pi)
_TANH_C = math.sqrt(2 / math.pi)
_TANH_A = 0.044715


class ErfCurve(Curve):
    breaks, signs = (0.0,), (1, -1)

    def f(self, x: Tensor) -> Tensor:
        return torch.erf(x)

    def df(self, x: Tensor) -> Tensor:
        return (2 / math.sqrt(math.pi)) * torch.exp(-x * x)

    def d2f(self, x: Tensor) -> Tensor:
        return (-4 / math.sqrt(math.pi)) * x * torch.exp(-x * x)


class GeluCurve(Curve):
    breaks, signs, extrema = (-_SQRT2, _SQRT2), (-1, 1, -1), (-0.7517915246935644574579,)

    def f(self, x: Tensor) -> Tensor:
        return x * (0.5 * torch.erfc(-_INV_SQRT2 * x))

    def df(self, x: Tensor) -> Tensor:
        return 0.5 * torch.erfc(-_INV_SQRT2 * x) + x * (_INV_SQRT_2PI * torch.exp(-0.5 * x * x))

    def d2f(self, x: Tensor) -> Tensor:
        return (_INV_SQRT_2PI * torch.exp(-0.5 * x * x)) * (2 - x * x)

    def df_d2f(self, x: Tensor) -> tuple[Tensor, Tensor]:
        phi = _INV_SQRT_2PI * torch.exp(-0.5 * x * x)
        return 0.5 * torch.erfc(-_INV_SQRT2 * x) + x * phi, phi * (2 - x * x)


class GeluTanhCurve(Curve):
    breaks, signs = (-1.418504008790828355548, 1.418504008790828355548), (-1, 1, -1)
    extrema = (-0.7524614220710162584880,)

    # beyond |x| = 30 the gate is exactly 0 or 1 in float64 (|2 z| > 1900): clamping the gate's
    # argument there changes no value and keeps x^3 (and its derivative) finite
    def f(self, x: Tensor) -> Tensor:
        xs = x.clamp(-30.0, 30.0)
        return x * torch.sigmoid((2 * _TANH_C) * xs * (1 + _TANH_A * xs * xs))

    def df(self, x: Tensor) -> Tensor:
        xs = x.clamp(-30.0, 30.0)
        s = torch.sigmoid((2 * _TANH_C) * xs * (1 + _TANH_A * xs * xs))
        dz = (2 * _TANH_C) * (1 + 3 * _TANH_A * xs * xs)
        return s + xs * dz * s * (1 - s)

    def d2f(self, x: Tensor) -> Tensor:
        """``2 s' T' + x (s'' T'^2 + s' T'')`` with ``s = sigmoid(T)``, ``T = 2 z``."""
        xs = x.clamp(-30.0, 30.0)
        s = torch.sigmoid((2 * _TANH_C) * xs * (1 + _TANH_A * xs * xs))
        ds = s * (1 - s)
        dT = (2 * _TANH_C) * (1 + 3 * _TANH_A * xs * xs)
        d2T = (2 * _TANH_C) * 6 * _TANH_A * xs
        return 2 * ds * dT + xs * (ds * (1 - 2 * s) * dT * dT + ds * d2T)


ERF, GELU, GELU_TANH = ErfCurve(), GeluCurve(), GeluTanhCurve()
_GELU = {"none": GELU, "tanh": GELU_TANH}


class Erf(CurveRule):
    op_type = "Erf"
    monotone = True
    lines_in_float64 = True

    def curve(self, node: Node, *consts) -> ErfCurve:
        return ERF


class Gelu(CurveRule):
    op_type = "Gelu"
    lines_in_float64 = True

    def curve(self, node: Node, *consts) -> Curve:
        mode = attr_str(node, "approximate", "none")
        try:
            return _GELU[mode]
        except KeyError:
            raise UnsupportedOperatorError(
                f"Gelu with approximate='{mode}' is not supported at {node.where()}; supported: none, tanh") from None
