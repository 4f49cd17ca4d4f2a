"""Where and how a patch lands on an image: random placements, relighting and pasting.

The transformations of :mod:`perturbkit.attacks.patch` (expectation over transformation):

* :class:`Placement` (one per pasted image), drawn by :func:`sample_placements`: centre
  uniform over the positions where the unrotated patch fits inside the image; side
  ``size * scale`` pixels; rotation in degrees (counter-clockwise on screen); lighting
  ``clip(mid + contrast * (P - mid) + brightness)`` (:func:`light`), ``mid`` the middle of
  the domain.
* :func:`paste`, differentiable in the patch: ``affine_grid`` / ``grid_sample`` (bilinear,
  border padding) of the lit patch and a mask, the share of each pixel the transformed
  square covers; then ``x (1 - mask) + mask * sampled``, a convex combination, so the
  result stays in the domain.

Shapes: images (N, C, H, W); a patch (C, s, s) or (N, C, s, s); placements hold (N,)
tensors.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from perturbkit.errors import InputError

Tensor = torch.Tensor


@dataclass(frozen=True)
class Placement:
    """How a patch lands on each of N images; every field is an (N,) tensor.

    Attributes:
        cx, cy: centre of the patch, in pixels from the left / top edge of the image
            (the centre of pixel (row i, column j) is (j + 0.5, i + 0.5)).
        scale: the patch's side is ``size * scale`` pixels.
        angle: rotation in degrees, counter-clockwise on screen.
        brightness: added to the patch (after contrast).
        contrast: factor around the middle of the domain.
    """

    cx: Tensor
    cy: Tensor
    scale: Tensor
    angle: Tensor
    brightness: Tensor
    contrast: Tensor

    @property
    def n(self) -> int:
        return int(self.cx.shape[0])

    @staticmethod
    def at(top: int, left: int, size: int, n: int = 1, *, angle: float = 0.0, scale: float = 1.0,
           brightness: float = 0.0, contrast: float = 1.0) -> "Placement":
        """The patch's top-left pixel at (row ``top``, column ``left``) (before rotation and
        scaling, which are about the centre), the same for ``n`` images."""
        full = lambda v: torch.full((n,), float(v), dtype=torch.float64)  # noqa: E731
        return Placement(full(left + size / 2), full(top + size / 2), full(scale), full(angle),
                         full(brightness), full(contrast))

    def repeat(self, times: int) -> "Placement":
        """Each placement repeated ``times`` times in a row (for images repeated the same way)."""
        return Placement(*(v.repeat_interleave(times) for v in
                           (self.cx, self.cy, self.scale, self.angle, self.brightness, self.contrast)))


def _uniform(n: int, lo_hi: tuple[float, float], generator: torch.Generator) -> Tensor:
    lo, hi = lo_hi
    return lo + (hi - lo) * torch.rand(n, generator=generator, dtype=torch.float64)


def sample_placements(n: int, size: int, height: int, width: int, *, rotation: tuple[float, float],
                      scale: tuple[float, float], brightness: tuple[float, float],
                      contrast: tuple[float, float], generator: torch.Generator) -> Placement:
    """``n`` independent random placements (see the module docstring); the centre is uniform
    over the positions where the scaled, unrotated patch lies inside the image."""
    sc = _uniform(n, scale, generator)
    half = size * sc / 2
    cx = half + (width - 2 * half) * torch.rand(n, generator=generator, dtype=torch.float64)
    cy = half + (height - 2 * half) * torch.rand(n, generator=generator, dtype=torch.float64)
    return Placement(cx, cy, sc, _uniform(n, rotation, generator), _uniform(n, brightness, generator),
                     _uniform(n, contrast, generator))


def light(patch: Tensor, placement: Placement, domain: tuple[float, float]) -> Tensor:
    """``clip(mid + contrast (P - mid) + brightness)`` per placement: (N, C, s, s)."""
    mid = 0.5 * (domain[0] + domain[1])
    shape = (-1, 1, 1, 1)
    c = placement.contrast.to(patch.dtype).to(patch.device).reshape(shape)
    b = placement.brightness.to(patch.dtype).to(patch.device).reshape(shape)
    return (mid + c * (patch - mid) + b).clamp(domain[0], domain[1])


def paste(x: Tensor, patch: Tensor, placement: Placement, domain: tuple[float, float] = (0.0, 1.0)) -> Tensor:
    """Images with the (lit, scaled, rotated) patch pasted on; differentiable in ``patch``.

    Shapes: ``x`` (N, C, H, W); ``patch`` (C, s, s) or (N, C, s, s); ``placement`` of N
    entries -> (N, C, H, W).
    """
    N, C, H, W = x.shape
    if patch.dim() == 3:
        patch = patch.unsqueeze(0).expand(N, *patch.shape)
    s = patch.shape[-1]
    if placement.n != N:
        raise InputError(f"{placement.n} placements for {N} images")
    lit = light(patch, placement, domain)
    # output pixel p (pixels) -> patch coordinate q = R(angle) (p - c) / side, in [-1/2, 1/2]
    # inside the patch; affine_grid wants normalised coordinates on both sides.
    a = torch.deg2rad(placement.angle)
    cos, sin = torch.cos(a), torch.sin(a)
    k = 2.0 / (s * placement.scale)
    rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)   # (N, 2, 2)
    lin = k[:, None, None] * rot * torch.tensor([W / 2, H / 2], dtype=torch.float64)
    off = k[:, None] * (rot @ torch.stack([W / 2 - placement.cx, H / 2 - placement.cy], -1)[..., None])[..., 0]
    theta = torch.cat([lin, off[..., None]], -1).to(x.dtype).to(x.device)                # (N, 2, 3)
    grid = F.affine_grid(theta, [N, C, H, W], align_corners=False)                     # (N, H, W, 2)
    sampled = F.grid_sample(lit.to(x.dtype), grid, mode="bilinear", padding_mode="border", align_corners=False)
    # coverage of each pixel: per patch axis, its centre's distance inside the edge in pixels
    # (side / 2 * (1 - |q|)), plus one half, clipped to [0, 1]; the product of the two axes.
    half = (s * placement.scale).to(x.dtype).to(x.device).reshape(N, 1, 1, 1) / 2
    mask = (half * (1 - grid.abs()) + 0.5).clamp(0, 1).prod(-1).unsqueeze(1)            # (N, 1, H, W)
    return x * (1 - mask) + mask * sampled


__all__ = ["Placement", "sample_placements", "light", "paste"]
