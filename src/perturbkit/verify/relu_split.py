"""ReLU-splitting branch and bound with beta-CROWN, for high-dimensional inputs.

Input splitting cannot scale to images; here a domain is a set of split decisions on
ReLU neurons (input ``z_j >= 0`` or ``<= 0``) over the whole input box of the case.

* **Root.** alpha-CROWN with optimised intermediate bounds on the whole box (every clause's
  rows at once).  The tightest intermediate bounds it saw are every domain's start; the
  neurons unstable there are the splittable ones (:class:`SplitIndex`).
* **Refine** (``ReluSplitConfig.refine``): before its optimisation a domain recomputes, by
  CROWN with its clamped intervals, the bounds of the free unstable neurons in the nodes
  after its newest splits (:func:`~perturbkit.bounds.beta_crown.refine_intervals`); they
  are intersected with its own, kept, and passed to its children; a domain whose bounds
  cross is empty (proved).  A node whose recomputed neurons shrink by under 0.5% at once,
  or under 2% on average over 3 batches, is no longer recomputed in the run.
* **Bound** (one batched call per batch of domains): beta-CROWN on the clause's rows
  (:mod:`perturbkit.bounds.beta_crown`): the intervals of split neurons clamped to their
  sign, the split constraints in the bound through multipliers beta >= 0, beta and the
  slopes alpha optimised jointly by Adam, warm-started from the parent.  A domain is
  proved when one of the clause's rows has a lower bound above the rounding margin.
* **Probe.** The minimiser over the box of each domain's linear lower bound is executed
  through the network; every few batches PGD runs from those points of the worst domains.
  A point where the clause holds is confirmed (ONNX Runtime for ONNX models) before "sat".
* **Split.** Filtered smart branching (kFSB; De Palma et al. 2021, as alpha-beta-CROWN
  uses it): every unsplit neuron gets a cheap score, the relaxation gap the bound pays for
  it (``(-lam)^+ u(-l)/(u-l) + lam^+ max((1-a)u, -a l)``, with ``lam`` the bound's
  coefficient on the neuron's output and ``a`` its lower slope: BaBSR's intercept term,
  Bunel et al. 2020, plus the lower line's gap); the ``candidates`` best are then each split
  for real, both children bounded in one batched pass with the parent's parameters, and the
  candidate whose worse child is best wins.  Chosen over plain BaBSR because BaBSR's score
  is a guess at the improvement and the real bound of the children costs two passes per
  candidate, against ~20 optimisation steps per domain: measured in docs/benchmarks.md.
  Those children's bounds are sound, so they become the children's floors and children
  they already prove are never queued.
* **Frontier**: best-first by lower bound, memory-capped (:mod:`.frontier`).

A case is unsat when no clause can hold: the clauses the root leaves open share one
frontier (each domain carries its clause), so batches stay large when each clause alone
leaves few domains open.
Bounds are computed in ``ReluSplitConfig.dtype`` (float32: images); a domain counts as
proved only when its bound exceeds ``margin * (1 + |row value at the box centre|)``, far
above float32 rounding of the bound computation.
"""
from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch

from perturbkit.bounds.alpha_crown import AlphaConfig, alpha_crown
from perturbkit.bounds.beta_crown import (BetaConfig, SplitIndex, beta_crown, clamp_intervals, evaluate,
                                          compress, initial_alpha, refine_intervals)
from perturbkit.bounds.engine import Context, make_context
from perturbkit.graph.network import Network
from perturbkit.ops.registry import rule_for
from perturbkit.sets.box import Box
from perturbkit.verify.falsify import clause_max, pgd_from
from perturbkit.verify.frontier import BabOutcome, Bounded, Frontier, _rows, branch_and_bound
from perturbkit.verify.spec import Case

Tensor = torch.Tensor


@dataclass(frozen=True)
class ReluSplitConfig:
    """Settings of ReLU-splitting branch and bound (see the module docstring).

    Attributes:
        batch: domains per bound call, at most.
        root_iterations: alpha-CROWN steps on the root (intermediate bounds optimised).
        beta: the optimisation of every batch (warm-started).
        candidates: neurons evaluated per domain by kFSB (1: the filter score alone).
        max_split_depth: while the open domains would not fill a batch, each is split on up
            to this many of its best candidates at once (2^D children).
        pgd_every, pgd_domains, pgd_steps: PGD from the bound minimisers of the
            ``pgd_domains`` worst domains every ``pgd_every`` batches.
        memory_bytes: frontier budget; past it the frontier shrinks, past 1.5x it stops.
        margin: relative rounding margin a proof needs.
        dtype: precision of the bounds.
        refine: before each domain's optimisation, CROWN bounds of the splittable neurons
            after its splits, with the splits' clamped intervals (:func:`refine_intervals`);
            a domain keeps them and passes them to its children.
    """

    batch: int = 512
    root_iterations: int = 40
    beta: BetaConfig = field(default_factory=BetaConfig)
    candidates: int = 3
    max_split_depth: int = 3
    pgd_every: int = 4
    pgd_domains: int = 32
    pgd_steps: int = 20
    memory_bytes: int = 2 * 2**30
    margin: float = 1e-5
    dtype: torch.dtype = torch.float32
    refine: bool = True


@dataclass
class Root:
    """What every domain of a case shares: the fixed intermediate bounds, the splittable
    neurons, and the root's bounds and slopes for every row of the case."""

    ctx: Context
    intervals: dict
    split: SplitIndex
    lower: Tensor  # (R,) root lower bound of every row (C y, before d)
    alpha: Tensor  # (1, R, U) root slopes of the output rows


def prepare_root(net: Network, lo: Tensor, hi: Tensor, C: Tensor, config: ReluSplitConfig) -> Root:
    """alpha-CROWN on the whole box (lo, hi: (n,)), intermediate bounds optimised and kept."""
    dt = config.dtype
    box = Box(lo.to(dt).reshape(1, *net.sample_shape), hi.to(dt).reshape(1, *net.sample_shape))
    ctx = make_context(net, box)
    A = C.to(dt).unsqueeze(0)
    lb, _, alphas = alpha_crown(ctx, A, AlphaConfig(iterations=config.root_iterations, lower_only=True,
                                                    keep_intermediate=True))
    intervals = dict(ctx.intervals)
    nodes, index, shapes = [], [], []
    for node in net.graph.nodes:
        if node.op_type not in ("Relu", "LeakyRelu"):
            continue
        itv = intervals[node.inputs[0]]
        unstable = ((itv.lo < 0) & (itv.hi > 0)).reshape(-1)
        nodes.append(node)
        index.append(torch.nonzero(unstable).flatten())
        shapes.append(tuple(net.graph.shapes[node.inputs[0]]))
    split = SplitIndex(nodes, index, shapes)
    out_alpha = alphas.get(net.graph.output_name, {})
    R = C.shape[0]
    parts = []
    ctx.intervals = intervals
    init = initial_alpha(ctx, split, R)
    for node, idx, shape, a, b in split.parts():
        t = out_alpha.get(node.name)
        if t is not None and t.shape[1] == R:
            parts.append(t.detach().reshape(1, R, -1)[:, :, idx].to(dt))
        else:
            parts.append(init[:, :, a:b])
    alpha = torch.cat(parts, 2) if parts else torch.zeros(1, R, 0, dtype=dt)
    return Root(ctx, intervals, split, lb.detach().reshape(-1), alpha)


def _domain_context(root: Root, intervals: dict, N: int) -> Context:
    rc = root.ctx
    ctx = Context(net=rc.net, consts=rc.consts, batch=N, input_set=rc.input_set.index(torch.zeros(N, dtype=torch.long)),
                  dtype=rc.dtype, device=rc.device, position=rc.position, consumer_count=rc.consumer_count,
                  use_patches=False)
    ctx.intervals = intervals
    ctx.const_parts = rc.const_parts
    return ctx


class ReluSplit:
    """The strategy of :func:`relu_split`.  All clauses a case leaves open share one frontier
    (a domain carries its clause; batches mix them): clause ``k`` has rows ``C y <= d`` padded
    to ``Rm`` rows (padding rows have ``d = +inf`` and can never prove), and a domain is proved
    when one row's lower bound of ``C_i y - d_i`` is above the margin."""

    order = "best"

    def __init__(self, net: Network, root: Root, C: Tensor, d: Tensor, tol: Tensor, lo: Tensor, hi: Tensor,
                 config: ReluSplitConfig, is_candidate: Callable[[Tensor], bool] | None):
        self.net, self.root, self.config = net, root, config
        self.C, self.d, self.tol = C, d, tol  # (K, Rm, n_out), (K, Rm), (K, Rm) per clause
        self.R = C.shape[1]
        self.lo, self.hi = lo, hi  # (n,) the case's box, in config.dtype
        self.is_candidate = is_candidate
        self.found: Optional[np.ndarray] = None
        self._gain: dict[int, tuple[int, float]] = {}  # node position -> (batches, mean width gain)
        self._no_refine: set[int] = set()
        self._own_bounds = False  # some domain's bounds are tighter than the root's
        #: only ReLU/LeakyReLU nonlinearities: a fully split domain is affine (exact leaves)
        self.piecewise_linear = all(rule_for(n, net.graph.source).kind == "affine" or n.op_type in ("Relu", "LeakyRelu")
                                    for n in net.graph.nodes)
        lo_u, hi_u = compress(root.intervals, root.split, 1)  # (U,) root bounds of the splittable neurons
        self.root_lo, self.root_hi = lo_u[0].to(config.dtype), hi_u[0].to(config.dtype)

    def root_domains(self, clauses: Tensor, alpha: Tensor, margin: Tensor) -> dict:
        """One root domain per clause (clauses (K',), alpha (K', Rm, U), margin (K', Rm))."""
        U, K = self.root.split.total, clauses.numel()
        return {"signs": torch.zeros(K, U, dtype=torch.int8), "alpha": alpha.clone(),
                "lo": self.root_lo.unsqueeze(0).repeat(K, 1), "hi": self.root_hi.unsqueeze(0).repeat(K, 1),
                "since": torch.full((K,), len(self.root.split.nodes), dtype=torch.int16),
                "beta": torch.zeros(K, self.R, U, dtype=self.config.dtype), "best": margin.clone(),
                "clause": clauses.clone(), "depth": torch.zeros(K, dtype=torch.int16)}

    # -- the one bound call -------------------------------------------------------------
    def _context(self, signs: Tensor, lo: Tensor, hi: Tensor) -> Context:
        if not self._own_bounds:  # (the root's intervals: only the split neurons change)
            lo = hi = None
        return _domain_context(self.root, clamp_intervals(self.root.intervals, self.root.split, signs, lo, hi),
                               signs.shape[0])

    def _bound(self, signs: Tensor, lo: Tensor, hi: Tensor, clause: Tensor, alpha: Tensor, beta: Tensor,
               floor: Optional[Tensor], config: BetaConfig):
        N = signs.shape[0]
        ctx = self._context(signs, lo, hi)
        A = self.C[clause].reshape(N, self.R, *self.net.graph.output_shape)
        d = self.d[clause]
        # (padding rows: d = +inf; their floors stay -inf)
        res = beta_crown(ctx, self.root.split, signs, A, alpha, beta, config,
                         floor=None if floor is None else torch.where(torch.isfinite(d), floor + d, floor),
                         stop_at=d + self.tol[clause])
        return res

    def bound(self, doms: dict) -> Bounded:
        signs, lo, hi = doms["signs"], doms["lo"], doms["hi"]
        empty = torch.zeros(signs.shape[0], dtype=torch.bool)
        todo = [p for p in range(len(self.root.split.nodes)) if p not in self._no_refine]
        if self.config.refine and self.root.split.total and todo and int(doms["since"].min()) < max(todo):
            gains: dict = {}
            lo, hi, empty = refine_intervals(self._context(signs, lo, hi), self.root.split, signs, doms["since"],
                                             frozenset(self._no_refine), gains)
            self._judge_refinement(gains)
            hi = torch.maximum(hi, lo)
        res = self._bound(signs, lo, hi, doms["clause"], doms["alpha"], doms["beta"], doms["best"], self.config.beta)
        margin = res.lower - self.d[doms["clause"]]
        # an empty domain (its splits contradict each other on the box) holds no input
        margin = torch.where(empty.unsqueeze(1) & torch.isfinite(margin), torch.full_like(margin, math.inf), margin)
        proved = (margin > self.tol[doms["clause"]]).any(1) | empty
        return Bounded(~proved, {"margin": margin, "alpha": res.alpha, "beta": res.beta,
                                 "A": res.input_coeffs, "coeffs": res.relu_coeffs, "lo": lo, "hi": hi})

    def _judge_refinement(self, gains: dict) -> None:
        """Stop recomputing a node's bounds once it does not pay: at once when the mean width
        reduction of its recomputed neurons is under 0.5%, after 3 batches when their running
        mean is under 2% (on the CNNs of oval21 the root's optimised bounds are not beaten; on
        MLPs the last layers' shrink by 10-30%: docs/benchmarks.md)."""
        for p, g in gains.items():
            self._own_bounds |= g > 0
            n, mean = self._gain.get(p, (0, 0.0))
            n, mean = n + 1, mean + (g - mean) / (n + 1)
            self._gain[p] = (n, mean)
            if (n >= 3 and mean < 0.02) or mean < 0.005:
                self._no_refine.add(p)

    # -- probe: the bound's minimisers, and PGD from the worst -----------------------------
    def _holds(self, y: Tensor, clause: Tensor) -> Tensor:
        """(P,) the largest ``C_i y - d_i`` of each point's clause (<= 0: the clause holds)."""
        return (torch.einsum("pro,po->pr", self.C[clause], y.to(self.C.dtype)) - self.d[clause]).max(1).values

    def probe(self, doms: dict, b: Bounded, batches: int, deadline: float) -> Optional[np.ndarray]:
        if self.found is not None:  # (an exact leaf of the previous split)
            return self.found
        A = b.data["A"]
        N = doms["signs"].shape[0]
        if A is None:
            return None
        x = torch.where(A > 0, self.lo, self.hi).reshape(N * self.R, -1)  # minimiser of each row's bound
        clause = doms["clause"].repeat_interleave(self.R)
        with torch.no_grad():
            y = self.net(x.reshape(x.shape[0], *self.net.sample_shape)).reshape(x.shape[0], -1)
        g = self._holds(y, clause)
        for i in torch.nonzero(g <= 0).flatten()[:8].tolist():
            if self.is_candidate is None or self.is_candidate(x[i]):
                return x[i].double().numpy()
        cfg = self.config
        if cfg.pgd_domains and batches % cfg.pgd_every == 0:
            worst = b.data["margin"].max(1).values.argsort()[: cfg.pgd_domains]
            for k in doms["clause"][worst].unique().tolist():  # PGD on each clause's worst domains
                mine = worst[doms["clause"][worst] == k]
                starts = x.reshape(N, self.R, -1)[mine].reshape(-1, x.shape[1])
                rows = torch.isfinite(self.d[k])
                owner = torch.zeros(int(rows.sum()), dtype=torch.int64)
                cand = pgd_from(self.net, starts, self.lo, self.hi, self.C[k][rows], self.d[k][rows], owner, 1,
                                steps=cfg.pgd_steps, deadline=deadline)
                if cand is not None and (self.is_candidate is None or self.is_candidate(cand)):
                    return cand.double().numpy()
        return None

    # -- split: kFSB -----------------------------------------------------------------------
    def scores(self, doms: dict, b: Bounded) -> Tensor:
        """(N, U) filter scores; -inf for split neurons."""
        split = self.root.split
        N = doms["signs"].shape[0]
        margin = b.data["margin"]
        row = margin.argmax(1)  # the clause's most promising row
        alpha = b.data["alpha"][torch.arange(N), row]  # (N, U)
        parts = []
        for node, idx, shape, a, e in split.parts():
            lam = b.data["coeffs"].get(node.name)
            if lam is None:
                parts.append(torch.zeros(N, e - a, dtype=margin.dtype))
                continue
            lam = lam.reshape(N, self.R, -1)[torch.arange(N), row][:, idx]
            parts.append(lam)
        lam = torch.cat(parts, 1) if parts else torch.zeros(N, 0, dtype=margin.dtype)
        l, u = b.data["lo"], b.data["hi"]  # the domain's own bounds
        unstable = (l < 0) & (u > 0)
        gap_up = torch.where(unstable, u * (-l) / (u - l).clamp_min(1e-12), torch.zeros_like(u))
        gap_low = torch.where(unstable, torch.maximum((1 - alpha) * u, -alpha * l), torch.zeros_like(u))
        s = lam.clamp(max=0).neg() * gap_up + lam.clamp(min=0) * gap_low
        # a neuron stable in the domain has an exact relaxation: splitting it gains nothing
        return torch.where((doms["signs"] == 0) & unstable, s, torch.full_like(s, -math.inf))

    def split(self, doms: dict, b: Bounded):
        cfg = self.config
        U = self.root.split.total
        score = self.scores(doms, b)
        leaf = ~torch.isfinite(score).any(1) if U else torch.ones(score.shape[0], dtype=torch.bool)
        if bool(leaf.any()):  # every splittable neuron fixed: the domain is a polytope, solved exactly
            if not self.piecewise_linear:
                raise _Undecided("every ReLU of a domain is split and its bound does not prove it; the "
                                 "network has other nonlinearities, so no exact answer there")
            cand = self._exact_leaves({k: v[leaf] for k, v in doms.items()}, b.data["lo"][leaf], b.data["hi"][leaf])
            if cand is not None:
                self.found = cand
            keep = torch.nonzero(~leaf).flatten()
            doms = {k: v[keep] for k, v in doms.items()}
            b = Bounded(b.open[keep], {k: _rows(v, keep, leaf.numel()) for k, v in b.data.items()})
            score = score[keep]
        N = doms["signs"].shape[0]
        if N == 0:
            return doms, torch.zeros(0, dtype=torch.float64), 0
        k = max(1, min(cfg.candidates, U))
        top = score.topk(k, 1)
        cand = top.indices  # (N, k)
        valid = torch.isfinite(top.values)
        # both children of every candidate, bounded with the parent's parameters
        signs = doms["signs"].unsqueeze(1).repeat(1, 2 * k, 1)  # (N, 2k, U): [active x k, inactive x k]
        j = cand.repeat(1, 2)
        val = torch.cat([torch.ones(N, k, dtype=torch.int8), -torch.ones(N, k, dtype=torch.int8)], 1)
        signs.scatter_(2, j.unsqueeze(2), val.unsqueeze(2))
        signs = signs.reshape(N * 2 * k, U)
        clause = doms["clause"].repeat_interleave(2 * k)
        alpha = b.data["alpha"].repeat_interleave(2 * k, 0)
        beta = b.data["beta"].repeat_interleave(2 * k, 0)
        lo, hi = b.data["lo"].repeat_interleave(2 * k, 0), b.data["hi"].repeat_interleave(2 * k, 0)
        with torch.no_grad():
            lb = self._bound(signs, lo, hi, clause, alpha, beta, None, BetaConfig(iterations=0)).lower
        child = torch.maximum(lb - self.d[clause], b.data["margin"].repeat_interleave(2 * k, 0))  # (N*2k, R)
        child_best = child.max(1).values.reshape(N, 2, k)
        worse = torch.minimum(child_best[:, 0], child_best[:, 1])
        worse = torch.where(valid, torch.nan_to_num(worse, nan=-math.inf), torch.full_like(worse, -math.inf))
        # split the best D candidates at once (2^D children) when the batch would be far from
        # full: few open domains make small batches, whose fixed costs dominate
        D = 1
        if cfg.max_split_depth > 1 and N < cfg.batch:
            D = int(math.log2(cfg.batch / N))
        D = max(1, min(D, cfg.max_split_depth, k, int(valid.sum(1).min())))
        sel = worse.argsort(1, descending=True)[:, :D]  # (N, D) candidate positions, best first
        combos = torch.tensor(list(itertools.product([0, 1], repeat=D)), dtype=torch.long)  # (2^D, D) side
        P = combos.shape[0]
        base = (torch.arange(N) * 2 * k).reshape(N, 1, 1)
        idx = base + combos.reshape(1, P, D) * k + sel.reshape(N, 1, D)  # (N, P, D) rows of the evaluation
        floor = child[idx.reshape(-1)].reshape(N, P, D, -1).max(2).values.reshape(N * P, -1)
        neuron = cand.gather(1, sel)  # (N, D)
        new_signs = doms["signs"].repeat_interleave(P, 0).reshape(N, P, U)
        val = torch.where(combos == 0, 1, -1).to(torch.int8).reshape(1, P, D).expand(N, P, D)
        new_signs.scatter_(2, neuron.reshape(N, 1, D).expand(N, P, D), val)
        parent = torch.arange(N).repeat_interleave(P)
        out = {"signs": new_signs.reshape(N * P, U), "alpha": b.data["alpha"][parent], "beta": b.data["beta"][parent],
               "lo": b.data["lo"][parent], "hi": b.data["hi"][parent],
               # the earliest node of the new splits: the intervals after it are refined
               "since": self.root.split.node_of(neuron).min(1).values.to(torch.int16).repeat_interleave(P),
               "best": floor, "clause": doms["clause"][parent], "depth": doms["depth"][parent] + D}
        keys = out["best"].max(1).values
        keep = ~((out["best"] > self.tol[out["clause"]]).any(1))
        extra = 2 * N * k
        return {name: v[keep] for name, v in out.items()}, keys[keep], extra

    def _exact_leaves(self, doms: dict, lo: Tensor, hi: Tensor) -> Optional[np.ndarray]:
        """Decide domains whose splittable neurons are all fixed.  There the network is affine
        (every other neuron is stable in the domain's own bounds), so ``C f(x) = W x + b`` and each split
        ``s_j z_j(x) >= 0`` is a half-space, all read exactly from one backward pass; the LP
        ``min t : W_i x + b_i - d_i <= t, s_j z_j(x) >= 0, x in box`` (HiGHS) says whether the
        clause can hold.  Returns a confirmed counterexample, or None (all infeasible: proved);
        raises :class:`_Undecided` when the LP's optimum is within the rounding margin."""
        from scipy.optimize import linprog

        split = self.root.split
        signs = doms["signs"]
        N = signs.shape[0]
        ctx = self._context(signs, lo, hi)  # every neuron not split is stable in the domain
        clause = doms["clause"]
        A = self.C[clause].reshape(N, self.R, *self.net.graph.output_shape)
        W, bias = _affine(ctx, ctx.graph.output_name, A)  # (N, R, n), (N, R)
        zs = []
        for node, idx, shape, a, e in split.parts():
            k = idx.numel()
            if k == 0:
                continue
            E = torch.zeros(k, math.prod(shape), dtype=ctx.dtype)
            E[torch.arange(k), idx] = 1.0
            zs.append(_affine(ctx, node.inputs[0], E.reshape(1, k, *shape).expand(N, k, *shape)))
        Az = torch.cat([z[0] for z in zs], 1) if zs else torch.zeros(N, 0, W.shape[2], dtype=W.dtype)
        cz = torch.cat([z[1] for z in zs], 1) if zs else torch.zeros(N, 0, dtype=W.dtype)
        lo = self.lo.double().numpy()
        hi = self.hi.double().numpy()
        n = lo.size
        for i in range(N):
            s = signs[i].double().numpy()
            real = torch.isfinite(self.d[clause[i]])
            Wi, bi = W[i][real].double().numpy(), bias[i][real].double().numpy()
            di, tol = self.d[clause[i]][real].double().numpy(), float(self.tol[clause[i]][real].max())
            # rows: W x - t <= d - b ;  -s_j (a_j x) <= s_j c_j
            A_ub = np.vstack([np.hstack([Wi, -np.ones((Wi.shape[0], 1))]),
                              np.hstack([-(s[:, None] * Az[i].double().numpy()), np.zeros((s.size, 1))])])
            b_ub = np.concatenate([di - bi, s * cz[i].double().numpy()])
            c = np.zeros(n + 1)
            c[-1] = 1.0
            r = linprog(c, A_ub=A_ub, b_ub=b_ub, bounds=list(zip(lo, hi)) + [(None, None)], method="highs")
            if r.status == 2:  # infeasible: the split pattern never occurs in the box
                continue
            if r.status != 0:
                raise _Undecided(f"the exact LP of a fully split domain failed ({r.message})")
            t = float(r.x[-1])
            if t > tol:
                continue
            x = torch.from_numpy(np.clip(r.x[:n], lo, hi)).to(self.lo.dtype)
            if self.is_candidate is None or self.is_candidate(x):
                return x.double().numpy()
            if t < -tol:  # pragma: no cover - an affine piece the network does not compute
                raise _Undecided("a fully split domain's LP optimum is not confirmed by the network")
            raise _Undecided("a fully split domain's optimum lies within the rounding margin of the clause")
        return None


class _Undecided(Exception):
    """A domain that neither bounds nor its exact LP can settle (rounding): "unknown"."""


def _affine(ctx: Context, start: str, A: Tensor) -> tuple[Tensor, Tensor]:
    """``<A, v_start> = W x + b`` exactly (every relaxation on the way is exact): (W, b)."""
    from perturbkit.bounds.engine import backward

    ctx.keep_input_coeffs = True
    try:
        with torch.no_grad():
            backward(ctx, start, A)
    finally:
        ctx.keep_input_coeffs = False
    W = ctx.input_coeffs
    if W is None:
        W = torch.zeros(A.shape[0], A.shape[1], ctx.net.n_inputs, dtype=ctx.dtype)
    return W, ctx.input_bias


def relu_split(net: Network, case: Case, *, deadline: float, config: ReluSplitConfig = ReluSplitConfig(),
               is_candidate: Callable[[Tensor], bool] | None = None,
               progress: Callable[[dict], None] | None = None, root: Optional[Root] = None) -> BabOutcome:
    """Decide ``case`` by ReLU-splitting branch and bound (see the module docstring).

    ``is_candidate(x)`` confirms a point (executes the network).  ``progress(info)`` gets a
    dict (clause, domains, open, worst, rate) after every batch.  Returns a
    :class:`BabOutcome` ("unsat", "sat" with the candidate, "timeout", "unknown").
    """
    from perturbkit.verify.bab import rows_of

    dt = config.dtype
    C, d, owner, n_clauses = rows_of(case, torch.float64)
    if any(c.C.shape[0] == 0 for c in case.output.clauses):
        return BabOutcome("unknown", reason="a clause without rows always holds")
    lo = torch.from_numpy(np.array(case.box.lower)).to(dt)
    hi = torch.from_numpy(np.array(case.box.upper)).to(dt)
    if root is None:
        root = prepare_root(net, lo, hi, C, config)
    with torch.no_grad():
        yc = net(((lo + hi) / 2).reshape(1, *net.sample_shape)).reshape(-1).double()
    centre = yc @ C.T - d
    tol_all = config.margin * (1 + centre.abs())
    margin_all = root.lower.double() - d
    out = BabOutcome("unsat")
    out.stats = {"clauses": n_clauses, "splittable": root.split.total}
    proved = clause_max((margin_all > tol_all).to(torch.float64).unsqueeze(0), owner, n_clauses)[0] > 0
    todo = torch.nonzero(~proved).flatten()
    if todo.numel() == 0:
        return out
    # every clause's rows, padded to the longest clause (padding: C = 0, d = +inf)
    Rm = int(torch.bincount(owner, minlength=n_clauses).max())
    Cp = torch.zeros(n_clauses, Rm, C.shape[1], dtype=dt)
    dp = torch.full((n_clauses, Rm), math.inf, dtype=dt)
    tp = torch.full((n_clauses, Rm), math.inf, dtype=dt)
    mp = torch.full((n_clauses, Rm), -math.inf, dtype=dt)
    ap = torch.zeros(n_clauses, Rm, root.split.total, dtype=dt)
    for k in range(n_clauses):
        rows = torch.nonzero(owner == k).flatten()
        r = rows.numel()
        Cp[k, :r], dp[k, :r], tp[k, :r], mp[k, :r] = C[rows].to(dt), d[rows].to(dt), tol_all[rows].to(dt), \
            margin_all[rows].to(dt)
        ap[k, :r] = root.alpha[0, rows]
        ap[k, r:] = root.alpha[0, rows[:1]]
    strat = ReluSplit(net, root, Cp, dp, tp, lo, hi, config, is_candidate)
    frontier = Frontier("best", config.memory_bytes)
    frontier.push(strat.root_domains(todo, ap[todo], mp[todo]), mp[todo].max(1).values)
    out.stats["open_clauses"] = int(todo.numel())

    def report(o, fr, rate):
        if progress:
            progress({"domains": o.boxes, "open": len(fr), "worst": fr.worst(), "rate": rate,
                      "children_bounded": o.evaluated})

    try:
        res = branch_and_bound(strat, frontier, deadline=deadline, batch=config.batch, progress=report)
    except _Undecided as e:
        res = BabOutcome("unknown", reason=str(e))
    if res.verdict == "unsat" and strat.found is not None:
        res = BabOutcome("sat", candidate=strat.found, boxes=res.boxes, batches=res.batches, evaluated=res.evaluated)
    res.stats = {**out.stats, "children_bounded": res.evaluated}
    return res
