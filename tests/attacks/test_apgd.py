"""APGD (CE, DLR, targeted) and its pieces: checkpoints, the exact L1-and-box projection."""
import math

import pytest
import torch
from torch import nn

from perturbkit.api import load
from perturbkit.attacks.apgd import APGD, checkpoints
from perturbkit.attacks.norms import project_l1_box
from perturbkit.attacks.base import Classifier, ThreatModel
from perturbkit.attacks.pgd import PGD
from perturbkit.errors import InputError
from perturbkit.models import bundled_path
from tests.attacks.conftest import digits_test

EPS = {"inf": 0.1, "2": 0.6, "1": 2.0}
VARIANTS = {"ce": {}, "dlr": {"loss": "dlr"}, "t": {"targeted": True, "n_target_classes": 3}}


@pytest.fixture(scope="module")
def digits():
    return digits_test(96)


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    rand = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).eval()
    return {"random": rand, "cnn": load(str(bundled_path("digits-cnn"))), "mlp": load(str(bundled_path("digits-mlp")))}


# ---------------------------------------------------------------- the step-size schedule
def _paper_checkpoints(n: int) -> list[int]:
    """w_j = ceil(p_j N) straight from the paper's recursion (floats, rounded before ceil)."""
    p_prev, p, out = 0.0, 0.22, []
    while p <= 1 + 1e-12:
        w = math.ceil(round(p * n, 6))
        if not out or out[-1] != w:
            out.append(w)
        p_prev, p = p, p + max(p - p_prev - 0.03, 0.06)
    return out


def test_checkpoints_match_the_paper():
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    for n in range(1, 400):
        w = checkpoints(n)
        assert w == _paper_checkpoints(n), n
        assert w[0] == math.ceil(0.22 * n - 1e-9) and w[-1] <= n
        assert all(a < b for a, b in zip(w, w[1:]))


class _Flat(nn.Module):
    """Logits that do not depend on x (zero gradient): the loss never increases."""

    def forward(self, x):
        z = torch.zeros(x.shape[0], 4, dtype=x.dtype) + 0.0 * x.reshape(x.shape[0], -1)[:, :1]
        return z + torch.tensor([3.0, 0.0, 0.0, 0.0], dtype=x.dtype)


class _Rising(nn.Module):
    """The true class's logit sinks a little at every call, so the CE loss rises at every
    iterate (and the point is never fooled within 100 steps)."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        z = torch.zeros(x.shape[0], 4, dtype=x.dtype) + 1e-3 * x.reshape(x.shape[0], -1)[:, :4]
        z[:, 0] += 5.0 - 0.01 * self.calls
        return z


def _trace(model, steps=100):
    x = torch.full((3, 1, 2, 2), 0.5)
    y = torch.zeros(3, dtype=torch.long)
    att = APGD(ThreatModel(eps=0.1), steps=steps)
    trace = []
    att._apgd(Classifier(model), x, y, None, None, 0.1, steps, None, torch.Generator().manual_seed(0), trace=trace)
    return trace


def test_step_size_halves_at_every_checkpoint_without_progress():
    trace = _trace(_Flat())
    assert [t for t, _ in trace] == checkpoints(100)
    for j, (_, eta) in enumerate(trace, start=1):
        assert torch.allclose(eta, torch.full_like(eta, 0.2 / 2 ** j))


def test_step_size_kept_while_the_loss_rises():
    trace = _trace(_Rising())
    assert [t for t, _ in trace] == checkpoints(100)
    for _, eta in trace:
        assert torch.allclose(eta, torch.full_like(eta, 0.2))


def test_checkpoints_reject_zero_steps():
    with pytest.raises(InputError):
        checkpoints(0)


# ---------------------------------------------------------------- L1 ball and box
def _bisection_projection(v, eps, lo, hi):
    a, u = v.abs(), torch.where(v >= 0, hi, -lo)
    out = []
    for i in range(v.shape[0]):
        g = lambda lam: torch.minimum((a[i] - lam).clamp_min(0), u[i]).sum()  # noqa: E731
        lam_lo, lam_hi = 0.0, float(a[i].max())
        if g(0.0) > eps:
            for _ in range(200):
                mid = (lam_lo + lam_hi) / 2
                lam_lo, lam_hi = (mid, lam_hi) if g(mid) > eps else (lam_lo, mid)
        else:
            lam_hi = 0.0
        out.append(v[i].sign() * torch.minimum((a[i] - lam_hi).clamp_min(0), u[i]))
    return torch.stack(out)


def test_l1_box_projection_is_exact_and_idempotent():
    gen = torch.Generator().manual_seed(1)
    for trial in range(30):
        n = int(torch.randint(1, 40, (), generator=gen))
        x = torch.rand(4, n, generator=gen, dtype=torch.float64)
        x[x < 0.3], x[x > 0.9] = 0.0, 1.0  # coordinates on the box's faces
        v = torch.randn(4, n, generator=gen, dtype=torch.float64) * 3 * float(torch.rand((), generator=gen))
        eps = 4 * float(torch.rand((), generator=gen))
        lo, hi = -x, 1 - x
        d = project_l1_box(v, eps, lo, hi)
        assert torch.allclose(d, _bisection_projection(v, eps, lo, hi), atol=1e-9), trial
        assert bool((d.abs().sum(1) <= eps + 1e-9).all())
        assert bool(((x + d) >= -1e-12).all() and ((x + d) <= 1 + 1e-12).all())
        assert torch.allclose(project_l1_box(d, eps, lo, hi), d, atol=1e-12)
    # no box: the plain L1 ball projection
    v = torch.tensor([[3.0, -1.0, 0.5]], dtype=torch.float64)
    assert torch.allclose(project_l1_box(v, 2.0, None, None), torch.tensor([[2.0, 0.0, 0.0]], dtype=torch.float64))


# ---------------------------------------------------------------- the threat model holds
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("norm", list(EPS))
@pytest.mark.parametrize("net", ["random", "cnn", "mlp"])
def test_threat_model_holds(net, norm, variant, nets, digits):
    x, y = digits
    x, y = x[:48], y[:48]
    model = nets[net]
    if net == "random":
        y = model(x).argmax(1)  # all correct: every point is attacked
    t = ThreatModel(eps=EPS[norm], norm=norm)
    r = APGD(t, steps=10, **VARIANTS[variant])(model, x, y)
    assert bool((r.norms <= t.eps + 1e-6).all())
    assert bool(((r.x_adv >= 0) & (r.x_adv <= 1)).all())
    assert bool(t.contains(x, r.x_adv).all())
    assert torch.equal(r.success, model(r.x_adv).argmax(1) != y)


def test_large_eps_schedule_stays_in_the_true_ball(nets, digits):
    x, y = digits
    t = ThreatModel(eps=1.5, norm=1)
    r = APGD(t, steps=20, large_eps=True)(nets["cnn"], x, y)
    assert bool(t.contains(x, r.x_adv).all())
    clean = float((~r.clean_success).float().mean())
    assert float(r.robust.float().mean()) < clean - 0.2


# ---------------------------------------------------------------- strength
@pytest.mark.parametrize("norm", list(EPS))
def test_accuracy_drops_and_apgd_at_least_as_strong_as_pgd(norm, nets, digits):
    x, y = digits
    t = ThreatModel(eps=EPS[norm], norm=norm)
    steps = 20
    r_apgd = APGD(t, steps=steps)(nets["cnn"], x, y)
    r_pgd = PGD(t, steps=steps)(nets["cnn"], x, y)
    clean = float((~r_apgd.clean_success).float().mean())
    assert clean > 0.9 and float(r_apgd.robust.float().mean()) < clean - 0.3
    # 96 points; a tolerance of 2 points
    assert int(r_apgd.robust.sum()) <= int(r_pgd.robust.sum()) + 2


def test_targeted_version_beats_untargeted_dlr(nets, digits):
    x, y = digits
    t = ThreatModel(eps=0.1, norm="inf")
    r_dlr = APGD(t, loss="dlr", steps=20)(nets["cnn"], x, y)
    r_t = APGD(t, targeted=True, steps=20)(nets["cnn"], x, y)
    assert int(r_t.robust.sum()) <= int(r_dlr.robust.sum())


def test_targeted_threat_model_reaches_the_targets(nets, digits):
    x, y = digits
    target = (y + 1) % 10
    t = ThreatModel(eps=0.3, norm="inf", targeted=True)
    for att in (APGD(t, steps=20), APGD(t, targeted=True, steps=20)):
        r = att(nets["cnn"], x, y, target=target)
        pred = nets["cnn"](r.x_adv).argmax(1)
        assert torch.equal(r.success, pred == target)
        assert float(r.success.float().mean()) > 0.5


# ---------------------------------------------------------------- options, seeds, names
def test_names():
    t = ThreatModel(eps=0.1)
    assert APGD(t).name == "apgd-ce"
    assert APGD(t, loss="dlr").name == "apgd-dlr"
    assert APGD(t, targeted=True).name == "apgd-t"
    assert APGD(t, targeted=True).loss == "dlr"


def test_fixed_seed_reproduces(nets, digits):
    x, y = digits
    for norm in EPS:
        t = ThreatModel(eps=EPS[norm] / 2, norm=norm)
        a = APGD(t, steps=10, restarts=2, seed=5)(nets["mlp"], x, y)
        b = APGD(t, steps=10, restarts=2, seed=5)(nets["mlp"], x, y)
        assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.success, b.success)
    c = APGD(t, steps=10, restarts=2, seed=6)(nets["mlp"], x, y)
    assert not torch.equal(a.x_adv, c.x_adv)


class _Counting(nn.Module):
    """A linear model that counts its forward calls."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(16, 4)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.lin(x.reshape(x.shape[0], -1))


def test_eot_averages_that_many_gradients():
    model = _Counting()
    x = torch.rand(5, 16)
    y = model(x).argmax(1)
    t = ThreatModel(eps=1e-4)  # nothing breaks: every point runs all steps
    att = APGD(t, steps=6, eot_iter=3)
    model.calls = 0
    att.perturb(Classifier(model), x, y, None, torch.Generator().manual_seed(0))
    assert model.calls == 1 + 3 * (6 + 1)  # clean logits, then eot_iter per iterate


def test_bad_options_raise():
    t = ThreatModel(eps=0.1)
    for kw in ({"loss": "mse"}, {"steps": 0}, {"restarts": 0}, {"eot_iter": 0}, {"rho": 0.0},
               {"n_target_classes": 0}, {"large_eps": True}):
        with pytest.raises(InputError):
            APGD(t, **kw)


def test_dlr_needs_three_classes():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2)).eval()
    x = torch.rand(4, 16)
    y = model(x).argmax(1)
    with pytest.raises(InputError, match="classes"):
        APGD(ThreatModel(eps=0.1), loss="dlr", steps=2)(model, x, y)


# ---------------------------------------------------------------- runs batched together (CPU)
def _linear5(x):
    torch.manual_seed(3)
    lin = nn.Sequential(nn.Flatten(), nn.Linear(16, 5)).eval()
    y = lin(x).argmax(1)
    return lin, y


def test_target_runs_batched_break_the_same_points(monkeypatch):
    """On a linear model APGD-T's outcome does not depend on the random start (one step of
    2 eps reaches the corner of the box that is best for the target), so batching the runs of
    the targets together (few points, on the CPU) breaks exactly the points that the runs one
    after the other break."""
    import perturbkit.attacks.apgd as apgd_mod

    x = torch.rand(40, 16, generator=torch.Generator().manual_seed(0))
    lin, y = _linear5(x)
    t = ThreatModel(eps=0.08)
    batched = APGD(t, targeted=True, n_target_classes=4, steps=5)(lin, x, y)
    monkeypatch.setattr(apgd_mod, "CPU_ROWS", 1)
    single = APGD(t, targeted=True, n_target_classes=4, steps=5)(lin, x, y)
    assert 0 < int(batched.success.sum()) < 40
    assert torch.equal(batched.success, single.success)
    assert torch.equal(batched.success, lin(batched.x_adv).argmax(1) != y) and bool(t.contains(x, batched.x_adv).all())


def test_target_runs_batched_in_one_call_per_iterate():
    model = _Counting()
    x = torch.rand(5, 16)
    y = model(x).argmax(1)
    att = APGD(ThreatModel(eps=1e-4), targeted=True, n_target_classes=3, steps=6)  # nothing breaks
    model.calls = 0
    att.perturb(Classifier(model), x, y, None, torch.Generator().manual_seed(0))
    assert model.calls == 1 + (6 + 1)  # clean logits, then the 3 targets' iterates together
