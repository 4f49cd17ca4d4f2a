"""Split conformal, the scores, PTT and the RSCP+ threshold on cases with known answers, and
RSCP+ on the bundled noise-trained digits CNN (issue 12, acceptance 4)."""
import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

import perturbkit
from perturbkit.conformal import PTT, ConformalConfig, aps, conformal_quantile, coverage, rscp_threshold, run_conformal
from perturbkit.conformal.split import min_calibration_size, prediction_sets
from perturbkit.errors import InputError
from perturbkit.models import bundled_path, load_digits_test
from perturbkit.smoothing.stats import hoeffding_margin


def test_aps_by_hand():
    p = torch.tensor([[0.5, 0.3, 0.2]])
    assert torch.allclose(aps(p), torch.tensor([[0.5, 0.8, 1.0]]))
    assert torch.allclose(aps(p, torch.tensor([0.5])), torch.tensor([[0.25, 0.65, 0.9]]))


def test_quantile_is_the_kth_smallest_and_small_sets_are_refused():
    s = np.arange(1, 20) / 20.0  # 19 scores
    assert conformal_quantile(s, 0.1) == pytest.approx(s[17])  # ceil(20 * 0.9) = 18th smallest
    assert min_calibration_size(0.1) == 9
    with pytest.raises(InputError, match="needs at least 9"):
        conformal_quantile(np.ones(8), 0.1)
    conformal_quantile(np.ones(9), 0.1)


def test_split_conformal_covers_exchangeable_points():
    # exchangeable scores: the coverage averaged over many calibration draws is >= 1 - alpha
    rng = np.random.default_rng(0)
    alpha, hits = 0.1, []
    for _ in range(400):
        scores = rng.random((51, 5))
        y = rng.integers(0, 5, 51)
        q = conformal_quantile(scores[np.arange(50), y[:50]], alpha)
        hits.append(coverage(prediction_sets(scores[50:], q), y[50:]))
    assert np.mean(hits) >= 1 - alpha - 0.02


def test_ptt_ranks_like_the_holdout_distribution():
    h = np.random.default_rng(1).random(200)
    t = PTT.fit(h, alpha=0.1, temperature=0.01)
    s = torch.linspace(0, 1, 101, dtype=torch.float64)
    r = t.rank(s)
    assert torch.all(r[1:] >= r[:-1]) and r[0] >= 0 and r[-1] <= 1
    for v in (0.2, 0.5, 0.9):  # the ranking transformation is the holdout's distribution function
        assert float(t.rank(torch.tensor([v], dtype=torch.float64))) == pytest.approx(np.mean(h <= v), abs=1.0 / 200 + 1e-9)
    out = t(s)
    assert torch.all(out[1:] >= out[:-1]) and float(out.min()) >= 0 and float(out.max()) <= 1
    assert float(t(torch.tensor([float(np.quantile(h, 0.99))], dtype=torch.float64))) > 0.99


def test_rscp_threshold_formula():
    b = hoeffding_margin(256, 0.001)
    assert rscp_threshold(0.4, eps=0.125, sigma=0.25, n_s=256, beta=0.001) == pytest.approx(
        b + norm.cdf(norm.ppf(0.4 + b) + 0.5))
    assert math.isinf(rscp_threshold(0.95, eps=0.1, sigma=0.25, n_s=256, beta=0.001))
    # eps 0: only the two Monte-Carlo margins
    assert rscp_threshold(0.3, eps=0.0, sigma=0.25, n_s=256, beta=0.001) == pytest.approx(0.3 + 2 * b)


def test_rscp_plus_keeps_coverage_under_attack_and_ptt_shrinks_the_sets():
    net = perturbkit.load(str(bundled_path("digits-cnn-noise")), forward_only=True)
    x, y = load_digits_test()
    rec = run_conformal(net, torch.from_numpy(x), y,
                        ConformalConfig(alpha=0.1, score="aps", robust_eps=0.125, sigma=0.25, ptt=True))
    m = rec["methods"]
    assert rec["points"] == {"holdout": 90, "calibration": 180, "test": 180}
    for name in ("rscp+", "rscp+ptt"):
        assert m[name]["attacked_coverage"] >= 0.9 and m[name]["coverage"] >= 0.9
    assert m["rscp+ptt"]["attacked_average_size"] < m["rscp+"]["attacked_average_size"]
    assert m["rscp+ptt"]["average_size"] < 2.0


def test_the_attack_breaks_standard_conformal_with_thr():
    net = perturbkit.load(str(bundled_path("digits-cnn-noise")), forward_only=True)
    x, y = load_digits_test()
    rec = run_conformal(net, torch.from_numpy(x), y, ConformalConfig(alpha=0.1, score="thr", attack_eps=0.125))
    st = rec["methods"]["standard"]
    assert st["coverage"] >= 0.85 and st["attacked_coverage"] < st["coverage"] - 0.03


@pytest.mark.parametrize("kw,match", [(dict(alpha=0.0), "alpha"), (dict(alpha=1.0), "alpha"),
                                      (dict(robust_eps=0.1, beta=0.05), "beta"), (dict(ptt=True), "robust-eps"),
                                      (dict(score="nope"), "unknown conformal score"),
                                      (dict(alpha=0.001), "calibration set too small")])
def test_bad_settings(kw, match):
    net = perturbkit.load(str(bundled_path("digits-cnn-noise")), forward_only=True)
    x, y = load_digits_test()
    with pytest.raises(InputError, match=match):
        run_conformal(net, torch.from_numpy(x[:100]), y[:100], ConformalConfig(**kw))
