"""Attack objectives on logits ``z`` (B, C) and labels ``y`` (B,); each returns (B,), to be
maximised by the attacker.

* ``ce``: cross-entropy of the true class (untargeted) or minus that of the target.
* ``dlr``: Difference of Logits Ratio (Croce & Hein 2020, "Reliable evaluation of
  adversarial robustness with an ensemble of diverse parameter-free attacks"):
  ``-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3)``, shift- and scale-invariant.
* ``dlr_targeted``: ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)``.
* ``margin``: ``max_{i != y} z_i - z_y`` (Carlini & Wagner), or ``z_t - max_{i != t} z_i``.

Positive ``margin`` means the attack succeeded (misclassified / target reached).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def _other_max(z: Tensor, cls: Tensor) -> Tensor:
    """max over i != cls of z_i: (B,)."""
    masked = z.scatter(1, cls[:, None], -torch.inf)
    return masked.amax(1)


def ce(z: Tensor, y: Tensor, target: Optional[Tensor] = None) -> Tensor:
    if target is None:
        return F.cross_entropy(z, y, reduction="none")
    return -F.cross_entropy(z, target, reduction="none")


def _need_classes(z: Tensor, k: int, what: str) -> None:
    if z.shape[1] < k:
        from perturbkit.errors import InputError

        raise InputError(f"the {what} loss needs at least {k} classes, the model has {z.shape[1]}")


def dlr(z: Tensor, y: Tensor, target: Optional[Tensor] = None) -> Tensor:
    _need_classes(z, 3, "DLR")
    if target is not None:
        return dlr_targeted(z, y, target)
    s = z.sort(1, descending=True).values
    zy = z.gather(1, y[:, None]).squeeze(1)
    return -(zy - _other_max(z, y)) / (s[:, 0] - s[:, 2] + 1e-12)


def dlr_targeted(z: Tensor, y: Tensor, target: Tensor) -> Tensor:
    _need_classes(z, 4, "targeted DLR")
    s = z.sort(1, descending=True).values
    zy = z.gather(1, y[:, None]).squeeze(1)
    zt = z.gather(1, target[:, None]).squeeze(1)
    return -(zy - zt) / (s[:, 0] - 0.5 * (s[:, 2] + s[:, 3]) + 1e-12)


def margin(z: Tensor, y: Tensor, target: Optional[Tensor] = None) -> Tensor:
    if target is None:
        return _other_max(z, y) - z.gather(1, y[:, None]).squeeze(1)
    return z.gather(1, target[:, None]).squeeze(1) - _other_max(z, target)


LOSSES: dict[str, Callable[..., Tensor]] = {"ce": ce, "dlr": dlr, "margin": margin}


def loss_fn(name: str) -> Callable[..., Tensor]:
    from perturbkit.errors import InputError

    try:
        return LOSSES[name]
    except KeyError:
        raise InputError(f"unknown loss {name!r}; use one of {', '.join(LOSSES)}") from None


def loss_and_grad(loss, z: Tensor, y: Tensor, target: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """The per-sample loss (B,) and its gradient with respect to the logits (B, C).

    Cross-entropy's gradient is written out (``softmax(z) - onehot``); any other loss is
    differentiated by autograd on the logits alone."""
    z = z.detach()
    if loss is ce:
        cls = y if target is None else target
        m = z.amax(1, keepdim=True)
        e = (z - m).exp()
        s = e.sum(1, keepdim=True)
        l = (s.log() + m).squeeze(1) - z.gather(1, cls[:, None]).squeeze(1)
        dz = (e / s).scatter_add_(1, cls[:, None], torch.full_like(m, -1.0))
        return (l, dz) if target is None else (-l, dz.neg_())
    zg = z.requires_grad_(True)
    with torch.enable_grad():
        l = loss(zg, y, target)
        (dz,) = torch.autograd.grad(l.sum(), zg)
    return l.detach(), dz


def fooled(z: Tensor, y: Tensor, target: Optional[Tensor] = None) -> Tensor:
    """Success of an attack at logits z: misclassified (untargeted) or target reached. (B,) bool."""
    pred = z.argmax(1)
    return pred != y if target is None else pred == target
