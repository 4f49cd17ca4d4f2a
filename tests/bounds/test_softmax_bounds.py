"""Softmax bounds (ops/softmax.py: the pairwise form 1 / sum_j exp(x_j - x_i)), with hypothesis.

Over random logit boxes (any centres, widths from 0 to 40, so exp of the widest differences
overflows a naive form): every method's bounds contain the softmax at corners and at
uniform samples; they lie in [0, 1]; a point box gives the point (to 1e-9); and the pairwise
form is never looser than the textbook ``exp(x) / sum exp(x)`` decomposition (which needs a
product of two perturbed values), summed over outputs.
"""
from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import perturbkit as pk
from perturbkit.bounds.alpha_crown import AlphaConfig

F64 = torch.float64


class Textbook(nn.Module):
    def forward(self, x):
        e = torch.exp(x)
        return e / e.sum(-1, keepdim=True)


class Library(nn.Module):
    def forward(self, x):
        return torch.softmax(x, -1)


N = 5
NET = pk.load(Library(), example_input=torch.zeros(1, N, dtype=F64))
TEXTBOOK = pk.load(Textbook(), example_input=torch.zeros(1, N, dtype=F64))


@settings(max_examples=40, deadline=None, derandomize=True)
@given(centre=st.lists(st.floats(-8, 8), min_size=N, max_size=N), width=st.sampled_from([0.0, 1e-6, 0.3, 2.0, 10.0, 40.0]),
       seed=st.integers(0, 2 ** 31 - 1))
def test_softmax_bounds_sound(centre, width, seed):
    g = torch.Generator().manual_seed(seed)
    c = torch.tensor([centre], dtype=F64)
    r = width * torch.rand(1, N, generator=g, dtype=F64)
    lo, hi = c - r, c + r
    box = pk.sets.Box(lo, hi)
    k = 200
    u = torch.rand(k, N, generator=g, dtype=F64)
    pts = torch.cat([torch.where(u[: k // 2] < 0.5, lo, hi), lo + (hi - lo) * u[k // 2:]])
    y = torch.softmax(pts, -1)
    for m in ("ibp", "crown", "crown-ibp", "alpha-crown"):
        b = pk.bounds(NET, box, method=m, alpha=AlphaConfig(iterations=5))
        assert (y >= b.lower - 1e-9).all() and (y <= b.upper + 1e-9).all(), m
        assert (b.lower >= -1e-12).all() and (b.upper <= 1 + 1e-12).all(), m
        if width == 0.0:
            torch.testing.assert_close(b.lower, torch.softmax(c, -1), rtol=1e-9, atol=1e-9)
    if width <= 10.0:  # (wider: exp overflows the textbook form's float64 bounds; its bounds are inf)
        pair = pk.bounds(NET, box, method="crown")
        text = pk.bounds(TEXTBOOK, box, method="crown")
        assert float((pair.upper - pair.lower).sum()) <= float((text.upper - text.lower).sum()) + 1e-9
