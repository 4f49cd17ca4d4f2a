"""Branch and bound for low-dimensional inputs: input splits, and ReLU splits with cuts.

A case (an input box and a disjunction of clauses ``C y <= d``) is proved (no
counterexample) when, on every sub-box, every clause has a row whose CROWN lower bound of
``C_i f(x) - d_i`` is > 0.  Sub-boxes are bounded thousands at a time (one batched CROWN
call), proved ones are dropped, the others are checked for counterexamples (centre and the
corner minimising each row's linear bound, executed through the network) and split in two.

Which dimension to split: CROWN's lower bound of a row is ``a . mid - |a| . rad + b`` over
the box, so halving dimension j improves it by at least ``|a_j| rad_j / 2`` before the
relaxations tighten.  For every unproved clause we take its most promising row (largest
lower bound) and score dimensions by ``|a_j| * width_j`` summed over those rows (the
"smear" heuristic of ReluVal/nnenum, with CROWN's coefficients instead of gradient
intervals), normalised per box, plus the dimension's width in the units the network sees,
also normalised: ``width_j * sens_j`` with ``sens_j`` the L1 norm of the first layer's
column for input j (:func:`input_sensitivity`).  Smear alone can keep cutting one
dimension while the looseness that matters comes from the relaxations of neurons driven by
the others (measured on ACAS Xu: 1_1/prop_4 and 1_4/prop_1 ran out of time with smear
alone and took 0.2-0.3 s with the sum); the width term makes every dimension shrink in
turn, the smear term orders them.  The width used to be relative to the property's box,
which splits a dimension the property already pins down (ACAS Xu prop_1: 0.05 of the range
in X_3 and X_4, 1.0 in X_1 and X_2) as often as a wide one: with the network's own units,
2_9/prop_1 went from 36 000 sub-boxes and 12.6 s to 870 and 0.4 s, and 3_3/prop_2 was
solved at all.  Strong branching (bounding both children of every dimension) and other
weights of the two terms were measured and lost (docs/benchmarks.md).

ReLU splits (``BabConfig.relu_split``): when at most that many neurons are still unstable
in an open sub-box, the relaxation error comes from those few, and halving the box may not
remove them (a neuron whose zero set crosses the box stays unstable in one child).  Then the
neuron with the largest BaBSR-style score (``|lambda_j| u_j (-l_j) / (u_j - l_j)``: the
triangle's largest gap weighted by the coefficient the bound gives its output; Bunel et al.
2020) is split into ``z >= 0`` and ``z <= 0``.  A child fixes the neuron's sign (its
relaxation becomes exact) and keeps the half-space the parent's linear bound of ``z`` implies
(``U(x) >= 0`` resp. ``L(x) <= 0``; :class:`perturbkit.sets.cut_box.CutBox`), so its bounds
only look at the part of the box where the sign can hold; a child whose cuts or fixed signs
contradict its bounds is empty and dropped.  Each child covers exactly the parent's points
where its sign holds, so the children cover the parent (tested by sampling).  The
threshold is 12: with cuts refreshed on every descendant (below), ACAS Xu 3_3/prop_2 takes
56 s at 5, 34 s at 8, 21 s at 12, 24 s at 20 (with 10 cuts), and times out at 0 (116 s);
before the refresh, thresholds above 3 were erratic (10: 1_1/prop_5 timed out).

Every sub-problem keeps the best bound of each row found on its ancestors (its set is a
subset of theirs): CROWN's adaptive relaxations are not monotone in the box, and a row a
parent proved stays proved.  For the same reason a neuron whose bounds are stable on a
sub-problem is fixed to that sign in all its children (:func:`_with_stable_signs`): the
intermediate bounds then only run CROWN for the neurons still unstable on the parent, not
for the ~5x more that interval arithmetic alone leaves looking unstable (ACAS Xu 3_3/prop_2:
5.7k -> 27k sub-problems per second).  The half-space of a ReLU split is recomputed on every
descendant from its own, tighter, bounds (:func:`_refresh_cuts`); kept from the box where the
split was made, its slack never shrinks and depth-first search can drill forever into a
sub-problem whose bound that slack keeps below zero.

The frontier is a stack processed in batches from its top (depth-first), which keeps memory
bounded by (depth x batch) and reaches counterexamples in deep sub-boxes early.  The loop,
the frontier and the batch sizing are :mod:`.frontier`'s, shared with ReLU splitting
(:mod:`.relu_split`); this module is the input-splitting strategy (:class:`InputSplit`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch

from perturbkit.bounds.alpha_crown import Adam
from perturbkit.bounds.crown import intermediate_bounds
from perturbkit.bounds.engine import Context, _exact_linear_values, backward, make_context
from perturbkit.bounds.pairs import linear_bounds_pairs
from perturbkit.graph.network import Network
from perturbkit.ops.base import Interval
from perturbkit.ops.registry import rule_for
from perturbkit.sets.box import Box
from perturbkit.sets.cut_box import CutBox
from perturbkit.verify.falsify import clause_max, pgd_in_boxes
from perturbkit.verify.frontier import BabOutcome, Bounded, Frontier, branch_and_bound
from perturbkit.verify.frontier import cat as frontier_cat
from perturbkit.verify.spec import Case

Tensor = torch.Tensor


@dataclass(frozen=True)
class BabConfig:
    """Branch-and-bound settings.

    Attributes:
        batch: sub-boxes per bound call.
        alpha_iterations: also bound the sub-problems CROWN leaves open by alpha-CROWN on
            the output rows, with this many Adam steps on the lower ReLU slopes, reusing the
            intermediate bounds already computed (:func:`_final_alpha`; 0: off).
        pgd_boxes, pgd_every, pgd_steps: every ``pgd_every`` batches, PGD (``pgd_steps``
            steps) in the ``pgd_boxes`` open sub-boxes whose centres are closest to
            satisfying a clause.
        max_boxes: give up ("unknown") past this many bounded sub-boxes.
        dtype: precision of the bounds (float64: no rounding doubts on small networks).
        relu_split: split a ReLU neuron instead of an input when at most this many are
            unstable in a sub-problem (0: input splits only); see the module docstring.
        max_cuts: ReLU splits per sub-problem at most (each adds one half-space).
    """

    batch: int = 2048
    max_boxes: int = 50_000_000
    dtype: torch.dtype = torch.float64
    alpha_iterations: int = 0
    pgd_boxes: int = 32
    pgd_every: int = 4
    pgd_steps: int = 10
    relu_split: int = 12
    max_cuts: int = 6


def rows_of(case: Case, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor, int]:
    """All clause rows stacked: C (R, n_out), d (R,), clause index of each row (R,), #clauses."""
    Cs, ds, owner = [], [], []
    for k, cl in enumerate(case.output.clauses):
        Cs.append(torch.from_numpy(np.array(cl.C)))
        ds.append(torch.from_numpy(np.array(cl.d)))
        owner += [k] * cl.C.shape[0]
    C = torch.cat(Cs).to(dtype)
    d = torch.cat(ds).to(dtype)
    return C, d, torch.tensor(owner, dtype=torch.int64), len(case.output.clauses)


class _Neurons:
    """The ReLU/LeakyReLU neurons of a network, numbered 0..M-1 node by node."""

    def __init__(self, net: Network):
        self.nodes = [n for n in net.graph.nodes if n.op_type in ("Relu", "LeakyRelu")]
        self.shapes = [tuple(net.graph.shapes[n.inputs[0]]) for n in self.nodes]
        self.sizes = [math.prod(sh) for sh in self.shapes]
        self.offsets = [0]
        for m in self.sizes:
            self.offsets.append(self.offsets[-1] + m)
        self.total = self.offsets[-1]

    def prior(self, signs: Tensor, dtype: torch.dtype) -> dict[str, Interval]:
        """Bounds implied by the split signs (N, M): +1 -> input >= 0, -1 -> input <= 0."""
        out = {}
        N = signs.shape[0]
        for node, shape, a, b in zip(self.nodes, self.shapes, self.offsets, self.offsets[1:]):
            s = signs[:, a:b]
            if not bool(s.any()):
                continue
            inf = torch.full(s.shape, math.inf, dtype=dtype)
            lo = torch.where(s > 0, torch.zeros_like(inf), -inf)
            hi = torch.where(s < 0, torch.zeros_like(inf), inf)
            out[node.inputs[0]] = Interval(lo.reshape(N, *shape), hi.reshape(N, *shape))
        return out


@dataclass
class _Boxes:
    """A chunk of the frontier: N sub-problems (box, half-space cuts, split signs)."""

    lo: Tensor  # (N, n)
    hi: Tensor  # (N, n)
    H: Tensor  # (N, K, n) cuts H x + g >= 0 (unused slots are zero)
    g: Tensor  # (N, K)
    used: Tensor  # (N,) cut slots in use
    signs: Tensor  # (N, M) int8: 0 free, +1 / -1 neuron input fixed >= 0 / <= 0
    best: Tensor  # (N, R) best lower bound of each row's margin C_i y - d_i found on an ancestor
    neuron: Tensor  # (N, K) int64: the split neuron each cut slot belongs to (-1: unused)

    _FIELDS = ("lo", "hi", "H", "g", "used", "signs", "best", "neuron")

    def __len__(self) -> int:
        return self.lo.shape[0]

    def take(self, sel) -> "_Boxes":
        return _Boxes(*(getattr(self, f)[sel] for f in self._FIELDS))

    @staticmethod
    def cat(parts: list) -> "_Boxes":
        return _Boxes(*(torch.cat([getattr(p, f) for p in parts]) for f in _Boxes._FIELDS))


def input_split(net: Network, case: Case, *, deadline: float, config: BabConfig = BabConfig(),
                is_candidate: Callable[[Tensor], bool] | None = None,
                progress: Callable[[int, int], None] | None = None) -> BabOutcome:
    """Prove ``case`` infeasible by branch and bound, or find a candidate counterexample.

    Sub-problems are split on an input dimension, or (``config.relu_split``) on a ReLU
    neuron when few neurons are still unstable in them (see the module docstring); the loop
    and the depth-first frontier are :mod:`.frontier`'s.  ``is_candidate(x)`` confirms a
    point (executes the network); it is called on points whose exact output satisfies a
    clause.  ``progress(done, open)`` reports the frontier.
    """
    if any(c.C.shape[0] == 0 for c in case.output.clauses):
        return BabOutcome("unknown", reason="a clause without rows always holds")
    strat = InputSplit(net, case, config, is_candidate)
    frontier = Frontier("depth")
    frontier.push(strat.root())

    def report(out, fr, rate):
        if progress:
            progress(out.boxes, len(fr))

    out = branch_and_bound(strat, frontier, deadline=deadline, batch=config.batch, max_domains=config.max_boxes,
                           progress=report)
    out.proved = strat.proved
    return out


class InputSplit:
    """The strategy of :func:`input_split` for the shared loop (:func:`.frontier.branch_and_bound`):
    domains are :class:`_Boxes` rows (a dict of their fields)."""

    order = "depth"

    def __init__(self, net: Network, case: Case, config: BabConfig, is_candidate):
        dt = config.dtype
        self.net, self.config, self.is_candidate = net, config, is_candidate
        self.C, self.d, self.owner, self.n_clauses = rows_of(case, dt)
        self.lo0 = torch.from_numpy(np.array(case.box.lower)).to(dt)
        self.hi0 = torch.from_numpy(np.array(case.box.upper)).to(dt)
        self.width0 = torch.where(self.hi0 > self.lo0, self.hi0 - self.lo0, torch.ones_like(self.hi0))
        self.sens = input_sensitivity(net, (self.lo0 + self.hi0) / 2)
        self.neurons = _Neurons(net)
        self.K = config.max_cuts if config.relu_split else 0
        self.proved = 0.0

    def root(self) -> dict:
        dt, n, K, R = self.config.dtype, self.lo0.numel(), self.K, self.C.shape[0]
        bx = _Boxes(self.lo0.unsqueeze(0), self.hi0.unsqueeze(0), torch.zeros(1, K, n, dtype=dt),
                    torch.zeros(1, K, dtype=dt), torch.zeros(1, dtype=torch.int64),
                    torch.zeros(1, self.neurons.total, dtype=torch.int8), torch.full((1, R), -math.inf, dtype=dt),
                    torch.full((1, K), -1, dtype=torch.int64))
        return vars(bx).copy()

    def bound(self, doms: dict) -> Bounded:
        cfg, C, d, owner, n_clauses = self.config, self.C, self.d, self.owner, self.n_clauses
        bx = _Boxes(**doms)
        N = len(bx)
        share = ((bx.hi - bx.lo) / self.width0).prod(1) * torch.pow(0.5, bx.used.to(cfg.dtype))
        cut = bool((bx.used > 0).any())
        ctx, lb, A, empty = bound_boxes(self.net, self.neurons, bx, C, record=bool(cfg.relu_split))
        if cfg.alpha_iterations:  # a second, optimised bound for the boxes CROWN left open
            unproved = clause_max(torch.maximum(lb - d, bx.best), owner, n_clauses).le(0).any(1) & ~empty
            if bool(unproved.any()):
                sel = torch.nonzero(unproved).flatten()
                lb[sel] = torch.maximum(lb[sel], _final_alpha(ctx, self.neurons, sel, C, cfg.alpha_iterations))
        # > 0: the row never holds; a sub-problem inherits its ancestors' bounds (its set is smaller)
        margin = torch.maximum(torch.where(empty.unsqueeze(1), torch.full_like(lb, math.inf), lb - d), bx.best)
        per_clause = clause_max(margin, owner, n_clauses)
        open_mask = (per_clause <= 0).any(1)
        self.proved += float(share[~open_mask].sum())
        # bx.lo / bx.hi are the boxes tightened by the cuts (the same sets)
        return Bounded(open_mask, {"ctx": ctx, "index": torch.arange(N), "A": A, "margin": margin,
                                   "per_clause": per_clause, "lo": bx.lo, "hi": bx.hi, "cut": cut})

    def _open_boxes(self, doms: dict, b: Bounded) -> _Boxes:
        bx = _Boxes(**doms)
        bx.lo, bx.hi, bx.best = b.data["lo"], b.data["hi"], b.data["margin"]
        return bx

    def probe(self, doms: dict, b: Bounded, batches: int, deadline: float) -> Optional[np.ndarray]:
        cfg, C, d, owner, n_clauses = self.config, self.C, self.d, self.owner, self.n_clauses
        bx = self._open_boxes(doms, b)
        # candidates: centres, and for every row the box corner minimising its linear bound
        cand = _candidates(bx.lo, bx.hi, b.data["A"])
        with torch.no_grad():
            y = self.net(cand.reshape(cand.shape[0], *self.net.sample_shape)).reshape(cand.shape[0], -1)
        worst = clause_max(y @ C.T - d, owner, n_clauses)  # (candidates, clauses): <= 0 holds
        hit = torch.nonzero((worst <= 0).any(1)).flatten()
        for i in hit[:8].tolist():
            if self.is_candidate is None or self.is_candidate(cand[i]):
                return cand[i].numpy()
        # falsification again, inside the sub-boxes whose centres come closest to a clause
        if cfg.pgd_boxes and batches % cfg.pgd_every == 0:
            score = worst[: len(bx)].min(1).values  # the centres come first in cand
            top = score.argsort()[: cfg.pgd_boxes]
            x = pgd_in_boxes(self.net, bx.lo[top], bx.hi[top], C, d, owner, n_clauses, steps=cfg.pgd_steps,
                             deadline=deadline)
            if x is not None and (self.is_candidate is None or self.is_candidate(x)):
                return x.numpy()
        return None

    def split(self, doms: dict, b: Bounded):
        cfg, neurons = self.config, self.neurons
        ctx, sel = b.data["ctx"], b.data["index"]
        bx = self._open_boxes(doms, b)
        bx.signs = _with_stable_signs(ctx, neurons, sel, bx.signs)
        if b.data["cut"]:
            _refresh_cuts(ctx, neurons, sel, bx)
        A, margin, per_clause = b.data["A"], b.data["margin"], b.data["per_clause"]
        # split: a neuron where few are left unstable (and a cut slot is free), else an input
        children = []
        relu = torch.zeros(len(bx), dtype=torch.bool)
        if cfg.relu_split and neurons.nodes:  # (a network without ReLUs splits inputs only)
            unstable, score = _neuron_scores(ctx, neurons, sel, margin, per_clause, self.owner)
            relu = (unstable <= cfg.relu_split) & (unstable > 0) & (bx.used < self.K)
            if bool(relu.any()):
                children += _relu_children(ctx, neurons, bx, sel, relu, score)
        rest = torch.nonzero(~relu).flatten()
        if rest.numel():
            children += _input_children(bx.take(rest), A[rest], margin[rest], per_clause[rest], self.owner, self.sens)
        return frontier_cat([vars(ch).copy() for ch in children]), None, 0


def bound_boxes(net: Network, neurons: _Neurons, bx: _Boxes, C: Tensor, *, record: bool = False):
    """CROWN lower bounds of ``C y`` on every sub-problem of ``bx``.

    Each sub-problem is the set {x in box, H x + g >= 0, fixed neuron signs hold}.  The box is
    first tightened by the cuts (``bx.lo``/``bx.hi`` are replaced: the set is unchanged).  The
    bounds hold for every x of that set; ``empty`` marks sub-problems found to be empty (a cut
    misses the box, or a fixed sign contradicts the bounds of its neuron).

    Returns ``(ctx, lb (N, R), A (N, R, n) the linear functions lb comes from, empty (N,))``;
    with ``record`` the context keeps the coefficients of the activations (neuron scores).
    """
    N = len(bx)
    dt = bx.lo.dtype
    if bool((bx.used > 0).any()):
        k = int(bx.used.max())  # slots past the most used one are all zero: leave them out
        cset = CutBox(bx.lo, bx.hi, bx.H[:, :k], bx.g[:, :k])
        empty = cset.is_empty().clone()
        bx.lo, bx.hi = cset.lower, cset.upper
        in_set = cset
    else:
        empty = torch.zeros(N, dtype=torch.bool)
        in_set = Box(bx.lo.reshape(N, *net.sample_shape), bx.hi.reshape(N, *net.sample_shape))
    ctx = make_context(net, in_set)
    if bool(bx.signs.any()):
        ctx.prior = neurons.prior(bx.signs, dt)
    R = C.shape[0]
    with torch.no_grad():
        intermediate_bounds(ctx, mode="crown")
        ctx.keep_input_coeffs = True
        ctx.activation_coeffs = {} if record else None
        # lower bounds of the rows only (their upper bounds are never used here)
        r = backward(ctx, net.graph.output_name, C.unsqueeze(0).expand(N, R, -1).reshape(N, R, *net.graph.output_shape))
    for name in ctx.prior:  # a fixed sign its bounds contradict: that part of the box is empty
        itv = ctx.intervals[name]
        empty |= (itv.lo > itv.hi).reshape(N, -1).any(1)
    A = ctx.input_coeffs
    if A is None:
        A = torch.zeros(N, 2 * R, net.n_inputs, dtype=dt)
    return ctx, r[:, :R], A[:, :R], empty


def _final_alpha(ctx, neurons: _Neurons, sel: Tensor, C: Tensor, iterations: int) -> Tensor:
    """alpha-CROWN on the output rows only, for batch entries ``sel``, with the intermediate
    bounds already in ``ctx`` (no recomputation): the lower slopes of every unstable ReLU,
    one set per row, start at CROWN's adaptive choice and follow Adam (lr 0.5) within
    [0, 1] for ``iterations`` steps.  Every iterate is a valid bound; the best per row is
    returned (M, R)."""

    M = sel.numel()
    R = C.shape[0]
    net = ctx.net
    sub = Context(net=net, consts=ctx.consts, batch=M, input_set=ctx.input_set.index(sel), dtype=ctx.dtype,
                  device=ctx.device, position=ctx.position, consumer_count=ctx.consumer_count, use_patches=False)
    sub.intervals = {v: Interval(x.lo[sel], x.hi[sel]) for v, x in ctx.intervals.items()}
    sub.const_parts = ctx.const_parts
    A = C.unsqueeze(0).expand(M, R, -1).reshape(M, R, *net.graph.output_shape)
    alphas = {}
    for node, sh in zip(neurons.nodes, neurons.shapes):
        itv = sub.intervals[node.inputs[0]]
        start = (itv.hi > -itv.lo).to(ctx.dtype).reshape(M, 1, *sh).expand(M, R, *sh)
        alphas[node.name] = start.clone().requires_grad_(True)
    with torch.no_grad():
        best = backward(sub, net.graph.output_name, A)
    opt = Adam(list(alphas.values()), lr=0.5)
    with torch.enable_grad():
        for _ in range(iterations):
            r = backward(sub, net.graph.output_name, A, alphas=alphas)
            best = torch.maximum(best, r.detach())
            grads = torch.autograd.grad(-r.sum(), list(alphas.values()))
            with torch.no_grad():
                opt.step(grads)
                for a in alphas.values():
                    a.clamp_(0.0, 1.0)
    with torch.no_grad():
        best = torch.maximum(best, backward(sub, net.graph.output_name, A, alphas=alphas))
    return best


def _with_stable_signs(ctx, neurons: _Neurons, sel: Tensor, signs: Tensor) -> Tensor:
    """``signs`` (len(sel), M) with every neuron the bounds of entries ``sel`` show stable
    fixed to its sign.  A sub-problem's set lies inside its parent's, so a neuron stable on
    the parent is stable on every child: passed down as a prior, it needs no CROWN pass
    there (interval arithmetic alone leaves ~5x more neurons looking unstable on ACAS Xu)."""
    out = signs.clone()
    for node, a, e in zip(neurons.nodes, neurons.offsets, neurons.offsets[1:]):
        itv = ctx.intervals[node.inputs[0]]
        lo = itv.lo.reshape(ctx.batch, -1)[sel]
        hi = itv.hi.reshape(ctx.batch, -1)[sel]
        part = out[:, a:e]
        free = part == 0
        part[free & (lo >= 0)] = 1
        part[free & (hi <= 0)] = -1
    return out


def _refresh_cuts(ctx, neurons: _Neurons, sel: Tensor, bx: _Boxes) -> None:
    """Replace each cut of the open sub-problems ``bx`` (entries ``sel`` of the bounding
    batch) by the half-space of the same split computed on the sub-problem itself.

    A split of z_j >= 0 keeps ``U(x) >= 0`` with U the linear upper bound of z_j on the box
    where the split was made; the set it admits exceeds {z_j >= 0} by a sliver whose width
    is fixed by that box, so halving the box below it never closes the sliver, and the
    bound of every descendant can stay below a small margin forever (seen on ACAS Xu 3_3
    prop_2: depth-first search drilling to 1e-6-wide boxes).  The bound of z_j on the current
    set S (a subset of the original box, intersected with the cuts) is tighter, and still
    valid: every point of the sub-problem lies in S and has z_j >= 0, so U_S(x) >= 0 there.
    The children of ``bx`` inherit the refreshed cuts.
    """
    slot_box, slot_k = torch.nonzero(bx.neuron >= 0, as_tuple=True)
    if slot_box.numel() == 0:
        return
    j = bx.neuron[slot_box, slot_k]
    sign = bx.signs[slot_box, j]
    for node, a, e in zip(neurons.nodes, neurons.offsets, neurons.offsets[1:]):
        mine = torch.nonzero((j >= a) & (j < e)).flatten()
        if mine.numel() == 0:
            continue
        Al, bl, Au, bu = linear_bounds_pairs(ctx, node.inputs[0], sel[slot_box[mine]], j[mine] - a)
        pos = (sign[mine] > 0).unsqueeze(1)
        H = torch.where(pos, Au, -Al)
        g = torch.where(pos.squeeze(1), bu, -bl)
        bx.H[slot_box[mine], slot_k[mine]] = H
        bx.g[slot_box[mine], slot_k[mine]] = g


def _input_children(bx: _Boxes, A: Tensor, margin: Tensor, per_clause: Tensor, owner: Tensor,
                    sens: Tensor) -> list:
    dim = _split_dim(bx.lo, bx.hi, A, margin, per_clause, owner, sens)
    mid = (bx.lo.gather(1, dim[:, None]) + bx.hi.gather(1, dim[:, None])) / 2
    left = _Boxes(bx.lo, bx.hi.clone().scatter_(1, dim[:, None], mid), bx.H, bx.g, bx.used, bx.signs, bx.best,
                  bx.neuron)
    right = _Boxes(bx.lo.clone().scatter_(1, dim[:, None], mid), bx.hi, bx.H, bx.g, bx.used, bx.signs, bx.best,
                   bx.neuron)
    return [left, right]


def _neuron_scores(ctx, neurons: _Neurons, sel: Tensor, margin: Tensor, per_clause: Tensor,
                   owner: Tensor) -> tuple[Tensor, Tensor]:
    """Per open box: the number of unstable neurons (N,) and a score per neuron (N, M).

    Score (after BaBSR, Bunel et al. 2020): ``|lambda_j| * u_j (-l_j) / (u_j - l_j)``, the
    largest gap of neuron j's triangle relaxation weighted by the coefficient its relu output
    gets in the lower bound of the best row of every open clause; -inf for stable neurons.
    """
    N = sel.numel()
    clause_best = per_clause.gather(1, owner.expand(N, -1))
    row_open = ((clause_best <= 0) & (margin >= clause_best)).to(margin.dtype)  # (N, R)
    R = margin.shape[1]
    counts = torch.zeros(N, dtype=torch.int64)
    scores = []
    for node in neurons.nodes:
        itv = ctx.intervals[node.inputs[0]]
        lo = itv.lo.reshape(ctx.batch, -1)[sel]
        hi = itv.hi.reshape(ctx.batch, -1)[sel]
        unst = (lo < 0) & (hi > 0)
        counts += unst.sum(1)
        lam = ctx.activation_coeffs.get(node.name)
        gap = torch.where(unst, hi * (-lo) / torch.where(unst, hi - lo, torch.ones_like(hi)), torch.zeros_like(hi))
        if lam is None:
            w = torch.ones_like(gap)
        else:
            w = (lam.reshape(ctx.batch, lam.shape[1], -1)[sel][:, :R].abs() * row_open.unsqueeze(2)).sum(1)
        scores.append(torch.where(unst, w * gap, torch.full_like(gap, -math.inf)))
    return counts, torch.cat(scores, 1)


def _relu_children(ctx, neurons: _Neurons, bx: _Boxes, sel: Tensor, relu: Tensor, score: Tensor) -> list:
    """Split the best-scored unstable neuron of the boxes marked ``relu``: two children each,
    with the sign fixed and the half-space its parent's linear bound of the neuron implies."""
    rows = torch.nonzero(relu).flatten()
    j = score[rows].argmax(1)  # global neuron index
    b = sel[rows]  # entries of the bounding batch
    parent = bx.take(rows)
    P = rows.numel()
    n = parent.lo.shape[1]
    H_act = torch.zeros(P, n, dtype=parent.lo.dtype)
    g_act = torch.zeros(P, dtype=parent.lo.dtype)
    H_ina, g_ina = H_act.clone(), g_act.clone()
    for k, (node, a, e) in enumerate(zip(neurons.nodes, neurons.offsets, neurons.offsets[1:])):
        mine = (j >= a) & (j < e)
        if not bool(mine.any()):
            continue
        idx = torch.nonzero(mine).flatten()
        Al, bl, Au, bu = linear_bounds_pairs(ctx, node.inputs[0], b[idx], j[idx] - a)
        H_ina[idx], g_ina[idx] = -Al, -bl  # L(x) <= z <= 0
        H_act[idx], g_act[idx] = Au, bu  # 0 <= z <= U(x)
    slot = parent.used.unsqueeze(1)
    children = []
    for sign, Hn, gn in ((1, H_act, g_act), (-1, H_ina, g_ina)):
        H = parent.H.clone()
        g = parent.g.clone()
        H.scatter_(1, slot.unsqueeze(2).expand(P, 1, n), Hn.unsqueeze(1))
        g.scatter_(1, slot, gn.unsqueeze(1))
        signs = parent.signs.clone()
        signs[torch.arange(P), j] = sign
        neuron = parent.neuron.clone().scatter_(1, slot, j.unsqueeze(1))
        children.append(_Boxes(parent.lo, parent.hi, H, g, parent.used + 1, signs, parent.best, neuron))
    return children


def input_sensitivity(net: Network, centre: Tensor) -> Tensor:
    """(n,) how strongly each input dimension moves the network's first layer:
    ``sum_k |dz_k / dx_j|`` over the values z that nonlinear nodes read while they are still
    affine functions of the input (the linear prefix: first-layer pre-activations, after any
    normalisation).  Affine, so one finite difference per dimension is exact.  A width times
    this is the spread that dimension gives the first layer, in the units the network sees,
    whatever units the property's input box is written in (1e-12 of the largest at least)."""
    g = net.graph
    _, linear = _exact_linear_values(net, True)
    read = {i for node in g.nodes if rule_for(node, g.source).kind != "affine" for i in node.inputs if i in linear}
    if g.output_name in linear:
        read.add(g.output_name)
    n = centre.numel()
    x = centre.to(torch.float64).reshape(1, n).repeat(n + 1, 1)
    x[1:] += torch.eye(n, dtype=torch.float64)
    with torch.no_grad():
        vals = net.run(net.internal(x.reshape(n + 1, *net.sample_shape), n + 1))
    sens = torch.zeros(n, dtype=torch.float64)
    for name in read:
        v = vals[name].reshape(n + 1, -1).to(torch.float64)
        sens += (v[1:] - v[:1]).abs().sum(1)
    if not bool(torch.isfinite(sens).all()) or float(sens.max()) <= 0:
        return torch.ones(n, dtype=centre.dtype)
    return sens.clamp_min(1e-12 * float(sens.max())).to(centre.dtype)


def _candidates(lo: Tensor, hi: Tensor, A: Tensor) -> Tensor:
    """(N*(1+R), n): centres and, per row, the box corner minimising the row's bound."""
    mid = (lo + hi) / 2
    corners = torch.where(A > 0, lo.unsqueeze(1), hi.unsqueeze(1))  # (N, R, n)
    return torch.cat([mid, corners.reshape(-1, lo.shape[1])])


def _split_dim(lo: Tensor, hi: Tensor, A: Tensor, margin: Tensor, per_clause: Tensor, owner: Tensor,
               sens: Tensor) -> Tensor:
    """Dimension to split per box (see the module docstring): (N,) int64.

    Score = smear (``|a_j| * width_j`` summed over the best row of every open clause) plus
    the width in the network's units (``width_j * sens_j``, :func:`input_sensitivity`), each
    normalised to a maximum of 1 per box.
    """
    N, R, n = A.shape
    width = hi - lo
    clause_best = per_clause.gather(1, owner.expand(N, -1))  # (N, R): best margin of the row's clause
    row_open = (clause_best <= 0) & (margin >= clause_best)  # the best row of each open clause
    smear = ((A.abs() * width.unsqueeze(1)) * row_open.unsqueeze(2).to(A.dtype)).sum(1)
    smear = smear / smear.max(1, keepdim=True).values.clamp_min(torch.finfo(A.dtype).tiny)
    rel = width * sens
    rel = rel / rel.max(1, keepdim=True).values.clamp_min(torch.finfo(A.dtype).tiny)
    score = torch.where(width > 0, smear + rel, torch.full_like(smear, -1.0))
    return score.argmax(1)
