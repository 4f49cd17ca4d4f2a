"""PGD against conformal prediction sets: the attack that tries to push the true label out of
the set (the evaluation of Gendler et al. 2022 and Yan et al. 2024).

It minimises the smoothed probability of the true label, i.e. maximises the cross-entropy
``-log mean_j softmax(f(x + d + delta_j))_y`` of the smoothed soft classifier (the SmoothAdv
objective of Salman et al. 2019) over ``||d||_2 <= eps`` and the input domain, by L2 PGD:
``steps`` normalised-gradient steps of size ``2.5 eps / steps`` (Madry et al.) from ``d = 0``,
fresh noise ``delta_j ~ N(0, sigma^2)`` (``samples`` per point and step) each step; ``sigma = 0``
attacks the base model (one sample, no noise).  A lower true-label probability raises every
score here (THR, APS, and PTT of either); the gradient of APS itself is useless for this
(for a top-1 label it only grows ``u * p_y``, i.e. pushes ``p_y`` up).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from perturbkit.attacks.norms import project_ball
from perturbkit.conformal.robust import ATTACK_PHASE
from perturbkit.smoothing.certify import noise_generator


@dataclass(frozen=True)
class ScoreAttackConfig:
    eps: float
    sigma: float
    steps: int = 20
    samples: int = 16
    domain: Optional[tuple[float, float]] = (0.0, 1.0)
    seed: int = 0
    batch: int = 64


def attack_scores(model: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, indices: Sequence[int], *,
                  cfg: ScoreAttackConfig, progress: Optional[Callable[[int], None]] = None) -> Tensor:
    """The attacked inputs ``x~`` ``(N, ...)``, each within L2 ``eps`` of its row of ``x``."""
    out = []
    k = cfg.samples if cfg.sigma > 0 else 1
    step = 2.5 * cfg.eps / max(1, cfg.steps)
    for s0 in range(0, x.shape[0], cfg.batch):
        xb, yb = x[s0:s0 + cfg.batch], y[s0:s0 + cfg.batch]
        idx = list(indices[s0:s0 + cfg.batch])
        gen = noise_generator(cfg.seed, idx[0], ATTACK_PHASE)
        d = torch.zeros_like(xb)
        for _ in range(cfg.steps if cfg.eps > 0 else 0):
            d.requires_grad_(True)
            xin = (xb + d).repeat_interleave(k, dim=0)
            if cfg.sigma > 0:
                xin = xin + cfg.sigma * torch.randn(xin.shape, generator=gen)
            z = model(xin)
            p = torch.softmax(z.reshape(z.shape[0], -1), dim=1).reshape(xb.shape[0], k, -1).mean(dim=1)
            loss = -torch.log(p.gather(1, yb.reshape(-1, 1)).clamp_min(1e-30)).sum()
            (g,) = torch.autograd.grad(loss, d)
            with torch.no_grad():
                gn = g.reshape(g.shape[0], -1).norm(dim=1).clamp_min(1e-12).reshape(-1, *([1] * (g.dim() - 1)))
                d = project_ball(d + step * g / gn, cfg.eps, 2.0)
                if cfg.domain is not None:
                    d = (xb + d).clamp(*cfg.domain) - xb
        out.append((xb + d).detach())
        if progress is not None:
            progress(xb.shape[0])
    return torch.cat(out) if out else x.clone()


__all__ = ["ScoreAttackConfig", "attack_scores"]
