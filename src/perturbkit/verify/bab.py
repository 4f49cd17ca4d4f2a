"""Input-splitting branch and bound for low-dimensional inputs.

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
intervals), normalised per box, plus the dimension's width relative to the original box,
also normalised.  Smear alone can keep cutting one dimension while the looseness that
matters comes from the relaxations of neurons driven by the others (measured on ACAS Xu:
1_1/prop_4 and 1_4/prop_1 ran out of time with smear alone and took 0.2-0.3 s with the
sum); the width term makes every dimension shrink in turn, the smear term orders them.

The frontier is a stack processed in batches from its top (depth-first), which keeps memory
bounded by (depth x batch) and reaches counterexamples in deep sub-boxes early.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch

from perturbkit.bounds.alpha_crown import AlphaConfig, alpha_crown
from perturbkit.bounds.crown import crown
from perturbkit.bounds.engine import make_context
from perturbkit.graph.network import Network
from perturbkit.sets.box import Box
from perturbkit.verify.falsify import clause_max, pgd_in_boxes
from perturbkit.verify.spec import Case

Tensor = torch.Tensor


@dataclass(frozen=True)
class BabConfig:
    """Input-split settings.

    Attributes:
        batch: sub-boxes per bound call.
        alpha_iterations: also bound the boxes CROWN leaves open by alpha-CROWN with this
            many iterates of the output layer's slopes (0: off, the default).  Measured on
            ACAS Xu (docs/benchmarks.md): 5 iterates cut 1_1/prop_5 from 71k to 2.6k boxes
            (11.9 s -> 4.2 s) but cost 1.5-2.5x more time on instances where few boxes
            change verdict (2_9/prop_1, 2_7/prop_1, 1_1/prop_2), so it is opt-in.
        pgd_boxes, pgd_every, pgd_steps: every ``pgd_every`` batches, PGD (``pgd_steps``
            steps) in the ``pgd_boxes`` open sub-boxes whose centres are closest to
            satisfying a clause.
        max_boxes: give up ("unknown") past this many bounded sub-boxes.
        dtype: precision of the bounds (float64: no rounding doubts on small networks).
    """

    batch: int = 2048
    max_boxes: int = 50_000_000
    dtype: torch.dtype = torch.float64
    alpha_iterations: int = 0
    pgd_boxes: int = 32
    pgd_every: int = 4
    pgd_steps: int = 10


@dataclass
class BabOutcome:
    verdict: str  # "unsat", "sat", "timeout", "unknown"
    candidate: Optional[np.ndarray] = None
    boxes: int = 0
    batches: int = 0


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


def input_split(net: Network, case: Case, *, deadline: float, config: BabConfig = BabConfig(),
                is_candidate: Callable[[Tensor], bool] | None = None,
                progress: Callable[[int, int], None] | None = None) -> BabOutcome:
    """Prove ``case`` infeasible by input splitting, or find a candidate counterexample.

    ``is_candidate(x)`` confirms a point (executes the network); it is called on points
    whose exact output satisfies a clause.  ``progress(done, open)`` reports the frontier.
    """
    dt = config.dtype
    C, d, owner, n_clauses = rows_of(case, dt)
    if any(c.C.shape[0] == 0 for c in case.output.clauses):
        return BabOutcome("unknown")  # an always-true clause: any point is a counterexample
    R = C.shape[0]
    lo0 = torch.from_numpy(np.array(case.box.lower)).to(dt)
    hi0 = torch.from_numpy(np.array(case.box.upper)).to(dt)
    width0 = torch.where(hi0 > lo0, hi0 - lo0, torch.ones_like(hi0))
    # the frontier: chunks of boxes, processed from the top
    stack: list[tuple[Tensor, Tensor]] = [(lo0.unsqueeze(0), hi0.unsqueeze(0))]
    n_open = 1
    out = BabOutcome("unsat")
    per_box: Optional[float] = None
    sample_shape = net.sample_shape
    while n_open:
        if time.monotonic() > deadline:
            out.verdict = "timeout"
            return out
        if out.boxes > config.max_boxes:
            out.verdict = "unknown"
            return out
        # a batch small enough to end before the deadline (per-box cost measured so far)
        k = config.batch if per_box is None else max(1, min(config.batch, int(0.8 * (deadline - time.monotonic()) / per_box)))
        t_batch = time.monotonic()
        lo, hi = _pop(stack, k)
        n_open -= lo.shape[0]
        N = lo.shape[0]
        ctx = make_context(net, Box(lo.reshape(N, *sample_shape), hi.reshape(N, *sample_shape)))
        ctx.keep_input_coeffs = True
        with torch.no_grad():
            lb, _ = crown(ctx, C.unsqueeze(0).expand(N, R, -1))
        A = ctx.input_coeffs[:, :R]  # (N, R, n): the lower bounds' linear functions of x
        if config.alpha_iterations:  # a second, optimised bound for the boxes CROWN left open
            unproved = clause_max(lb - d, owner, n_clauses).le(0).any(1)
            if bool(unproved.any()):
                sel = torch.nonzero(unproved).flatten()
                M = sel.numel()
                sub = make_context(net, Box(lo[sel].reshape(M, *sample_shape), hi[sel].reshape(M, *sample_shape)))
                la, _, _ = alpha_crown(sub, C.unsqueeze(0).expand(M, R, -1), AlphaConfig(
                    iterations=config.alpha_iterations, optimize_intermediate=False, lower_only=True))
                lb[sel] = torch.maximum(lb[sel], la.detach())
        out.boxes += N
        out.batches += 1
        spent = (time.monotonic() - t_batch) / N
        per_box = spent if per_box is None else 0.7 * per_box + 0.3 * spent
        margin = lb - d  # (N, R): > 0 proves the row never holds
        per_clause = clause_max(margin, owner, n_clauses)
        open_mask = (per_clause <= 0).any(1)
        if not bool(open_mask.any()):
            if progress:
                progress(out.boxes, n_open)
            continue
        lo, hi, A, margin, per_clause = lo[open_mask], hi[open_mask], A[open_mask], margin[open_mask], per_clause[open_mask]
        # candidates: centres, and for every row the corner minimising its linear bound
        cand = _candidates(lo, hi, A)
        with torch.no_grad():
            y = net(cand.reshape(cand.shape[0], *sample_shape)).reshape(cand.shape[0], -1)
        worst = clause_max(y @ C.T - d, owner, n_clauses)  # (candidates, clauses): <= 0 holds
        hit = torch.nonzero((worst <= 0).any(1)).flatten()
        for i in hit[:8].tolist():
            if is_candidate is None or is_candidate(cand[i]):
                out.verdict = "sat"
                out.candidate = cand[i].numpy()
                return out
        # falsification again, inside the sub-boxes whose centres come closest to a clause
        if config.pgd_boxes and out.batches % config.pgd_every == 0:
            score = worst[: lo.shape[0]].min(1).values  # the centres come first in cand
            top = score.argsort()[: config.pgd_boxes]
            x = pgd_in_boxes(net, lo[top], hi[top], C, d, owner, n_clauses, steps=config.pgd_steps,
                             deadline=deadline)
            if x is not None and (is_candidate is None or is_candidate(x)):
                out.verdict = "sat"
                out.candidate = x.numpy()
                return out
        # split
        dim = _split_dim(lo, hi, A, margin, per_clause, owner, width0)
        mid = (lo.gather(1, dim[:, None]) + hi.gather(1, dim[:, None])) / 2
        hi_left = hi.clone().scatter_(1, dim[:, None], mid)
        lo_right = lo.clone().scatter_(1, dim[:, None], mid)
        stack.append((lo, hi_left))
        stack.append((lo_right, hi))
        n_open += 2 * lo.shape[0]
        if progress:
            progress(out.boxes, n_open)
    return out


def _pop(stack: list, k: int) -> tuple[Tensor, Tensor]:
    """Up to k boxes from the top of the stack."""
    los, his, n = [], [], 0
    while stack and n < k:
        lo, hi = stack.pop()
        take = min(k - n, lo.shape[0])
        if take < lo.shape[0]:
            stack.append((lo[:-take], hi[:-take]))
            lo, hi = lo[-take:], hi[-take:]
        los.append(lo)
        his.append(hi)
        n += take
    return torch.cat(los), torch.cat(his)


def _candidates(lo: Tensor, hi: Tensor, A: Tensor) -> Tensor:
    """(N*(1+R), n): centres and, per row, the box corner minimising the row's bound."""
    mid = (lo + hi) / 2
    corners = torch.where(A > 0, lo.unsqueeze(1), hi.unsqueeze(1))  # (N, R, n)
    return torch.cat([mid, corners.reshape(-1, lo.shape[1])])


def _split_dim(lo: Tensor, hi: Tensor, A: Tensor, margin: Tensor, per_clause: Tensor, owner: Tensor,
               width0: Tensor) -> Tensor:
    """Dimension to split per box (see the module docstring): (N,) int64.

    Score = smear (``|a_j| * width_j`` summed over the best row of every open clause) plus
    the width relative to the original box, each normalised to a maximum of 1 per box.
    """
    N, R, n = A.shape
    width = hi - lo
    clause_best = per_clause.gather(1, owner.expand(N, -1))  # (N, R): best margin of the row's clause
    row_open = (clause_best <= 0) & (margin >= clause_best)  # the best row of each open clause
    smear = ((A.abs() * width.unsqueeze(1)) * row_open.unsqueeze(2).to(A.dtype)).sum(1)
    smear = smear / smear.max(1, keepdim=True).values.clamp_min(torch.finfo(A.dtype).tiny)
    rel = width / width0
    rel = rel / rel.max(1, keepdim=True).values.clamp_min(torch.finfo(A.dtype).tiny)
    score = torch.where(width > 0, smear + rel, torch.full_like(smear, -1.0))
    return score.argmax(1)
