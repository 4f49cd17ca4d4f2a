"""FGSM and PGD.

FGSM (Goodfellow et al. 2015, "Explaining and harnessing adversarial examples"): one step
of length ``eps`` along the steepest-ascent direction of the loss for the threat's norm.

PGD (Madry et al. 2018, "Towards deep learning models resistant to adversarial attacks"):
``steps`` projected steepest-ascent steps of size ``step_size`` (default ``2.5 eps /
steps``, Madry et al.'s choice) from a uniformly random start in the ball, ``restarts``
times.  Steepest ascent is ``sign(g)`` for Linf, ``g / ||g||_2`` for L2, and a sparse step
over the top ``l1_fraction`` of coordinates for L1 (:func:`.norms.steepest_direction`).

Two things torchattacks' PGD does not do (measured against it in bench/attacks_vs_torchattacks.py):

* **per-point early stopping**: the success of every iterate is read from the logits the
  next gradient step computes anyway; a point fooled once keeps that iterate and leaves the
  batch, so later steps only pay for the points still resisting;
* **best iterate kept**: for points never fooled, the iterate with the largest loss over
  all steps and restarts is returned (not the last one).
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from perturbkit.attacks.base import Attack, Classifier, ThreatModel, run_loss
from perturbkit.attacks.losses import fooled, loss_fn
from perturbkit.attacks.norms import random_start, steepest_direction
from perturbkit.attacks.search import check_pgd_options

Tensor = torch.Tensor


#: the batch drops its fooled points once they are at least 1 / COMPACT_AT of it (until then
#: they ride along, frozen at their first fooled iterate: dropping rows costs a dozen
#: indexing operations, which on a small model cost more than a few rows of gradient)
COMPACT_AT = 4


class _Run:
    """The points of one restart still being attacked, with their best iterate ``kb`` and
    its loss ``kl`` (+inf once fooled); ``idx`` maps them back into the whole batch."""

    def __init__(self, x0: Tensor, y: Tensor, t: Optional[Tensor], idx: Tensor, kb: Tensor, kl: Tensor, box):
        self.x0, self.y, self.t, self.idx, self.kb, self.kl, self.box = x0, y, t, idx, kb, kl, box

    def compact(self, best: Tensor, best_loss: Tensor, done: Tensor, final: bool = False) -> Optional[Tensor]:
        """Write the fooled points (all points if ``final``) back into ``best``, ``best_loss``
        and ``done``; keep the others.  Returns the indices of the points kept (index
        selects: a boolean mask would search its nonzeros once per tensor)."""
        hit = self.kl == math.inf
        if final:  # the active points were not done before: done[idx] = hit
            best.index_copy_(0, self.idx, self.kb)
            best_loss.index_copy_(0, self.idx, self.kl)
            done.index_copy_(0, self.idx, hit)
            return None
        h, k = torch.nonzero(hit).squeeze(1), torch.nonzero(~hit).squeeze(1)
        ih = self.idx.index_select(0, h)
        best.index_copy_(0, ih, self.kb.index_select(0, h))
        best_loss.index_copy_(0, ih, self.kl.index_select(0, h))
        done.index_fill_(0, ih, True)

        def sel(t: Tensor) -> Tensor:
            return t.index_select(0, k)

        self.x0, self.y, self.idx, self.kb, self.kl = sel(self.x0), sel(self.y), sel(self.idx), sel(self.kb), sel(self.kl)
        self.t = None if self.t is None else sel(self.t)
        self.box = None if self.box is None else (sel(self.box[0]), sel(self.box[1]))
        return k


class FGSM(Attack):
    """One step of length eps (see the module docstring); loss ``ce`` by default."""

    name = "fgsm"

    def __init__(self, threat: ThreatModel, *, loss: str = "ce", l1_fraction: float = 0.01, seed: int = 0):
        super().__init__(threat, seed=seed)
        self.loss = loss_fn(loss)
        self.l1_fraction = l1_fraction

    def perturb(self, f: Classifier, x: Tensor, y: Tensor, target: Optional[Tensor],
                generator: torch.Generator) -> Tensor:
        _, _, g = run_loss(f, self.loss, x, y, target)
        d = steepest_direction(g, self.threat.p, x=x, domain=self.threat.domain, l1_fraction=self.l1_fraction)
        return x + self.threat.eps * d


class PGD(Attack):
    """Projected gradient descent with random start, restarts, early stopping and best iterate.

    Args:
        threat: the threat model.
        steps: gradient steps per restart (>= 1).
        step_size: absolute step length in the threat's norm; default ``rel_step * eps / steps``.
        restarts: random restarts (only points not yet fooled are restarted).
        random_start: start uniformly in the ball (else at x).
        loss: ``ce`` (default), ``dlr`` or ``margin`` (see :mod:`.losses`).
        l1_fraction: share of coordinates an L1 step moves.
        seed: seeds the random starts.
    """

    name = "pgd"

    def __init__(self, threat: ThreatModel, *, steps: int = 10, step_size: Optional[float] = None,
                 restarts: int = 1, random_start: bool = True, loss: str = "ce", rel_step: float = 2.5,
                 l1_fraction: float = 0.01, seed: int = 0):
        super().__init__(threat, seed=seed)
        check_pgd_options(steps, restarts, step_size, "constant")
        self.steps = int(steps)
        self.restarts = int(restarts)
        self.step_size = step_size if step_size is not None else rel_step * threat.eps / self.steps
        self.random_start = random_start
        self.loss = loss_fn(loss)
        self.l1_fraction = l1_fraction

    def perturb(self, f: Classifier, x: Tensor, y: Tensor, target: Optional[Tensor],
                generator: torch.Generator) -> Tensor:
        tm = self.threat
        B = x.shape[0]
        best = x.clone()
        done = torch.zeros(B, dtype=torch.bool, device=x.device)
        best_loss = torch.full((B,), -math.inf, dtype=x.dtype, device=x.device)
        view = (-1,) + (1,) * (x.dim() - 1)
        for _ in range(self.restarts):
            idx = torch.nonzero(~done).flatten()
            if not idx.numel():
                break
            run = _Run(x[idx], y[idx], None if target is None else target[idx], idx, best[idx], best_loss[idx],
                       self._linf_box(x[idx]))
            xa = run.x0 + random_start(run.x0, tm.eps, tm.p, generator) if self.random_start else run.x0.clone()
            xa = tm.project(run.x0, xa)
            for step in range(self.steps + 1):
                if step < self.steps:
                    z, l, g = run_loss(f, self.loss, xa, run.y, run.t)
                else:  # the last iterate is only evaluated: no gradient needed
                    with torch.no_grad():
                        z = f(xa)
                        l = self.loss(z, run.y, run.t)
                # a fooled iterate gets loss +inf: it becomes the point's best iterate, and its
                # best loss +inf marks the point as done (no later iterate can replace it)
                l = l.masked_fill(fooled(z, run.y, run.t), math.inf)
                run.kb = torch.where((l > run.kl).view(view), xa, run.kb)
                run.kl = torch.maximum(run.kl, l)
                n_done = int((run.kl == math.inf).sum())
                if n_done == run.kl.numel() or step == self.steps:
                    break
                if n_done * COMPACT_AT >= run.kl.numel():  # enough points fooled: drop them
                    keep = run.compact(best, best_loss, done)
                    xa, g = xa.index_select(0, keep), g.index_select(0, keep)
                if run.box is not None:
                    xa = torch.add(xa, g.sign(), alpha=self.step_size).clamp_(run.box[0], run.box[1])
                else:
                    d = steepest_direction(g, tm.p, x=xa, domain=tm.domain, l1_fraction=self.l1_fraction)
                    xa = tm.project(run.x0, xa + self.step_size * d)
            run.compact(best, best_loss, done, final=True)
        return best

    def _linf_box(self, x0: Tensor) -> Optional[tuple[Tensor, Tensor]]:
        """For Linf: per-coordinate bounds of the threat model around ``x0`` (ball ∩ domain)."""
        tm = self.threat
        if tm.p != math.inf:
            return None
        lo, hi = x0 - tm.eps, x0 + tm.eps
        if tm.domain is not None:
            lo, hi = lo.clamp_min(tm.domain[0]), hi.clamp_max(tm.domain[1])
        return lo, hi
