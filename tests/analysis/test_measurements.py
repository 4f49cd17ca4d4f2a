"""The measurements on cases with known answers: linear classifiers, whose adversarial error,
Fourier sensitivity, certified radius and gradients are computable in closed form."""
import math

import numpy as np
import pytest
import torch

import perturbkit
from perturbkit.analysis import (Curve, certified_curve, check_consistency, corruption_curve, empirical_curve,
                                 fit_power_law, fourier_basis, fourier_heat_map, gaussian_blur, gaussian_noise,
                                 input_gradient, logit_gaps, smoothgrad)
from perturbkit.analysis.corruptions import gaussian_kernel
from perturbkit.errors import InputError


class Linear(torch.nn.Module):
    """Two-class linear classifier on (N, 1, H, W) images: logits (-s/2, s/2), s = w . x + b."""

    def __init__(self, w, b=0.0):
        super().__init__()
        self.lin = torch.nn.Linear(w.numel(), 2)
        with torch.no_grad():
            self.lin.weight.copy_(torch.stack([-w.reshape(-1) / 2, w.reshape(-1) / 2]))
            self.lin.bias.copy_(torch.tensor([-b / 2, b / 2]))

    def forward(self, x):
        return self.lin(x.reshape(x.shape[0], -1))


def _linear_data(n=200, k=1.5, h=4, w=4, seed=0):
    """Points whose Linf distance to the decision boundary is d_i = (i / n)^(1/k): the adversarial
    error at radius eps is exactly #{d_i <= eps} / n, i.e. about eps^k."""
    g = torch.Generator().manual_seed(seed)
    wv = torch.randn(h * w, generator=g, dtype=torch.float64)
    model = Linear(wv.float())
    d = torch.tensor([((i + 0.5) / n) ** (1 / k) for i in range(n)], dtype=torch.float64)
    base = torch.randn(n, h * w, generator=g, dtype=torch.float64)
    base -= (base @ wv)[:, None] * wv / (wv @ wv)  # onto the boundary
    side = torch.where(torch.arange(n) % 2 == 0, 1.0, -1.0).double()
    x = base + (side * d)[:, None] * torch.sign(wv)  # Linf distance d to the boundary: margin d * |w|_1
    y = (side > 0).long()
    return model, x.float().reshape(n, 1, h, w), y, d.numpy()


def test_power_law_fit_recovers_an_exact_law():
    eps = np.array([0.0, 0.01, 0.02, 0.05, 0.1])
    fit = fit_power_law(eps, 0.1 + 3.0 * eps ** 1.7)
    assert fit.exponent == pytest.approx(1.7, abs=1e-9) and fit.prefactor == pytest.approx(3.0, rel=1e-9)
    assert fit.r2 == pytest.approx(1.0) and fit.points == 4
    assert fit_power_law([0.0, 0.1], [0.0, 0.2]) is None  # one usable point


def test_adversarial_error_of_a_linear_classifier_follows_its_closed_form():
    model, x, y, d = _linear_data(k=1.5)
    grid = [0.0, 0.1, 0.2, 0.3, 0.5, 0.7]
    curve, _ = empirical_curve(model, x, y, grid, attack="pgd", domain=None, steps=20)
    err = [1 - a for a in curve.accuracy]
    exact = [float(np.mean(d <= e)) for e in grid]
    assert err == pytest.approx(exact, abs=1.0 / len(d) + 1e-9)  # PGD is exact on a linear model
    fit = fit_power_law(grid, err)
    assert fit.exponent == pytest.approx(1.5, abs=0.08) and fit.r2 > 0.99


def test_certified_accuracy_of_a_linear_classifier_is_exact():
    model, x, y, d = _linear_data(n=60, k=1.0)
    net = perturbkit.load(model, x[:1])
    grid = [0.0, 0.2, 0.5, 0.9]
    for method in ("ibp", "crown"):
        c = certified_curve(net, x, y, grid, method=method, domain=None)
        assert c.accuracy == pytest.approx([float(np.mean(d > e)) for e in grid], abs=1e-9)
    emp, _ = empirical_curve(model, x, y, grid, attack="pgd", domain=None)
    assert check_consistency([c], [emp]) == []


def test_consistency_flags_a_certified_point_that_was_broken():
    cert = Curve("crown", "certified", (0.1,), (1.0,), (np.array([True, True]),))
    emp = Curve("pgd", "empirical", (0.1,), (0.5,), (np.array([True, False]),))
    assert check_consistency([cert], [emp]) == [{"eps": 0.1, "certified_by": "crown", "broken_by": "pgd", "points": [1]}]


def test_fourier_heat_map_of_a_linear_classifier():
    model, x, y, _ = _linear_data(n=40, h=4, w=4)
    s = 0.6
    hm = fourier_heat_map(model, x, y, norm=s, domain=None)
    wv = model.lin.weight[1].detach().double() * 2  # w
    m = (x.reshape(40, -1).double() @ wv) * torch.where(y == 1, 1.0, -1.0).double()  # signed margins
    exact = np.zeros((4, 4))
    for u in range(4):
        for v in range(4):
            shift = s * float(fourier_basis(4, 4, u, v).reshape(-1) @ wv)
            exact[u, v] = (float(((m + shift * torch.where(y == 1, 1.0, -1.0)) <= 0).double().mean())
                           + float(((m - shift * torch.where(y == 1, 1.0, -1.0)) <= 0).double().mean())) / 2
    assert hm == pytest.approx(np.fft.fftshift(exact), abs=1e-9)


def test_fourier_basis_is_a_unit_real_wave_of_one_frequency():
    b = fourier_basis(8, 8, 1, 2).numpy()
    assert np.linalg.norm(b) == pytest.approx(1.0)
    spec = np.abs(np.fft.fft2(b))
    assert set(zip(*np.nonzero(spec > 1e-9))) == {(1, 2), (7, 6)}


def test_severity_zero_is_clean_and_blur_keeps_constants():
    model, x, y, _ = _linear_data(n=30, h=4, w=4)
    clean = float((model(x).argmax(1) == y).double().mean())
    for kind in ("noise", "blur"):
        assert corruption_curve(model, x, y, kind, [0.0, 0.5], domain=None)[0] == (0.0, clean)
    c = torch.full((2, 3, 5, 5), 0.3)
    assert torch.allclose(gaussian_blur(c, 1.2), c)
    assert float(gaussian_kernel(0.8).sum()) == pytest.approx(1.0)
    assert torch.equal(gaussian_noise(x, 0.1, seed=3), gaussian_noise(x, 0.1, seed=3))
    with pytest.raises(InputError):
        corruption_curve(model, x, y, "fog", [0.1])


def test_saliency_of_a_linear_model_is_its_weight():
    model, x, y, _ = _linear_data(n=5, h=4, w=4)
    w = model.lin.weight.detach()
    g = input_gradient(model, x, y)
    assert torch.allclose(g.reshape(5, -1), w[y], atol=1e-6)
    assert torch.allclose(smoothgrad(model, x, y, n=4), g, atol=1e-6)


def test_logit_gaps_sign_is_correctness():
    model, x, y, d = _linear_data(n=20)
    gaps = logit_gaps(model, x, y)
    assert np.all(gaps > 0)  # every point is on its label's side
    assert np.all(logit_gaps(model, x, 1 - y) < 0)


def test_empty_or_bad_grid_is_an_error():
    model, x, y, _ = _linear_data(n=4)
    with pytest.raises(InputError, match="empty"):
        empirical_curve(model, x, y, [], attack="pgd")
    with pytest.raises(InputError, match="finite"):
        empirical_curve(model, x, y, [math.inf], attack="pgd")
