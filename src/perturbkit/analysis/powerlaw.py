"""How adversarial error grows with the radius: a power law ``error(eps) - error(0) = c * eps^k``
fitted on log-log axes (Cubuk, Zoph, Schoenholz and Le 2017, "Intriguing properties of
adversarial examples", report such a law, with a nearly universal exponent, at small eps).

:func:`fit_power_law` fits ``log(e) = log(c) + k log(eps)`` by least squares over the points
with ``eps > 0`` and an excess error ``e = error(eps) - error(0)`` strictly between 0 and
``1 - error(0)`` (the error cannot grow past 1, where the law saturates), and reports the fit's
R^2 on those log values.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import numpy as np

from perturbkit.errors import InputError


@dataclass(frozen=True)
class PowerLawFit:
    """``excess_error(eps) ~ prefactor * eps ** exponent``; ``r2`` on log-log axes; ``points``
    used; ``eps_range`` the radii of those points."""

    exponent: float
    prefactor: float
    r2: float
    points: int
    eps_range: tuple[float, float]

    def predict(self, eps: float) -> float:
        return self.prefactor * eps ** self.exponent

    def to_json(self) -> dict:
        d = asdict(self)
        d["eps_range"] = list(self.eps_range)
        d["r2"] = self.r2 if math.isfinite(self.r2) else None
        return d


def fit_power_law(eps: Sequence[float], error: Sequence[float], *, clean_error: Optional[float] = None
                  ) -> Optional[PowerLawFit]:
    """Fit the power law of the module docstring to ``error`` (fractions) at radii ``eps``.
    ``clean_error`` (default: the error at ``eps == 0`` if given, else 0) is subtracted.
    Returns None when fewer than 2 points are usable."""
    e = np.asarray(eps, dtype=np.float64)
    err = np.asarray(error, dtype=np.float64)
    if e.shape != err.shape or e.ndim != 1:
        raise InputError(f"eps and error must be 1-D of the same length, got {e.shape} and {err.shape}")
    if np.any(~np.isfinite(e)) or np.any(e < 0) or np.any(~np.isfinite(err)) or np.any((err < 0) | (err > 1)):
        raise InputError("eps must be finite and >= 0, errors fractions in [0, 1]")
    if clean_error is None:
        zero = err[e == 0]
        clean_error = float(zero[0]) if len(zero) else 0.0
    excess = err - clean_error
    use = (e > 0) & (excess > 0) & (err < 1.0)
    if use.sum() < 2 or len(np.unique(e[use])) < 2:
        return None
    lx, ly = np.log(e[use]), np.log(excess[use])
    k, logc = np.polyfit(lx, ly, 1)
    pred = logc + k * lx
    ss_res = float(np.sum((ly - pred) ** 2))
    ss_tot = float(np.sum((ly - ly.mean()) ** 2))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else (1.0 if ss_res == 0 else float("nan"))
    return PowerLawFit(float(k), float(math.exp(logc)), r2, int(use.sum()), (float(e[use].min()), float(e[use].max())))


__all__ = ["PowerLawFit", "fit_power_law"]
