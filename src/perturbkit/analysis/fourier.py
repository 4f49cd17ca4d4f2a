"""Fourier heat maps (Yin, Gontijo Lopes, Shlens, Cubuk and Gilmer 2019, "A Fourier perspective
on model robustness"): the error rate of a model when each image is perturbed along one Fourier
basis direction, for every frequency; it shows which frequencies a model is fragile to (high-
frequency sensitivity is the signature of adversarial and noise fragility).

For images of ``H x W`` pixels and frequency ``(u, v)``, the basis image ``U_{u,v}`` is the real
image whose 2-D discrete Fourier transform is non-zero only at ``(u, v)`` and ``(-u, -v)``,
scaled to unit L2 norm.  Every image ``x`` is perturbed to ``x + s * r * U_{u,v}`` in every channel
(the same wave in every channel) with ``s`` the norm and ``r = +1`` and ``r = -1`` (both signs, so the estimate has no sign noise),
then clipped to the domain.  The map is ``(H, W)`` with the zero frequency at the centre
(``fftshift``), the error averaged over images and signs.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch
from torch import Tensor

from perturbkit.errors import InputError


def fourier_basis(h: int, w: int, u: int, v: int) -> Tensor:
    """``U_{u,v}``: real ``(h, w)``, unit L2 norm, spectrum supported on ``(u, v)`` and ``(-u, -v)``."""
    spec = np.zeros((h, w), dtype=np.complex128)
    spec[u % h, v % w] = 1.0
    spec[(-u) % h, (-v) % w] += 1.0
    img = np.real(np.fft.ifft2(spec))  # a cosine wave: never identically zero (its value at pixel 0 is > 0)
    return torch.from_numpy(img / np.linalg.norm(img))


def fourier_heat_map(model: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, *, norm: float,
                     domain: Optional[tuple[float, float]] = (0.0, 1.0), batch: int = 4096,
                     progress: Optional[Callable[[int], None]] = None) -> np.ndarray:
    """Error rate ``(H, W)`` of ``model`` on images ``x`` ``(N, C, H, W)`` perturbed along each
    Fourier basis image at L2 norm ``norm`` (module docstring), zero frequency at the centre."""
    if x.dim() != 4:
        raise InputError(f"a Fourier heat map needs images (N, C, H, W), got shape {tuple(x.shape)}")
    if not norm >= 0:
        raise InputError(f"the Fourier perturbation norm must be >= 0, got {norm}")
    n, c, h, w = x.shape
    err = np.zeros((h, w))
    with torch.no_grad():
        for u in range(h):
            for v in range(w):
                basis = fourier_basis(h, w, u, v).to(x.dtype)
                wrong = 0
                for sign in (1.0, -1.0):
                    xp = x + sign * norm * basis
                    if domain is not None:
                        xp = xp.clamp(*domain)
                    for s in range(0, n, batch):
                        z = model(xp[s:s + batch])
                        wrong += int((z.reshape(z.shape[0], -1).argmax(1) != y[s:s + batch]).sum())
                err[u, v] = wrong / (2 * n)
                if progress is not None:
                    progress(1)
    return np.fft.fftshift(err)


__all__ = ["fourier_basis", "fourier_heat_map"]
