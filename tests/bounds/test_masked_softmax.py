"""Attention with constant masks: ``Softmax(x + M)`` with ``-inf`` (or very negative) entries.

The fusion (graph/fuse.py) turns it into MaskedSoftmax, whose decomposition drops masked
entries exactly, so bounds stay finite.  Checked on a causal and a key-padding-masked
``nn.MultiheadAttention`` through both front ends (the torch converter writes -1e30, the
ONNX export -inf: the same graph, the same bounds to 1e-5), on ``masked_fill(-inf)`` spelled
with Where, and sound by sampling.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import perturbkit as pk
from perturbkit.errors import UnsupportedOperatorError
from perturbkit.graph.from_onnx import graph_from_onnx
from perturbkit.graph.from_torch import graph_from_module
from perturbkit.graph.fuse import fuse


class Masked(nn.Module):
    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.attn = nn.MultiheadAttention(4, 2, batch_first=True)
        self.head = nn.Linear(12, 3)
        self.register_buffer("causal", torch.triu(torch.ones(3, 3, dtype=torch.bool), 1))
        self.register_buffer("padding", torch.tensor([[0.0, 0.0, float("-inf")]]).expand(3, 3).clone())

    def forward(self, x):
        t = x.reshape(-1, 3, 4)
        if self.kind == "causal":
            a, _ = self.attn(t, t, t, attn_mask=self.causal, need_weights=False)
        else:
            a, _ = self.attn(t, t, t, attn_mask=self.padding, need_weights=False)  # the last key masked
        return self.head(a.flatten(1))


class FillMasked(nn.Module):
    def forward(self, x):
        s = x.reshape(-1, 3, 3)
        s = s.masked_fill(torch.triu(torch.ones(3, 3, dtype=torch.bool), 1), float("-inf"))
        return torch.softmax(s, -1).flatten(1)


def _sample_check(net, model, x, eps, b, k=400):
    g = torch.Generator().manual_seed(0)
    xs = x + eps * (2 * torch.rand(k, *x.shape[1:], generator=g, dtype=x.dtype) - 1)
    with torch.no_grad():
        y = model(xs)
    torch.testing.assert_close(net(xs), y, rtol=1e-9, atol=1e-9)
    assert (y >= b.lower - 1e-9).all() and (y <= b.upper + 1e-9).all()


@pytest.mark.parametrize("kind", ["causal", "padding"])
def test_masked_attention_both_front_ends(kind, tmp_path):
    torch.manual_seed(0)
    model = Masked(kind).eval()
    x = torch.rand(1, 12)
    path = tmp_path / f"{kind}.onnx"
    with torch.enable_grad():
        torch.onnx.export(model, (x,), str(path), opset_version=17, dynamo=False)
    onet = pk.load(path)
    tnet = pk.load(model, example_input=x)
    for g in (graph_from_onnx(path), graph_from_module(model, x)):
        assert "MaskedSoftmax" in fuse(g).op_types() and "Softmax" not in fuse(g).op_types()
    ball = pk.sets.LpBall(x, 0.05)
    for method in ("ibp", "crown", "alpha-crown"):
        bo, bt = pk.bounds(onet, ball, method=method), pk.bounds(tnet, ball, method=method)
        assert torch.isfinite(bo.lower).all() and torch.isfinite(bo.upper).all()
        torch.testing.assert_close(bo.lower, bt.lower, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(bo.upper, bt.upper, rtol=1e-5, atol=1e-5)
    md = model.double()
    netd = pk.load(md, example_input=x.double())
    xd = x.double()
    for method in ("ibp", "crown", "alpha-crown"):
        _sample_check(netd, md, xd, 0.05, pk.bounds(netd, pk.sets.LpBall(xd, 0.05), method=method))


def test_masked_fill_with_where():
    model = FillMasked()
    x = torch.randn(1, 9, dtype=torch.float64)
    net = pk.load(model, example_input=x)
    assert "MaskedSoftmax" in fuse(graph_from_module(model, x)).op_types()
    b = pk.bounds(net, pk.sets.LpBall(x, 0.3), method="crown")
    assert torch.isfinite(b.lower).all()
    _sample_check(net, model, x, 0.3, b)
    # masked weights are exactly 0
    assert (b.upper.reshape(3, 3).triu(1) == 0).all() and (b.lower.reshape(3, 3).triu(1) == 0).all()


def test_fully_masked_row_refused():
    class AllMasked(nn.Module):
        def forward(self, x):
            return torch.softmax(x.reshape(-1, 2, 2) + torch.tensor([[0.0, 0.0], [float("-inf"), float("-inf")]]), -1)

    with pytest.raises(UnsupportedOperatorError, match="every entry masked"):
        pk.load(AllMasked(), example_input=torch.zeros(1, 4))
