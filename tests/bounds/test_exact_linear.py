"""Exactness on purely linear networks.

CROWN and CROWN-IBP are exact on every linear network (the backward pass composes the
affine maps, and the dual norm gives the exact extremum).  IBP is exact too: perturbkit's
interval pass bounds the network's linear prefix by its exact range over the input set
(see ``perturbkit.bounds.engine.interval_of``) instead of composing interval arithmetic.
Exactness is checked against the closed form and by attaining the bound at a corner.
"""
import math

import pytest
import torch

import perturbkit as pk
from nets import network


def _jacobian(module, shape):
    x0 = torch.zeros(1, *shape[1:], dtype=torch.float64)
    b = module(x0).reshape(-1)
    J = torch.autograd.functional.jacobian(lambda z: module(z.reshape(1, *shape[1:])).reshape(-1),
                                           x0.reshape(-1))
    return J, b  # y = J x + b


def _exact_lower(J, b, x, eps, norm):
    c = x.reshape(x.shape[0], -1)
    q = {math.inf: 1, 2: 2, 1: math.inf}[norm]
    dual = torch.linalg.vector_norm(J * eps, ord=q, dim=-1)
    return c @ J.T + b - dual, c @ J.T + b + dual


@pytest.mark.parametrize("kind", ["linear", "linear_conv", "one_affine"])
@pytest.mark.parametrize("norm", [math.inf, 2, 1])
@pytest.mark.parametrize("method", ["crown", "crown-ibp", "ibp"])
def test_linear_exact(kind, norm, method):
    net, module, shape = network(kind)
    x = torch.rand(3, *shape[1:], dtype=torch.float64)
    eps = 0.2
    b = pk.bounds(net, pk.sets.LpBall(x, eps, norm=norm), method=method)
    J, c = _jacobian(module, shape)
    lo, hi = _exact_lower(J, c, x, eps, norm)
    torch.testing.assert_close(b.lower, lo, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(b.upper, hi, rtol=1e-10, atol=1e-10)
    if norm == math.inf:  # attained at a corner
        corner = x - eps * torch.sign(J[0]).reshape(1, *shape[1:])
        y = module(corner)
        torch.testing.assert_close(y[:, 0], b.lower[:, 0], rtol=1e-10, atol=1e-10)


def test_plain_interval_arithmetic_would_be_loose_here():
    """The deep linear test network is one where composing interval arithmetic is loose, so
    the exactness above is a real property of the linear-prefix treatment."""
    net, module, shape = network("linear")
    W = [m.weight.detach() for m in module if isinstance(m, torch.nn.Linear)]
    r = torch.full((shape[1],), 0.2, dtype=torch.float64)
    for w in W:
        r = w.abs() @ r
    J, _ = _jacobian(module, shape)
    exact = J.abs() @ torch.full((shape[1],), 0.2, dtype=torch.float64)
    assert (r > exact + 1e-6).any()
