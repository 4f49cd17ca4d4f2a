"""FGSM and PGD on random and trained models."""

import pytest
import torch

import perturbkit as pk
from perturbkit.attacks import FGSM, PGD, ThreatModel
from tests.attacks import models
from tests.attacks.conftest import digits_test

NORMS = {"inf": 0.1, "2": 0.6, "1": 2.0}


@pytest.fixture(scope="module")
def digits():
    return digits_test(96)



@pytest.mark.parametrize("norm", list(NORMS))
@pytest.mark.parametrize("attack", [FGSM, PGD])
def test_threat_model_holds_and_accuracy_falls(norm, attack, digits, cnn):
    x, y = digits
    t = ThreatModel(eps=NORMS[norm], norm=norm)
    r = attack(t, seed=3)(cnn, x, y)
    assert bool(t.contains(x, r.x_adv).all())
    assert bool((r.norms <= t.eps + 1e-6).all())
    clean = float((~r.clean_success).float().mean())
    robust = float(r.robust.float().mean())
    # one sparse L1 step (FGSM) moves a single pixel: it only has to do some damage
    assert clean > 0.9 and robust < clean - (0.2 if (attack is PGD or norm != "1") else 0.0) - 1e-9
    # success is what the model says at x_adv
    assert torch.equal(r.success, cnn(r.x_adv).argmax(1) != y)


@pytest.mark.parametrize("norm", list(NORMS))
def test_random_model_threat_model(norm):
    m = models.linear(n_in=48, n_cls=5, seed=2)
    x = torch.rand(64, 3, 4, 4)
    y = torch.randint(0, 5, (64,))
    t = ThreatModel(eps=NORMS[norm] / 2, norm=norm)
    r = PGD(t, steps=5, restarts=2)(m, x, y)
    assert bool(t.contains(x, r.x_adv).all())


def test_seed_reproduces(digits, cnn):
    x, y = digits
    t = ThreatModel(eps=0.08, norm="2")
    a = PGD(t, steps=5, seed=7)(cnn, x, y)
    b = PGD(t, steps=5, seed=7)(cnn, x, y)
    c = PGD(t, steps=5, seed=8)(cnn, x, y)
    assert torch.equal(a.x_adv, b.x_adv)
    assert not torch.equal(a.x_adv, c.x_adv)


def test_pgd_is_at_least_as_strong_as_fgsm_and_more_steps_help(digits, cnn):
    x, y = digits
    t = ThreatModel(eps=0.1)
    fgsm = FGSM(t)(cnn, x, y).success
    few = PGD(t, steps=2)(cnn, x, y).success
    many = PGD(t, steps=30, restarts=2)(cnn, x, y).success
    assert int(many.sum()) >= int(fgsm.sum()) and int(many.sum()) >= int(few.sum())


def test_early_stopping_keeps_the_first_fooling_iterate():
    """Points already fooled at the random start are not moved further."""
    m = models.linear(n_in=16, n_cls=3, seed=0)
    x = torch.rand(200, 16)
    y = m(x).argmax(1)
    calls = []

    def f(z):
        calls.append(z.shape[0])
        return m(z)

    PGD(ThreatModel(eps=0.5), steps=10)(f, x, y)
    # batch sizes shrink as points are fooled (plus the base class's checks)
    inner = calls[3:-1]
    assert inner[0] >= inner[-1] and min(inner) < max(inner)


def test_fooled_points_keep_their_first_fooling_iterate_while_riding_along():
    """Points fooled at different steps: each returns the first iterate that fooled it, even
    while it stays in the batch (fooled points are dropped only in groups) and moves on."""
    def f(z):
        s = z.reshape(z.shape[0], -1).mean(1)
        return torch.stack([torch.full_like(s, 0.5), s], 1)  # class 1 wins once mean(x) > 0.5

    v = 0.455 - 0.02 * torch.arange(20, dtype=torch.float64) / 3  # fooled after 3, 3, 4, 4, ... steps
    x = v[:, None].repeat(1, 4)
    y = torch.zeros(20, dtype=torch.long)
    alpha = 0.02
    r = PGD(ThreatModel(eps=0.4), steps=30, step_size=alpha, random_start=False)(f, x, y)
    assert bool(r.success.all())
    k = torch.floor((0.5 - v) / alpha) + 1  # first step with v + k * alpha > 0.5
    assert len(set(k.tolist())) > 4
    torch.testing.assert_close(r.x_adv[:, 0], v + k * alpha, rtol=0, atol=1e-9)


def test_best_iterate_is_kept_for_points_never_fooled():
    """With a step size that overshoots, the last iterate is worse than the best one."""
    torch.manual_seed(0)
    w = torch.randn(16)

    def f(z):
        s = (z.reshape(z.shape[0], -1) * w).sum(1)
        return torch.stack([10 + 0 * s, -(s - 0.3) ** 2], 1)  # class 1 never wins; its logit peaks at s = 0.3

    x = torch.full((4, 16), 0.5)
    y = torch.zeros(4, dtype=torch.long)
    t = ThreatModel(eps=0.2, norm=2)
    r = PGD(t, steps=7, step_size=0.15, random_start=False, loss="margin")(f, x, y)
    s = (r.x_adv * w).sum(1)
    s0 = (x * w).sum(1)
    # the best margin over the iterates is at least the one-step point's
    one = PGD(t, steps=1, step_size=0.15, random_start=False, loss="margin")(f, x, y)
    assert bool((-(s - 0.3) ** 2 >= -((one.x_adv * w).sum(1) - 0.3) ** 2 - 1e-6).all())
    assert not torch.equal(s, s0)


def test_targeted_pgd_reaches_targets(digits, cnn):
    x, y = digits
    t = ThreatModel(eps=0.3, targeted=True)
    target = (y + 1) % 10
    r = PGD(t, steps=30)(cnn, x, y, target=target)
    hit = r.success & ~r.clean_success
    assert float(hit.float().mean()) > 0.5
    assert torch.equal(cnn(r.x_adv[hit]).argmax(1), target[hit])


def test_onnx_network_and_module_give_the_same_attack():
    from torch import nn

    torch.manual_seed(1)
    m = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    net = pk.load(m, torch.zeros(1, 1, 4, 4))
    x = torch.rand(32, 1, 4, 4)
    y = m(x).argmax(1)
    t = ThreatModel(eps=0.2)
    a = PGD(t, steps=5, seed=1)(m, x, y)
    b = PGD(t, steps=5, seed=1)(net, x, y)
    assert torch.allclose(a.x_adv, b.x_adv, atol=1e-5)
