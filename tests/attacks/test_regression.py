"""OutputAttack on models whose answer is known in closed form.

For ``y = w . x + b`` and an Lp ball of radius eps without domain, the largest value is
``w . x + b + eps ||w||_q`` with ``q`` the dual norm (Hoelder), reached at a vertex; with
a box domain it is ``w . x + b + sum_i max(w_i (min(x_i + eps, hi) - x_i), w_i (max(x_i -
eps, lo) - x_i))`` (Linf: the coordinates separate).
"""
import math

import pytest
import torch
import torch.nn as nn

import perturbkit
from perturbkit.attacks.base import ThreatModel
from perturbkit.attacks.regression import OutputAttack
from perturbkit.attacks.search import pgd_maximise
from perturbkit.errors import InputError

DUAL = {"inf": 1.0, 2: 2.0, 1: math.inf}
RTOL = 1e-6  # the cosine schedule from a step of eps settles on the maximum, L2 sphere included


def linear(n_in=6, n_out=1, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(n_in, n_out).double()


def batch(B=5, n=6, seed=1):
    return torch.rand(B, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def top_value(lin, x, eps, norm, row=0):
    w, b = lin.weight[row].detach(), lin.bias[row].detach()
    return x @ w + b + eps * torch.linalg.vector_norm(w, DUAL[norm])


@pytest.mark.parametrize("norm", ["inf", 2, 1])
def test_threshold_above_succeeds_iff_below_the_maximum(norm):
    lin, x, eps = linear(), batch(), 0.1
    tm = ThreatModel(eps=eps, norm=norm, domain=None)
    top = top_value(lin, x, eps, norm)
    ok = OutputAttack(tm, goal="above", threshold=top - 1e-3, steps=30)(lin, x)
    assert ok.success.all() and (ok.value > top - 1e-3).all()
    assert tm.contains(x, ok.x_adv).all()
    no = OutputAttack(tm, goal="above", threshold=top + 1e-3, steps=30, restarts=2)(lin, x)
    assert not no.success.any()
    # the best iterate is kept: the maximum itself, never more
    assert torch.allclose(no.value, top, rtol=RTOL, atol=1e-6) and (no.value <= top + 1e-9).all()
    assert torch.allclose(no.outputs[:, 0], lin(no.x_adv)[:, 0].detach())  # re-evaluated


def test_threshold_below_and_clean_success():
    lin, x, eps = linear(), batch(), 0.05
    tm = ThreatModel(eps=eps, norm="inf", domain=None)
    w, b = lin.weight[0].detach(), lin.bias[0].detach()
    low = x @ w + b - eps * w.abs().sum()
    r = OutputAttack(tm, goal="below", threshold=low + 1e-3, steps=20)(lin, x)
    assert r.success.all() and (r.value < low + 1e-3).all()
    # already below at x: x itself is returned
    s0 = (x @ w + b).detach()
    r = OutputAttack(tm, goal="below", threshold=s0 + 1.0, steps=5)(lin, x)
    assert r.clean_success.all() and torch.equal(r.x_adv, x) and (r.norms == 0).all()


def test_linear_functional_and_box_domain():
    lin, x, eps = linear(n_out=3), batch(), 0.2
    c = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    W, b = lin.weight.detach(), lin.bias.detach()
    v = W.T @ c  # c . y = v . x + c . b
    tm = ThreatModel(eps=eps, norm="inf", domain=(0.0, 1.0))
    up = (x + eps).clamp(max=1.0) - x
    down = (x - eps).clamp(min=0.0) - x
    top = x @ v + c @ b + torch.maximum(v * up, v * down).sum(1)
    r = OutputAttack(tm, goal="above", output=c, threshold=top + 1e-3, steps=40)(lin, x)
    assert not r.success.any() and torch.allclose(r.value, top, atol=1e-6)
    assert tm.contains(x, r.x_adv).all() and (r.x_adv >= 0).all() and (r.x_adv <= 1).all()


@pytest.mark.parametrize("norm", ["inf", 2, 1])
def test_deviation_reaches_eps_times_dual_norm(norm):
    lin, x, eps = linear(), batch(), 0.1
    tm = ThreatModel(eps=eps, norm=norm, domain=None)
    want = eps * torch.linalg.vector_norm(lin.weight[0].detach(), DUAL[norm])
    for start in (True, False):  # from x the first step follows a random sign combination
        r = OutputAttack(tm, goal="deviation", steps=30, random_start=start)(lin, x)
        assert r.success is None and r.value is None
        assert torch.allclose(r.deviation, want.expand(x.shape[0]), rtol=RTOL)
        assert (r.deviation <= want + 1e-9).all() and tm.contains(x, r.x_adv).all()


def test_deviation_over_several_outputs_and_threshold():
    lin, x, eps = linear(n_out=3), batch(), 0.1
    tm = ThreatModel(eps=eps, norm="inf", domain=None)
    W = lin.weight.detach()
    W[2] *= 4  # output 2 dominates, so the inf-norm deviation is eps ||w_2||_1
    want = eps * W[2].abs().sum()
    r = OutputAttack(tm, goal="deviation", output=[0, 2], steps=30, restarts=2)(lin, x)
    assert torch.allclose(r.deviation, want.expand(x.shape[0]), rtol=1e-6)
    d = r.outputs - r.outputs_clean
    assert torch.allclose(r.deviation, d[:, [0, 2]].abs().amax(1))
    hit = OutputAttack(tm, goal="deviation", output=[0, 2], threshold=0.5 * want, steps=30)(lin, x)
    assert hit.success.all() and (hit.deviation >= 0.5 * want).all()
    miss = OutputAttack(tm, goal="deviation", output=[0, 2], threshold=1.01 * want, steps=10)(lin, x)
    assert not miss.success.any()


def test_network_module_and_callable_agree():
    lin, x = linear(n_out=2), batch()
    tm = ThreatModel(eps=0.1, norm=2, domain=None)
    net = perturbkit.load(lin, x[:1])
    W, b = lin.weight.detach(), lin.bias.detach()
    attack = OutputAttack(tm, goal="deviation", output=1, steps=20, seed=3)
    r_mod, r_net = attack(lin, x), attack(net, x)
    r_fun = attack(lambda z: z @ W.T + b, x)
    assert torch.allclose(r_mod.x_adv, r_net.x_adv, atol=1e-9)
    assert torch.allclose(r_mod.x_adv, r_fun.x_adv, atol=1e-9)
    assert torch.allclose(r_net.deviation, 0.1 * W[1].norm().expand(x.shape[0]), rtol=RTOL)


def test_bundled_onnx_model_deviation():
    import perturbkit.models as models

    xs, _ = models.load_digits_test()
    x = torch.from_numpy(xs[:4])
    net = perturbkit.load(str(models.bundled_path("digits-mlp")))
    tm = ThreatModel(eps=0.05, norm="inf", domain=(0.0, 1.0))
    r = OutputAttack(tm, goal="deviation", output=3, steps=10)(net, x)
    assert tm.contains(x, r.x_adv).all()
    assert (r.deviation > 0).all() and r.raised() == []
    assert torch.allclose(r.outputs, net(r.x_adv).reshape(4, -1))


def test_constant_schedule_is_madry_pgd():
    lin, x, eps = linear(), batch(), 0.1
    tm = ThreatModel(eps=eps, norm="inf", domain=None)
    attack = OutputAttack(tm, goal="deviation", steps=20, schedule="constant")
    assert attack.step_size == pytest.approx(2.5 * eps / 20)
    r = attack(lin, x)
    assert torch.allclose(r.deviation, eps * lin.weight.detach().abs().sum().expand(x.shape[0]), rtol=RTOL)


def test_seed_reproduces_and_eval_mode_restored():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Dropout(0.5), nn.Linear(16, 2)).double()
    model.train()
    x = batch()
    tm = ThreatModel(eps=0.1, norm=2, domain=(0.0, 1.0))
    a = OutputAttack(tm, goal="deviation", steps=10, seed=7)(model, x)
    b = OutputAttack(tm, goal="deviation", steps=10, seed=7)(model, x)
    c = OutputAttack(tm, goal="deviation", steps=10, seed=8)(model, x)
    assert torch.equal(a.x_adv, b.x_adv) and not torch.equal(a.x_adv, c.x_adv)
    assert a.flags["randomized"] == 0  # dropout off during the attack
    assert model.training and model[2].training
    assert all(p.requires_grad for p in model.parameters())


def test_pgd_maximise_early_stop_keeps_first_hit():
    centre = torch.zeros(3, 2, dtype=torch.float64)
    tm = ThreatModel(eps=1.0, norm="inf", domain=None)
    calls = []

    def objective(z, idx):
        calls.append(idx.numel())
        s = z.sum(1)
        return s, s, s > torch.tensor([-10.0, 0.5, 10.0], dtype=z.dtype)[idx]

    best, score, hit = pgd_maximise(objective, centre, tm, steps=8, step_size=0.25, random_start=False)
    assert hit.tolist() == [True, True, False]
    assert calls[0] == 3 and calls[-1] == 1  # the points that hit left the batch
    assert score[2] == pytest.approx(2.0) and tm.contains(centre, best).all()


@pytest.mark.parametrize("make, call", [
    (lambda tm: OutputAttack(tm, goal="sideways"), None),
    (lambda tm: OutputAttack(tm, goal="above"), None),
    (lambda tm: OutputAttack(tm, goal="above", threshold=0.0, output=[0, 1]), None),
    (lambda tm: OutputAttack(tm, goal="above", threshold=0.0, steps=0), None),
    (lambda tm: OutputAttack(tm, goal="above", threshold=0.0, schedule="linear"), None),
    (lambda tm: OutputAttack(tm, goal="deviation", output="y"), None),
    (lambda tm: OutputAttack(tm, goal="deviation", output_norm=3), None),
    (lambda tm: OutputAttack(tm, goal="above", threshold=0.0, output=5), "x"),
    (lambda tm: OutputAttack(tm, goal="above", threshold=0.0, output=[1.0, 2.0]), "x"),
    (lambda tm: OutputAttack(tm, goal="above", threshold=0.0), "x3"),
    (lambda tm: OutputAttack(tm, goal="above", threshold=float("nan")), "x"),
    (lambda tm: OutputAttack(tm, goal="above", threshold=[0.0, 1.0]), "x"),
    (lambda tm: OutputAttack(tm, goal="deviation", threshold=-1.0), "x"),
    (lambda tm: OutputAttack(tm, goal="deviation"), "nan"),
    (lambda tm: OutputAttack(tm, goal="deviation"), "outside"),
    (lambda tm: OutputAttack(tm, goal="deviation"), "flat"),
])
def test_bad_input_gives_one_line_input_error(make, call):
    tm = ThreatModel(eps=0.1, norm="inf", domain=(0.0, 1.0))
    lin, lin3, x = linear(), linear(n_out=3), batch(B=4)
    with pytest.raises(InputError) as e:
        attack = make(tm)
        inputs = {"x": x, "x3": x, "nan": x.clone().fill_(float("nan")), "outside": x + 2.0, "flat": x[0]}[call]
        attack(lin3 if call == "x3" else lin, inputs)
    assert "\n" not in str(e.value)
