"""Projected gradient ascent on any objective of a perturbed tensor (shared by the attacks on
continuous outputs and on activations): random starts, restarts, per-point early stopping,
the best iterate kept, constant or cosine step schedules.

Shapes: ``centre`` (B, *shape) the unperturbed tensor; the objective sees (n, *shape) for the
n points still active and their rows ``idx`` (n,) in the batch.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional

import numpy as np
import torch

from perturbkit.attacks.base import ThreatModel
from perturbkit.attacks.norms import random_in_ball, steepest_direction
from perturbkit.errors import InputError, ModelError

Tensor = torch.Tensor

#: objective(z, idx) -> (objective (n,) differentiable in z, score (n,) for the best iterate,
#: hit (n,) bool for early stopping or None); z (n, *shape) are the current points, idx (n,)
#: their rows in the batch.
Objective = Callable[[Tensor, Tensor], tuple[Tensor, Tensor, Optional[Tensor]]]


def _constant(step: int, steps: int) -> float:
    return 1.0


def _cosine(step: int, steps: int) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * step / max(steps, 1)))


#: step-size schedules: factor of the step size at step ``k`` of ``steps``
SCHEDULES: dict[str, Callable[[int, int], float]] = {"constant": _constant, "cosine": _cosine}


def check_pgd_options(steps: int, restarts: int, step_size: Optional[float], schedule: str) -> None:
    """Shared validation of the PGD options (one-line InputErrors)."""
    if int(steps) < 1:
        raise InputError(f"steps must be >= 1, got {steps}")
    if int(restarts) < 1:
        raise InputError(f"restarts must be >= 1, got {restarts}")
    if step_size is not None and not (math.isfinite(step_size) and step_size > 0):
        raise InputError(f"step size must be > 0, got {step_size}")
    if schedule not in SCHEDULES:
        raise InputError(f"unknown schedule {schedule!r}; use one of {', '.join(SCHEDULES)}")


def pgd_maximise(objective: Objective, centre: Tensor, threat: ThreatModel, *, steps: int, step_size: float,
                 restarts: int = 1, random_start: bool = True, schedule: str = "constant",
                 l1_fraction: float = 0.01, generator: Optional[torch.Generator] = None
                 ) -> tuple[Tensor, Tensor, Tensor]:
    """Projected steepest ascent of ``objective`` over the threat model around ``centre``.

    Restart 0 starts at a uniformly random point of the ball (or at ``centre`` when
    ``random_start`` is False); later restarts always start at random points, and only
    points without a hit are restarted.  A point that hits keeps its first hitting iterate
    and leaves the batch; the others keep the iterate of largest score.  The step at step
    ``k`` is ``step_size * schedule(k, steps)`` along :func:`.norms.steepest_direction`.

    Shapes: ``centre`` (B, *shape); returns the best points (B, *shape) (inside the threat
    model), their scores (B,) and hits (B,) bool.
    """
    factor = SCHEDULES[schedule]
    B = centre.shape[0]
    best = centre.clone()
    best_score = torch.full((B,), -math.inf, dtype=centre.dtype, device=centre.device)
    done = torch.zeros(B, dtype=torch.bool, device=centre.device)
    for restart in range(restarts):
        idx = torch.nonzero(~done).flatten()
        if not idx.numel():
            break
        c0 = centre[idx]
        za = c0 + random_in_ball(c0, threat.eps, threat.p, generator) if random_start or restart else c0.clone()
        za = threat.project(c0, za)
        for step in range(steps + 1):
            last = step == steps
            zg = za.detach().requires_grad_(not last)
            with torch.enable_grad():
                obj, score, hit = objective(zg, idx)
                if not last:
                    if not obj.requires_grad:
                        raise ModelError("the model's outputs do not depend differentiably on the perturbed "
                                         "tensor; gradient attacks need a differentiable model (nn.Module, Network)")
                    (g,) = torch.autograd.grad(obj.sum(), zg, allow_unused=True)
            score = score.detach()
            hit = torch.zeros_like(done[idx]) if hit is None else hit.detach()
            better = hit | (score > best_score[idx])
            best[idx[better]] = za[better].detach()
            best_score[idx[better]] = score[better]
            done[idx[hit]] = True
            keep = ~hit
            if last or not bool(keep.any()):
                break
            g = torch.zeros_like(zg) if g is None else torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0)
            idx, c0, za, g = idx[keep], c0[keep], za[keep], g[keep]
            d = steepest_direction(g, threat.p, x=za, domain=threat.domain, l1_fraction=l1_fraction)
            za = threat.project(c0, za.detach() + step_size * factor(step, steps) * d)
    return best, best_score, done


# -- validation helpers -------------------------------------------------------------------



def per_sample(v: Any, B: int, what: str, like: Tensor) -> Tensor:
    """A float or a (B,) array as a finite (B,) tensor."""
    t = torch.as_tensor(np.asarray(v) if not isinstance(v, Tensor) else v).to(dtype=like.dtype, device=like.device)
    if t.numel() == 1:
        t = t.reshape(1).expand(B)
    if t.dim() != 1 or t.numel() != B:
        raise InputError(f"{what} must be a number or one value per sample ({B}), got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise InputError(f"{what} contains NaN or inf")
    return t
