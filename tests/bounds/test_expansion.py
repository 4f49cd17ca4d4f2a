"""Bounds of a value expanded by an affine map from a smaller one (bounds/expansion.py): the
pairwise differences of a softmax over 8 or more entries."""
from __future__ import annotations

import torch
from torch import nn

import perturbkit as pk
from perturbkit.bounds import expansion


class Attention(nn.Module):
    def __init__(self, tokens=8, d=4):
        super().__init__()
        self.tokens, self.d = tokens, d
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.head = nn.Linear(tokens * d, 3)

    def forward(self, x):
        t = x.reshape(-1, self.tokens, self.d)
        a = torch.softmax(self.q(t) @ self.k(t).transpose(1, 2), -1)
        return self.head((a @ self.v(t)).flatten(1))


def test_expansion_is_used_and_sound(monkeypatch):
    torch.manual_seed(0)
    m = Attention().double()
    x = torch.rand(2, 32, dtype=torch.float64)
    net = pk.load(m, example_input=x[:1])
    ball = pk.sets.LpBall(x, 0.05)
    used = []
    real = expansion.tighten_by_expansion

    def spy(*a, **k):
        used.append(a[1])
        return real(*a, **k)

    from perturbkit.bounds import engine
    monkeypatch.setattr(engine, "tighten_by_expansion", spy)
    b = pk.bounds(net, ball, method="crown")
    assert used and all(name.endswith("/diff") for name in used)
    monkeypatch.setattr(expansion, "EXPANSION_RATIO", 10 ** 9)
    direct = pk.bounds(net, ball, method="crown")
    g = torch.Generator().manual_seed(1)
    u = torch.rand(400, *x.shape, generator=g, dtype=torch.float64)
    pts = x + 0.05 * torch.cat([torch.where(u[:200] < 0.5, -1.0, 1.0), 2 * u[200:] - 1])
    with torch.no_grad():
        y = m(pts.reshape(-1, 32)).reshape(400, 2, 3)
    for bb in (b, direct):
        assert (y >= bb.lower - 1e-9).all() and (y <= bb.upper + 1e-9).all()
    # through the scores' linear bounds: a little looser than direct passes, never much
    assert float((b.upper - b.lower).sum()) <= 1.05 * float((direct.upper - direct.lower).sum())
