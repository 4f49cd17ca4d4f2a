"""alpha-CROWN (Xu et al. 2021, "Fast and complete: enabling complete neural network
verification with rapid and massively parallel incomplete verifiers").

CROWN's relaxation of an unstable ReLU may use any lower slope in [0, 1]; every choice
gives a sound bound.  alpha-CROWN makes those slopes free parameters, one set per bound it
computes (each output specification row, and each intermediate neuron whose bounds CROWN
tightens), and maximises the bounds by projected gradient ascent (Adam).  Intermediate
bounds are recomputed with their own slopes at every step, and each is intersected with
its CROWN bound, so the result is never looser than CROWN.  The best bound seen for each
row is kept.

Guarantee: for every x in the input set, ``lower <= C f(x) <= upper`` (each iterate is a
sound CROWN bound with valid slopes; the best of sound bounds is sound).

Parameters live in values, not on nodes: :func:`alpha_crown` returns them (a dict
start -> activation node -> tensor) so branch and bound can warm-start from them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from perturbkit.bounds import patches
from perturbkit.bounds.crown import intermediate_bounds, with_output_interval
from perturbkit.bounds.engine import Context, backward, make_context
from perturbkit.ops.base import Interval
from perturbkit.ops.registry import rule_for

Tensor = torch.Tensor
Alphas = dict[str, dict[str, Tensor]]


@dataclass(frozen=True)
class AlphaConfig:
    """Optimisation settings (Adam, lr 0.5, decay 0.98 as in the paper's practice).

    Attributes:
        iterations: evaluated iterates (30: with shared lower/upper slopes, 20 iterates trail
            auto_LiRPA's separately optimised 20-step bounds by up to 5e-7 on probe_cnn;
            30 pass them everywhere; see docs/benchmarks.md).
        lr: Adam learning rate.
        lr_decay: multiplicative learning-rate decay per step.
        stop_above: stop early once every lower bound of the specification exceeds it
            (e.g. 0 when proving ``C f(x) > 0``); None: run all iterations.
        optimize_intermediate: also optimise the slopes used for intermediate bounds.
        separate_upper: optimise the upper bounds with their own intermediate slopes (a
            doubled batch; tighter, about twice the work) rather than sharing them.
        lower_only: only lower bounds of ``C f(x)`` (the upper ones come back as +inf),
            as branch and bound needs.
        keep_intermediate: leave in ``ctx.intervals``, for every value whose bounds were
            optimised, the tightest bound of each element over CROWN and all iterates (each
            is sound) instead of the CROWN ones (branch and bound fixes them afterwards).
    """

    iterations: int = 30
    lr: float = 0.5
    lr_decay: float = 0.98
    stop_above: Optional[float] = None
    optimize_intermediate: bool = True
    separate_upper: bool = False
    lower_only: bool = False
    keep_intermediate: bool = False


class Adam:
    """Adam (Kingma & Ba 2015) on a list of tensors; written out to keep torch.optim (and
    its import cost) out of the bound computation."""

    def __init__(self, params: list[Tensor], lr: float, betas=(0.9, 0.999), eps: float = 1e-8):
        self.params, self.lr, self.betas, self.eps = params, lr, betas, eps
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]
        self.t = 0

    def restricted(self, params: list[Tensor], keep: Tensor) -> "Adam":
        """The same optimiser on ``params``, the rows ``keep`` of the current ones (moments kept)."""
        new = Adam(params, self.lr, self.betas, self.eps)
        new.m = [m[keep].clone() for m in self.m]
        new.v = [v[keep].clone() for v in self.v]
        new.t = self.t
        return new

    def step(self, grads) -> None:
        self.t += 1
        b1, b2 = self.betas
        c1, c2 = 1 - b1 ** self.t, 1 - b2 ** self.t
        for p, g, m, v in zip(self.params, grads, self.m, self.v):
            if g is None:
                continue
            # a non-finite gradient (e.g. a relaxation's derivative at a pole) says nothing
            # about the direction: that coordinate is not moved this step
            g = torch.where(torch.isfinite(g), g, torch.zeros_like(g))
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            p.addcdiv_(m / c1, (v / c2).sqrt_().add_(self.eps), value=-self.lr)


def _ancestors(ctx: Context, name: str) -> set[str]:
    prod = {n.output: n for n in ctx.graph.nodes}
    seen: set[str] = set()
    todo = [name]
    while todo:
        v = todo.pop()
        node = prod.get(v)
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        todo.extend(i for i in node.inputs if i not in ctx.consts)
    return seen


def _init_alphas(ctx: Context, start: str, rows: int, warm: Optional[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Parameters for one start: every optimisable activation upstream of ``start``."""
    out: dict[str, Tensor] = {}
    up = _ancestors(ctx, start)
    for node in ctx.graph.nodes:
        if node.name not in up or node.output == start:
            continue
        rule = rule_for(node, ctx.graph.source)
        if rule.kind not in ("activation", "bilinear") or rule.alpha_range(node) is None:
            continue
        x = ctx.intervals[node.inputs[0]]
        if warm is not None and node.name in warm and warm[node.name].shape[1] == rows:
            a = warm[node.name].detach().clone()
        elif rule.kind == "bilinear":  # t = 1: CROWN's planes
            a = torch.ones(x.lo.shape[0], rows, *node.out_shape, dtype=ctx.dtype, device=ctx.device)
        else:
            a0 = rule.alpha_init(node, x.lo, x.hi, *[ctx.consts[i] for i in node.inputs[1:]])
            a = a0.unsqueeze(1).expand(x.lo.shape[0], rows, *x.lo.shape[1:]).clone()
        out[node.name] = a.requires_grad_(True)
    return out


def alpha_crown(ctx: Context, C: Optional[Tensor], config: AlphaConfig = AlphaConfig(),
                warm_start: Optional[Alphas] = None) -> tuple[Tensor, Tensor, Alphas]:
    """Optimised CROWN bounds of ``C f(x)``.

    Lower and upper rows are optimised together (one loss); with
    ``config.separate_upper`` each gets its own intermediate slopes (two halves of a doubled
    batch).  On probe_mlp both reach auto_LiRPA's bounds (which optimises them separately).

    Returns ``(lower, upper, alphas)``: bounds (B, S) each (the best of every iterate, per
    element), and the parameters of the iterate with the best total bound (start value name
    -> activation node name -> (2B, rows, *shape); the first B batch entries serve the
    lower bounds, the last B the upper ones) for warm starts.
    """
    B0 = ctx.batch
    n_out = ctx.net.n_outputs
    if C is None:
        C = torch.eye(n_out, dtype=ctx.dtype, device=ctx.device).unsqueeze(0).expand(B0, n_out, n_out)
    if config.lower_only:
        A_out = C  # (B, S, n_out)
    elif config.separate_upper:
        ctx = make_context(ctx.net, ctx.input_set.tile(2))
        A_out = torch.cat([C, -C], 0)  # (2B, S, n_out): lower rows, then negated (upper) rows
    else:
        A_out = torch.cat([C, -C], 1)  # (B, 2S, n_out)
    A_out = A_out.reshape(A_out.shape[0], A_out.shape[1], *ctx.graph.output_shape)
    tightened = intermediate_bounds(ctx, mode="crown")
    ref = dict(ctx.intervals)  # CROWN bounds: sound, and the floor of every later iterate
    B, rows_out = A_out.shape[:2]
    S = C.shape[1]
    g = ctx.graph
    starts = list(tightened) if config.optimize_intermediate else []
    units: dict[str, Tensor] = {}
    for name in starts:
        idx = tightened[name]
        n = ref[name].lo[0].numel()
        K = idx.numel()
        E = torch.zeros(K, n, dtype=ctx.dtype, device=ctx.device)
        E[torch.arange(K, device=ctx.device), idx] = 1.0
        units[name] = torch.cat([E, -E], 0).unsqueeze(0).expand(B, 2 * K, n).reshape(B, 2 * K, *g.shapes[name])
    node_of = {n.name: n for n in g.nodes}
    # convolution outputs whose whole backward walk stays in patch form keep their slopes
    # in patch form too (created lazily by the first walk)
    patch_starts = {name for name in starts if ctx.use_patches and patches.supports_alpha(ctx, name)}
    with torch.no_grad():
        best = backward(ctx, g.output_name, A_out)  # plain CROWN: the floor
    best_total = float("-inf")
    best_alphas: Alphas = {}
    tight = {name: (ref[name].lo.clone(), ref[name].hi.clone()) for name in starts} if config.keep_intermediate else {}
    with torch.enable_grad():
        alphas: Alphas = {}
        for name in starts:
            warm = (warm_start or {}).get(name)
            if name in patch_starts:
                alphas[name] = {k: v.detach().clone().requires_grad_(True) for k, v in (warm or {}).items()}
            else:
                alphas[name] = _init_alphas(ctx, name, units[name].shape[1], warm)
        alphas[g.output_name] = _init_alphas(ctx, g.output_name, rows_out, (warm_start or {}).get(g.output_name))
        opt: Optional[Adam] = None
        try:
            for it in range(config.iterations):
                ctx.intervals = dict(ref)
                ctx.relaxations, ctx.relax_flags, ctx.line_diffs, ctx.alpha_bases = {}, {}, {}, {}
                for name in starts:
                    idx = tightened[name]
                    K = idx.numel()
                    if name in patch_starts:
                        r_lo, r_hi = patches.lower_upper(ctx, name, idx, alphas=alphas[name])
                    else:
                        r = backward(ctx, name, units[name], alphas=alphas[name])
                        r_lo, r_hi = r[:, :K], -r[:, K:]
                    itv = ref[name]
                    lo = itv.lo.reshape(B, -1).clone()
                    hi = itv.hi.reshape(B, -1).clone()
                    # intersected with the CROWN bounds in value (relaxations of partial
                    # functions such as x^-0.5 need bounds inside their domain, and tighter
                    # is never worse), but the gradient passes as if not intersected: cutting
                    # it wherever CROWN is tighter measurably weakens the optimum
                    lo[:, idx] = _straight_through(r_lo, torch.maximum(r_lo, lo[:, idx]))
                    hi[:, idx] = _straight_through(r_hi, torch.minimum(r_hi, hi[:, idx]))
                    ctx.intervals[name] = Interval(lo.reshape(itv.lo.shape), hi.reshape(itv.hi.shape))
                    if name in tight:
                        with torch.no_grad():
                            t_lo, t_hi = tight[name]
                            t_lo.copy_(torch.maximum(t_lo, _finite_or(lo.detach().reshape(t_lo.shape), t_lo)))
                            t_hi.copy_(torch.minimum(t_hi, _finite_or(hi.detach().reshape(t_hi.shape), t_hi)))
                r = backward(ctx, g.output_name, A_out, alphas=alphas[g.output_name])
                if opt is None:
                    params = [a for d in alphas.values() for a in d.values()]
                    ranges = {name: rule_for(node_of[name], g.source).alpha_range(node_of[name])
                              for d in alphas.values() for name in d}
                    if not params:
                        break
                    opt = Adam(params, config.lr)
                with torch.no_grad():
                    best = torch.maximum(best, r)
                    total = float(r.sum())
                    if total > best_total:  # parameters of the best iterate, for warm starts
                        best_total = total
                        best_alphas = {st: {n: a.detach().clone() for n, a in d.items()} for st, d in alphas.items()}
                if config.stop_above is not None and bool((_halves(best, B0, S, config)[0] > config.stop_above).all()):
                    break
                if it == config.iterations - 1:
                    break  # the last step would never be evaluated
                grads = torch.autograd.grad(-r.sum(), params, allow_unused=True)
                with torch.no_grad():
                    opt.step(grads)
                    opt.lr *= config.lr_decay
                    for d in alphas.values():
                        for name, a in d.items():
                            a.clamp_(*ranges[name])
        finally:
            ctx.intervals = ref
            ctx.relaxations, ctx.relax_flags, ctx.line_diffs, ctx.alpha_bases = {}, {}, {}, {}
    if tight:
        ctx.intervals = dict(ref)
        for name, (t_lo, t_hi) in tight.items():
            ctx.intervals[name] = Interval(t_lo, t_hi)
    lo, hi = _halves(best, B0, S, config)
    if not config.separate_upper:  # (the doubled context's intervals are of the doubled batch)
        lo, hi = with_output_interval(ctx, C, lo, hi)
        if config.lower_only:
            hi = torch.full_like(hi, float("inf"))
    return lo, hi, best_alphas


def _finite_or(x: Tensor, other: Tensor) -> Tensor:
    """``x`` where it is not NaN, else ``other``."""
    return torch.where(torch.isnan(x), other, x)


def _straight_through(raw: Tensor, value: Tensor) -> Tensor:
    """``value`` in the forward pass, with the gradient of ``raw`` (where ``raw`` is finite)."""
    ok = torch.isfinite(raw)
    return torch.where(ok, raw + (value - torch.where(ok, raw, torch.zeros_like(raw))).detach(), value.detach())


def _halves(best: Tensor, B0: int, S: int, config: "AlphaConfig") -> tuple[Tensor, Tensor]:
    """Lower and upper bounds from the optimised rows."""
    if config.lower_only:
        return best, torch.full_like(best, float("inf"))
    if config.separate_upper:
        return best[:B0], -best[B0:]
    return best[:, :S], -best[:, S:]
