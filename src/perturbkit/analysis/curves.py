"""Robust accuracy vs the radius: certified (IBP, CROWN, alpha-CROWN: a lower bound of the true
robust accuracy) beside empirical (PGD, AutoAttack: an upper bound of it).  The gap between the
two is what nobody knows yet about the model.

Consistency: a point certified at ``eps`` can never be broken by an attack at ``eps``.  Every
such point is a bug (in a bound or in the attack's threat model) and :func:`check_consistency`
lists it; it is never hidden.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from perturbkit.errors import InputError

CERTIFY_METHODS = ("ibp", "crown", "alpha-crown")
ATTACKS = ("pgd", "autoattack")


@dataclass(frozen=True)
class Curve:
    """Accuracy at each radius of ``eps`` for one method; ``per_point[k]`` the points (N,) that
    are correct and certified (or not broken) at ``eps[k]``; ``time_s`` the method's time."""

    method: str
    kind: str  # "certified" or "empirical"
    eps: tuple[float, ...]
    accuracy: tuple[float, ...]
    per_point: tuple[np.ndarray, ...] = field(repr=False)
    time_s: float = 0.0

    def to_json(self) -> dict:
        return {"method": self.method, "kind": self.kind, "eps": list(self.eps), "accuracy": list(self.accuracy),
                "time_s": self.time_s}


def _check_grid(eps_grid: Sequence[float]) -> tuple[float, ...]:
    grid = tuple(float(e) for e in eps_grid)
    if not grid:
        raise InputError("the eps grid is empty")
    if any(not (math.isfinite(e) and e >= 0) for e in grid):
        raise InputError(f"the eps grid must hold finite numbers >= 0, got {', '.join(f'{e:g}' for e in grid)}")
    return grid


def certified_curve(net, x: Tensor, y: Tensor, eps_grid: Sequence[float], *, method: str, norm: float = math.inf,
                    domain: Optional[tuple[float, float]] = (0.0, 1.0), batch: int = 64, alpha=None,
                    progress: Optional[Callable[[int], None]] = None) -> Curve:
    """Certified accuracy of ``net`` (a perturbkit Network) on ``(x (N, ...), y (N,))`` at every
    radius: a point counts when it is correct and every margin ``z_y - z_j`` has a positive lower
    bound over the Lp ball (intersected with ``domain``).  ``alpha``: alpha-CROWN's
    :class:`~perturbkit.bounds.alpha_crown.AlphaConfig` (default: stop once every margin is
    proved positive)."""
    import time

    import perturbkit
    from perturbkit.bounds.alpha_crown import AlphaConfig
    from perturbkit.bounds.spec import margin_spec
    from perturbkit.sets import LpBall

    if method not in CERTIFY_METHODS:
        raise InputError(f"unknown certification method {method!r}; available: {', '.join(CERTIFY_METHODS)}")
    grid = _check_grid(eps_grid)
    alpha = alpha if alpha is not None else AlphaConfig(stop_above=0.0)
    t0 = time.perf_counter()
    with torch.no_grad():
        z = net(x)
    n_classes = z.reshape(z.shape[0], -1).shape[1]
    correct = (z.reshape(z.shape[0], -1).argmax(1) == y).numpy()
    per_point = []
    for e in grid:
        ok = np.zeros(x.shape[0], dtype=bool)
        idx = np.nonzero(correct)[0]
        for s in range(0, len(idx), batch):
            sel = torch.from_numpy(idx[s:s + batch])
            b = perturbkit.bounds(net, LpBall(x[sel], e, norm=norm, domain=domain), method=method,
                                  C=margin_spec(y[sel], n_classes), alpha=alpha)
            ok[sel.numpy()] = (b.lower > 0).all(dim=1).numpy()
        per_point.append(ok)
        if progress is not None:
            progress(1)
    acc = tuple(float(p.mean()) for p in per_point)
    return Curve(method, "certified", grid, acc, tuple(per_point), time.perf_counter() - t0)


def empirical_curve(model, x: Tensor, y: Tensor, eps_grid: Sequence[float], *, attack: str, norm: float = math.inf,
                    domain: Optional[tuple[float, float]] = (0.0, 1.0), seed: int = 0,
                    progress: Optional[Callable[[int], None]] = None, **attack_options) -> tuple[Curve, list]:
    """Empirical robust accuracy under ``attack`` (a name of :mod:`perturbkit.attacks.registry`)
    at every radius; also returns the :class:`~perturbkit.attacks.evaluate.Evaluation` of each
    radius (flags, adversarial inputs)."""
    import time

    from perturbkit.attacks.base import ThreatModel
    from perturbkit.attacks.evaluate import evaluate

    grid = _check_grid(eps_grid)
    t0 = time.perf_counter()
    per_point, evals = [], []
    norm_name = "inf" if norm == math.inf else str(int(norm))
    for e in grid:
        ev = evaluate(model, (x, y), ThreatModel(eps=e, norm=norm_name, domain=domain), attacks=attack, progress=False,
                      seed=seed, **attack_options)
        per_point.append(np.array([bool(r["robust"]) for r in ev.records]))
        evals.append(ev)
        if progress is not None:
            progress(1)
    acc = tuple(float(p.mean()) for p in per_point)
    return Curve(attack, "empirical", grid, acc, tuple(per_point), time.perf_counter() - t0), evals


def check_consistency(certified: Sequence[Curve], empirical: Sequence[Curve]) -> list[dict]:
    """Every (radius, certifier, attack, point) where a certified point was broken: must be empty."""
    out = []
    for c in certified:
        for a in empirical:
            for k, e in enumerate(c.eps):
                if e not in a.eps:
                    continue
                j = a.eps.index(e)
                bad = np.nonzero(c.per_point[k] & ~a.per_point[j])[0]
                if len(bad):
                    out.append({"eps": e, "certified_by": c.method, "broken_by": a.method, "points": bad.tolist()})
    return out


def logit_gaps(model, x: Tensor, y: Tensor) -> np.ndarray:
    """``z_y - max_{j != y} z_j`` for every point (negative: misclassified)."""
    with torch.no_grad():
        z = model(x)
    z = z.reshape(z.shape[0], -1).double()
    own = z.gather(1, y.reshape(-1, 1)).squeeze(1)
    other = z.scatter(1, y.reshape(-1, 1), float("-inf")).max(dim=1).values
    return (own - other).numpy()


__all__ = ["ATTACKS", "CERTIFY_METHODS", "Curve", "certified_curve", "check_consistency", "empirical_curve",
           "logit_gaps"]
