"""Ordered top-K attacks: the exact QP, known answers on linear models, the promises."""

import numpy as np
import pytest
import torch
from torch import nn

from perturbkit.attacks.base import ThreatModel
from perturbkit.attacks.topk import (OrderedTopK, isotonic_nonincreasing, ordered_gaps, ordered_topk_projection,
                                     random_targets, topk_hit)
from perturbkit.errors import InputError

METHODS = ["quad", "naive"]


def linear_model(W: torch.Tensor, b=None) -> nn.Module:
    """logits = W flatten(x) + b."""
    lin = nn.Linear(W.shape[1], W.shape[0])
    with torch.no_grad():
        lin.weight.copy_(W)
        lin.bias.copy_(torch.zeros(W.shape[0]) if b is None else b)
    return nn.Sequential(nn.Flatten(), lin).eval()


# ----------------------------------------------------------------------------- the QP

def test_isotonic_matches_scipy():
    scipy_opt = pytest.importorskip("scipy.optimize")
    b = torch.randn(40, 9, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = np.stack([scipy_opt.isotonic_regression(r, increasing=False).x for r in b.numpy()])
    assert np.abs(isotonic_nonincreasing(b).numpy() - ref).max() < 1e-12
    chunked = isotonic_nonincreasing(b, max_elements=81 * 3)  # 3 rows per chunk
    assert torch.allclose(chunked, isotonic_nonincreasing(b), atol=1e-14)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_projection_solves_the_qp(k):
    """Feasible with the margin, idempotent, and equal to a generic QP solver's answer."""
    scipy_opt = pytest.importorskip("scipy.optimize")
    C, m = 6, 0.5
    g = torch.Generator().manual_seed(k)
    z = torch.randn(12, C, generator=g, dtype=torch.float64) * 3
    t = random_targets(torch.zeros(12, dtype=torch.long), k, C, g)
    w = ordered_topk_projection(z, t, m)
    assert bool((ordered_gaps(w, t) >= m - 1e-10).all())
    assert torch.allclose(ordered_topk_projection(w, t, m), w, atol=1e-10)
    for i in range(12):
        zi, ti = z[i].numpy(), t[i].tolist()
        pairs = [(ti[a], ti[a + 1]) for a in range(k - 1)] + [(ti[-1], o) for o in range(C) if o not in ti]
        cons = [{"type": "ineq", "fun": (lambda v, a=a, b=b: v[a] - v[b] - m)} for a, b in pairs]
        ref = scipy_opt.minimize(lambda v: ((v - zi) ** 2).sum(), zi, jac=lambda v: 2 * (v - zi), constraints=cons,
                                 method="SLSQP", options={"ftol": 1e-14, "maxiter": 500}).x
        assert np.abs(ref - w[i].numpy()).max() < 1e-6


def test_hand_computed_projection():
    """z = (0, 1, 2), targets (0, 1), margin 1: the chain 0 >= 1 + 1 >= 2 + 2 is reversed;
    shifted values (0 - 1, 1 - 0, 2 + 1) = (-1, 1, 3) pool to their mean 1: w = (2, 1, 0)."""
    w = ordered_topk_projection(torch.tensor([[0.0, 1.0, 2.0]]), torch.tensor([[0, 1]]), 1.0)
    assert torch.allclose(w, torch.tensor([[2.0, 1.0, 0.0]]))


def test_success_is_top_k_in_order():
    z = torch.randn(500, 7, generator=torch.Generator().manual_seed(0))
    t = random_targets(torch.zeros(500, dtype=torch.long), 2, 7, torch.Generator().manual_seed(1))
    want = (z.topk(2, 1).indices == t).all(1)
    assert want.any()
    assert torch.equal(topk_hit(z, t), want)
    assert not bool(topk_hit(torch.tensor([[1.0, 1.0, 0.0]]), torch.tensor([[0, 1]])))  # a tie fails


# ----------------------------------------------------------------------------- known answers

@pytest.mark.parametrize("method,cases", [
    ("quad", ((0.2, True), (0.3, True), (0.14, False))),
    ("naive", ((0.3, True), (0.14, False))),
])
def test_hand_built_linear_model(method, cases):
    """logits = 10 x, x = (0.5, 0.4, 0.3, 0.2), targets (3, 2).  Linf: the best move raises
    x3 by eps, lowers x0 and x1 by eps and puts x2 in between, which works iff
    0.2 - eps < eps - 0.1, i.e. eps > 0.15 (at eps = 0.2 the best smallest gap is 0.5 logit).

    The naive hinge sum is not asked to succeed at eps = 0.2: while both hinges are active it
    reads ``2m - z3 + max(z0, z1)``, in which z2 cancels, so x2, which must move, gets no
    gradient (the weakness of summed pairwise hinges that the QP target removes)."""
    model = linear_model(10 * torch.eye(4))
    x = torch.tensor([0.5, 0.4, 0.3, 0.2]).reshape(1, 1, 2, 2)
    y, t = torch.tensor([0]), torch.tensor([[3, 2]])
    for eps, possible in cases:
        threat = ThreatModel(eps=eps)
        r = OrderedTopK(threat, k=2, steps=100, method=method).attack(model, x, y, t)
        assert bool(threat.contains(x, r.x_adv).all())
        assert bool(r.success[0]) is possible
        assert torch.equal(r.success, (r.logits.topk(2, 1).indices == t).all(1))


@pytest.mark.parametrize("method,must", [("quad", 1.0), ("naive", 0.8)])
def test_linear_models_against_linear_programming(method, must):
    """On logits W x the best achievable smallest gap, max s s.t. gaps >= s over the Linf
    ball and the domain, is a linear program.  Where it is < 0 no attack may succeed.  Where
    it exceeds the margin, the QP loss (the squared distance of W x to a polyhedron: smooth
    and convex in x) reaches 0, and "quad" must succeed everywhere; the hinge sum is convex
    but not smooth, and sign steps stall on it on a few points (asked: ``must`` of them)."""
    scipy_opt = pytest.importorskip("scipy.optimize")
    g = torch.Generator().manual_seed(3)
    B, n, C, K, eps = 40, 16, 6, 3, 0.5
    W = torch.randn(C, n, generator=g) * 4
    x = torch.rand(B, 1, 4, 4, generator=g)
    model = linear_model(W)
    with torch.no_grad():
        y = model(x).argmax(1)
    t = random_targets(y, K, C, g)
    xf, Wn = x.reshape(B, n).double().numpy(), W.double().numpy()
    best = []
    for i in range(B):
        ti = t[i].tolist()
        rows = [Wn[ti[a]] - Wn[ti[a + 1]] for a in range(K - 1)] + [Wn[ti[-1]] - Wn[o] for o in range(C) if o not in ti]
        D = np.stack(rows)  # gaps = D (x + d) >= s  <=>  -D d + s <= D x
        A = np.hstack([-D, np.ones((D.shape[0], 1))])
        bounds = [(max(-eps, -v), min(eps, 1 - v)) for v in xf[i]] + [(None, None)]
        res = scipy_opt.linprog(np.r_[np.zeros(n), -1.0], A_ub=A, b_ub=D @ xf[i], bounds=bounds, method="highs")
        best.append(-res.fun)
    best = torch.tensor(best)
    threat = ThreatModel(eps=eps)
    r = OrderedTopK(threat, k=K, steps=200, method=method, margin=1.0).attack(model, x, y, t)
    assert bool(threat.contains(x, r.x_adv).all())
    assert bool((best < -1e-6).any()) and bool((best > 1.0).any())
    assert not bool(r.success[best < -1e-6].any())
    assert float(r.success[best > 1.0].float().mean()) >= must


# ----------------------------------------------------------------------------- promises

@pytest.fixture(scope="module")
def digits():
    import perturbkit as pk
    import perturbkit.models

    net = pk.load(str(pk.models.bundled_path("digits-mlp")))
    xs, ys = pk.models.load_digits_test()
    return net, torch.from_numpy(xs[:60]), torch.from_numpy(ys[:60])


@pytest.mark.parametrize("norm,eps", [("inf", 0.3), (2, 1.5), (1, 4.0)])
def test_threat_model_holds_and_success_is_re_evaluated(digits, norm, eps):
    net, x, y = digits
    threat = ThreatModel(eps=eps, norm=norm)
    t = random_targets(y, 3, 10, torch.Generator().manual_seed(0))
    r = OrderedTopK(threat, k=3, steps=30).attack(net, x, y, t)
    assert bool(threat.contains(x, r.x_adv).all())
    with torch.no_grad():
        z = net(r.x_adv)
    assert torch.equal(r.success, (z.topk(3, 1).indices == t).all(1))
    assert r.success.any() and not r.success.all()
    assert r.attack == "ordered-topk-quad"
    assert r.raised() == []


def test_quad_beats_naive_at_equal_budget(digits):
    net, x, y = digits
    threat = ThreatModel(eps=0.3)
    t = random_targets(y, 4, 10, torch.Generator().manual_seed(0))
    rate = {m: float(OrderedTopK(threat, k=4, steps=50, method=m).attack(net, x, y, t).success.float().mean())
            for m in METHODS}
    assert rate["quad"] > rate["naive"]


def test_points_already_at_their_targets_are_left_alone(digits):
    net, x, y = digits
    t2 = random_targets(y, 1, 10, torch.Generator().manual_seed(0))
    with torch.no_grad():
        pred = net(x).argmax(1)
    wrong = pred != y
    t2[wrong, 0] = pred[wrong]                          # already at the target
    r = OrderedTopK(ThreatModel(eps=0.3), k=1, steps=5).attack(net, x, y, t2)
    assert torch.equal(r.clean_success, wrong)
    assert torch.equal(r.x_adv[wrong], x[wrong])


def test_seed_reproducible_and_call_routes_to_attack(digits):
    net, x, y = digits
    t = random_targets(y, 2, 10, torch.Generator().manual_seed(5))
    assert torch.equal(t, random_targets(y, 2, 10, torch.Generator().manual_seed(5)))
    assert bool((t != y[:, None]).all()) and bool((t[:, 0] != t[:, 1]).all())
    atk = OrderedTopK(ThreatModel(eps=0.2), k=2, steps=10, random_start=True, seed=7)
    a, b = atk.attack(net, x, y, t), atk(net, x, y, target=t)
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.success, b.success)
    c = OrderedTopK(ThreatModel(eps=0.2), k=2, steps=10, random_start=True, seed=8).attack(net, x, y, t)
    assert not torch.equal(a.x_adv, c.x_adv)


def test_eval_mode_during_the_attack_and_restored():
    seen = []

    class Spy(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = linear_model(10 * torch.eye(4))
            self.drop = nn.Dropout(0.5)

        def forward(self, x):
            seen.append(self.training)
            return self.drop(self.net(x))

    m = Spy().train()
    x = torch.tensor([0.5, 0.4, 0.3, 0.2]).reshape(1, 1, 2, 2)
    r = OrderedTopK(ThreatModel(eps=0.2), k=2, steps=20).attack(m, x, torch.tensor([0]), torch.tensor([[3, 2]]))
    assert r.success.all() and r.flags["randomized"] == 0
    assert seen and not any(seen) and m.training


@pytest.mark.parametrize("targets,msg", [
    (None, "give ordered targets"),
    (torch.tensor([[1, 2, 3]]), "shape"),
    (torch.tensor([[1, 1]]), "repeat"),
    (torch.tensor([[0, 2]]), "contain its label"),
    (torch.tensor([[1, 4]]), "out of range"),
])
def test_bad_targets_say_what_is_wrong(targets, msg):
    model = linear_model(torch.eye(4))
    x = torch.full((1, 1, 2, 2), 0.5)
    with pytest.raises(InputError, match=msg):
        OrderedTopK(ThreatModel(eps=0.1), k=2).attack(model, x, torch.tensor([0]), targets)


def test_bad_options_and_k():
    with pytest.raises(InputError, match="method"):
        OrderedTopK(ThreatModel(eps=0.1), k=2, method="qp")
    with pytest.raises(InputError, match="k must"):
        OrderedTopK(ThreatModel(eps=0.1), k=0)
    with pytest.raises(InputError, match="k <= 3"):
        OrderedTopK(ThreatModel(eps=0.1), k=4).attack(linear_model(torch.eye(4)), torch.full((1, 1, 2, 2), 0.5),
                                                      torch.tensor([0]), torch.tensor([[1, 2, 3, 0]]))
    with pytest.raises(InputError, match="k must be in 1..3"):
        random_targets(torch.tensor([0]), 4, 4)
    with pytest.raises(InputError, match="domain"):
        OrderedTopK(ThreatModel(eps=0.1), k=1).attack(linear_model(torch.eye(4)), torch.full((1, 1, 2, 2), 2.0),
                                                      torch.tensor([0]), torch.tensor([1]))
