"""FAB and FAB-T: the hyperplane-and-box projection, the threat model, strength, minimal norms."""
import math

import pytest
import torch
from torch import nn

from perturbkit.attacks import PGD, ThreatModel
from perturbkit.attacks.fab import FAB, project_hyperplane_box
from perturbkit.errors import InputError
from tests.attacks.conftest import digits_test
from tests.attacks.models import random_cnn

NORMS = {"inf": 0.1, "2": 0.6, "1": 2.0}
P = {"inf": math.inf, "2": 2.0, "1": 1.0}


@pytest.fixture(scope="module")
def digits():
    return digits_test(64)





# -- the projection, by hand --------------------------------------------------------------------

def proj(t, w, b, p, domain=(0.0, 1.0)):
    d = project_hyperplane_box(torch.tensor([t], dtype=torch.float64), torch.tensor([w], dtype=torch.float64),
                               torch.tensor([b], dtype=torch.float64), p, domain)
    return d[0].tolist()


def test_projection_2d_by_hand():
    # from t = (0.5, 0.5) onto x1 + 2 x2 = 2 (c = 0.5 to go), box [0, 1]^2
    # L2: along w, d = c w / |w|^2 = (0.1, 0.2); Linf: equal moves r + 2 r = 0.5 -> r = 1/6;
    # L1: all on the coordinate with the larger weight, d2 = 0.5 / 2
    assert proj((0.5, 0.5), (1, 2), 2.0, 2.0) == pytest.approx([0.1, 0.2])
    assert proj((0.5, 0.5), (1, 2), 2.0, math.inf) == pytest.approx([1 / 6, 1 / 6])
    assert proj((0.5, 0.5), (1, 2), 2.0, 1.0) == pytest.approx([0.0, 0.25])
    # the box binds: from (0.5, 0.9) onto x1 + 2 x2 = 2.6 (c = 0.3) x2 may only rise by 0.1
    # (giving 0.2); the remaining 0.1 comes from x1, in every norm
    for p in (2.0, math.inf, 1.0):
        assert proj((0.5, 0.9), (1, 2), 2.6, p) == pytest.approx([0.1, 0.1])
    # without the box, L2 goes straight along w
    assert proj((0.5, 0.9), (1, 2), 2.6, 2.0, None) == pytest.approx([0.06, 0.12])
    # the other side of the hyperplane: x1 + 2 x2 = 0.5 from (0.5, 0.5) (c = -1), L1: x2 -> 0
    assert proj((0.5, 0.5), (1, 2), 0.5, 1.0) == pytest.approx([0.0, -0.5])
    # the hyperplane misses the box: go to the corner furthest along w
    for p in (2.0, math.inf, 1.0):
        assert proj((0.5, 0.9), (1, 2), 10.0, p) == pytest.approx([0.5, 0.1])
    # already on the hyperplane: no move
    assert proj((0.5, 0.5), (1, 2), 1.5, 2.0) == pytest.approx([0.0, 0.0])


@pytest.mark.parametrize("norm", list(P))
def test_projection_is_the_optimum_of_the_lp(norm):
    """Against scipy's LP (Linf, L1) / SLSQP (L2) on random small problems."""
    scipy_opt = pytest.importorskip("scipy.optimize")
    import numpy as np

    g = torch.Generator().manual_seed(1)
    N, n = 12, 5
    t = torch.rand(N, n, generator=g, dtype=torch.float64)
    w = torch.randn(N, n, generator=g, dtype=torch.float64)
    w[:3, :2] = 0
    b = (w * torch.rand(N, n, generator=g, dtype=torch.float64)).sum(1)  # meets the box
    p = P[norm]
    d = project_hyperplane_box(t, w, b, p, (0.0, 1.0))
    assert torch.allclose((w * (t + d)).sum(1), b, atol=1e-10)
    assert bool(((t + d) >= -1e-12).all() and ((t + d) <= 1 + 1e-12).all())
    for i in range(N):
        ti, wi, ci = t[i].numpy(), w[i].numpy(), float(b[i] - w[i] @ t[i])
        box = [(-ti[j], 1 - ti[j]) for j in range(n)]
        if p == 1.0:  # d = u - v, u, v >= 0
            r = scipy_opt.linprog(np.ones(2 * n), A_eq=np.concatenate([wi, -wi])[None], b_eq=[ci],
                                  bounds=[(0, 1 - ti[j]) for j in range(n)] + [(0, ti[j]) for j in range(n)])
            best, ours = r.fun, float(d[i].abs().sum())
        elif p == math.inf:  # variables (d, r): |d_j| <= r
            A = np.zeros((2 * n, n + 1))
            for j in range(n):
                A[2 * j, j], A[2 * j, n], A[2 * j + 1, j], A[2 * j + 1, n] = 1, -1, -1, -1
            c = np.zeros(n + 1)
            c[n] = 1
            r = scipy_opt.linprog(c, A_ub=A, b_ub=np.zeros(2 * n), A_eq=np.concatenate([wi, [0]])[None],
                                  b_eq=[ci], bounds=box + [(0, None)])
            best, ours = r.fun, float(d[i].abs().max())
        else:
            r = scipy_opt.minimize(lambda v: (v ** 2).sum(), np.zeros(n), method="SLSQP", bounds=box,
                                   constraints=[{"type": "eq", "fun": lambda v: wi @ v - ci}],
                                   options={"ftol": 1e-14})
            best, ours = math.sqrt(r.fun), float(d[i].norm())
        assert ours == pytest.approx(best, abs=1e-6)


# -- the attack ---------------------------------------------------------------------------------

@pytest.mark.parametrize("norm", list(NORMS))
def test_threat_model_holds_random_model(norm, digits):
    x, _ = digits
    m = random_cnn(seed=4)
    with torch.no_grad():
        y = m(x).argmax(1)  # every point starts correct
    t = ThreatModel(eps=NORMS[norm] / 2, norm=norm)
    for attack in (FAB(t, steps=10, restarts=2), FAB(t, steps=5, targeted=True, n_target_classes=2)):
        r = attack(m, x, y)
        assert bool(t.contains(x, r.x_adv).all())
        assert r.success.any()


@pytest.mark.parametrize("norm", list(NORMS))
def test_threat_model_holds_and_accuracy_falls_cnn(norm, digits, cnn):
    x, y = digits
    t = ThreatModel(eps=NORMS[norm], norm=norm)
    for attack in (FAB(t, steps=20), FAB(t, steps=10, targeted=True, n_target_classes=3)):
        r = attack(cnn, x, y)
        assert attack.name == ("fab-t" if attack.targeted else "fab")
        assert bool(t.contains(x, r.x_adv).all())
        clean = float((~r.clean_success).float().mean())
        robust = float(r.robust.float().mean())
        assert clean > 0.9 and robust < clean - 0.3
        assert torch.equal(r.success, cnn(r.x_adv).argmax(1) != y)


def test_unbounded_domain(digits, mlp):
    x, y = digits
    t = ThreatModel(eps=1.0, norm=2, domain=None)
    r = FAB(t, steps=10)(mlp, x, y)
    assert bool(t.contains(x, r.x_adv).all()) and float(r.robust.float().mean()) < 0.5


def test_seed_reproduces(digits, cnn):
    x, y = digits
    t = ThreatModel(eps=0.05, norm="inf")  # many points survive, so the random restarts run
    a = FAB(t, steps=5, restarts=3, seed=7)(cnn, x, y)
    b = FAB(t, steps=5, restarts=3, seed=7)(cnn, x, y)
    c = FAB(t, steps=5, restarts=3, seed=8)(cnn, x, y)
    assert torch.equal(a.x_adv, b.x_adv)
    assert not torch.equal(a.x_adv, c.x_adv)


@pytest.mark.parametrize("norm", list(NORMS))
def test_fab_finds_smaller_perturbations_than_pgd(norm, digits, mlp):
    """FAB is a minimum-norm attack: its successful points lie closer to x than PGD's."""
    x, y = digits
    t = ThreatModel(eps=NORMS[norm], norm=norm)
    f = FAB(t, steps=30)(mlp, x, y)
    g = PGD(t, steps=20)(mlp, x, y)
    fs, gs = f.success & ~f.clean_success, g.success & ~g.clean_success
    assert fs.sum() >= 20 and gs.sum() >= 20
    assert float(f.norms[fs].mean()) < 0.8 * float(g.norms[gs].mean())


def test_min_norm_false_stops_early_with_the_same_successes(digits, mlp):
    x, y = digits
    t = ThreatModel(eps=0.08, norm="inf")
    full = FAB(t, steps=20)(mlp, x, y)
    quick = FAB(t, steps=20, min_norm=False)(mlp, x, y)
    assert torch.equal(full.success, quick.success)  # no random start: identical paths until broken
    s = full.success & ~full.clean_success
    assert bool((full.norms[s] <= quick.norms[s] + 1e-6).all())


def test_targeted_threat_model_reaches_the_target(digits, mlp):
    x, y = digits
    target = (y + 1) % 10
    t = ThreatModel(eps=1.5, norm=2, targeted=True)
    r = FAB(t, steps=30)(mlp, x, y, target=target)
    assert float(r.success.float().mean()) > 0.8
    assert torch.equal(r.success, mlp(r.x_adv).argmax(1) == target)
    assert bool(t.contains(x, r.x_adv).all())


def test_options_are_checked():
    t = ThreatModel(eps=0.1)
    for bad in ({"steps": 0}, {"restarts": 0}, {"n_target_classes": 0}, {"beta": 1.0}, {"eta": 0.5},
                {"alpha_max": 2.0}):
        with pytest.raises(InputError):
            FAB(t, **bad)


def test_same_robust_accuracy_as_torchattacks(digits, cnn):
    """Differential check against the AutoAttack-derived FAB of torchattacks (a test extra)."""
    torchattacks = pytest.importorskip("torchattacks")

    class Module(nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(x)

    x, y = digits
    m = Module(cnn)
    r = FAB(ThreatModel(eps=0.08, norm="inf"), steps=20)(m, x, y)
    xa = torchattacks.FAB(m, norm="Linf", eps=0.08, steps=20, n_restarts=1, seed=0)(x, y)
    theirs = float((m(xa).argmax(1) == y).float().mean())
    assert float(r.robust.float().mean()) <= theirs + 2 / 64


def test_target_runs_batched_match_one_after_another(monkeypatch, digits, mlp):
    """FAB-T with one restart has no randomness: on the CPU its target runs on few points go
    in one batch and break the points that the runs one after the other break; a point broken
    by an early target also gets the later ones there, so its norm can only be smaller."""
    import perturbkit.attacks.fab as fab_mod

    x, y = digits
    t = ThreatModel(eps=0.1, norm="inf")
    batched = FAB(t, steps=10, targeted=True, n_target_classes=3)(mlp, x, y)
    quick = FAB(t, steps=10, targeted=True, n_target_classes=3, min_norm=False)(mlp, x, y)
    monkeypatch.setattr(fab_mod, "CPU_ROWS", 1)
    single = FAB(t, steps=10, targeted=True, n_target_classes=3)(mlp, x, y)
    assert torch.equal(batched.success, single.success)
    assert torch.equal(quick.success, single.success)
    s = batched.success & ~batched.clean_success
    assert bool((batched.norms[s] <= single.norms[s] + 1e-6).all())
    assert int(s.sum()) >= 10 and bool((batched.norms[s] <= quick.norms[s] + 1e-6).all())


def test_sort_rows_is_a_sort():
    from perturbkit.attacks.norms import sort_rows

    g = torch.Generator().manual_seed(0)
    v = torch.rand(70, 64, generator=g, dtype=torch.float64)
    v[:, :10] = 0.5  # ties
    v[3, 5] = math.inf
    for desc in (False, True):
        vals, order = sort_rows(v, descending=desc)
        assert torch.equal(vals, v.sort(1, descending=desc).values)
        assert torch.equal(v.gather(1, order), vals)
