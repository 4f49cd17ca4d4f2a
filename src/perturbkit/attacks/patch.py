"""Adversarial patches under random transformations (expectation over transformation).

A square patch of ``size x size`` pixels, every value of which the attacker chooses (within
the input domain), is pasted onto images at a random position, scale and rotation, under
random lighting; the patch is optimised for the expected loss over those transformations:

    min_P  E_{x ~ images, T ~ transformations} [ loss(f(paste(x, P, T))) ]

(EOT: Athalye, Engstrom, Ilyas & Kwok 2018, "Synthesizing robust adversarial examples";
the adversarial patch of Brown et al. 2017, "Adversarial patch"; evaluation under fresh
transformations with relighting of the patch, in the spirit of the REAP benchmark: Hingun
et al. 2023, "REAP: A large-scale realistic adversarial patch benchmark").

* **Transformations** (:class:`Placement`, drawn by :func:`sample_placements`, one per
  pasted image): centre uniform over the positions where the unrotated patch fits inside
  the image; side ``size * scale`` pixels with ``scale`` uniform in ``scale``; rotation
  uniform in ``rotation`` degrees (counter-clockwise on screen); lighting of the patch
  ``clip(mid + contrast * (P - mid) + brightness)`` with ``mid`` the middle of the domain,
  ``contrast`` and ``brightness`` uniform in their ranges (REAP relights the patch with a
  fitted ``alpha P + beta`` in the same way).
* **Pasting** (:func:`paste`) is differentiable in the patch: ``affine_grid`` /
  ``grid_sample`` (bilinear, border padding) of the lit patch, and a mask, the share of
  each pixel the transformed square covers (per patch axis: the pixel centre's distance
  inside the edge plus one half pixel, clipped to [0, 1]; exact for axis-aligned squares,
  an approximation when rotated); then ``x (1 - mask) + mask * sampled``, a convex
  combination of image and patch pixels, so the result stays in the domain.  At scale 1,
  angle 0 and an integer offset it copies the patch onto its pixels (exactly, up to
  rounding).
* **Optimisation** (:meth:`PatchAttack.fit`): ``steps`` steps of Adam (or signed gradient
  steps) on the mean loss over ``eot_samples`` fresh transformations per image (all images,
  or a random ``batch_size`` of them, per step), the patch clipped to the domain after
  every step.  Loss: cross-entropy of the target (minimised) or of the label (maximised).
  One patch for all images (``universal=True``) or one per image.
* **Evaluation** (:meth:`PatchAttack.evaluate`): ``n`` fresh transformations per image
  (from a generator seeded apart from the one of ``fit``), the model re-evaluated on the
  pasted images; per image the fraction of transformations under which the model is
  fooled (predicts another class than the label, or the target).

Promises kept as in :class:`~perturbkit.attacks.base.Attack`: inputs validated with
one-line :class:`~perturbkit.errors.InputError` messages, ``nn.Module`` models in eval mode
during the attack (restored after), the patch clipped to the domain, success re-evaluated
on the pasted images, a seed fixing every random draw.

Shapes: images ``x`` (B, C, H, W); labels ``y`` (B,) int64; a patch (C, s, s) (universal)
or (B, C, s, s) (one per image); placements hold (N,) tensors, one entry per pasted image.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from perturbkit.attacks.base import Classifier, as_tensor_batch, sanity_flags
from perturbkit.attacks.placement import Placement, light, paste, sample_placements
from perturbkit.errors import InputError

Tensor = torch.Tensor


# ----------------------------------------------------------------------------- losses and steps

def _loss_untargeted(z: Tensor, y: Tensor, target: Optional[int]) -> Tensor:
    return -F.cross_entropy(z, y, reduction="none")


def _loss_targeted(z: Tensor, y: Tensor, target: Optional[int]) -> Tensor:
    return F.cross_entropy(z, torch.full_like(y, int(target)), reduction="none")


#: loss to minimise, by "is there a target"
LOSSES: dict[bool, Callable[..., Tensor]] = {False: _loss_untargeted, True: _loss_targeted}


def _fooled(z: Tensor, y: Tensor, target: Optional[int]) -> Tensor:
    pred = z.argmax(1)
    return pred != y if target is None else pred == int(target)


class _Adam:
    def __init__(self, p: Tensor, lr: float):
        self.opt = torch.optim.Adam([p], lr=lr)

    def step(self, p: Tensor, g: Tensor) -> None:
        p.grad = g
        self.opt.step()


class _Sign:
    def __init__(self, p: Tensor, lr: float):
        self.lr = lr

    def step(self, p: Tensor, g: Tensor) -> None:
        with torch.no_grad():
            p.sub_(self.lr * g.sign())


OPTIMIZERS: dict[str, type] = {"adam": _Adam, "sign": _Sign}


@dataclass
class PatchResult:
    """Success of a patch under fresh random transformations.

    Attributes:
        success: (B,) per image, the fraction of the ``n`` transformations under which the
            re-evaluated model is fooled (another class than the label, or the target).
        valid: (B,) the image counts (untargeted: all; targeted: label != target).
        clean_success: (B,) already fooled without a patch.
        n: transformations per image.
        flags: sanity flags of the clean batch (see :func:`~perturbkit.attacks.base.sanity_flags`).
        time_s: wall time.
    """

    success: Tensor
    valid: Tensor
    clean_success: Tensor
    n: int
    flags: dict[str, int] = field(default_factory=dict)
    time_s: float = 0.0

    @property
    def success_rate(self) -> float:
        """Mean of ``success`` over the valid images."""
        return float(self.success[self.valid].mean()) if bool(self.valid.any()) else float("nan")


def _pair(name: str, v: Any, *, low: float = -math.inf) -> tuple[float, float]:
    try:
        lo, hi = (float(t) for t in v)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a pair (low, high), got {v!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and low <= lo <= hi):
        raise InputError(f"{name} must be finite with {low} <= low <= high, got {v!r}" if low > -math.inf
                         else f"{name} must be finite with low <= high, got {v!r}")
    return lo, hi


class PatchAttack:
    """Square adversarial patch optimised over random transformations (see the module docstring).

    Args:
        size: side of the patch in pixels (>= 1).
        steps: optimisation steps.
        eot_samples: transformations drawn per image and step.
        rotation: range of rotation angles, degrees.
        scale: range of scale factors (side = ``size * scale`` pixels; ``size * scale[1]``
            must fit in the image).
        brightness: range of the brightness shift of the patch.
        contrast: range of the contrast factor of the patch (>= 0).
        universal: one patch for all images (else one per image).
        target: class to reach (else untargeted: any other class than the label).
        lr: step size of the optimiser, in units of the domain's width.
        optimizer: ``"adam"`` or ``"sign"`` (signed gradient steps).
        batch_size: images per step (None: all).
        domain: ``(lo, hi)`` of the inputs and of the patch.
        seed: seeds the initial patch, the transformations and the batches.
    """

    name = "patch"

    def __init__(self, size: int = 3, *, steps: int = 100, eot_samples: int = 16,
                 rotation: tuple[float, float] = (-20.0, 20.0), scale: tuple[float, float] = (0.8, 1.2),
                 brightness: tuple[float, float] = (-0.1, 0.1), contrast: tuple[float, float] = (0.8, 1.2),
                 universal: bool = True, target: Optional[int] = None, lr: float = 0.1, optimizer: str = "adam",
                 batch_size: Optional[int] = None, domain: tuple[float, float] = (0.0, 1.0), seed: int = 0):
        for what, v in (("size", size), ("steps", steps), ("eot_samples", eot_samples)):
            if isinstance(v, bool) or int(v) != v or int(v) < 1:
                raise InputError(f"{what} must be an integer >= 1, got {v!r}")
        if batch_size is not None and (int(batch_size) != batch_size or int(batch_size) < 1):
            raise InputError(f"batch_size must be an integer >= 1 or None, got {batch_size!r}")
        if target is not None and (isinstance(target, bool) or int(target) != target or int(target) < 0):
            raise InputError(f"target must be a class index >= 0 or None, got {target!r}")
        if not (math.isfinite(lr) and lr > 0):
            raise InputError(f"lr must be > 0, got {lr}")
        if optimizer not in OPTIMIZERS:
            raise InputError(f"unknown optimizer {optimizer!r}; use one of {', '.join(OPTIMIZERS)}")
        self.domain = _pair("domain", domain)
        if not self.domain[0] < self.domain[1]:
            raise InputError(f"domain must be (lo, hi) with lo < hi, got {domain}")
        self.size = int(size)
        self.steps = int(steps)
        self.eot_samples = int(eot_samples)
        self.rotation = _pair("rotation", rotation)
        self.scale = _pair("scale", scale, low=1e-6)
        self.brightness = _pair("brightness", brightness)
        self.contrast = _pair("contrast", contrast, low=0.0)
        self.universal = bool(universal)
        self.target = None if target is None else int(target)
        self.lr = float(lr)
        self.optimizer = optimizer
        self.batch_size = None if batch_size is None else int(batch_size)
        self.seed = int(seed)

    # -- validation ------------------------------------------------------------------------

    def _check_inputs(self, model: Any, x: Any, y: Any) -> tuple[Classifier, Tensor, Tensor]:
        x, y, _ = as_tensor_batch(x, y)
        if x.dim() != 4:
            raise InputError(f"{self.name}: images must be (B, C, H, W), got shape {tuple(x.shape)}")
        H, W = x.shape[-2:]
        side = self.size * self.scale[1]
        if side > min(H, W) + 1e-9:
            raise InputError(f"{self.name}: a patch of {self.size} px at scale up to {self.scale[1]} "
                             f"({side:.3g} px) does not fit in {H}x{W} images")
        lo, hi = self.domain
        if bool(((x < lo - 1e-6) | (x > hi + 1e-6)).any()):
            raise InputError(f"inputs lie outside the domain [{lo}, {hi}] (min {float(x.min()):.4g}, "
                             f"max {float(x.max()):.4g})")
        return Classifier(model), x, y

    def _check_classes(self, y: Tensor, C: int) -> Tensor:
        bad = (y < 0) | (y >= C)
        if bool(bad.any()):
            raise InputError(f"label {int(y[bad][0])} out of range for a model with {C} outputs")
        if self.target is not None and self.target >= C:
            raise InputError(f"target {self.target} out of range for a model with {C} outputs")
        return torch.ones_like(y, dtype=torch.bool) if self.target is None else y != self.target

    def _check_patch(self, patch: Any, x: Tensor) -> Tensor:
        if isinstance(patch, np.ndarray):
            patch = torch.from_numpy(np.ascontiguousarray(patch))
        if not isinstance(patch, Tensor):
            raise InputError(f"{self.name}: the patch must be a tensor, got {type(patch).__name__}")
        want = (x.shape[1], self.size, self.size) if self.universal else (x.shape[0], x.shape[1], self.size, self.size)
        if tuple(patch.shape) != want:
            raise InputError(f"{self.name}: the patch must have shape {want} "
                             f"({'universal' if self.universal else 'one per image'}), got {tuple(patch.shape)}")
        if not bool(torch.isfinite(patch).all()):
            raise InputError(f"{self.name}: the patch contains NaN or inf")
        return patch.to(x.dtype).clamp(*self.domain)

    def placements(self, n: int, x: Tensor, generator: torch.Generator) -> Placement:
        return sample_placements(n, self.size, x.shape[-2], x.shape[-1], rotation=self.rotation, scale=self.scale,
                                 brightness=self.brightness, contrast=self.contrast, generator=generator)

    # -- fit and evaluate ------------------------------------------------------------------

    def fit(self, model: Any, x: Any, y: Any) -> Tensor:
        """The optimised patch: (C, s, s) if universal, else (B, C, s, s); inside the domain."""
        f, x, y = self._check_inputs(model, x, y)
        gen = torch.Generator().manual_seed(self.seed)
        B, C_in = x.shape[:2]
        lo, hi = self.domain
        shape = (C_in, self.size, self.size) if self.universal else (B, C_in, self.size, self.size)
        patch = (lo + (hi - lo) * torch.rand(shape, generator=gen, dtype=x.dtype)).requires_grad_(True)
        loss_fn = LOSSES[self.target is not None]
        E = self.eot_samples
        with f.attacking():
            with torch.no_grad():
                n_out = f(x[:1]).shape[1]
            valid = self._check_classes(y, n_out)
            pool = torch.nonzero(valid).flatten()
            if not pool.numel():
                raise InputError(f"{self.name}: every label equals the target {self.target}; nothing to attack")
            opt = OPTIMIZERS[self.optimizer](patch, self.lr * (hi - lo))
            for _ in range(self.steps):
                if self.batch_size is not None and self.batch_size < pool.numel():
                    idx = pool[torch.randperm(pool.numel(), generator=gen)[:self.batch_size]]
                else:
                    idx = pool
                xs = x[idx].repeat_interleave(E, 0)
                ys = y[idx].repeat_interleave(E, 0)
                place = self.placements(xs.shape[0], x, gen)
                with torch.enable_grad():
                    p = patch if self.universal else patch[idx].repeat_interleave(E, 0)
                    loss = loss_fn(f(paste(xs, p, place, self.domain)), ys, self.target).mean()
                    (g,) = torch.autograd.grad(loss, patch)
                opt.step(patch, g)
                with torch.no_grad():
                    patch.clamp_(lo, hi)
        return patch.detach()

    def evaluate(self, model: Any, x: Any, y: Any, patch: Any, *, n: int = 100, seed: Optional[int] = None,
                 max_batch: int = 8192) -> PatchResult:
        """Success of ``patch`` under ``n`` fresh transformations per image (see
        :class:`PatchResult`); transformations drawn from ``seed`` (default: the attack's
        seed + 1, a stream apart from the one :meth:`fit` used)."""
        t0 = time.perf_counter()
        if isinstance(n, bool) or int(n) != n or int(n) < 1:
            raise InputError(f"n must be an integer >= 1, got {n!r}")
        f, x, y = self._check_inputs(model, x, y)
        patch = self._check_patch(patch, x)
        gen = torch.Generator().manual_seed(self.seed + 1 if seed is None else int(seed))
        B = x.shape[0]
        hits = torch.zeros(B, dtype=torch.float64)
        with f.attacking():
            with torch.no_grad():
                z0 = f(x)
            valid = self._check_classes(y, z0.shape[1])
            flags = sanity_flags(f, x, y, z0)
            per_chunk = max(1, int(max_batch) // B)
            done = 0
            while done < int(n):
                m = min(per_chunk, int(n) - done)
                xs = x.repeat_interleave(m, 0)
                ys = y.repeat_interleave(m, 0)
                p = patch if self.universal else patch.repeat_interleave(m, 0)
                with torch.no_grad():
                    z = f(paste(xs, p, self.placements(xs.shape[0], x, gen), self.domain))
                hits += _fooled(z, ys, self.target).reshape(B, m).sum(1).to(torch.float64).cpu()
                done += m
        return PatchResult(hits / int(n), valid.cpu(), _fooled(z0, y, self.target).cpu(), int(n), flags,
                           time.perf_counter() - t0)


__all__ = ["PatchAttack", "PatchResult", "Placement", "paste", "sample_placements", "light"]
