"""The bound-propagation engine shared by IBP, CROWN and CROWN-IBP.

It knows three kinds of rules (see :mod:`perturbkit.ops.base`) and nothing about any
particular operator:

* interval propagation: ``rule.interval`` node by node;
* backward linear propagation (CROWN, Zhang et al. 2018; on general graphs as in
  Xu et al. 2020, "Automatic perturbation analysis for scalable certified robustness and
  beyond"): coefficients ``A`` on a node are pushed to its inputs by the transpose of
  affine rules and by the relaxation lines of activations; constants go into the bias;
  at the input the perturbation set concretises ``A`` (dual norm for Lp balls).

Shapes: ``B`` batch, ``S`` number of specifications.  Intervals of a value are
``(B, *declared_shape)``; coefficients on a value are ``(B, S, *declared_shape)``.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Iterator, Optional

import torch

from perturbkit.bounds.bilinear import bilinear_backward
from perturbkit.bounds.expansion import expansion_source, tighten_by_expansion
from perturbkit.bounds.precision import relax as precise_relax
from perturbkit.graph.ir import Node
from perturbkit.graph.network import Network
from perturbkit.ops.base import Interval, Relaxation
from perturbkit.ops.registry import rule_for
from perturbkit.sets.base import PerturbationSet

Tensor = torch.Tensor


@dataclass
class Context:
    """Everything one bound computation needs; created by :func:`make_context`."""

    net: Network
    consts: dict[str, Tensor]
    batch: int
    input_set: PerturbationSet  # flattened: tensors (B, n)
    dtype: torch.dtype
    device: torch.device
    intervals: dict[str, Interval] = field(default_factory=dict)
    relaxations: dict[str, Relaxation] = field(default_factory=dict)
    relax_flags: dict[str, tuple[bool, bool]] = field(default_factory=dict)  # zero intercepts
    line_diffs: dict[str, tuple] = field(default_factory=dict)  # lower - upper (slopes, intercepts)
    #: the alpha-independent part of relaxations with parameters (``rule.alpha_base``), per node
    alpha_bases: dict[str, object] = field(default_factory=dict)
    const_parts: dict[str, Optional[Tensor]] = field(default_factory=dict)
    position: dict[str, int] = field(default_factory=dict)
    consumer_count: dict[str, int] = field(default_factory=dict)
    use_patches: bool = True
    exact_linear: set = field(default_factory=set)
    #: when set, :func:`backward` leaves the coefficients it concretised at the input in
    #: ``input_coeffs`` (B, S, n): branch and bound reads them to choose where to split
    keep_input_coeffs: bool = False
    input_coeffs: Optional[Tensor] = None
    #: with ``keep_input_coeffs``: the constant of those linear functions (B, S), so that
    #: ``input_coeffs @ x + input_bias`` is the pass's linear lower bound
    input_bias: Optional[Tensor] = None
    #: when a dict, :func:`backward` records in it the coefficients (B, S, *shape) reaching
    #: the output of every activation node (by node name; the last pass wins): branch and
    #: bound scores neurons for ReLU splitting with them
    activation_coeffs: Optional[dict] = None
    #: bounds known beforehand (e.g. a parent box's, in branch and bound): value name ->
    #: Interval (B, *shape) valid on this input set; intersected into a value's final
    #: interval (after its own bounds are computed, so it never changes which elements
    #: get CROWN bounds)
    prior: dict[str, Interval] = field(default_factory=dict)
    linear_prefix: set = field(default_factory=set)

    @property
    def graph(self):
        return self.net.graph


_ALLOCATOR_WARMED = False


def _warm_allocator() -> None:
    """Once per process: allocate and free one 24 MB block (untouched, so it costs nothing).

    With glibc, freeing a large mmapped block raises malloc's dynamic mmap and trim
    thresholds, so the engine's many short-lived multi-megabyte temporaries are then served
    from the heap instead of fresh mappings.  Without it every bound computation pays
    thousands of page faults (measured in bench/bounds_speed.py: up to +60% wall time on
    probe_cnn).  No allocator setting is changed; other allocators ignore this.  Set
    PERTURBKIT_NO_MALLOC_WARMUP=1 to skip it.
    """
    global _ALLOCATOR_WARMED
    if _ALLOCATOR_WARMED:
        return
    _ALLOCATOR_WARMED = True
    if os.environ.get("PERTURBKIT_NO_MALLOC_WARMUP"):
        return
    block = torch.empty(24 * 2**20, dtype=torch.uint8)
    del block


def make_context(net: Network, input_set: PerturbationSet) -> Context:
    ref = input_set.reference
    if ref.device.type == "cpu":
        _warm_allocator()
    batch = net.batch(ref) if ref.dim() > 0 else 1
    flat = input_set.flatten(batch, net.n_inputs)
    ctx = Context(net=net, consts=net.constants(ref.dtype, ref.device), batch=batch, input_set=flat,
                  dtype=ref.dtype, device=ref.device)
    ctx.position = {n.output: i for i, n in enumerate(net.graph.nodes)}
    for n in net.graph.nodes:
        for i in n.inputs:
            ctx.consumer_count[i] = ctx.consumer_count.get(i, 0) + 1
    out = net.graph.output_name
    ctx.consumer_count[out] = ctx.consumer_count.get(out, 0) + 1
    ctx.exact_linear, ctx.linear_prefix = _exact_linear_values(net, flat.is_box)
    lo, hi = flat.box()
    shape = net.graph.input_shape
    ctx.intervals[net.graph.input_name] = Interval(lo.reshape(batch, *shape), hi.reshape(batch, *shape))
    return ctx


def _exact_linear_values(net: Network, is_box: bool) -> tuple[set[str], set[str]]:
    """Values of the linear prefix whose interval needs the backward pass to be exact, and
    the whole linear prefix (whose intervals are then exact: no CROWN pass can tighten them).

    * ``kept``: the input up to coordinatewise affine maps (reshapes, BatchNorm, scaling,
      shifts): interval arithmetic is exact on them for any set.
    * ``linear``: affine functions of the input.
    A linear value that is not kept needs the backward pass, except one mixing map
    (Gemm, Conv, ...) applied to a kept value when the set is a box (exact already).
    """
    g = net.graph
    kept = {g.input_name}
    linear = {g.input_name}
    need: set[str] = set()
    for n in g.nodes:
        rule = rule_for(n, g.source)
        runtime = [i for i in n.inputs if i not in g.constants]
        if rule.kind != "affine" or not all(i in linear for i in runtime):
            continue
        linear.add(n.output)
        if len(runtime) == 1 and runtime[0] in kept:
            if rule.is_coordinatewise(n, n.inputs.index(runtime[0])):
                kept.add(n.output)
                continue
            if is_box:
                continue
        need.add(n.output)
    # a linear value read only by linear nodes needs no exact interval of its own: those
    # nodes' outputs get theirs (e.g. MatMul -> Add: only the Add output)
    read_outside = {i for n in g.nodes if n.output not in linear for i in n.inputs} | {g.output_name}
    return need & read_outside, linear


def args_for(ctx: Context, node: Node, perturbed) -> list:
    """Arguments of a rule call: constants as tensors, runtime values via ``perturbed(name)``."""
    return [ctx.consts[i] if i in ctx.consts else perturbed(i) for i in node.inputs]


def interval_of(ctx: Context, node: Node, *, exact: bool = True) -> Interval:
    """IBP through one node from the current intervals of its inputs.

    One refinement over plain interval arithmetic: values that are affine functions of the
    input (the network's linear prefix) get the exact range of that affine function over the
    input set (by the backward pass and the dual norm), whenever interval arithmetic would
    not already be exact (see :func:`_exact_linear_values`).  So IBP is exact on purely
    linear networks and does not lose the shape of an L2/L1 ball at the first layer.
    """
    rule = rule_for(node, ctx.graph.source)
    itv = rule.interval(node, *args_for(ctx, node, lambda name: ctx.intervals[name]))
    if exact and node.output in ctx.exact_linear:
        n = itv.lo[0].numel()
        itv = tighten(ctx, node.output, itv, torch.arange(n, device=ctx.device))
    return itv


# memory budget for one backward pass of intermediate bounds (bytes of the widest A)
# (patch mode: 32 MB, its tensors are far smaller than the estimate, and fewer, larger passes
# were 5-10% faster on bench/conv_models.py than 16 MB; dense passes use 4 MB so that their
# few live temporaries stay well inside the allocator's warm heap)
_BUDGET_BYTES = 32 * 2**20
_DENSE_BUDGET_BYTES = 4 * 2**20
#: patch tensors alive at once in a walk, per specification (coefficients, their positive
#: and negative parts, gathered relaxation lines), for the chunk size
_PATCH_TEMPORARIES = 6
#: intersect linear intermediate bounds with the interval ones (always sound and tighter;
#: switched off only by the test that emulates auto_LiRPA, which does not intersect)
INTERSECT_INTERMEDIATE = True


def with_prior(ctx: Context, name: str, itv: Interval) -> Interval:
    """``itv`` intersected with the prior bounds of ``name``, if any."""
    known = ctx.prior.get(name)
    if known is None:
        return itv
    return Interval(torch.maximum(itv.lo, known.lo), torch.minimum(itv.hi, known.hi))


def tighten(ctx: Context, name: str, itv: Interval, idx: Tensor, mask: Optional[Tensor] = None, *,
            upper_first: bool = False) -> Interval:
    """Intersect ``itv`` (B, *shape) with linear (CROWN) bounds of the flat elements ``idx``
    of value ``name``, computed in chunks that fit the memory budget; convolution outputs
    use patch mode (:mod:`perturbkit.bounds.patches`).

    ``mask`` (B, n), when given, says which elements each batch entry needs; when it is
    much sparser than ``idx`` shared by the whole batch (many small boxes in branch and
    bound), only the (entry, element) pairs it marks are computed
    (:func:`perturbkit.bounds.pairs.tighten_pairs`).

    ``upper_first``: the caller knows that every reader of the value is constant below 0
    whatever the lower bound (ReLU): upper bounds are computed first, lower bounds only of
    the elements whose upper bound is above 0 (the others keep the interval's).
    """
    from perturbkit.bounds import patches

    B = ctx.batch
    shape = itv.lo.shape[1:]
    n = itv.lo[0].numel()
    widest = max(math.prod(s) for s in ctx.graph.shapes.values())
    itemsize = torch.finfo(ctx.dtype).bits // 8
    if mask is not None and B > 1 and not (ctx.use_patches and patches.supports_start(ctx, name)):
        pairs = mask.reshape(B, n).nonzero()
        if pairs.shape[0] < 0.5 * B * idx.numel():
            from perturbkit.bounds.pairs import tighten_pairs

            return tighten_pairs(ctx, name, itv, pairs, widest, itemsize)
    local = ctx.use_patches and patches.supports_start(ctx, name)
    src = None if local or not INTERSECT_INTERMEDIATE else expansion_source(ctx, name)
    if src is not None:  # (e.g. a softmax's pairwise differences: through the scores' linear bounds)
        return tighten_by_expansion(ctx, name, itv, idx, *src)
    budget = _BUDGET_BYTES if local else _DENSE_BUDGET_BYTES
    per_row = max(1, B * widest * itemsize)
    largest = patches.extent(ctx, name) if local else None
    if largest is not None:  # no dense hand-over: sized by the largest patch
        per_row = min(per_row, max(1, _PATCH_TEMPORARIES * B * largest * itemsize))
    rows = max(1, budget // per_row)  # specifications per pass
    lo = itv.lo.reshape(B, n).clone()
    hi = itv.hi.reshape(B, n).clone()
    sides = [("upper",), ("lower",)] if upper_first else [("lower", "upper")]
    for which in sides:
        if which == ("lower",):
            idx = idx[(hi[:, idx] > 0).any(0)]
        for part, got in _linear_bounds(ctx, name, idx, which, rows, local, shape):
            for side, r in zip(which, got):
                if side == "lower":
                    lo[:, part] = torch.maximum(lo[:, part], r) if INTERSECT_INTERMEDIATE else r
                else:
                    hi[:, part] = torch.minimum(hi[:, part], r) if INTERSECT_INTERMEDIATE else r
    return Interval(lo.reshape(B, *shape), hi.reshape(B, *shape))


def _linear_bounds(ctx: Context, name: str, idx: Tensor, sides: tuple[str, ...], rows: int, local: bool,
                   shape) -> Iterator[tuple[Tensor, tuple[Tensor, ...]]]:
    """CROWN bounds ``sides`` of the flat elements ``idx`` of ``name``, ``rows``
    specifications per pass -> per pass (the elements (K,), a (B, K) tensor per side)."""
    from perturbkit.bounds import patches

    n = math.prod(shape)
    chunk = max(1, rows // len(sides))
    chunk = max(1, -(-idx.numel() // max(1, -(-idx.numel() // chunk))))  # as many passes, of equal sizes
    if local:  # patch mode computes the channels of a position together: chunks of positions
        hw = math.prod(shape[-2:])  # asking for about as many channels each, then by position
        count = torch.bincount(idx % hw, minlength=hw)
        idx = idx[torch.argsort((count[idx % hw] * hw + idx % hw) * n + idx)]
    for start in range(0, idx.numel(), chunk):
        part = idx[start:start + chunk]
        if local:
            yield part, patches.lower_upper(ctx, name, part, sides=sides)
            continue
        K = part.numel()
        E = torch.zeros(K, n, dtype=ctx.dtype, device=ctx.device)
        E[torch.arange(K, device=ctx.device), part] = 1.0
        signs = [1.0 if side == "lower" else -1.0 for side in sides]
        A = torch.cat([sg * E for sg in signs], 0)
        A = A.unsqueeze(0).expand(ctx.batch, A.shape[0], n).reshape(ctx.batch, A.shape[0], *shape)
        r = backward(ctx, name, A)
        yield part, tuple(sg * r[:, k * K:(k + 1) * K] for k, sg in enumerate(signs))


def constant_part(ctx: Context, node: Node) -> Optional[Tensor]:
    """``f(0)`` of an affine node (no leading dims), or None when it is zero."""
    if node.name not in ctx.const_parts:
        rule = rule_for(node, ctx.graph.source)
        args = [ctx.consts[i] if i in ctx.consts else torch.zeros(s, dtype=ctx.dtype, device=ctx.device)
                for i, s in zip(node.inputs, node.in_shapes)]
        c = rule.forward(node, *args)
        ctx.const_parts[node.name] = None if not bool(c.any()) else c
    return ctx.const_parts[node.name]


def relaxation_of(ctx: Context, node: Node) -> Relaxation:
    """Relaxation lines of a nonlinear node for the current bounds of its input (cached)."""
    rel = ctx.relaxations.get(node.name)
    if rel is None:
        rule = rule_for(node, ctx.graph.source)
        x = ctx.intervals[node.inputs[0]]
        consts = [ctx.consts[i] for i in node.inputs[1:]]
        rel = precise_relax(rule, node, x.lo, x.hi, consts)
        ctx.relaxations[node.name] = rel
    return rel


def _add(store: dict[str, Tensor], name: str, A: Tensor) -> None:
    prev = store.get(name)
    store[name] = A if prev is None else prev + A


def _flat_sum(t: Tensor, b: int, s: int) -> Tensor:
    return t.reshape(b, s, -1).sum(-1)


def _dot(A: Tensor, c: Tensor, b: int, s: int) -> Tensor:
    """``sum(A * c)`` over the value's elements as a matrix product (no big temporary).

    A: (B, S, *shape); c: (*shape) or (1, *shape) (shared) or (B, *shape).  -> (B, S).
    """
    Af = A.reshape(b, s, -1)
    n = Af.shape[-1]
    if c.numel() == n:
        return Af @ c.reshape(n)
    if c.numel() == b * n:
        return (Af @ c.reshape(b, n, 1)).squeeze(-1)
    return _flat_sum(A * c, b, s)


def _relaxation_parts(ctx: Context, node: Node) -> tuple[Relaxation, bool, bool]:
    """The relaxation and whether its lower / upper intercepts are all zero (cached)."""
    rel = relaxation_of(ctx, node)
    z = ctx.relax_flags.get(node.name)
    if z is None:
        z = (not bool(rel.lower.intercept.any()), not bool(rel.upper.intercept.any()))
        ctx.relax_flags[node.name] = z
    return rel, z[0], z[1]


def _line_diffs(rel: Relaxation, zl: bool, zu: bool, like: Tensor) -> tuple[Tensor, Optional[Tensor]]:
    """``lower - upper`` of the slopes (as a coefficient factor) and of the intercepts (None
    when both intercepts are zero)."""
    ds = _line_tensor(rel.lower.slope, like) - _line_tensor(rel.upper.slope, like)
    il, iu = rel.lower.intercept, rel.upper.intercept
    di = None if zl and zu else (il if zu else (-iu if zl else il - iu))
    return ds, di


def _cached_line_diffs(ctx: Context, node: Node, rel: Relaxation, zl: bool, zu: bool,
                       like: Tensor) -> tuple[Tensor, Optional[Tensor]]:
    d = ctx.line_diffs.get(node.name)
    if d is None:
        d = ctx.line_diffs[node.name] = _line_diffs(rel, zl, zu, like)
    return d


#: a relaxation is applied sparsely (:class:`ElementLines` with an index) where at most this
#: share of a value's elements have lower and upper lines that differ (ReLU: the unstable
#: elements); elsewhere one product with the upper slopes is all there is to do
SPARSE_SHARE = 0.1


@dataclass
class ElementLines:
    """An elementwise relaxation ``sl x + il <= f(x) <= su x + iu`` on a value, flat.

    ``su`` is the upper slope (B, n).  Where the lines differ only at few elements (``idx``
    not None: the flat indices, sorted, of the elements whose slopes or intercepts are not
    those of ``su x``), the differences are kept there only: ``d`` = ``sl - su``, ``e`` =
    ``il - iu``, ``i`` = ``iu`` (B, nu) each (``e``, ``i``: None when zero).  Otherwise
    ``maps`` holds them over all elements (B, n): ``sl - su``, then ``il - iu`` and ``iu``
    when there are intercepts (``has_iu``: whether ``iu`` is not zero)."""

    su: Tensor
    idx: Optional[Tensor] = None
    d: Optional[Tensor] = None
    e: Optional[Tensor] = None
    i: Optional[Tensor] = None
    maps: Optional[list] = None
    has_iu: bool = False


def element_lines(ctx: Context, node: Node) -> ElementLines:
    """The relaxation of activation ``node`` for its current input bounds as
    :class:`ElementLines`, cached with the relaxation (``ctx.line_diffs``, which alpha-CROWN
    clears when the lines change)."""
    key = ("element lines", node.name)
    got = ctx.line_diffs.get(key)
    if got is not None:
        return got
    rel = relaxation_of(ctx, node)
    shape = ctx.intervals[node.inputs[0]].lo.shape  # (B, *shape)
    B, n = shape[0], math.prod(shape[1:])

    def full(t: Tensor) -> Tensor:
        return t.expand(shape).reshape(B, n)

    su, sl = full(rel.upper.slope), full(rel.lower.slope)
    il = full(rel.lower.intercept) if bool(rel.lower.intercept.any()) else None
    iu = full(rel.upper.intercept) if bool(rel.upper.intercept.any()) else None
    d = sl - su
    e = None if il is None and iu is None else (il if il is not None else 0.0) - (iu if iu is not None else 0.0)
    differs = d != 0
    if e is not None:
        differs |= e != 0
    if iu is not None:
        differs |= iu != 0
    differs = differs.any(0)
    if int(differs.sum()) <= SPARSE_SHARE * n:
        idx = differs.nonzero().squeeze(1)
        take = lambda t: None if t is None else t[:, idx]  # noqa: E731
        lines = ElementLines(su, idx=idx, d=take(d), e=take(e), i=take(iu), has_iu=iu is not None)
    else:
        maps = [d] + ([] if e is None else [e]) + ([] if iu is None else [iu])
        lines = ElementLines(su, maps=maps, has_iu=iu is not None)
    ctx.line_diffs[key] = lines
    return lines


def _through_sparse_lines(A: Tensor, lines: ElementLines, B: int, S: int) -> tuple[Tensor, Tensor]:
    """Dense coefficients ``A`` (B, S, *shape) through a relaxation whose lines differ at
    few elements (``lines.idx``) -> (``A+ sl + A- su``, the bias ``<A+, il> + <A-, iu>``
    (B, S)): ``A su`` everywhere, the difference terms at those elements only."""
    n = lines.su.shape[1]
    sel = A.reshape(B, S, n)[:, :, lines.idx]  # (B, S, nu)
    pos = sel.clamp(min=0)
    new = A * lines.su.reshape(lines.su.shape[0], 1, *A.shape[2:])
    flat = new.view(new.shape[0], S, n)
    flat[:, :, lines.idx] += pos * lines.d.unsqueeze(1)
    bias = A.new_zeros(())
    if lines.e is not None:
        bias = bias + (pos * lines.e.unsqueeze(1)).sum(-1)
    if lines.i is not None:
        bias = bias + (sel * lines.i.unsqueeze(1)).sum(-1)
    return new, bias


def _line_tensor(t: Tensor, like: Tensor) -> Tensor:
    """Relaxation tensor (B, *shape) or broadcastable -> (B, 1, *shape) for coefficient algebra."""
    if t.dim() == like.dim():
        return t.unsqueeze(1)
    return t


def backward(ctx: Context, start: str, A: Tensor, *, bias: Optional[Tensor] = None,
             alphas: Optional[dict[str, Tensor]] = None, extra: Optional[dict[str, Tensor]] = None) -> Tensor:
    """Lower bound of ``<A, v_start>`` over the input set, per batch element and spec.

    Args:
        start: name of the value the coefficients act on.
        A: ``(B, S, *declared_shape(start))``.
        bias: optional ``(B, S)`` constant already accumulated.
        alphas: alpha-CROWN parameters of this pass: activation node name -> ``(B, S, *shape)``.
        extra: coefficients on other values, added to the function bounded: value name ->
            ``(B, S, *shape)`` (values before ``start``); the pass then bounds
            ``<A, v_start> + sum_v <extra_v, v>`` (beta-CROWN's split multipliers).
    Returns:
        ``(B, S)``.
    """
    g = ctx.graph
    B, S = A.shape[0], A.shape[1]
    store: dict[str, Tensor] = {start: A}
    for name, E in (extra or {}).items():
        _add(store, name, E.clone())  # (a pass without autograd may update coefficients in place)
    bias = torch.zeros(B, S, dtype=ctx.dtype, device=ctx.device) if bias is None else bias
    end = ctx.position.get(start, -1)
    inplace = not torch.is_grad_enabled()  # autograd (alpha-CROWN) needs the originals
    for node in reversed(g.nodes[: end + 1]):
        A = store.pop(node.output, None)
        if A is None:
            continue
        rule = rule_for(node, g.source)
        if rule.kind == "affine":
            c = constant_part(ctx, node)
            if c is not None:
                bias = bias + _dot(A, c, B, S)
            xs = [ctx.consts[i] if i in ctx.consts else None for i in node.inputs]
            for name, Ai in zip(node.inputs, rule.backward(node, A, *xs)):
                if Ai is not None:
                    _add(store, name, Ai)
        elif rule.kind == "activation":
            lo_like = ctx.intervals[node.inputs[0]].lo
            if ctx.activation_coeffs is not None:
                ctx.activation_coeffs[node.name] = A.clone() if inplace else A
            if alphas is not None and node.name in alphas and hasattr(rule, "alpha_base"):
                # (ReLU: the chord and the masks do not depend on alpha: computed once per context)
                base = ctx.alpha_bases.get(node.name)
                if base is None:
                    x = ctx.intervals[node.inputs[0]]
                    base = ctx.alpha_bases[node.name] = rule.alpha_base(node, x.lo.unsqueeze(1), x.hi.unsqueeze(1))
                rel = rule.relax_from_base(node, base, alphas[node.name])
                zl = rel.lower.intercept.dim() == 0 and not bool(rel.lower.intercept)
                zu = rel.upper.intercept.dim() == 0 and not bool(rel.upper.intercept)
            elif alphas is not None and node.name in alphas:
                x = ctx.intervals[node.inputs[0]]
                consts = [ctx.consts[i] for i in node.inputs[1:]]
                rel = precise_relax(rule, node, x.lo.unsqueeze(1), x.hi.unsqueeze(1), consts, alphas[node.name])
                zl = rel.lower.intercept.dim() == 0 and not bool(rel.lower.intercept)
                zu = rel.upper.intercept.dim() == 0 and not bool(rel.upper.intercept)
            else:
                lines = element_lines(ctx, node)
                if lines.idx is not None:  # (few elements where the lines differ)
                    new, b = _through_sparse_lines(A, lines, B, S)
                    bias = bias + b
                    _add(store, node.inputs[0], new)
                    continue
                rel, zl, zu = _relaxation_parts(ctx, node)
            # <A+, lower> + <A-, upper> = <A, upper> + <A+, lower - upper>: the differences
            # are of the relaxation's size, A's size passes are one clamp, one product, one
            # multiply-add (few temporaries: large short-lived allocations cost page faults)
            Ap = A.clamp(min=0)
            if alphas is not None and node.name in alphas:
                ds, di = _line_diffs(rel, zl, zu, lo_like)
            else:
                ds, di = _cached_line_diffs(ctx, node, rel, zl, zu, lo_like)
            if not zu:
                bias = bias + _dot(A, rel.upper.intercept, B, S)
            if di is not None:
                bias = bias + _dot(Ap, di, B, S)
            su = _line_tensor(rel.upper.slope, lo_like)
            if inplace:
                _add(store, node.inputs[0], Ap.mul_(ds).add_(A * su))
            else:
                _add(store, node.inputs[0], A * su + Ap * ds)
        elif rule.kind == "interval":  # constant lines: the output's own interval
            itv = ctx.intervals[node.output]
            Ap = A.clamp(min=0)
            bias = bias + _dot(Ap, itv.lo, B, S) + _dot(A - Ap, itv.hi, B, S)
        elif rule.kind == "bilinear":
            t = alphas.get(node.name) if alphas is not None else None
            xa, xb = ctx.intervals[node.inputs[0]], ctx.intervals[node.inputs[1]]
            ca, cb, b = bilinear_backward(rule, node, A, xa, xb, t)
            bias = bias + b
            _add(store, node.inputs[0], ca)
            _add(store, node.inputs[1], cb)
        elif rule.kind == "selection":
            rel = relaxation_of(ctx, node)
            in_shape = node.in_shapes[0]
            n_in = ctx.intervals[node.inputs[0]].lo[0].numel()
            Af = A.reshape(B, S, -1)
            Ap, An = Af.clamp(min=0), Af.clamp(max=0)
            Ain = torch.zeros(B, S, n_in, dtype=ctx.dtype, device=ctx.device)
            for part, line in ((Ap, rel.lower), (An, rel.upper)):
                idx = line.index.unsqueeze(1).expand(B, S, -1)
                Ain.scatter_add_(2, idx, part * line.slope.unsqueeze(1))
                bias = bias + (part * line.intercept.unsqueeze(1)).sum(-1)
            _add(store, node.inputs[0], Ain.reshape(B, S, *in_shape))
        else:  # pragma: no cover - registry only holds the kinds above
            raise TypeError(f"unknown rule kind {rule.kind!r} for {node.where(g.source)}")
    A_in = store.pop(g.input_name, None)
    if ctx.keep_input_coeffs:
        ctx.input_coeffs = None if A_in is None else A_in.reshape(B, S, -1)
        ctx.input_bias = bias
    if A_in is None:
        return bias
    return bias + ctx.input_set.min_linear(A_in.reshape(B, S, -1))
