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
        for _ in range(self.restarts):
            idx = torch.nonzero(~done).flatten()
            if not idx.numel():
                break
            x0, y0 = x[idx], y[idx]
            t0 = None if target is None else target[idx]
            xa = x0 + random_start(x0, tm.eps, tm.p, generator) if self.random_start else x0.clone()
            xa = tm.project(x0, xa)
            box = self._linf_box(x0)  # Linf: the projection is one clamp into these bounds
            view = (-1,) + (1,) * (x0.dim() - 1)
            # the active points' best iterate and loss (written back when points leave)
            kb, kl = best[idx], best_loss[idx]
            for step in range(self.steps + 1):
                if step < self.steps:
                    z, l, g = run_loss(f, self.loss, xa, y0, t0)
                else:  # the last iterate is only evaluated: no gradient needed
                    with torch.no_grad():
                        z = f(xa)
                        l = self.loss(z, y0, t0)
                hit = fooled(z, y0, t0)
                kb = torch.where((l > kl).view(view), xa, kb)
                kl = torch.maximum(kl, l)
                if bool(hit.any()):  # a point fooled once is done: it leaves the batch
                    kb[hit], kl[hit] = xa[hit], math.inf
                    best[idx[hit]], best_loss[idx[hit]] = kb[hit], kl[hit]
                    done[idx[hit]] = True
                    keep = ~hit
                    idx, x0, y0, xa, g, kb, kl = idx[keep], x0[keep], y0[keep], xa[keep], g[keep], kb[keep], kl[keep]
                    t0 = None if t0 is None else t0[keep]
                    box = None if box is None else (box[0][keep], box[1][keep])
                    if not idx.numel():
                        break
                if step == self.steps:
                    break
                if box is not None:
                    xa = torch.clamp(xa + self.step_size * g.sign(), box[0], box[1])
                else:
                    d = steepest_direction(g, tm.p, x=xa, domain=tm.domain, l1_fraction=self.l1_fraction)
                    xa = tm.project(x0, xa + self.step_size * d)
            if idx.numel():
                best[idx], best_loss[idx] = kb, kl
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
