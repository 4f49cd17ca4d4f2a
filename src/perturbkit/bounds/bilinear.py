"""Backward (CROWN) algebra through a product of two perturbed tensors.

For ``z = f(x, y)`` bilinear (elementwise product, matrix product) and boxes
``x in [lx, ux]``, ``y in [ly, uy]``, every product term ``x_i y_j`` lies between the
McCormick planes (McCormick 1976), and so does ``z``, term by term::

    L1 = f(x, ly) + f(lx, y) - f(lx, ly)     (from (x - lx)(y - ly) >= 0)
    L2 = f(x, uy) + f(ux, y) - f(ux, uy)     (from (ux - x)(uy - y) >= 0)
    U1 = f(x, uy) + f(lx, y) - f(lx, uy)     (from (x - lx)(uy - y) >= 0)
    U2 = f(x, ly) + f(ux, y) - f(ux, ly)     (from (ux - x)(y - ly) >= 0)

CROWN takes ``L1`` and ``U1``, the planes Shi et al. 2020 ("Robustness verification for
Transformers", Sec. 3.2) derive as optimal; alpha-CROWN optimises, per bound row and output
element, the weight ``t`` in [0, 1] of the convex combination ``t L1 + (1 - t) L2`` (and
``t U1 + (1 - t) U2``), each of which is again a valid plane.  With ``A = A+ + A-`` the
coefficients on ``z``, the lower bound of ``<A, z>`` is
``<A+, t L1 + (1-t) L2> + <A-, t U1 + (1-t) U2>``; collecting terms::

    coefficients on x:  T_x(P; ly) + T_x(A - P; uy),   P = t A+ + (1 - t) A-
    coefficients on y:  T_y(t A; lx) + T_y((1 - t) A; ux)
    constant:          -<t A+, f(lx, ly)> - <(1-t) A+, f(ux, uy)> - <t A-, f(lx, uy)> - <(1-t) A-, f(ux, ly)>

where ``T_x(A; y)`` is the transpose of ``x -> f(x, y)`` (the rule's ``transpose``).

Guarantee: for every x, y in their boxes, ``<A, f(x, y)> >= <cx, x> + <cy, y> + constant``.

Shapes: ``A`` ``(B, S, *out)``; intervals ``(B, *in_i)``; ``t`` ``(B, S, *out)`` or None.
"""
from __future__ import annotations

from typing import Optional

import torch

from perturbkit.graph.ir import Node
from perturbkit.ops.base import BilinearRule, Interval

Tensor = torch.Tensor


def _dot(A: Tensor, c: Tensor) -> Tensor:
    """``sum(A * c)`` per (batch, spec): A (B, S, *out), c (B, *out) -> (B, S)."""
    B, S = A.shape[0], A.shape[1]
    return (A.reshape(B, S, -1) @ c.reshape(B, -1, 1)).squeeze(-1)


def bilinear_backward(rule: BilinearRule, node: Node, A: Tensor, x: Interval, y: Interval,
                      t: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Tensor]:
    """Coefficients on both operands and the constant of the relaxed ``<A, f(x, y)>``.

    Returns ``(cx (B, S, *in_0), cy (B, S, *in_1), bias (B, S))``.
    """
    f = rule.forward
    Ap = A.clamp(min=0)
    An = A - Ap
    if t is None:  # t = 1: the planes L1 / U1
        cx = rule.transpose(node, Ap, y.lo, 0) + rule.transpose(node, An, y.hi, 0)
        cy = rule.transpose(node, A, x.lo, 1)
        bias = -_dot(Ap, f(node, x.lo, y.lo)) - _dot(An, f(node, x.lo, y.hi))
        return cx, cy, bias
    P = Ap * t + An * (1 - t)
    cx = rule.transpose(node, P, y.lo, 0) + rule.transpose(node, A - P, y.hi, 0)
    At = A * t
    cy = rule.transpose(node, At, x.lo, 1) + rule.transpose(node, A - At, x.hi, 1)
    Apt, Ant = Ap * t, An * t
    bias = -(_dot(Apt, f(node, x.lo, y.lo)) + _dot(Ap - Apt, f(node, x.hi, y.hi))
             + _dot(Ant, f(node, x.lo, y.hi)) + _dot(An - Ant, f(node, x.hi, y.lo)))
    return cx, cy, bias
