"""The statistics of randomized smoothing (Cohen, Rosenfeld and Kolter 2019, "Certified
adversarial robustness via randomized smoothing", ICML).

* :func:`clopper_pearson_lower`: the one-sided ``(1 - alpha)`` Clopper-Pearson lower
  confidence bound of a binomial proportion, ``Beta(alpha; k, n - k + 1)`` (0 for ``k = 0``),
  the ``pA_lower`` of CERTIFY;
* :func:`binomial_p_value`: the two-sided exact binomial test of ``p = 1/2`` that PREDICT
  abstains by;
* :func:`certified_radius`: ``sigma * Phi^-1(pA_lower)``, the L2 radius of Cohen et al.'s
  Theorem 1 (for ``pA_lower > 1/2``);
* :func:`max_certifiable_radius`: the largest radius ``n`` samples can certify at level
  ``alpha`` (every sample votes for the top class: ``pA_lower = alpha^(1/n)``);
* :func:`hoeffding_margin`: ``sqrt(ln(1/beta) / (2 n))``, the one-sided Hoeffding deviation of
  a mean of ``n`` values in [0, 1] exceeded with probability at most ``beta`` (RSCP+).

scipy's ``binom_test`` was removed in SciPy 1.12; this module uses ``scipy.stats.binomtest``
and the Beta quantile directly.
"""
from __future__ import annotations

import math

from perturbkit.errors import InputError


def _check_alpha(alpha: float, name: str = "alpha") -> None:
    if isinstance(alpha, bool) or not (isinstance(alpha, (int, float)) and 0.0 < float(alpha) < 1.0):
        raise InputError(f"{name} must be in (0, 1), got {alpha}")


def _check_counts(k: int, n: int) -> None:
    if int(n) != n or n < 1:
        raise InputError(f"the number of samples must be an integer >= 1, got {n}")
    if int(k) != k or not 0 <= k <= n:
        raise InputError(f"the number of successes must be an integer in [0, {n}], got {k}")


def clopper_pearson_lower(k: int, n: int, alpha: float) -> float:
    """One-sided lower confidence bound at level ``1 - alpha`` of the success probability
    ``p`` of a binomial with ``k`` successes in ``n`` trials (Clopper and Pearson 1934):
    the ``alpha`` quantile of ``Beta(k, n - k + 1)``, and 0 when ``k = 0``.

    Guarantee: ``P(clopper_pearson_lower(K, n, alpha) <= p) >= 1 - alpha`` for every ``p``.
    It is the lower end of the two-sided interval at level ``1 - 2 alpha`` (what Cohen et al.
    compute with ``proportion_confint(k, n, alpha=2 * alpha, method="beta")``).
    """
    from scipy.stats import beta

    _check_counts(k, n)
    _check_alpha(alpha)
    if k == 0:
        return 0.0
    return float(beta.ppf(alpha, k, n - k + 1))


def clopper_pearson_upper(k: int, n: int, alpha: float) -> float:
    """One-sided upper confidence bound at level ``1 - alpha``: the ``1 - alpha`` quantile of
    ``Beta(k + 1, n - k)``, and 1 when ``k = n``."""
    from scipy.stats import beta

    _check_counts(k, n)
    _check_alpha(alpha)
    if k == n:
        return 1.0
    return float(beta.ppf(1.0 - alpha, k + 1, n - k))


def binomial_p_value(k: int, n: int, p: float = 0.5) -> float:
    """Two-sided exact binomial test of ``P(success) = p`` for ``k`` successes in ``n`` trials
    (``scipy.stats.binomtest``; the p-value Cohen et al.'s PREDICT compares with alpha)."""
    from scipy.stats import binomtest

    _check_counts(k, n)
    return float(binomtest(int(k), int(n), p, alternative="two-sided").pvalue)


def certified_radius(sigma: float, p_a_lower: float) -> float:
    """``sigma * Phi^-1(p_a_lower)`` (Cohen et al. 2019, Theorem 1 with ``p_B = 1 - p_A``);
    0 for ``p_a_lower <= 1/2`` (CERTIFY abstains there)."""
    from scipy.stats import norm

    if p_a_lower <= 0.5:
        return 0.0
    return float(sigma * norm.ppf(p_a_lower))


def max_certifiable_radius(sigma: float, n: int, alpha: float) -> float:
    """The largest radius CERTIFY can return with ``n`` estimation samples at level ``alpha``:
    ``sigma * Phi^-1(alpha^(1/n))``, reached when all ``n`` samples vote for the top class."""
    return certified_radius(sigma, clopper_pearson_lower(n, n, alpha))


def hoeffding_margin(n: int, beta: float) -> float:
    """``b = sqrt(ln(1 / beta) / (2 n))``: for the mean ``m`` of ``n`` independent values in
    [0, 1] with expectation ``mu``, ``P(m - mu >= b) <= beta`` and ``P(mu - m >= b) <= beta``
    (Hoeffding 1963)."""
    _check_alpha(beta, "beta")
    if int(n) != n or n < 1:
        raise InputError(f"the number of samples must be an integer >= 1, got {n}")
    return math.sqrt(math.log(1.0 / beta) / (2.0 * n))


__all__ = ["binomial_p_value", "certified_radius", "clopper_pearson_lower", "clopper_pearson_upper",
           "hoeffding_margin", "max_certifiable_radius"]
