"""beta-CROWN (Wang et al. 2021, "Beta-CROWN: efficient bound propagation with per-neuron
split constraints for neural network robustness verification").

A branch-and-bound sub-problem fixes the sign of some ReLU inputs: ``s_j z_j(x) >= 0`` with
``s_j`` +1 (active) or -1 (inactive).  Fixing the sign makes the neuron's relaxation exact
(its interval is clamped to ``[max(l, 0), u]`` or ``[l, min(u, 0)]``), but the relaxation of
the rest of the network still admits points that violate the constraint.  beta-CROWN puts
the constraints into the bound by Lagrange multipliers ``beta_j >= 0``: for every x of the
sub-problem ``C f(x) >= C f(x) - sum_j beta_j s_j z_j(x)``, and the right-hand side is bounded
by one backward pass in which the coefficient ``-beta_j s_j`` is added at ``z_j``
(``engine.backward(..., extra=...)``).  Every ``beta >= 0`` and every slope ``alpha`` in range
gives a sound lower bound; both are optimised jointly by projected gradient ascent (Adam),
warm-started from the parent sub-problem.

Here the intermediate bounds are fixed (the caller's context holds them, clamped by the
splits): only the output rows are optimised, as in alpha-beta-CROWN's branch and bound.

Guarantee: for every x of the input set whose split neurons have the given signs,
``lower <= C f(x)`` (each iterate is a sound bound; the best of sound bounds is sound).

Parameters are compressed to the *splittable* neurons (those unstable on the root set):
``alpha`` and ``beta`` are ``(N, S, U)`` with ``U`` splittable neurons numbered node by node
(:class:`SplitIndex`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from perturbkit.bounds.alpha_crown import Adam
from perturbkit.bounds.engine import Context, backward
from perturbkit.graph.ir import Node
from perturbkit.ops.base import Interval
from perturbkit.ops.registry import rule_for

Tensor = torch.Tensor


@dataclass(frozen=True)
class BetaConfig:
    """Optimisation settings (Adam; the learning rates of alpha-beta-CROWN's defaults).

    Attributes:
        iterations: evaluated iterates (0: one pass with the given parameters).  30: on
            mnist_fc 256x4 prop_3_0.05, 20 steps need 5x more domains and twice the time,
            50 steps cost twice the time of 30 (docs/benchmarks.md).
        lr_alpha, lr_beta: Adam learning rates of the slopes and of the multipliers.
        lr_decay: multiplicative learning-rate decay per step.
        stop_above: stop once every sub-problem has a row whose bound exceeds it (None: run
            all iterations), unless the caller gives per-row thresholds (``stop_at``).
        prune_every: every this many steps, sub-problems already done leave the batch (when
            at least a quarter are).
    """

    iterations: int = 30
    lr_alpha: float = 0.1
    lr_beta: float = 0.05
    lr_decay: float = 0.98
    stop_above: Optional[float] = 0.0
    prune_every: int = 5


class SplitIndex:
    """The splittable neurons: per ReLU/LeakyReLU node, the flat indices of its input that
    may be split, numbered 0..U-1 node by node."""

    def __init__(self, nodes: list[Node], index: list[Tensor], shapes: list[tuple]):
        self.nodes = nodes
        self.index = index
        self.shapes = shapes
        self.offsets = [0]
        for idx in index:
            self.offsets.append(self.offsets[-1] + idx.numel())
        self.total = self.offsets[-1]

    def parts(self):
        """(node, flat indices, shape, start, end) per node."""
        return zip(self.nodes, self.index, self.shapes, self.offsets, self.offsets[1:])

    def node_of(self, j: Tensor) -> Tensor:
        """(K,) global numbers -> the position of their node in ``nodes``."""
        return torch.bucketize(j, torch.tensor(self.offsets[1:], device=j.device), right=True)


def clamp_intervals(root: dict[str, Interval], split: SplitIndex, signs: Tensor,
                    lo: Optional[Tensor] = None, hi: Optional[Tensor] = None) -> dict[str, Interval]:
    """Intervals of N sub-problems: the root's (batch 1, shared as views) with every split
    neuron's input clamped to its sign.  signs: (N, U) int8 (+1 active, -1 inactive, 0 free).
    ``lo``, ``hi`` (N, U), when given, are each sub-problem's own (tighter) bounds of the
    splittable neurons (:func:`refine_intervals`); they replace the root's before clamping."""
    N = signs.shape[0]
    out = {name: Interval(itv.lo.expand(N, *itv.lo.shape[1:]), itv.hi.expand(N, *itv.hi.shape[1:]))
           for name, itv in root.items()}
    for node, idx, shape, a, b in split.parts():
        name = node.inputs[0]
        s = signs[:, a:b]
        if lo is None and not bool(s.any()):
            continue
        itv = root[name]
        n = math.prod(shape)
        full_lo = itv.lo.reshape(1, n).expand(N, n).clone()
        full_hi = itv.hi.reshape(1, n).expand(N, n).clone()
        sub_lo = full_lo[:, idx] if lo is None else lo[:, a:b]
        sub_hi = full_hi[:, idx] if hi is None else hi[:, a:b]
        full_lo[:, idx] = torch.where(s > 0, sub_lo.clamp_min(0.0), sub_lo)
        full_hi[:, idx] = torch.where(s < 0, sub_hi.clamp_max(0.0), sub_hi)
        out[name] = Interval(full_lo.reshape(N, *shape), full_hi.reshape(N, *shape))
    return out


def compress(intervals: dict[str, Interval], split: SplitIndex, N: int) -> tuple[Tensor, Tensor]:
    """(N, U) bounds of the splittable neurons read from per-value intervals."""
    if not split.total:
        ref = next(iter(intervals.values())).lo
        z = torch.zeros(N, 0, dtype=ref.dtype, device=ref.device)
        return z, z.clone()
    los, his = [], []
    for node, idx, shape, a, b in split.parts():
        itv = intervals[node.inputs[0]]
        los.append(itv.lo.reshape(itv.lo.shape[0], -1)[:, idx].expand(N, -1))
        his.append(itv.hi.reshape(itv.hi.shape[0], -1)[:, idx].expand(N, -1))
    return torch.cat(los, 1), torch.cat(his, 1)


def refine_intervals(ctx: Context, split: SplitIndex, signs: Tensor, since: Optional[Tensor] = None,
                     skip: frozenset = frozenset(), gains: Optional[dict] = None) -> tuple[Tensor, Tensor, Tensor]:
    """Per sub-problem CROWN bounds of the splittable neurons that a split before them can
    move, node by node in graph order, each node's new bounds used for the next.

    ``ctx`` holds N sub-problems' intervals with the splits clamped (:func:`clamp_intervals`);
    its intervals are tightened in place (intersected: never looser).  A neuron of node p is
    recomputed in sub-problem i when some neuron of a node before p is split in i (with
    ``since`` (N,): when node ``since[i]`` of ``split.nodes`` comes before p, i.e. the
    sub-problem's intervals already account for the splits older than that) and the
    neuron is free and unstable there.  Nodes whose position is in ``skip`` keep their
    bounds; ``gains``, when a dict, gets per recomputed node position the mean relative
    width reduction of its recomputed neurons.  Returns ``(lo, hi, empty)``: (N, U) bounds and (N,)
    True where some bound crossed (``lo > hi``: no input of the box meets the splits).
    Sound for every x of the box whose split neurons have the given signs: the clamped
    intervals hold for such x, and CROWN from sound intervals is sound.
    """
    from perturbkit.bounds.engine import tighten

    N = signs.shape[0]
    before = torch.zeros(N, dtype=torch.bool, device=signs.device)  # a split in an earlier node
    empty = torch.zeros(N, dtype=torch.bool, device=signs.device)
    with torch.no_grad():
        for p, (node, idx, shape, a, b) in enumerate(split.parts()):
            if since is not None:
                before = since < p
            name = node.inputs[0]
            itv = ctx.intervals[name]
            n = math.prod(shape)
            if p not in skip and bool(before.any()) and idx.numel():
                lo = itv.lo.reshape(N, n)
                hi = itv.hi.reshape(N, n)
                want = torch.zeros(N, n, dtype=torch.bool, device=signs.device)
                free = (signs[:, a:b] == 0) & (lo[:, idx] < 0) & (hi[:, idx] > 0) & before.unsqueeze(1)
                want[:, idx] = free
                if bool(want.any()):
                    cols = torch.nonzero(want.any(0)).flatten()
                    new = tighten(ctx, name, Interval(itv.lo.contiguous(), itv.hi.contiguous()), cols, mask=want)
                    if gains is not None:  # mean relative width reduction of the recomputed neurons
                        w0 = (hi - lo)[want]
                        w1 = (new.hi.reshape(N, n) - new.lo.reshape(N, n))[want]
                        gains[p] = float((1 - w1 / w0.clamp_min(1e-12)).clamp(0, 1).mean())
                    ctx.intervals[name] = new
                    itv = new
            flat_lo = itv.lo.reshape(N, n)[:, idx]
            flat_hi = itv.hi.reshape(N, n)[:, idx]
            # crossed by more than rounding could explain: the sub-problem is empty
            empty |= (flat_lo > flat_hi + 1e-4 * (1 + flat_lo.abs() + flat_hi.abs())).any(1)
            if since is None:
                before |= (signs[:, a:b] != 0).any(1)
    lo, hi = compress(ctx.intervals, split, N)
    return lo, hi, empty


def _full(ctx: Context, split: SplitIndex, compressed: Tensor, fill: Optional[Tensor] = None) -> dict[str, Tensor]:
    """(N, S, U) per-neuron values -> node name -> (N, S, *shape) (zeros off the index)."""
    N, S = compressed.shape[:2]
    out = {}
    for node, idx, shape, a, b in split.parts():
        n = math.prod(shape)
        base = torch.zeros(N, S, n, dtype=compressed.dtype, device=compressed.device)
        out[node.name] = base.index_copy(2, idx, compressed[:, :, a:b]).reshape(N, S, *shape)
    return out


def _extra(split: SplitIndex, beta: Tensor, signs: Tensor) -> dict[str, Tensor]:
    """The multipliers' coefficients ``-beta_j s_j`` on the split neurons' inputs."""
    N, S = beta.shape[:2]
    coef = -beta * signs.to(beta.dtype).unsqueeze(1)
    out = {}
    for node, idx, shape, a, b in split.parts():
        if not bool(signs[:, a:b].any()):
            continue
        n = math.prod(shape)
        base = torch.zeros(N, S, n, dtype=beta.dtype, device=beta.device)
        out[node.inputs[0]] = base.index_copy(2, idx, coef[:, :, a:b]).reshape(N, S, *shape)
    return out


def alpha_ranges(ctx: Context, split: SplitIndex) -> list[tuple[float, float]]:
    return [rule_for(node, ctx.graph.source).alpha_range(node) for node in split.nodes]


def initial_alpha(ctx: Context, split: SplitIndex, S: int) -> Tensor:
    """CROWN's adaptive slopes on the context's intervals: (N, S, U)."""
    parts = []
    for node, idx, shape, a, b in split.parts():
        x = ctx.intervals[node.inputs[0]]
        rule = rule_for(node, ctx.graph.source)
        a0 = rule.alpha_init(node, x.lo, x.hi).reshape(ctx.batch, -1)[:, idx]
        parts.append(a0.unsqueeze(1).expand(ctx.batch, S, -1))
    if not parts:
        return torch.zeros(ctx.batch, S, 0, dtype=ctx.dtype, device=ctx.device)
    return torch.cat(parts, 2).clone()


@dataclass
class BetaResult:
    """Bounds of N sub-problems and what branch and bound reads from them.

    lower: (N, S) best bound of each row over the iterates.
    alpha, beta: (N, S, U) the parameters of each sub-problem's best iterate (warm starts).
    input_coeffs, input_bias: the linear lower bound ``A x + b`` of that iterate, (N, S, n)
        and (N, S): its minimiser over the input set is a candidate counterexample.
    relu_coeffs: node name -> (N, S, *shape) coefficients on each split node's output in
        that bound (branching scores).
    """

    lower: Tensor
    alpha: Tensor
    beta: Tensor
    input_coeffs: Optional[Tensor]
    input_bias: Optional[Tensor]
    relu_coeffs: dict


def evaluate(ctx: Context, split: SplitIndex, signs: Tensor, A_out: Tensor, alpha: Tensor, beta: Tensor,
             *, record: bool = False) -> Tensor:
    """One bound pass with fixed parameters: (N, S).  With ``record`` the context keeps the
    input and activation coefficients (``ctx.input_coeffs``, ``ctx.activation_coeffs``)."""
    ctx.keep_input_coeffs = record
    ctx.activation_coeffs = {} if record else None
    try:
        return backward(ctx, ctx.graph.output_name, A_out, alphas=_full(ctx, split, alpha),
                        extra=_extra(split, beta, signs))
    finally:
        ctx.keep_input_coeffs = False


def beta_crown(ctx: Context, split: SplitIndex, signs: Tensor, A_out: Tensor, alpha: Tensor, beta: Tensor,
               config: BetaConfig = BetaConfig(), floor: Optional[Tensor] = None,
               stop_at: Optional[Tensor] = None) -> BetaResult:
    """Optimised lower bounds of ``<A_out, f(x)>`` on N sub-problems.

    Args:
        ctx: a context of N sub-problems whose intervals are fixed (:func:`clamp_intervals`).
        signs: (N, U) int8 split signs.
        A_out: (N, S, *output_shape) rows.
        alpha, beta: (N, S, U) starting parameters (beta >= 0; only split neurons' matter).
        floor: (N, S) bounds already known (e.g. the parent's): the result is never below it.
        stop_at: (N, S) a sub-problem is done once one of its rows' bound exceeds this: it
            leaves the optimisation (every ``config.prune_every`` steps), the rest go on.
    Returns:
        :class:`BetaResult`.
    """
    N, S = A_out.shape[:2]
    ranges = alpha_ranges(ctx, split)
    lo_a = torch.cat([torch.full((b - a,), r[0], dtype=ctx.dtype) for (_, _, _, a, b), r in zip(split.parts(), ranges)]
                     ) if split.total else torch.zeros(0, dtype=ctx.dtype)
    hi_a = torch.cat([torch.full((b - a,), r[1], dtype=ctx.dtype) for (_, _, _, a, b), r in zip(split.parts(), ranges)]
                     ) if split.total else torch.zeros(0, dtype=ctx.dtype)
    full_ctx = ctx
    split_mask = (signs != 0).unsqueeze(1)  # (N, 1, U)
    beta0 = torch.where(split_mask, beta.detach().clamp_min(0.0), torch.zeros_like(beta))
    best = torch.full((N, S), -math.inf, dtype=ctx.dtype, device=ctx.device) if floor is None else floor.clone()
    best_total = torch.full((N,), -math.inf, dtype=ctx.dtype, device=ctx.device)
    best_alpha, best_beta = alpha.detach().clone(), beta0.clone()
    if config.iterations:
        act = torch.arange(N, device=ctx.device)  # the sub-problems still optimised
        a_cur = alpha.detach().clone().requires_grad_(True)
        b_cur = beta0.clone().requires_grad_(True)
        sg, A, mask = signs, A_out, split_mask
        opt_a = Adam([a_cur], config.lr_alpha)
        opt_b = Adam([b_cur], config.lr_beta)
        with torch.enable_grad():
            for it in range(config.iterations):
                r = evaluate(ctx, split, sg, A, a_cur, b_cur)
                with torch.no_grad():
                    rd = r.detach()
                    rd = torch.where(torch.isnan(rd), torch.full_like(rd, -math.inf), rd)
                    best[act] = torch.maximum(best[act], rd)
                    total = rd.sum(1)
                    better = total > best_total[act]
                    best_total[act] = torch.where(better, total, best_total[act])
                    upd = act[better]
                    best_alpha[upd] = a_cur.detach()[better]
                    best_beta[upd] = b_cur.detach()[better]
                    done = None
                    if stop_at is not None:
                        done = (best[act] > stop_at[act]).any(1)
                    elif config.stop_above is not None:
                        done = best[act].max(1).values > config.stop_above
                if done is not None and bool(done.all()):
                    break
                if it == config.iterations - 1:
                    break
                ga, gb = torch.autograd.grad(-r.sum(), [a_cur, b_cur], allow_unused=True)
                with torch.no_grad():
                    opt_a.step([ga])
                    opt_b.step([gb])
                    opt_a.lr *= config.lr_decay
                    opt_b.lr *= config.lr_decay
                    a_cur.copy_(torch.minimum(torch.maximum(a_cur, lo_a), hi_a))
                    b_cur.clamp_(min=0.0).mul_(mask)
                if done is not None and (it + 1) % config.prune_every == 0 and float(done.float().mean()) >= 0.25:
                    keep = torch.nonzero(~done).flatten()
                    act = act[keep]
                    ctx = _restrict(ctx, keep)
                    sg, A, mask = sg[keep], A[keep], mask[keep]
                    a_cur = a_cur.detach()[keep].clone().requires_grad_(True)
                    b_cur = b_cur.detach()[keep].clone().requires_grad_(True)
                    opt_a = opt_a.restricted([a_cur], keep)
                    opt_b = opt_b.restricted([b_cur], keep)
    ctx = full_ctx
    with torch.no_grad():
        r = evaluate(ctx, split, signs, A_out, best_alpha, best_beta, record=True)
        r = torch.where(torch.isnan(r), torch.full_like(r, -math.inf), r)
        best = torch.maximum(best, r)
    coeffs = {node.name: ctx.activation_coeffs.get(node.name) for node in split.nodes}
    result = BetaResult(best, best_alpha, best_beta, ctx.input_coeffs, ctx.input_bias, coeffs)
    ctx.activation_coeffs = None
    ctx.input_coeffs = ctx.input_bias = None
    return result


def _restrict(ctx: Context, keep: Tensor) -> Context:
    """The context of the sub-problems ``keep`` (intervals and input set indexed)."""
    from perturbkit.bounds.pairs import _sub_context

    return _sub_context(ctx, keep, None)
