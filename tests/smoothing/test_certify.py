"""PREDICT and CERTIFY against a base classifier whose smoothed probabilities are known in
closed form: the half-space classifier f(x) = [w . x > b] in any dimension.  Under N(0, sigma^2)
noise, P(f(x + delta) = 1) = Phi((w . x - b) / (sigma |w|)), and the smoothed classifier's exact
robust radius is the distance |w . x - b| / |w| to the hyperplane (Cohen et al.'s bound is tight)."""
import numpy as np
import pytest
import torch
from scipy.stats import beta, norm

from perturbkit.errors import InputError
from perturbkit.smoothing import ABSTAIN, CertifyConfig, Smooth, certified_accuracy, certify_dataset
from perturbkit.smoothing.certify import ESTIMATION, SELECTION, noise_chunks
from perturbkit.smoothing.evaluate import accuracy_curve, format_tsv_row


class HalfSpace(torch.nn.Module):
    def __init__(self, w, b):
        super().__init__()
        self.w, self.b = torch.as_tensor(w, dtype=torch.float32), float(b)

    def forward(self, x):
        s = x.reshape(x.shape[0], -1) @ self.w.reshape(-1) - self.b
        return torch.stack([-s, s], dim=1)  # class 1 where w.x > b


def _points(d=6, n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d, generator=g)
    x = torch.randn(n, 1, d, generator=g) * 0.5
    return HalfSpace(w, 0.1), x


def _count_independently(model, x, seed, index, phase, num, sigma):
    c = np.zeros(2, dtype=np.int64)
    for noise in noise_chunks(seed, index, phase, num, tuple(x.shape), sigma):
        c += np.bincount(model(x + noise).argmax(1).numpy(), minlength=2)
    return c


def test_certify_radius_is_sigma_phi_inverse_of_the_clopper_pearson_bound():
    model, x = _points()
    sigma, n0, n, alpha = 0.3, 50, 2000, 0.001
    smooth = Smooth(model, sigma, 2)
    for i in range(x.shape[0]):
        pred, radius = smooth.certify(x[i], n0, n, alpha, seed=5, index=i)
        c0 = _count_independently(model, x[i], 5, i, SELECTION, n0, sigma)
        c = _count_independently(model, x[i], 5, i, ESTIMATION, n, sigma)
        c_a = int(np.argmax(c0))
        p_lower = beta.ppf(alpha, c[c_a], n - c[c_a] + 1) if c[c_a] > 0 else 0.0
        if p_lower < 0.5:
            assert (pred, radius) == (ABSTAIN, 0.0)
        else:
            assert pred == c_a
            assert radius == pytest.approx(sigma * norm.ppf(p_lower), rel=1e-9, abs=1e-12)


def test_counts_follow_the_known_probability_and_radii_never_exceed_the_true_radius():
    model, x = _points(n=40)
    sigma, n = 0.3, 4000
    smooth = Smooth(model, sigma, 2)
    w = model.w
    margin = (x.reshape(x.shape[0], -1) @ w - model.b).numpy()
    dist = np.abs(margin) / float(w.norm())
    p1 = norm.cdf(margin / (sigma * float(w.norm())))
    counts = smooth.counts(x, n, seed=1)
    # the vote counts are Binomial(n, p1): within 5 standard deviations at every point
    sd = np.sqrt(n * p1 * (1 - p1)) + 1.0
    assert np.all(np.abs(counts[:, 1] - n * p1) <= 5 * sd)
    # soundness: a certified radius never exceeds the exact robust radius of the smoothed classifier
    certs = list(smooth.certify_batch(x, 100, n, 0.001, seed=2))
    for c, d, m in zip(certs, dist, margin):
        if c.prediction != ABSTAIN:
            assert c.prediction == int(m > 0)
            assert c.radius <= d + 1e-9
    assert sum(c.prediction != ABSTAIN for c in certs) >= 30


def test_batched_equals_one_by_one_and_does_not_depend_on_the_batch_size():
    model, x = _points(n=9)
    smooth = Smooth(model, 0.5, 2)
    one = [smooth.certify(x[i], 30, 1500, 0.01, seed=3, index=i) for i in range(x.shape[0])]
    for bs in (None, 7, 1000, 5000):
        got = [(c.prediction, c.radius) for c in smooth.certify_batch(x, 30, 1500, 0.01, seed=3, batch_size=bs)]
        assert got == one
    other = [(c.prediction, c.radius) for c in smooth.certify_batch(x, 30, 1500, 0.01, seed=4)]
    assert other != one  # the seed matters


def test_predict_abstains_on_a_coin_and_answers_a_clear_case():
    # a classifier whose two classes are equally likely everywhere: PREDICT must abstain
    model = HalfSpace([1.0, 0.0], 0.0)
    smooth = Smooth(model, 1.0, 2)
    x = torch.zeros(4, 1, 2)
    assert smooth.predict_batch(x, 2000, 0.001, seed=0) == [ABSTAIN] * 4
    far = torch.tensor([[[3.0, 0.0]], [[-3.0, 0.0]]])
    assert smooth.predict_batch(far, 200, 0.001) == [1, 0]
    assert smooth.predict(far[0], 200, 0.001) == 1


def test_denoiser_runs_before_the_classifier():
    model, x = _points(n=3)
    # a denoiser that maps everything to a point on the positive side: always class 1
    target = (model.w / model.w.norm() * 5).reshape(1, 1, -1)
    smooth = Smooth(model, 0.5, 2, denoiser=lambda z: target.expand(z.shape[0], -1, -1))
    assert [c.prediction for c in smooth.certify_batch(x, 10, 100, 0.01)] == [1, 1, 1]
    ident = Smooth(model, 0.5, 2, denoiser=lambda z: z)
    plain = Smooth(model, 0.5, 2)
    assert [c.radius for c in ident.certify_batch(x, 10, 300, 0.01)] == [c.radius for c in plain.certify_batch(x, 10, 300, 0.01)]


def test_dataset_records_accuracy_table_and_tsv():
    model, x = _points(n=10)
    y = (x.reshape(10, -1) @ model.w - model.b > 0).long().numpy()
    y[0] = 1 - y[0]  # one wrong label
    seen = []
    recs = certify_dataset(Smooth(model, 0.3, 2), x, y, CertifyConfig(n0=20, n=500, alpha=0.01), on_record=seen.append,
                           indices=range(100, 110))
    assert [r.idx for r in recs] == list(range(100, 110)) and seen == recs
    assert not recs[0].correct or recs[0].predict == ABSTAIN
    acc = certified_accuracy(recs, [0.0, 0.1, 10.0])
    assert acc[0] >= acc[1] >= acc[2] == 0.0
    curve = accuracy_curve(recs)
    assert curve[0][0] == 0.0 and all(a >= b for (_, a), (_, b) in zip(curve, curve[1:]))
    row = format_tsv_row(recs[1]).split("\t")
    assert len(row) == 6 and row[0] == "101" and ":" in row[5]


@pytest.mark.parametrize("kwargs", [dict(sigma=0.0), dict(sigma=-1.0), dict(sigma=float("nan")), dict(num_classes=1)])
def test_bad_smooth_arguments(kwargs):
    args = dict(base=HalfSpace([1.0], 0.0), sigma=0.5, num_classes=2) | kwargs
    with pytest.raises(InputError):
        Smooth(args["base"], args["sigma"], args["num_classes"])


@pytest.mark.parametrize("n0,n,alpha", [(0, 10, 0.1), (10, 0, 0.1), (10, 10, 0.0), (10, 10, 1.5)])
def test_bad_certify_arguments(n0, n, alpha):
    smooth = Smooth(HalfSpace([1.0], 0.0), 0.5, 2)
    with pytest.raises(InputError):
        list(smooth.certify_batch(torch.zeros(1, 1), n0, n, alpha))
