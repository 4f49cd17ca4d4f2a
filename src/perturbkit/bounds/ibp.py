"""Interval bound propagation (IBP; Gowal et al. 2018, "On the effectiveness of interval
bound propagation for training verifiably robust models").

Every node maps the boxes of its inputs to a box containing its output (``rule.interval``).
Guarantee: for every x in the input set, ``lower <= f(x) <= upper``.
"""
from __future__ import annotations

import torch

from perturbkit.bounds.engine import Context, interval_of
from perturbkit.ops.base import Interval


def ibp(ctx: Context) -> Interval:
    """Fill ``ctx.intervals`` for every node; return the output interval ``(B, *declared_out)``."""
    for node in ctx.graph.nodes:
        ctx.intervals[node.output] = interval_of(ctx, node)
    return ctx.intervals[ctx.graph.output_name]


def interval_spec(out: Interval, C: torch.Tensor | None, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Bounds of ``C @ y`` from a box on y.  C: (B, S, n) or None (identity) -> (B, S) each."""
    lo = out.lo.reshape(batch, -1)
    hi = out.hi.reshape(batch, -1)
    if C is None:
        return lo, hi
    Cp, Cn = C.clamp(min=0), C.clamp(max=0)
    lower = (Cp @ lo.unsqueeze(-1) + Cn @ hi.unsqueeze(-1)).squeeze(-1)
    upper = (Cp @ hi.unsqueeze(-1) + Cn @ lo.unsqueeze(-1)).squeeze(-1)
    return lower, upper
