"""The threat model, the Lp geometry and the promises of the Attack base class."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from perturbkit.attacks import FGSM, PGD, ThreatModel
from perturbkit.attacks.base import Attack
from perturbkit.attacks.norms import lp_norm, project_ball, random_in_ball, steepest_direction
from perturbkit.errors import InputError
from tests.attacks import models

NORMS = [math.inf, 2.0, 1.0]


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from(NORMS), st.floats(0.0, 3.0), st.integers(1, 40))
def test_projection_lands_in_the_ball_and_is_idempotent(seed, p, eps, n):
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(5, n, generator=g, dtype=torch.float64) * 2
    q = project_ball(d, eps, p)
    assert bool((lp_norm(q, p) <= eps + 1e-9).all())
    assert torch.allclose(project_ball(q, eps, p), q, atol=1e-12)
    inside = lp_norm(d, p) <= eps
    assert torch.equal(q[inside], d[inside])


@pytest.mark.parametrize("seed", range(20))
def test_l1_projection_is_the_nearest_point(seed):
    """KKT: the projection is sign(d) * max(|d| - theta, 0) with ||.||_1 = eps, and no random
    point of the ball is closer."""
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(1, 12, generator=g, dtype=torch.float64)
    eps = 0.5
    q = project_ball(d, eps, 1.0)
    assert float(q.abs().sum()) == pytest.approx(eps, abs=1e-12)
    cand = random_in_ball(torch.zeros(20000, 12, dtype=torch.float64), eps, 1.0, g)
    assert float((cand - d).norm(dim=1).min()) >= float((q - d).norm()) - 1e-12


@pytest.mark.parametrize("p", NORMS)
def test_random_starts_are_in_the_ball(p):
    x = torch.zeros(500, 3, 4, 4, dtype=torch.float64)
    r = random_in_ball(x, 0.3, p, torch.Generator().manual_seed(1))
    assert bool((lp_norm(r, p) <= 0.3 + 1e-12).all())
    assert float(lp_norm(r, p).max()) > 0.2  # not degenerate


def test_steepest_directions_have_unit_norm_and_ascend():
    g = torch.randn(4, 30, dtype=torch.float64)
    for p in NORMS:
        d = steepest_direction(g, p)
        assert torch.allclose(lp_norm(d, p), torch.ones(4, dtype=torch.float64))
        assert bool(((d * g).sum(1) > 0).all())
    # L1 steps skip coordinates stuck at the domain bound in their direction
    x = torch.full((1, 4), 0.5, dtype=torch.float64)
    x[0, 0] = 1.0
    gg = torch.tensor([[10.0, 1.0, 0.5, 0.1]], dtype=torch.float64)
    d = steepest_direction(gg, 1.0, x=x, domain=(0.0, 1.0), l1_fraction=0.25)
    assert d[0, 0] == 0 and d[0, 1] == 1


def test_threat_model_validation():
    for bad in (dict(eps=-0.1), dict(eps=float("nan")), dict(eps=1.0, norm="3"), dict(eps=1.0, domain=(1, 0)),
                dict(eps=1.0, mean=(0.5,)), dict(eps=1.0, mean=(0.5,), std=(0.0,))):
        with pytest.raises(InputError):
            ThreatModel(**bad)
    t = ThreatModel(eps=0.1, norm="2")
    assert t.p == 2.0 and t.domain == (0.0, 1.0)


def test_projection_keeps_ball_and_domain_together():
    t = ThreatModel(eps=0.5, norm=2)
    x = torch.rand(50, 16, dtype=torch.float64)
    far = x + torch.randn(50, 16, dtype=torch.float64) * 3
    q = t.project(x, far)
    assert bool(t.contains(x, q, tol=1e-12).all())


class _Lazy(Attack):
    """Returns a point far outside the threat model: the base class must project it."""

    name = "lazy"

    def perturb(self, f, x, y, target, generator):
        return x + 5.0


def test_base_class_projects_and_reevaluates():
    m = models.linear()
    x = torch.rand(32, 16)
    y = m(x).argmax(1)
    t = ThreatModel(eps=0.05)
    r = _Lazy(t)(m, x, y)
    assert bool(t.contains(x, r.x_adv).all())
    assert torch.equal(r.success, m(r.x_adv).argmax(1) != y)


def test_eval_mode_during_the_attack_and_restored_after():
    seen = []

    class Spy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(16, 3)
            self.drop = torch.nn.Dropout(0.5)

        def forward(self, x):
            seen.append(self.training)
            return self.lin(self.drop(x.reshape(x.shape[0], -1)))

    m = Spy().train()
    x = torch.rand(8, 16)
    PGD(ThreatModel(eps=0.1), steps=2)(m, x, torch.zeros(8, dtype=torch.long))
    assert seen and not any(seen)
    assert m.training and m.drop.training
    assert all(p.requires_grad for p in m.parameters())


@pytest.mark.parametrize("model,flag", [(models.Softmaxed(), "softmax_outputs"), (models.Noisy(), "randomized"),
                                        (models.Quantised(), "zero_gradients"), (models.NaNOut(), "nan_outputs")])
def test_each_sanity_flag_is_raised_by_a_model_built_for_it(model, flag):
    x = torch.rand(16, 16)
    y = torch.zeros(16, dtype=torch.long)
    r = FGSM(ThreatModel(eps=0.1))(model, x, y)
    assert r.flags[flag] > 0
    others = [k for k, v in r.flags.items() if v and k != flag and not (flag == "nan_outputs" and k == "nan_gradients")]
    assert others == []
    # a well-behaved model raises nothing
    clean = FGSM(ThreatModel(eps=0.1))(models.linear(), x, y)
    assert clean.raised() == []


def test_bad_inputs_are_one_line_errors():
    m = models.linear()
    t = ThreatModel(eps=0.1)
    x = torch.rand(4, 16)
    y = torch.zeros(4, dtype=torch.long)
    cases = [(x * 3, y, "domain"), (x, torch.tensor([0, 1, 2, 3]), "out of range"), (x, y[:3], "labels"),
             (x.clone().fill_(float("nan")), y, "NaN"), (x, y.float() + 0.5, "integers")]
    for xx, yy, msg in cases:
        with pytest.raises(InputError, match=msg):
            PGD(t)(m, xx, yy)
    with pytest.raises(InputError, match="targeted"):
        PGD(ThreatModel(eps=0.1, targeted=True))(m, x, y)
    with pytest.raises(InputError, match="target equals"):
        PGD(t)(m, x, y, target=y)
    with pytest.raises(InputError):
        PGD(t, steps=0)


def test_normalisation_is_inside_the_model():
    m = models.linear()
    x = torch.rand(8, 1, 4, 4)
    y = torch.zeros(8, dtype=torch.long)
    t = ThreatModel(eps=0.0, mean=(0.5,), std=(0.25,))
    r = FGSM(t)(m, x, y)
    assert torch.allclose(r.logits, m((x - 0.5) / 0.25), atol=1e-6)
    assert np.isclose(float(r.norms.max()), 0.0)


@pytest.mark.parametrize("p", NORMS)
def test_pgd_random_start_radius(p):
    """Linf: uniform in the box; L2/L1: radius uniform in [0, eps] (mean eps / 2)."""
    from perturbkit.attacks.norms import random_start

    x = torch.zeros(4000, 64, dtype=torch.float64)
    r = lp_norm(random_start(x, 0.5, p, torch.Generator().manual_seed(0)), p)
    assert bool((r <= 0.5 + 1e-12).all())
    if p != math.inf:
        assert float(r.mean()) == pytest.approx(0.25, abs=0.02)
        assert float((r < 0.1).float().mean()) == pytest.approx(0.2, abs=0.03)


def test_l1_projection_with_a_domain_is_the_nearest_point():
    """For L1 the threat model projects exactly onto ball ∩ domain: inside, never farther
    from the point than clipping after the ball's projection, and idempotent."""
    t = ThreatModel(eps=1.5, norm=1)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(200, 16, generator=g, dtype=torch.float64)
    far = x + torch.randn(200, 16, generator=g, dtype=torch.float64)
    p = t.project(x, far)
    assert bool(t.contains(x, p, tol=1e-9).all())
    naive = t.clip(x + project_ball(far - x, 1.5, 1.0))
    assert bool(((p - far).norm(dim=1) <= (naive - far).norm(dim=1) + 1e-9).all())
    assert float(((naive - far).norm(dim=1) - (p - far).norm(dim=1)).max()) > 1e-3
    assert torch.allclose(t.project(x, p), p, atol=1e-9)
