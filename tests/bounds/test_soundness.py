"""Whole-network soundness by sampling (float64): sampled points, corners included, never
leave the IBP, CROWN or CROWN-IBP bounds, on raw outputs and on margins."""
import math

import pytest
import torch
import torch.nn as nn

import perturbkit as pk
from nets import network

METHODS = ["ibp", "crown", "crown-ibp"]
TOL = 1e-9  # float64: bounds may differ from the true extremum by rounding only


def _points(s: pk.sets.LpBall, k: int, g: torch.Generator) -> torch.Tensor:
    """Random points of the ball plus extreme points (corners for Linf, +-eps e_i for L1)."""
    pts = [s.sample(k, generator=g)]
    c, e = s.center, s.eps
    if s.norm == math.inf:
        signs = torch.randint(0, 2, (k, *c.shape), generator=g, dtype=torch.int64).to(c.dtype) * 2 - 1
        pts.append(c + e * signs)
    elif s.norm == 1.0:
        n = c[0].numel()
        for i in torch.randperm(n, generator=g)[: min(n, 8)]:
            d = torch.zeros_like(c).reshape(c.shape[0], -1)
            d[:, i] = 1.0
            d = d.reshape(c.shape)
            pts += [(c + e * d).unsqueeze(0), (c - e * d).unsqueeze(0)]
    else:
        d = torch.randn((k, *c.shape), generator=g, dtype=c.dtype)
        d = d / d.flatten(2).norm(dim=-1).reshape(k, c.shape[0], *[1] * (c.dim() - 1))
        pts.append(c + e * d)
    x = torch.cat(pts)
    if s.domain is not None:
        x = torch.maximum(torch.minimum(x, s.domain[1]), s.domain[0])
    return x


def _check(net, module, s, C=None, k=300):
    g = torch.Generator().manual_seed(0)
    xs = _points(s, k, g)
    with torch.no_grad():
        k_, b_ = xs.shape[:2]
        ys = module(xs.reshape(k_ * b_, *xs.shape[2:])).reshape(k_, b_, -1)  # (k, B, n)
    if C is not None:
        ys = torch.einsum("bsn,kbn->kbs", C, ys)
    for m in METHODS:
        b = pk.bounds(net, s, method=m, C=C)
        assert b.lower.dtype == torch.float64
        assert (ys >= b.lower - TOL).all(), f"{m}: lower bound violated by {(b.lower - ys).max().item()}"
        assert (ys <= b.upper + TOL).all(), f"{m}: upper bound violated by {(ys - b.upper).max().item()}"
        assert (b.lower <= b.upper + TOL).all()


ACTS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "hardtanh": nn.Hardtanh,
        "leaky": lambda: nn.LeakyReLU(0.1), "softplus": nn.Softplus}


@pytest.mark.parametrize("kind", ["mlp", "cnn", "residual"])
@pytest.mark.parametrize("act", list(ACTS))
@pytest.mark.parametrize("norm", ["inf", 2, 1])
def test_random_networks_sound(kind, act, norm):
    net, module, shape = network(kind, ACTS[act])
    torch.manual_seed(1)
    x = torch.rand(3, *shape[1:], dtype=torch.float64)
    eps = {"inf": 0.15, 2: 0.6, 1: 1.0}[norm]
    s = pk.sets.LpBall(x, eps, norm=norm)
    _check(net, lambda z: module(z), s)
    labels = torch.tensor([0, 1, 2])
    C = pk.margin_spec(labels, net.n_outputs, dtype=torch.float64)
    _check(net, lambda z: module(z), s, C=C)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_domain_and_per_feature_eps_sound(kind):
    net, module, shape = network(kind)
    torch.manual_seed(2)
    x = torch.rand(2, *shape[1:], dtype=torch.float64)
    eps = torch.rand(*shape[1:], dtype=torch.float64) * 0.3
    for norm in ["inf", 2, 1]:
        s = pk.sets.LpBall(x, eps, norm=norm, domain=(0.0, 1.0))
        _check(net, lambda z: module(z), s)


def test_box_sound():
    net, module, shape = network("cnn")
    lo = torch.rand(2, *shape[1:], dtype=torch.float64)
    s = pk.sets.Box(lo, lo + 0.2)
    g = torch.Generator().manual_seed(0)
    xs = s.sample(200, generator=g)
    with torch.no_grad():
        ys = module(xs.reshape(-1, *xs.shape[2:])).reshape(xs.shape[0], xs.shape[1], -1)
    for m in METHODS:
        b = pk.bounds(net, s, method=m)
        assert (ys >= b.lower - TOL).all() and (ys <= b.upper + TOL).all()


def test_margin_tighter_than_logit_difference():
    net, module, shape = network("mlp")
    x = torch.rand(4, *shape[1:], dtype=torch.float64)
    s = pk.sets.LpBall(x, 0.1)
    labels = torch.tensor([0, 1, 2, 3])
    C = pk.margin_spec(labels, 4, dtype=torch.float64)
    logit = pk.bounds(net, s, method="crown")
    margin = pk.bounds(net, s, method="crown", C=C)
    from perturbkit.bounds.spec import others as other_idx

    j = other_idx(labels, 4)
    naive = logit.lower.gather(1, labels[:, None]) - logit.upper.gather(1, j)
    assert (margin.lower >= naive - 1e-12).all()
    assert (margin.lower > naive + 1e-6).any(), "bounding the margin directly should be strictly tighter here"


def test_crown_no_looser_than_ibp_on_intermediate_relu_nets():
    net, module, shape = network("mlp")
    x = torch.rand(3, *shape[1:], dtype=torch.float64)
    s = pk.sets.LpBall(x, 0.05)
    ibp = pk.bounds(net, s, method="ibp")
    crown = pk.bounds(net, s, method="crown")
    assert (crown.upper - crown.lower).sum() < (ibp.upper - ibp.lower).sum()
