"""Saliency maps: where the model's decision is sensitive to the input.

* :func:`input_gradient`: ``d z_y / d x`` of the label's logit (Simonyan, Vedaldi and Zisserman
  2014, "Deep inside convolutional networks");
* :func:`smoothgrad`: its average over ``n`` noisy copies ``x + N(0, (level * (hi - lo))^2)``
  (Smilkov, Thorat, Kim, Viegas and Wattenberg 2017, "SmoothGrad"), seeded.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from perturbkit.errors import InputError


def input_gradient(model: Callable[[Tensor], Tensor], x: Tensor, y: Tensor) -> Tensor:
    """``d z_{y_i}(x_i) / d x_i`` for every point.  Shapes: x (N, ...), y (N,) -> (N, ...)."""
    xg = x.detach().clone().requires_grad_(True)
    z = model(xg)
    z = z.reshape(z.shape[0], -1)
    (g,) = torch.autograd.grad(z.gather(1, y.reshape(-1, 1)).sum(), xg)
    return g.detach()


def smoothgrad(model: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, *, n: int = 32, level: float = 0.15,
               value_range: tuple[float, float] = (0.0, 1.0), seed: int = 0) -> Tensor:
    """SmoothGrad: the mean input gradient over ``n`` noisy copies of each point (noise standard
    deviation ``level * (hi - lo)``).  Shapes: x (N, ...), y (N,) -> (N, ...)."""
    if n < 1 or level < 0:
        raise InputError(f"SmoothGrad needs n >= 1 and level >= 0, got n {n}, level {level}")
    g = torch.Generator().manual_seed(seed)
    sd = level * (value_range[1] - value_range[0])
    total = torch.zeros_like(x)
    for _ in range(n):
        total += input_gradient(model, x + sd * torch.randn(x.shape, generator=g, dtype=x.dtype), y)
    return total / n


__all__ = ["input_gradient", "smoothgrad"]
