"""Bounds for (batch entry, element) pairs, which branch and bound asks for when many small
boxes each need a few elements: every pair becomes its own batch entry of a sub-context
whose intervals and input set are those of its entry.

Shapes: ``P`` pairs, ``n`` flat elements of the bounded value, ``n_in`` network inputs.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from perturbkit.bounds import engine
from perturbkit.bounds.engine import Context
from perturbkit.ops.base import Interval, Line, Relaxation
from perturbkit.ops.registry import rule_for

Tensor = torch.Tensor


def _sub_context(ctx: Context, b: Tensor, keep: Optional[set]) -> Context:
    """A context of ``b.numel()`` entries, entry ``p`` being ``ctx``'s entry ``b[p]`` (its input
    set and the intervals of the values in ``keep``, or of all values when None)."""
    sub = Context(net=ctx.net, consts=ctx.consts, batch=b.numel(), input_set=ctx.input_set.index(b),
                  dtype=ctx.dtype, device=ctx.device, position=ctx.position,
                  consumer_count=ctx.consumer_count, use_patches=False)
    sub.intervals = {v: Interval(x.lo[b], x.hi[b]) for v, x in ctx.intervals.items() if keep is None or v in keep}
    sub.const_parts = ctx.const_parts
    return sub


def tighten_pairs(ctx: Context, name: str, itv: Interval, pairs: Tensor, widest: int, itemsize: int) -> Interval:
    """CROWN bounds for (batch entry, element) pairs: each pair becomes its own batch entry
    of a sub-context whose intervals and input set are those of its entry."""
    B = ctx.batch
    shape = itv.lo.shape[1:]
    n = itv.lo[0].numel()
    lo = itv.lo.reshape(B, n).clone()
    hi = itv.hi.reshape(B, n).clone()
    chunk = max(1, engine._DENSE_BUDGET_BYTES // max(1, 2 * widest * itemsize))
    # the activations the backward walk from ``name`` meets: their relaxations are computed
    # once for the whole batch (and cached for later passes) and gathered per pair, instead
    # of being recomputed from gathered intervals in every chunk
    g = ctx.graph
    end = ctx.position.get(name, -1)
    acts = [node for node in g.nodes[:end + 1] if rule_for(node, g.source).kind == "activation"]
    others = [node for node in g.nodes[:end + 1] if rule_for(node, g.source).kind == "selection"]
    products = [node for node in g.nodes[:end + 1] if rule_for(node, g.source).kind == "bilinear"]
    lookups = [node.output for node in g.nodes[:end + 1] if rule_for(node, g.source).kind == "interval"]
    parts = {node.name: engine._relaxation_parts(ctx, node) for node in acts}
    keep = ({node.inputs[0] for node in acts + others} | {i for node in products for i in node.inputs}
            | set(lookups))
    for start in range(0, pairs.shape[0], chunk):
        b, j = pairs[start:start + chunk, 0], pairs[start:start + chunk, 1]
        P = b.numel()
        sub = _sub_context(ctx, b, keep)
        for node_name, (rel, zl, zu) in parts.items():
            sub.relaxations[node_name] = gather_relaxation(rel, b, B)
            sub.relax_flags[node_name] = (zl, zu)
        A = torch.zeros(P, 2, n, dtype=ctx.dtype, device=ctx.device)
        rows = torch.arange(P, device=ctx.device)
        A[rows, 0, j] = 1.0
        A[rows, 1, j] = -1.0
        r = engine.backward(sub, name, A.reshape(P, 2, *shape))
        lo[b, j] = torch.maximum(lo[b, j], r[:, 0]) if engine.INTERSECT_INTERMEDIATE else r[:, 0]
        hi[b, j] = torch.minimum(hi[b, j], -r[:, 1]) if engine.INTERSECT_INTERMEDIATE else -r[:, 1]
    return Interval(lo.reshape(B, *shape), hi.reshape(B, *shape))


def gather_relaxation(rel: Relaxation, b: Tensor, B: int) -> Relaxation:
    """The relaxation of batch entries ``b`` (tensors without a batch dimension are shared)."""
    def pick(t: Tensor) -> Tensor:
        return t[b] if t.dim() > 0 and t.shape[0] == B else t

    return Relaxation(lower=Line(pick(rel.lower.slope), pick(rel.lower.intercept)),
                      upper=Line(pick(rel.upper.slope), pick(rel.upper.intercept)))


def linear_bounds_pairs(ctx: Context, name: str, b: Tensor, j: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Linear lower and upper bounds ``L(x) <= v_j(x) <= U(x)`` over the input set of batch
    entry ``b[p]``, for element ``j[p]`` (flat) of value ``name``, from the intervals already
    in ``ctx``: ``(A_lo (P, n), b_lo (P,), A_up, b_up)`` with ``L(x) = A_lo x + b_lo``."""
    P = b.numel()
    shape = ctx.graph.shapes[name]
    n = math.prod(shape)
    sub = _sub_context(ctx, b, None)
    sub.keep_input_coeffs = True
    A = torch.zeros(P, 2, n, dtype=ctx.dtype, device=ctx.device)
    rows = torch.arange(P, device=ctx.device)
    A[rows, 0, j] = 1.0
    A[rows, 1, j] = -1.0
    engine.backward(sub, name, A.reshape(P, 2, *shape))
    n_in = ctx.net.n_inputs
    Ain = sub.input_coeffs if sub.input_coeffs is not None else torch.zeros(P, 2, n_in, dtype=ctx.dtype, device=ctx.device)
    return Ain[:, 0], sub.input_bias[:, 0], -Ain[:, 1], -sub.input_bias[:, 1]
