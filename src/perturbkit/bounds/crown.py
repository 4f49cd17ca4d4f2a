"""CROWN and CROWN-IBP.

CROWN (Zhang et al. 2018, "Efficient neural network robustness certification with general
activation functions"; on general graphs: Xu et al. 2020): the output specification is
pushed backward to the input through linear relaxations of every nonlinearity, and the
relaxations use *intermediate bounds* on each nonlinearity's input.  Those intermediate
bounds are computed by CROWN as well, node by node in topological order, but only for the
elements whose relaxation depends on them (``rule.unstable``, e.g. ReLU inputs whose
interval contains 0); the other elements keep their interval bounds.

CROWN-IBP (Zhang et al. 2020, "Towards stable and efficient training of verifiably robust
neural networks"): intermediate bounds by IBP, final bound by the backward pass.

Guarantee (both): for every x in the input set, ``lower <= C f(x) <= upper``.
"""
from __future__ import annotations

import math

import torch

from perturbkit.bounds.engine import Context, backward, interval_of, tighten, with_prior
from perturbkit.bounds.ibp import interval_spec
from perturbkit.graph.ir import Node
from perturbkit.ops.base import Interval
from perturbkit.ops.registry import rule_for

def _needs_bounds(ctx: Context) -> dict[str, list]:
    """value name -> nonlinear consumer nodes whose relaxation reads its bounds."""
    g = ctx.graph
    need: dict[str, list] = {}
    for node in g.nodes:
        rule = rule_for(node, g.source)
        if rule.kind in ("activation", "selection"):
            need.setdefault(node.inputs[0], []).append(node)
        elif rule.kind in ("bilinear", "interval"):  # relaxations read every operand's bounds
            for i in dict.fromkeys(node.inputs):
                if i not in ctx.consts:
                    need.setdefault(i, []).append(node)
    return need


def _unstable_mask(ctx: Context, consumers: list, itv: Interval) -> torch.Tensor:
    mask = None
    for node in consumers:
        rule = rule_for(node, ctx.graph.source)
        consts = [ctx.consts[i] for i in node.inputs[1:] if i in ctx.consts]
        if rule.kind == "activation":
            m = rule.unstable(node, itv.lo, itv.hi, *consts)
        elif rule.kind == "selection":
            m = rule.unstable(node, itv.lo, itv.hi)
        else:  # bilinear, interval: every element's relaxation depends on the bounds
            m = torch.ones_like(itv.lo, dtype=torch.bool)
        mask = m if mask is None else (mask | m)
    return mask


def intermediate_bounds(ctx: Context, *, mode: str) -> dict[str, torch.Tensor]:
    """Fill ``ctx.intervals`` for every node; ``mode`` 'crown' tightens the inputs of
    nonlinearities by CROWN, 'ibp' keeps interval bounds (CROWN-IBP).

    Returns the values tightened by CROWN -> the flat element indices (K,) tightened.
    """
    need = _needs_bounds(ctx)
    whole = _wanted_whole(ctx, need) if mode == "crown" else {}
    tightened: dict[str, torch.Tensor] = {}
    full: set[str] = set(ctx.linear_prefix)  # values whose interval is as tight as their CROWN bound
    for node in ctx.graph.nodes:
        # prior bounds first: an element they already make stable needs no CROWN pass.  A
        # linear value that needs an exact range and feeds a nonlinearity gets it here, only
        # for the elements that are unstable (the backward pass is exact on it).
        # (an interval-only node's output: its interval is all a linear bound could say; the
        # output of a monotone function of a value with CROWN bounds everywhere, too: see
        # _crown_adds_nothing)
        rule = rule_for(node, ctx.graph.source)
        by_mask = (mode == "crown" and node.output in need and rule.kind != "interval"
                   and not _crown_adds_nothing(rule, node, full)
                   and (node.output not in ctx.linear_prefix or node.output in ctx.exact_linear))
        itv = with_prior(ctx, node.output, interval_of(ctx, node, exact=not by_mask))
        if by_mask:
            if node.output in whole:
                mask = _not_flat(ctx, whole[node.output], itv)
            else:
                mask = _unstable_mask(ctx, need[node.output], itv)
            read = _read_through(ctx, node.output, itv, need)
            if read is not None:
                mask = mask & read
            idx = mask.reshape(ctx.batch, -1).any(0).nonzero().squeeze(1)
            if idx.numel():
                itv = tighten(ctx, node.output, itv, idx, mask=mask,
                              upper_first=_constant_below_zero(ctx, node.output, need[node.output]))
                tightened[node.output] = idx
                if idx.numel() == itv.lo[0].numel():
                    full.add(node.output)
            if node.output in whole:
                full.add(node.output)  # (the elements left out give a point through f)
        ctx.intervals[node.output] = with_prior(ctx, node.output, itv)
    return tightened


def _read_through(ctx: Context, z: str, itv: Interval, need: dict[str, list]) -> torch.Tensor | None:
    """Elements of ``z`` whose bounds can matter when ``z`` feeds one activation ``y = f(z)``
    and only selections (MaxPool) read ``y``: coefficients reach ``y`` through those alone, so
    where no selection can depend on ``y``'s bounds (``rule.unstable`` on the interval
    ``f([z])``, which tighter bounds of ``z`` only narrow) neither the activation's relaxation
    nor anything else reads ``z``'s bounds, and they stay interval bounds (the same result).
    None when ``z`` is not read that way."""
    g = ctx.graph
    readers = need.get(z, [])
    if len(readers) != 1 or ctx.consumer_count.get(z, 0) != 1 or z == g.output_name:
        return None
    act = readers[0]
    rule = rule_for(act, g.source)
    if rule.kind != "activation" or act.inputs[0] != z or list(act.inputs).count(z) != 1:
        return None
    y = act.output
    pools = need.get(y, [])
    if (y == g.output_name or not pools or ctx.consumer_count.get(y, 0) != len(pools)
            or any(rule_for(p, g.source).kind != "selection" or list(p.inputs) != [y] for p in pools)):
        return None
    yi = rule.interval(act, itv, *[ctx.consts[i] for i in act.inputs[1:]])
    read = None
    for p in pools:
        m = rule_for(p, g.source).unstable(p, yi.lo, yi.hi)
        read = m if read is None else read | m
    return read


def _constant_below_zero(ctx: Context, value: str, readers: list) -> bool:
    """Whether every node reading ``value`` is an activation constant below 0 whatever the
    lower bound (ReLU, ``rule.constant_below_zero``): then an element whose upper bound is
    <= 0 needs no lower bound, f([z]) is one point there (also for :func:`_crown_adds_nothing`)."""
    g = ctx.graph
    if value == g.output_name or ctx.consumer_count.get(value, 0) != len(readers):
        return False
    return all(rule_for(r, g.source).kind == "activation" and rule_for(r, g.source).constant_below_zero
               and list(r.inputs).count(value) == 1 and r.inputs[0] == value for r in readers)


def _not_flat(ctx: Context, act: Node, itv: Interval) -> torch.Tensor:
    """Elements of ``z`` where the monotone activation ``act`` is not constant over its
    interval (``f(lo) != f(hi)``): elsewhere ``f([z])`` is already one point, so a tighter
    bound of ``z`` changes nothing (ReLU: the stably inactive elements)."""
    rule = rule_for(act, ctx.graph.source)
    consts = [ctx.consts[i] for i in act.inputs[1:]]
    return rule.forward(act, itv.lo, *consts) != rule.forward(act, itv.hi, *consts)


def _wanted_whole(ctx: Context, need: dict[str, list]) -> dict[str, Node]:
    """Convolution outputs ``z`` to bound by CROWN in every element (in patch mode), not only
    where their activation is unstable: those whose single consumer is a monotone activation
    ``y = f(z)`` whose own bounds a selection (MaxPool), bilinear or interval rule reads in
    every element.  Then ``y``'s interval ``f([z])`` is at least as tight as a CROWN pass from
    ``y`` (:func:`_crown_adds_nothing`) and that pass, which would have to run densely, is
    skipped, at a fraction of the cost: every element where ``f`` is not constant over the
    interval of ``z`` (:func:`_not_flat`).  Returns ``z`` -> the activation node.  (The same
    rule in dense mode, so that both modes give the same bounds.  ``y``'s bounds are the same
    or tighter; a MaxPool after it picks its window element from them, so a bound further on
    can move either way, soundly.)"""
    from perturbkit.bounds import patches

    g = ctx.graph
    out: dict[str, Node] = {}
    for node in g.nodes:
        rule = rule_for(node, g.source)
        if rule.kind != "activation" or not rule.monotone:
            continue
        z = node.inputs[0]
        readers = need.get(node.output, [])
        if (ctx.consumer_count.get(z, 0) == 1 and readers and patches.supports_start(ctx, z)
                and any(rule_for(r, g.source).kind != "activation" for r in readers)):
            out[z] = node
    return out


def _crown_adds_nothing(rule, node, full: set[str]) -> bool:
    """CROWN cannot tighten ``y = f(z)`` for a monotone elementwise ``f`` once every element
    of ``z`` has bounds at least as tight as its own CROWN bounds (or ``f`` is constant over
    its interval there, :func:`_not_flat`: ``f([z])`` is a point): the relaxation's lower line
    ``L`` is monotone like ``f``, and the backward pass from ``y`` is ``L`` applied to a linear
    lower bound of ``z``, whose minimum is at most ``L(z_lo) <= f(z_lo)``, the interval's bound
    (mirrored for the upper side and for decreasing ``f``).  Skipping those passes saves work
    and alpha-CROWN parameters (gates of recurrent networks, attention weights)."""
    return rule.kind == "activation" and rule.monotone and node.inputs[0] in full


def spec_rows(ctx: Context, C: torch.Tensor | None) -> torch.Tensor:
    """``[C; -C]`` as coefficients on the output: (B, 2S, *output_shape)."""
    g = ctx.graph
    B = ctx.batch
    n_out = math.prod(g.output_shape)
    if C is None:
        C = torch.eye(n_out, dtype=ctx.dtype, device=ctx.device).unsqueeze(0).expand(B, n_out, n_out)
    S = C.shape[1]
    return torch.cat([C, -C], 1).reshape(B, 2 * S, *g.output_shape)


def crown(ctx: Context, C: torch.Tensor | None, *, intermediate: str = "crown") -> tuple[torch.Tensor, torch.Tensor]:
    """Lower and upper bounds of ``C @ f(x)`` (C: (B, S, n_out) or None for identity) -> (B, S) each."""
    intermediate_bounds(ctx, mode=intermediate)
    A = spec_rows(ctx, C)
    S = A.shape[1] // 2
    r = backward(ctx, ctx.graph.output_name, A)
    return with_output_interval(ctx, C, r[:, :S], -r[:, S:])


def with_output_interval(ctx: Context, C: torch.Tensor | None, lower: torch.Tensor,
                         upper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Linear bounds intersected with the interval the intermediate pass left on the output.

    Both are sound, so the intersection is; it makes CROWN never looser than that interval
    (which the backward pass can be, e.g. through long chains of products in a Transformer).
    A NaN of the backward pass (an infinite intermediate bound times a zero coefficient, as
    CROWN-IBP meets at a reciprocal whose interval touches 0) says nothing: it takes the
    interval's value.
    """
    from perturbkit.bounds import engine

    out = ctx.intervals.get(ctx.graph.output_name)
    if out is None or not engine.INTERSECT_INTERMEDIATE:
        return lower, upper
    ilo, ihi = interval_spec(out, C, ctx.batch)
    lower = torch.where(torch.isnan(lower), ilo, lower)
    upper = torch.where(torch.isnan(upper), ihi, upper)
    return torch.maximum(lower, ilo), torch.minimum(upper, ihi)
