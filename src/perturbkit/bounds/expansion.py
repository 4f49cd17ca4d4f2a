"""Intermediate bounds of a value that an affine map expands from a smaller one.

The pairwise differences of a softmax, ``d[..., i, j] = s_j - s_i``, have N times more
elements than the scores ``s`` they are an affine image of.  A CROWN pass from ``d`` costs N
times more rows than one from ``s``; so when a value ``v = T s + c`` (a chain of affine
nodes from one non-affine value ``s``) has at least :data:`EXPANSION_RATIO` times more
elements than ``s``, its bounds come from the linear bounds of ``s`` instead:
``A_L x + b_L <= s(x) <= A_U x + b_U`` over the input set (one CROWN pass from ``s``), and

    v(x) >= T+ (A_L x + b_L) + T- (A_U x + b_U) + c,   concretised over the input set,

mirrored for the upper bound (``T+``, ``T-``: the positive and negative parts of ``T``, read
off by pushing unit rows of ``v`` back through the chain).  Sound because ``T+ >= 0`` and
``T- <= 0``; a little looser than a direct pass from ``v`` (which may pick each relaxation
for the sign of the combined coefficient): on a 2-layer Transformer with 8 tokens 0.5 %
wider in total and twice as fast (``bench/modern_bounds.py``).  Used by CROWN's
intermediate bounds; alpha-CROWN optimises such values with direct passes.

Shapes: ``A_L``, ``A_U``: ``(B, n_s, n_in)``; ``T``: ``(K, n_s)`` for the ``K`` elements of ``v``
being bounded.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from perturbkit.graph.ir import Node
from perturbkit.ops.base import Interval
from perturbkit.ops.registry import rule_for

Tensor = torch.Tensor

#: numel(v) / numel(s) from which v is bounded through s's linear bounds
EXPANSION_RATIO = 8
#: largest B * n_s * n_in kept for s's linear bounds (elements); larger: direct passes
_MAX_COEFFS = 2 ** 24


def expansion_source(ctx, name: str) -> Optional[tuple[str, list[Node]]]:
    """``(s, chain)`` when ``name`` is an affine image of the one non-affine value ``s``
    through the affine nodes ``chain`` (topological order) and is at least
    :data:`EXPANSION_RATIO` times larger; else None."""
    g = ctx.graph
    producer = ctx.net.derived.setdefault("producer", g.producer())
    chain: dict[str, Node] = {}
    sources: set[str] = set()
    todo = [name]
    while todo:
        v = todo.pop()
        node = producer.get(v)
        if node is None:  # the graph input: v is in the linear prefix, handled exactly elsewhere
            return None
        if v != name and rule_for(node, g.source).kind != "affine":
            sources.add(v)
            continue
        if rule_for(node, g.source).kind != "affine":
            return None
        if v in chain:
            continue
        chain[v] = node
        todo.extend(i for i in node.inputs if i not in ctx.consts)
        if len(sources) > 1 or len(chain) > 64:
            return None
    if len(sources) != 1:
        return None
    (s,) = sources
    n_v, n_s = math.prod(g.shapes[name]), math.prod(g.shapes[s])
    if n_v < EXPANSION_RATIO * n_s or ctx.batch * n_s * ctx.net.n_inputs > _MAX_COEFFS:
        return None
    order = ctx.position
    return s, sorted(chain.values(), key=lambda n: order[n.output])


def _through_chain(ctx, name: str, s: str, chain: list[Node], idx: Tensor) -> tuple[Tensor, Tensor]:
    """``(T (K, n_s), c (K,))`` with ``v[idx] = T s + c``."""
    from perturbkit.bounds.engine import constant_part

    g = ctx.graph
    K = idx.numel()
    shape = g.shapes[name]
    E = torch.zeros(K, math.prod(shape), dtype=ctx.dtype, device=ctx.device)
    E[torch.arange(K, device=ctx.device), idx] = 1.0
    store = {name: E.reshape(1, K, *shape)}
    const = torch.zeros(1, K, dtype=ctx.dtype, device=ctx.device)
    for node in reversed(chain):
        A = store.pop(node.output, None)
        if A is None:
            continue
        rule = rule_for(node, g.source)
        c = constant_part(ctx, node)
        if c is not None:
            const = const + (A.reshape(1, K, -1) * c.reshape(1, 1, -1)).sum(-1)
        xs = [ctx.consts[i] if i in ctx.consts else None for i in node.inputs]
        for i, Ai in zip(node.inputs, rule.backward(node, A, *xs)):
            if Ai is not None:
                store[i] = Ai if i not in store else store[i] + Ai
    return store[s].reshape(K, -1), const.reshape(K)


def tighten_by_expansion(ctx, name: str, itv: Interval, idx: Tensor, s: str, chain: list[Node]) -> Interval:
    """``itv`` intersected with the bounds of the elements ``idx`` of ``name`` from the linear
    bounds of ``s`` (see the module docstring)."""
    from perturbkit.bounds.engine import backward

    B = ctx.batch
    n_s = math.prod(ctx.graph.shapes[s])
    E = torch.eye(n_s, dtype=ctx.dtype, device=ctx.device)
    A = torch.cat([E, -E], 0).unsqueeze(0).expand(B, 2 * n_s, n_s).reshape(B, 2 * n_s, *ctx.graph.shapes[s])
    keep = ctx.keep_input_coeffs
    ctx.keep_input_coeffs = True
    try:
        backward(ctx, s, A)
        Ain, bias = ctx.input_coeffs, ctx.input_bias
    finally:
        ctx.keep_input_coeffs = keep
    n_in = ctx.net.n_inputs
    if Ain is None:
        Ain = torch.zeros(B, 2 * n_s, n_in, dtype=ctx.dtype, device=ctx.device)
    AL, bL = Ain[:, :n_s], bias[:, :n_s]
    AU, bU = -Ain[:, n_s:], -bias[:, n_s:]
    n = itv.lo[0].numel()
    lo = itv.lo.reshape(B, n).clone()
    hi = itv.hi.reshape(B, n).clone()
    chunk = max(1, _MAX_COEFFS // max(1, 2 * B * n_in))
    for start in range(0, idx.numel(), chunk):
        part = idx[start:start + chunk]
        T, c = _through_chain(ctx, name, s, chain, part)
        Tp, Tn = T.clamp(min=0), T.clamp(max=0)
        low = ctx.input_set.min_linear(Tp @ AL + Tn @ AU) + bL @ Tp.t() + bU @ Tn.t() + c
        up = -ctx.input_set.min_linear(-(Tp @ AU + Tn @ AL)) + bU @ Tp.t() + bL @ Tn.t() + c
        lo[:, part] = torch.maximum(lo[:, part], low)
        hi[:, part] = torch.minimum(hi[:, part], up)
    return Interval(lo.reshape(itv.lo.shape), hi.reshape(itv.hi.shape))
