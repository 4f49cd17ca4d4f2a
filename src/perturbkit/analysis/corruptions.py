"""Natural perturbations: accuracy under Gaussian noise and Gaussian blur of growing severity
(the "common corruptions" of Hendrycks and Dietterich 2019, in their two simplest kinds).

* Gaussian noise: ``x + s * N(0, I)``, clipped to the input domain; severity ``s`` = the noise
  standard deviation; one seeded draw per point.
* Gaussian blur: convolution of every channel with a Gaussian kernel of standard deviation
  ``s`` pixels (radius ``ceil(3 s)``, reflected borders); severity 0 is the image itself.

Severity 0 is the clean input in both, so the first accuracy of a curve starting at 0 is the
clean accuracy.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from perturbkit.errors import InputError


def gaussian_noise(x: Tensor, severity: float, *, seed: int = 0, domain: Optional[tuple[float, float]] = (0.0, 1.0)
                   ) -> Tensor:
    """``x + severity * N(0, I)`` (seeded), clipped to ``domain``.  Shapes: x (N, ...) -> same."""
    if severity < 0:
        raise InputError(f"noise severity must be >= 0, got {severity}")
    if severity == 0:
        return x.clone()
    g = torch.Generator().manual_seed(seed)
    out = x + severity * torch.randn(x.shape, generator=g, dtype=x.dtype)
    return out.clamp(*domain) if domain is not None else out


def gaussian_kernel(sigma: float) -> Tensor:
    """A normalised 1-D Gaussian kernel of standard deviation ``sigma`` (radius ``ceil(3 sigma)``)."""
    r = max(1, math.ceil(3 * sigma))
    t = torch.arange(-r, r + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(x: Tensor, severity: float) -> Tensor:
    """Blur every channel of images ``x`` ``(N, C, H, W)`` with a Gaussian of ``severity``
    pixels (separable, reflected borders; a kernel wider than the image is cut to fit)."""
    if severity < 0:
        raise InputError(f"blur severity must be >= 0, got {severity}")
    if x.dim() != 4:
        raise InputError(f"blur needs images (N, C, H, W), got shape {tuple(x.shape)}")
    if severity == 0:
        return x.clone()
    n, c, h, w = x.shape
    k = gaussian_kernel(severity).to(x.dtype)
    out = x.reshape(n * c, 1, h, w)
    for dim, size in ((3, w), (2, h)):
        r = min((len(k) - 1) // 2, size - 1)
        kk = k[(len(k) - 1) // 2 - r:(len(k) - 1) // 2 + r + 1]
        kk = kk / kk.sum()
        if r == 0:
            continue
        pad = (r, r, 0, 0) if dim == 3 else (0, 0, r, r)
        weight = kk.reshape(1, 1, 1, -1) if dim == 3 else kk.reshape(1, 1, -1, 1)
        out = F.conv2d(F.pad(out, pad, mode="reflect"), weight)
    return out.reshape(n, c, h, w)


def accuracy(model: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, *, batch: int = 512) -> float:
    """Fraction of ``x`` that ``model`` classifies as ``y``."""
    right = 0
    with torch.no_grad():
        for s in range(0, x.shape[0], batch):
            z = model(x[s:s + batch])
            right += int((z.reshape(z.shape[0], -1).argmax(1) == y[s:s + batch]).sum())
    return right / max(1, x.shape[0])


def corruption_curve(model: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, kind: str,
                     severities: Sequence[float], *, seed: int = 0,
                     domain: Optional[tuple[float, float]] = (0.0, 1.0)) -> list[tuple[float, float]]:
    """``[(severity, accuracy)]`` under ``kind`` = ``"noise"`` or ``"blur"``."""
    if kind not in CORRUPTIONS:
        raise InputError(f"unknown corruption {kind!r}; available: {', '.join(CORRUPTIONS)}")
    out = []
    for s in severities:
        xs = gaussian_noise(x, s, seed=seed, domain=domain) if kind == "noise" else gaussian_blur(x, s)
        out.append((float(s), accuracy(model, xs, y)))
    return out


#: corruption name -> what its severity means
CORRUPTIONS = {"noise": "standard deviation of the Gaussian noise", "blur": "standard deviation of the blur, pixels"}

__all__ = ["CORRUPTIONS", "accuracy", "corruption_curve", "gaussian_blur", "gaussian_kernel", "gaussian_noise"]
