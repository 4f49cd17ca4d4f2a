"""Split conformal prediction (Vovk et al. 2005; Lei et al. 2018; Angelopoulos and Bates 2021).

With calibration scores ``s_1..s_n`` of the true labels and a test point exchangeable with
them, the set ``{y : s(x, y) <= q}`` with ``q`` the ``ceil((n + 1)(1 - alpha))``-th smallest
calibration score covers the test label with probability at least ``1 - alpha``
(:func:`conformal_quantile`).  That needs ``ceil((n + 1)(1 - alpha)) <= n``, i.e. at least
``ceil((1 - alpha) / alpha)`` calibration points; fewer is an :class:`InputError`.
"""
from __future__ import annotations

import math

import numpy as np

from perturbkit.errors import InputError


def min_calibration_size(alpha: float) -> int:
    """The fewest calibration points for which the conformal quantile at ``alpha`` is finite."""
    n = 1
    while math.ceil((n + 1) * (1 - alpha)) > n:
        n += 1
    return n


def conformal_quantile(scores: np.ndarray, alpha: float) -> float:
    """The ``ceil((n + 1)(1 - alpha))``-th smallest of the ``n`` calibration ``scores``."""
    if not (0.0 < alpha < 1.0):
        raise InputError(f"alpha must be in (0, 1), got {alpha:g}")
    s = np.sort(np.asarray(scores, dtype=np.float64).reshape(-1))
    n = len(s)
    k = math.ceil((n + 1) * (1 - alpha) - 1e-12)
    if k > n:
        raise InputError(f"the calibration set has {n} points; alpha {alpha:g} needs at least "
                         f"{min_calibration_size(alpha)}")
    return float(s[k - 1])


def prediction_sets(scores: np.ndarray, q: float) -> np.ndarray:
    """Boolean ``(N, C)``: label ``y`` in the set of point ``i`` iff ``scores[i, y] <= q``."""
    return np.asarray(scores) <= q


def coverage(sets: np.ndarray, y: np.ndarray) -> float:
    """Fraction of points whose set holds the label."""
    return float(np.mean(sets[np.arange(len(y)), np.asarray(y)])) if len(y) else float("nan")


def average_size(sets: np.ndarray) -> float:
    return float(np.mean(sets.sum(axis=1))) if len(sets) else float("nan")


__all__ = ["average_size", "conformal_quantile", "coverage", "min_calibration_size", "prediction_sets"]
