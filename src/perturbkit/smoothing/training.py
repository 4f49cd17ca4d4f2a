"""Gaussian noise augmentation: training a base classifier for randomized smoothing.

Cohen et al. 2019 (Section 5) train the base classifier on inputs corrupted by the same noise
``N(0, sigma^2 I)`` the smoothed classifier will add: :func:`train_gaussian` minimises
``E_delta CE(f(x + delta), y)`` by SGD on fresh noise every batch.  Noise is added in input
space (a model that normalises its input does so inside ``model``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from perturbkit.errors import InputError


@dataclass(frozen=True)
class NoiseTrainConfig:
    """``sigma``: noise standard deviation; Adam with learning rate ``lr`` divided by 10 at
    ``milestones`` (fractions of the epochs); ``batch`` rows per step; ``copies`` noisy copies
    of every training point per step; ``seed`` for shuffling and noise."""

    sigma: float
    epochs: int = 60
    batch: int = 64
    lr: float = 1e-3
    milestones: tuple[float, ...] = (0.5, 0.75)
    copies: int = 1
    seed: int = 0


def train_gaussian(model: nn.Module, x: Tensor, y: Tensor, cfg: NoiseTrainConfig, *,
                   log: Optional[Callable[[str], None]] = None) -> nn.Module:
    """Train ``model`` in place on ``(x (N, ...), y (N,))`` with Gaussian noise augmentation
    (see the module docstring); returns it in eval mode."""
    if not (math.isfinite(cfg.sigma) and cfg.sigma > 0):
        raise InputError(f"sigma must be > 0, got {cfg.sigma}")
    if cfg.epochs < 1 or cfg.batch < 1 or cfg.copies < 1:
        raise InputError("epochs, batch and copies must be >= 1")
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    steps = sorted({max(1, int(round(m * cfg.epochs))) for m in cfg.milestones})
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=steps, gamma=0.1)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(cfg.epochs):
        model.train()
        perm = torch.randperm(len(x), generator=gen)
        total = 0.0
        for i in range(0, len(x), cfg.batch):
            idx = perm[i:i + cfg.batch]
            xb = x[idx].repeat_interleave(cfg.copies, dim=0)
            yb = y[idx].repeat_interleave(cfg.copies, dim=0)
            noisy = xb + cfg.sigma * torch.randn(xb.shape, generator=gen)
            opt.zero_grad()
            loss = loss_fn(model(noisy), yb)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        sched.step()
        if log is not None and (epoch + 1) % 10 == 0:
            log(f"  epoch {epoch + 1}/{cfg.epochs}: noisy loss {total / len(x):.4f}")
    model.eval()
    return model


__all__ = ["NoiseTrainConfig", "train_gaussian"]
