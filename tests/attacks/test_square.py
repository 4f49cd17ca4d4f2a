"""Square Attack: black-box (no gradients), query budget, threat model, strength, seeds."""
import pytest
import torch
from torch import nn

from perturbkit.attacks import ThreatModel
from perturbkit.attacks.base import Classifier
from perturbkit.attacks.square import Square, meta_pseudo_gaussian, p_schedule
from perturbkit.errors import InputError
from tests.attacks.conftest import digits_test
from tests.attacks.models import random_cnn

NORMS = {"inf": 0.1, "2": 0.6}


@pytest.fixture(scope="module")
def digits():
    return digits_test(64)




class NoBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z):
        return z.clone()

    @staticmethod
    def backward(ctx, g):
        raise AssertionError("backward called on a black-box model")


class BlackBox(nn.Module):
    """Refuses gradients, and counts the points it is queried on."""

    def __init__(self, net, *, outputs_only=False):
        super().__init__()
        self.net, self.outputs_only, self.evals = net, outputs_only, 0

    def forward(self, x):
        self.evals += x.shape[0]
        if self.outputs_only:  # like a remote API: no autograd graph at all
            with torch.no_grad():
                return self.net(x)
        return NoBackward.apply(self.net(x))


def test_p_schedule_halves_at_the_papers_iterations():
    assert p_schedule(0.8, 0, 10000) == 0.8 and p_schedule(0.8, 10, 10000) == 0.8
    assert p_schedule(0.8, 11, 10000) == 0.4 and p_schedule(0.8, 51, 10000) == 0.2
    assert p_schedule(0.8, 9999, 10000) == pytest.approx(0.8 / 512)
    # rescaled to the budget: iteration 6 of 5000 is iteration 12 of 10000
    assert p_schedule(0.8, 5, 5000) == 0.8 and p_schedule(0.8, 6, 5000) == 0.4


def test_l2_update_shape():
    g = torch.Generator().manual_seed(0)
    d = meta_pseudo_gaussian(5, g)
    assert d.shape == (5, 5) and float(d.norm()) == pytest.approx(1.0)
    assert float(d.max()) > 0 > float(d.min())  # a positive and a negative bump, each on one half
    halves = (d[:2], d[2:]) if bool((d[:2] > 0).all()) else (d[:, :2], d[:, 2:])
    assert bool((halves[0] > 0).all()) and bool((halves[1] < 0).all())


@pytest.mark.parametrize("norm", list(NORMS))
def test_threat_model_holds_random_model(norm, digits):
    x, _ = digits
    m = random_cnn(seed=4)
    with torch.no_grad():
        y = m(x).argmax(1)
    t = ThreatModel(eps=NORMS[norm] / 2, norm=norm)
    r = Square(t, queries=100, restarts=2)(m, x, y)
    assert bool(t.contains(x, r.x_adv).all())
    assert r.success.any()


@pytest.mark.parametrize("norm", list(NORMS))
def test_threat_model_holds_and_accuracy_falls_cnn(norm, digits, cnn):
    x, y = digits
    t = ThreatModel(eps=NORMS[norm], norm=norm)
    r = Square(t, queries=300)(cnn, x, y)
    assert bool(t.contains(x, r.x_adv).all())
    clean = float((~r.clean_success).float().mean())
    assert clean > 0.9 and float(r.robust.float().mean()) < clean - 0.3
    assert torch.equal(r.success, cnn(r.x_adv).argmax(1) != y)


def test_ce_loss_and_targeted(digits, cnn):
    x, y = digits
    t = ThreatModel(eps=0.15, norm="inf")
    r = Square(t, queries=200, loss="ce")(cnn, x, y)
    assert float(r.robust.float().mean()) < 0.6
    target = (y + 1) % 10
    tt = ThreatModel(eps=0.2, norm="inf", targeted=True)
    r = Square(tt, queries=200)(cnn, x, y, target=target)
    assert torch.equal(r.success, cnn(r.x_adv).argmax(1) == target)
    assert float(r.success.float().mean()) > 0.3 and bool(tt.contains(x, r.x_adv).all())


def test_seed_reproduces(digits, cnn):
    x, y = digits
    t = ThreatModel(eps=0.6, norm="2")
    a = Square(t, queries=50, seed=7)(cnn, x, y)
    b = Square(t, queries=50, seed=7)(cnn, x, y)
    c = Square(t, queries=50, seed=8)(cnn, x, y)
    assert torch.equal(a.x_adv, b.x_adv)
    assert not torch.equal(a.x_adv, c.x_adv)


@pytest.mark.parametrize("norm", list(NORMS))
def test_no_gradients_and_query_budget(norm, digits, cnn):
    x, y = digits
    t = ThreatModel(eps=NORMS[norm], norm=norm)
    # the search itself, on a model whose backward raises
    m = BlackBox(cnn)
    attack = Square(t, queries=40, restarts=2)
    f = Classifier(m)
    with torch.no_grad():
        ok = f(x).argmax(1) == y
    m.evals = 0
    out = attack.perturb(f, x[ok], y[ok], None, torch.Generator().manual_seed(0))
    assert out.shape == x[ok].shape
    q = attack.last_queries
    assert int(q.max()) <= 2 * 40 and int(q.sum()) == m.evals  # every evaluation counted
    with torch.no_grad():
        fooled = f(out).argmax(1) != y[ok]
    assert bool(fooled.any()) and bool((q[fooled] < 80).any())  # fooled points stopped early
    assert bool((q[~fooled] == 80).all())  # the rest spent both budgets
    # the whole attack on a model that gives outputs only (no autograd graph)
    bb = BlackBox(cnn, outputs_only=True)
    r = Square(t, queries=40)(bb, x, y)
    # a black-box attack skips the gradient checks: they would need a differentiable model
    assert r.flags["zero_gradients"] == 0 and bool(r.success.any())
    assert bool(Square(t, queries=10)(BlackBox(cnn), x, y).success.any())  # backward raises: never called
    assert bb.evals <= 40 * x.shape[0] + 4 * x.shape[0]  # budget + the base class's checks


def test_l1_and_bad_options_raise():
    with pytest.raises(InputError, match="L1"):
        Square(ThreatModel(eps=1.0, norm=1))
    t = ThreatModel(eps=0.1)
    for bad in ({"queries": 0}, {"restarts": 0}, {"p_init": 0.0}, {"loss": "dlr2"}):
        with pytest.raises(InputError):
            Square(t, **bad)
    lin, x = nn.Linear(6, 3), torch.rand(4, 6)
    with pytest.raises(InputError, match="images"):
        Square(t, queries=5)(lin, x, lin(x).argmax(1))


def _window_signs(cand, best, xp):
    """Per image: the changed window's (rows, cols) and its sign per channel (True: + eps)."""
    changed = (cand != best).any(1)  # (B, H, W)
    rows, cols = changed.any(2), changed.any(1)
    out = []
    for b in range(cand.shape[0]):
        r, c = torch.nonzero(rows[b]).flatten(), torch.nonzero(cols[b]).flatten()
        win = (slice(None), slice(int(r[0]), int(r[-1]) + 1), slice(int(c[0]), int(c[-1]) + 1))
        out.append((r, c, (cand[b][win] == xp[b][win]).flatten(1).all(1)))
    return out


@pytest.mark.parametrize("eps", [0.1, 1e-8])
def test_linf_candidates_change_one_square_window(eps):
    """The paper's Linf update: one s x s window per image set to clip(x +- eps) with a sign
    per channel, always changing the best point; the signs are uniform among those that
    change it.  eps = 1e-8 (x + eps and x - eps within the tolerance) takes the resampling loop."""
    from perturbkit.attacks.square import _LinfProposals

    B, C, H, W = 2000, 3, 6, 6
    g = torch.Generator().manual_seed(0)
    x = torch.rand(B, C, H, W, generator=g) * 0.6 + 0.2
    t = ThreatModel(eps=eps)
    xp, xm = t.clip(x + eps), t.clip(x - eps)
    best = xp.clone()
    best[:, 1] = xm[:, 1]  # every window's current signs: (+, -, +)
    prop = _LinfProposals(x, t, [3] * 5, g)
    assert prop.simple == (eps > 1e-7)
    cand = prop(best, 0)
    assert bool(((cand == xp) | (cand == xm)).all())
    if eps < 1e-7:  # changes within the tolerance only
        assert bool(((cand - best).abs() < 1e-7).all())
        return
    counts = {}
    for r, c, sgn in _window_signs(cand, best, xp):
        assert len(r) <= 3 and len(c) <= 3  # one window of side 3 (where it changes the point)
        counts[tuple(sgn.tolist())] = counts.get(tuple(sgn.tolist()), 0) + 1
    assert (True, False, True) not in counts and len(counts) == 7
    assert all(abs(v - B / 7) < 5 * (B / 7) ** 0.5 for v in counts.values()), counts
