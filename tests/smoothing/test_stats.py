"""Clopper-Pearson bounds, the binomial test and the radius formulas of randomized smoothing."""
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binom, norm

from perturbkit.errors import InputError
from perturbkit.smoothing.stats import (binomial_p_value, certified_radius, clopper_pearson_lower,
                                        clopper_pearson_upper, hoeffding_margin, max_certifiable_radius)


@pytest.mark.parametrize("k,n,alpha", [(1, 1, 0.05), (7, 10, 0.001), (990, 1000, 0.001), (50, 100, 0.1),
                                       (99_990, 100_000, 0.001)])
def test_lower_bound_is_the_exact_beta_quantile(k, n, alpha):
    # the Clopper-Pearson lower bound p solves P(Bin(n, p) >= k) = alpha (the binomial tail),
    # which is the alpha quantile of Beta(k, n - k + 1): check the tail equation, not the formula
    p = clopper_pearson_lower(k, n, alpha)
    assert 0 < p < k / n + 1e-12
    assert binom.sf(k - 1, n, p) == pytest.approx(alpha, rel=1e-6)


def test_lower_bound_edges():
    assert clopper_pearson_lower(0, 10, 0.05) == 0.0
    # all n successes: P(Bin(n, p) = n) = p^n = alpha
    assert clopper_pearson_lower(1000, 1000, 0.001) == pytest.approx(0.001 ** (1 / 1000), rel=1e-12)
    assert clopper_pearson_upper(10, 10, 0.05) == 1.0
    u = clopper_pearson_upper(3, 10, 0.05)
    assert binom.cdf(3, 10, u) == pytest.approx(0.05, rel=1e-6)


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 5000), data=st.data(), alpha=st.floats(1e-6, 0.5))
def test_lower_bound_monotone_in_successes_and_samples(n, data, alpha):
    k = data.draw(st.integers(0, n))
    lo = clopper_pearson_lower(k, n, alpha)
    assert 0.0 <= lo <= k / n
    if k < n:
        assert clopper_pearson_lower(k + 1, n, alpha) >= lo                  # more successes: higher
    assert clopper_pearson_lower(k, n + 1, alpha) <= lo + 1e-15              # one more failure: lower
    assert clopper_pearson_lower(k + 1, n + 1, alpha) >= lo - 1e-15 if k < n else True  # one more success
    if k > 0:
        # the same success rate from more samples is a tighter (higher) bound
        assert clopper_pearson_lower(2 * k, 2 * n, alpha) >= lo - 1e-15
        assert clopper_pearson_lower(k, n, min(0.9, alpha * 2)) >= lo        # a larger alpha: higher


def test_radius_formula_and_the_largest_radius():
    assert certified_radius(0.25, 0.5) == 0.0
    assert certified_radius(0.5, norm.cdf(2.0)) == pytest.approx(1.0)
    r = max_certifiable_radius(0.25, 1000, 0.001)
    assert r == pytest.approx(0.25 * norm.ppf(0.001 ** (1 / 1000)), rel=1e-9)
    assert max_certifiable_radius(0.25, 100_000, 0.001) > r


def test_binomial_test_and_hoeffding():
    assert binomial_p_value(5, 10) == pytest.approx(1.0)
    assert binomial_p_value(10, 10) == pytest.approx(2 * 0.5 ** 10)
    assert hoeffding_margin(256, 0.001) == pytest.approx(math.sqrt(math.log(1000) / 512))


@pytest.mark.parametrize("call", [lambda: clopper_pearson_lower(3, 2, 0.1), lambda: clopper_pearson_lower(1, 0, 0.1),
                                  lambda: clopper_pearson_lower(1, 2, 0.0), lambda: clopper_pearson_lower(1, 2, 1.0),
                                  lambda: hoeffding_margin(0, 0.1)])
def test_bad_arguments(call):
    with pytest.raises(InputError):
        call()
