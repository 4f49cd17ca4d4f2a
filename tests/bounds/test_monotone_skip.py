"""CROWN skips the passes for outputs of monotone functions of fully bounded values
(bounds/crown.py, ``_crown_adds_nothing``): the bounds must be exactly those with the passes."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import perturbkit as pk
from perturbkit.bounds import crown as crown_mod


class Gated(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 6), nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, x):
        g = torch.sigmoid(self.a(x)) * torch.tanh(self.b(x))  # gate outputs feed a product
        return self.c(torch.exp(-torch.relu(g)) * torch.sigmoid(g))


@pytest.mark.parametrize("model", [Gated, lambda: nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Sigmoid(), nn.Softplus(),
                                                                nn.Linear(6, 3))])
def test_skipped_passes_change_nothing(model, monkeypatch):
    torch.manual_seed(0)
    m = model().double()
    x = torch.randn(3, 4, dtype=torch.float64)
    net = pk.load(m, example_input=x[:1])
    ball = pk.sets.LpBall(x, 0.3)
    with_skip = pk.bounds(net, ball, method="crown")
    calls = []
    real = crown_mod._crown_adds_nothing

    def spy(rule, node, full):
        calls.append(real(rule, node, full))
        return False

    monkeypatch.setattr(crown_mod, "_crown_adds_nothing", spy)
    without = pk.bounds(net, ball, method="crown")
    assert any(calls), "nothing was skipped: the test does not test the skip"
    torch.testing.assert_close(with_skip.lower, without.lower, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(with_skip.upper, without.upper, rtol=1e-12, atol=1e-12)
