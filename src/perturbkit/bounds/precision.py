"""Relaxation lines computed in float64 for float32 bounds, rounded outward once.

A rule that evaluates its function to build its lines (Sigmoid, Exp, Gelu, ...) pads every
intercept by a bound on its own rounding error (``ops/util.rounding_slack``); in float32 that
pad is a few float32 ulps of every value involved, and summed over thousands of neurons it
widens a network's bounds measurably (0.1-0.2 % on an LSTM).  For rules that say so
(``ActivationRule.lines_in_float64``) the engine computes the lines in float64 instead, where
the pad is 2**-29 times smaller, and rounds them to float32 once: the float32 slope ``s32``
differs from the float64 one by ``ds``, so on ``[lo, hi]`` the line moves by at most
``|ds| max(|lo|, |hi|)``; the intercept is moved outward by that much and rounded outward.

Guarantee: if the float64 lines are sound on ``[lo, hi]``, the float32 lines are.
"""
from __future__ import annotations

from typing import Optional

import torch

from perturbkit.graph.ir import Node
from perturbkit.ops.base import ActivationRule, Line, Relaxation

Tensor = torch.Tensor


def _to_float32(line: Line, M: Tensor, lower: bool) -> Line:
    s32 = line.slope.float()
    shift = (line.slope - s32.double()).abs().detach() * M
    target = line.intercept - shift if lower else line.intercept + shift
    c32 = target.float()
    # one step further where the cast rounded the wrong way (detached: the gradient stays)
    with torch.no_grad():
        wrong = (c32.double() > target) if lower else (c32.double() < target)
        toward = torch.full_like(c32, -torch.inf if lower else torch.inf)
        fix = torch.where(wrong, torch.nextafter(c32, toward) - c32, torch.zeros_like(c32))
        fix = torch.where(torch.isfinite(fix), fix, torch.zeros_like(fix))
    return Line(s32, c32 + fix, line.index)


def relax(rule: ActivationRule, node: Node, lo: Tensor, hi: Tensor, consts: list,
          alpha: Optional[Tensor] = None) -> Relaxation:
    """``rule.relax`` (or ``rule.relax_alpha`` when ``alpha`` is given), in float64 for float32
    bounds when the rule computes its lines by evaluating its function."""
    if lo.dtype != torch.float32 or not getattr(rule, "lines_in_float64", False):
        if alpha is None:
            return rule.relax(node, lo, hi, *consts)
        return rule.relax_alpha(node, lo, hi, alpha, *consts)
    c64 = [c.double() if isinstance(c, Tensor) and c.is_floating_point() else c for c in consts]
    l64, h64 = lo.double(), hi.double()
    if alpha is None:
        rel = rule.relax(node, l64, h64, *c64)
    else:
        rel = rule.relax_alpha(node, l64, h64, alpha.double(), *c64)
    M = torch.maximum(l64.abs(), h64.abs())
    M = torch.where(torch.isfinite(M), M, torch.zeros_like(M))
    return Relaxation(lower=_to_float32(rel.lower, M, True), upper=_to_float32(rel.upper, M, False))
