"""ActivationAttack on networks whose layer after the perturbed node is linear, ``y = W a + b``,
so the reachable outputs are known:

* a target ``W (a + d) + b`` with ``d`` inside the budget is reachable;
* under an L2 budget the first ``k`` targets ``t_k`` are reachable iff the least-norm
  solution ``||W_k^+ (t_k - y_k)||_2 <= eps``; no more than ``rank(W)`` targets generically;
* with two outputs the margin ``z_t - z_o`` ranges over ``m0 +- eps ||w_t - w_o||_1`` (Linf).
"""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

import perturbkit
import perturbkit.models as models
from perturbkit.attacks.activation import ActivationAttack
from perturbkit.attacks.base import ThreatModel
from perturbkit.errors import InputError, ModelError


def mlp(n_in=5, hidden=6, n_out=4, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(n_in, hidden), nn.Tanh(), nn.Linear(hidden, n_out)).double()


def batch(B=6, n=5, seed=1):
    return torch.rand(B, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def hidden(model, x):
    return model[1](model[0](x)).detach()


def l2(eps):
    return ThreatModel(eps=eps, norm=2, domain=None)


@pytest.mark.parametrize("on", ["module", "network"])
def test_reachable_target_is_reached_and_outputs_recomputed(on):
    model, x, eps = mlp(), batch(), 0.5
    a = hidden(model, x)
    d = torch.randn(x.shape[0], 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    target = model[2](a + 0.6 * eps * d / d.norm(dim=1, keepdim=True)).detach()
    site, node = (model, "1") if on == "module" else (perturbkit.load(model, x[:1]), "_1")
    r = ActivationAttack(node, l2(eps), steps=100, tol=1e-3)(site, x, target=target)
    assert r.success.all() and (r.error <= 1e-3).all()
    assert (r.norms <= eps + 1e-9).all() and r.delta.shape == a.shape
    assert torch.allclose(r.outputs, model[2](a + r.delta).detach(), atol=1e-12)  # re-evaluated
    assert torch.allclose(r.outputs_clean, model(x).detach())


def test_unreachable_target_fails_and_stays_in_budget():
    model, x, eps = mlp(), batch(), 0.2
    W = model[2].weight.detach()
    y0 = model(x).detach()
    r_need = torch.randn(x.shape[0], 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    least = (torch.linalg.pinv(W) @ r_need.T).T.norm(dim=1)
    target = y0 + r_need * (2 * eps / least)[:, None]  # least-norm perturbation 2 eps
    r = ActivationAttack("1", l2(eps), steps=50)(model, x, target=target)
    assert not r.success.any() and (r.norms <= eps + 1e-9).all()


def test_clean_target_needs_no_perturbation():
    model, x = mlp(), batch()
    r = ActivationAttack("1", l2(0.3), steps=5)(model, x, target=model(x).detach())
    assert r.clean_success.all() and r.success.all() and (r.delta == 0).all()


def test_target_class_on_two_outputs_matches_the_margin_range():
    model, x, eps = mlp(n_out=2), batch(B=40), 0.15
    a, W, b = hidden(model, x), model[2].weight.detach(), model[2].bias.detach()
    t = torch.ones(x.shape[0], dtype=torch.long)
    wd = W[1] - W[0]
    best = a @ wd + (b[1] - b[0]) + eps * wd.abs().sum()  # largest margin z_1 - z_0
    clear = best.abs() > 1e-3
    tm = ThreatModel(eps=eps, norm="inf", domain=None)
    r = ActivationAttack("1", tm, steps=30)(model, x, target_class=t)
    assert torch.equal(r.success[clear], (best > 0)[clear]) and (~clear).sum() < 5
    assert (r.norms <= eps + 1e-9).all()
    assert torch.allclose(r.margin, r.outputs[:, 1] - r.outputs[:, 0])


def largest_margin_lp(a, W, b, t, eps):
    """max over lo <= d <= eps of min_{j != t} (w_t - w_j) . (a + d) + b_t - b_j, by an LP
    (variables d and the margin s), with lo = max(-eps, -a) so that a + d stays >= 0."""
    from scipy.optimize import linprog

    others = [j for j in range(W.shape[0]) if j != t]
    wd = W[t][None, :] - W[others]
    A = np.concatenate([-wd, np.ones((len(others), 1))], 1)
    ub = wd @ a + b[t] - b[others]
    bounds = [(max(-eps, -v), eps) for v in a] + [(None, None)]
    res = linprog(np.r_[np.zeros(a.size), -1.0], A_ub=A, b_ub=ub, bounds=bounds)
    assert res.status == 0
    return -res.fun


def test_onnx_network_with_relu_domain_matches_the_lp():
    pytest.importorskip("scipy")
    xs, _ = models.load_digits_test()
    x, eps, B = torch.from_numpy(xs[:16]), 2.0, 16
    net = perturbkit.load(str(models.bundled_path("digits-mlp")))
    tm = ThreatModel(eps=eps, norm="inf", domain=(0.0, math.inf))  # the value after a ReLU stays >= 0
    r = ActivationAttack("/4/Relu", tm, steps=30)(net, x, target_class=3)
    a = net.run(net.internal(x))["/4/Relu_output_0"].reshape(B, 32)
    assert r.delta.shape == (B, 32) and ((a + r.delta) >= 0).all() and (r.norms <= eps + 1e-6).all()
    consts = net.graph.constants
    W, b = consts["5.weight"], consts["5.bias"]
    assert torch.allclose(r.outputs, (a + r.delta) @ W.T + b, atol=1e-5)  # the Gemm after the node
    best = torch.tensor([largest_margin_lp(a[i].double().numpy(), W.double().numpy(), b.double().numpy(), 3, eps)
                         for i in range(B)], dtype=torch.float64)
    assert (best.abs() > 1e-2).all() and 0 < int((best > 0).sum()) < B
    assert torch.equal(r.success, best > 0)
    # no re-evaluated margin exceeds the LP's maximum (sign-PGD on the nonsmooth margin stops
    # short of it on the points it cannot flip, ~1 logit here, whatever the number of steps)
    assert (r.margin.double() <= best + 1e-4).all()
    # value names work too, and give the same answer
    r2 = ActivationAttack("/4/Relu_output_0", tm, steps=30)(net, x, target_class=3)
    assert torch.equal(r.delta, r2.delta)


def test_control_is_limited_by_the_bottleneck():
    model, x = mlp(hidden=2, n_out=5), batch()
    c = ActivationAttack("1", l2(50.0), steps=150, tol=1e-3).control(model, x)
    assert c.attack_dims == 2 and c.ks == (1, 2, 3, 4, 5)
    assert (c.controlled == 2).all()
    assert c.success[:, :2].all() and not c.success[:, 2:].any()
    assert c.outputs_per_dim == pytest.approx(1.0)


def test_control_matches_the_least_norm_prediction():
    model, x, eps = mlp(hidden=6, n_out=4), batch(B=12), 0.4
    W = model[2].weight.detach()
    y0 = model(x).detach()
    c = ActivationAttack("1", l2(eps), steps=150, tol=1e-3, seed=5).control(model, x, target_scale=0.3)
    r = c.targets - y0
    least = torch.stack([(torch.linalg.pinv(W[:k]) @ r[:, :k].T).T.norm(dim=1) for k in range(1, 5)], 1)
    predicted = (least <= eps).long().cumprod(1).sum(1)
    clear = ((least / eps - 1).abs() > 0.05).all(1)  # no k too close to the budget
    assert clear.sum() >= 6
    assert torch.equal(c.controlled[clear], predicted[clear])
    assert len(set(predicted[clear].tolist())) > 1  # the budget separates the samples
    ok = c.controlled > 0
    assert (c.delta[ok].norm(dim=1) <= eps + 1e-9).all() and (c.delta[~ok] == 0).all()


def test_control_module_and_network_agree_and_seed_reproduces():
    model, x = mlp(), batch(B=4)
    net = perturbkit.load(model, x[:1])
    attack = ActivationAttack("1", l2(0.3), steps=40, seed=1)
    a, b = attack.control(model, x, ks=[1, 2, 4]), attack.control(model, x, ks=[1, 2, 4])
    n = ActivationAttack("_1", l2(0.3), steps=40, seed=1).control(net, x, ks=[1, 2, 4])
    other = ActivationAttack("1", l2(0.3), steps=40, seed=2).control(model, x, ks=[1, 2, 4])
    assert torch.equal(a.targets, b.targets) and torch.equal(a.controlled, b.controlled)
    assert torch.equal(a.delta, b.delta)
    assert torch.allclose(a.targets, n.targets) and torch.equal(a.controlled, n.controlled)
    assert not torch.equal(a.targets, other.targets)
    given = ActivationAttack("1", l2(0.3), steps=40).control(model, x, ks=[1, 2], targets=a.targets[:, :2])
    assert torch.equal(given.targets, a.targets[:, :2])


def test_eval_mode_and_hook_removed():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Dropout(0.5), nn.Linear(6, 3)).double().train()
    x = batch(B=3)
    r = ActivationAttack("1", l2(0.5), steps=10)(model, x, target_class=[0, 1, 2])
    assert r.flags["randomized"] == 0 and model.training
    assert all(p.requires_grad for p in model.parameters())
    assert not model[1]._forward_hooks


class Twice(nn.Module):
    def __init__(self):
        super().__init__()
        self.f = nn.Linear(3, 3)

    def forward(self, x):
        return self.f(self.f(x))


@pytest.mark.parametrize("case", [
    "unknown_node", "unknown_submodule", "default_domain", "both_goals", "no_goal", "target_shape",
    "class_range", "ks", "normalised", "twice", "outputs_range", "tol", "nan_target",
])
def test_bad_input_gives_one_line_error(case):
    model, x = mlp(), batch(B=3)
    net = perturbkit.load(model, x[:1])
    budget = l2(0.1)
    calls = {
        "unknown_node": lambda: ActivationAttack("nope", budget)(net, x, target_class=0),
        "unknown_submodule": lambda: ActivationAttack("nope", budget)(model, x, target_class=0),
        "default_domain": lambda: ActivationAttack("1", ThreatModel(eps=0.1))(model, x, target_class=0),
        "both_goals": lambda: ActivationAttack("1", budget)(model, x, target=torch.zeros(4), target_class=0),
        "no_goal": lambda: ActivationAttack("1", budget)(model, x),
        "target_shape": lambda: ActivationAttack("1", budget)(model, x, target=torch.zeros(3)),
        "class_range": lambda: ActivationAttack("1", budget)(model, x, target_class=4),
        "ks": lambda: ActivationAttack("1", budget).control(model, x, ks=[2, 1]),
        "normalised": lambda: ActivationAttack("1", ThreatModel(eps=0.1, domain=None, mean=(0.0,), std=(1.0,))),
        "twice": lambda: ActivationAttack("f", budget)(Twice().double(), x[:, :3], target_class=0),
        "outputs_range": lambda: ActivationAttack("1", budget)(model, x, target=[0.0], outputs=[7]),
        "tol": lambda: ActivationAttack("1", budget, tol=0.0),
        "nan_target": lambda: ActivationAttack("1", budget)(model, x, target=torch.full((4,), math.nan)),
    }
    with pytest.raises(InputError) as e:
        calls[case]()
    assert "\n" not in str(e.value)
    if case == "unknown_node":
        assert "_0, _1, _2" in str(e.value)
    if case == "unknown_submodule":
        assert "0, 1, 2" in str(e.value)


def test_callables_are_refused():
    with pytest.raises(ModelError, match="Network"):
        ActivationAttack("1", l2(0.1))(lambda z: z, batch(), target_class=0)
