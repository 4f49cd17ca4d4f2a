"""Whole-network soundness on Transformer-era networks, through both front ends.

Networks (small, seeded): a 2-layer Transformer encoder classifier (linear patch input,
``nn.TransformerEncoderLayer``: multi-head attention, LayerNorm, GELU MLP; mean pooling),
the same with an embedding input (token ids), a ViT-style model on 8x8 digits (Conv patch
embedding, class-free mean pooling), LSTM and GRU sequence classifiers, and a GELU/SiLU/ELU
MLP.  For each:

* ``perturbkit.load(module)`` and ``perturbkit.load(torch.onnx.export(module))`` give the same
  bounds (IBP, CROWN, alpha-CROWN; float32, 1e-5);
* in float64, every method's bounds contain the outputs at the ball's corners and at uniform
  samples (tolerance 1e-9 relative);
* CROWN is never looser than IBP and alpha-CROWN never looser than CROWN (by construction:
  each is intersected with the one before).
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import perturbkit as pk
from perturbkit.bounds.alpha_crown import AlphaConfig

ALPHA = AlphaConfig(iterations=4)


class PatchEncoder(nn.Module):
    def __init__(self, tokens=4, features=4, d=8, heads=2, ff=16, norm_first=False):
        super().__init__()
        self.tokens, self.features = tokens, features
        self.embed = nn.Linear(features, d)
        self.pos = nn.Parameter(torch.randn(1, tokens, d) * 0.1)
        layer = nn.TransformerEncoderLayer(d, heads, ff, dropout=0.0, activation="gelu", batch_first=True,
                                           norm_first=norm_first)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(d, 3)

    def forward(self, x):
        return self.head(self.encoder(self.embed(x.reshape(-1, self.tokens, self.features)) + self.pos).mean(1))


class TokenEncoder(nn.Module):
    """Token ids -> embeddings -> one encoder layer -> mean -> head."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(6, 8)
        self.encoder = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, activation="gelu", batch_first=True)
        self.head = nn.Linear(8, 2)

    def forward(self, ids):
        return self.head(self.encoder(self.embed(ids)).mean(1))


class ViT(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Conv2d(1, 8, 4, stride=4)
        self.pos = nn.Parameter(torch.randn(1, 4, 8) * 0.1)
        layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2) + self.pos
        return self.head(self.norm(self.encoder(t).mean(1)))


class Sequence(nn.Module):
    def __init__(self, cell):
        super().__init__()
        self.rnn = cell(3, 6, batch_first=True)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        out, _ = self.rnn(x.reshape(-1, 4, 3))
        return self.head(out[:, -1])


def act_mlp():
    return nn.Sequential(nn.Linear(6, 10), nn.GELU(), nn.Linear(10, 10), nn.SiLU(), nn.Linear(10, 10), nn.ELU(),
                         nn.Linear(10, 3))


NETS = {
    "encoder2_postnorm": (lambda: PatchEncoder(), (1, 16), 0.02),
    "encoder2_prenorm": (lambda: PatchEncoder(norm_first=True), (1, 16), 0.02),
    "vit_digits": (ViT, (1, 1, 8, 8), 0.01),
    "lstm": (lambda: Sequence(nn.LSTM), (1, 12), 0.05),
    "gru": (lambda: Sequence(nn.GRU), (1, 12), 0.05),
    "gelu_silu_elu_mlp": (act_mlp, (1, 6), 0.1),
}


def _build(name):
    make, shape, eps = NETS[name]
    torch.manual_seed(0)
    model = make().eval()
    x = torch.rand(shape, generator=torch.Generator().manual_seed(1))
    return model, x, eps


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("modern_nets")
    out = {}
    for name in NETS:
        model, x, _ = _build(name)
        path = folder / f"{name}.onnx"
        with torch.enable_grad():
            torch.onnx.export(model, (x,), str(path), opset_version=17, dynamo=False)
        out[name] = path
    return out


def _bounds(net, ball):
    return {m: pk.bounds(net, ball, method=m, alpha=ALPHA) for m in ("ibp", "crown", "alpha-crown")}


@pytest.mark.parametrize("name", list(NETS))
def test_both_front_ends_identical(name, exported):
    model, x, eps = _build(name)
    tnet = pk.load(model, example_input=x)
    onet = pk.load(exported[name])
    ball = pk.sets.LpBall(x, eps)
    bt, bo = _bounds(tnet, ball), _bounds(onet, ball)
    for m in bt:
        torch.testing.assert_close(bt[m].lower, bo[m].lower, rtol=1e-5, atol=1e-5, msg=f"{name} {m} lower")
        torch.testing.assert_close(bt[m].upper, bo[m].upper, rtol=1e-5, atol=1e-5, msg=f"{name} {m} upper")


@pytest.mark.parametrize("name", list(NETS))
def test_sound_by_sampling_float64(name):
    model, x, eps = _build(name)
    model = copy.deepcopy(model).double()
    x = x.double()
    net = pk.load(model, example_input=x)
    ball = pk.sets.LpBall(x, eps)
    b = _bounds(net, ball)
    g = torch.Generator().manual_seed(2)
    k = 300
    u = torch.rand(k, *x.shape[1:], generator=g, dtype=torch.float64)
    corners = torch.where(u[: k // 2] < 0.5, -1.0, 1.0).to(torch.float64)
    pts = x + eps * torch.cat([corners, 2 * u[k // 2:] - 1])
    with torch.no_grad():
        y = model(pts)
    tol = 1e-9 * (1 + y.abs())
    for m, bm in b.items():
        assert (y >= bm.lower - tol).all(), f"{name} {m}: a sample below the lower bound"
        assert (y <= bm.upper + tol).all(), f"{name} {m}: a sample above the upper bound"
    w = {m: bm.upper - bm.lower for m, bm in b.items()}
    assert (w["crown"] <= w["ibp"] + 1e-9).all() and (w["alpha-crown"] <= w["crown"] + 1e-9).all()
    assert torch.isfinite(w["crown"]).all()


def test_embedding_encoder_both_front_ends_and_sound(tmp_path):
    torch.manual_seed(0)
    model = TokenEncoder().eval()
    ids = torch.tensor([[1, 4, 2, 5]])
    path = tmp_path / "tokens.onnx"
    with torch.enable_grad():
        torch.onnx.export(model, (ids,), str(path), opset_version=17, dynamo=False)
    tnet, onet = pk.load(model, example_input=ids), pk.load(path)
    box = pk.sets.Box(ids.float() - 1, ids.float() + 1)  # each token may move to a neighbouring id
    for m in ("ibp", "crown"):
        bt, bo = pk.bounds(tnet, box, method=m), pk.bounds(onet, box, method=m)
        torch.testing.assert_close(bt.lower, bo.lower, rtol=1e-5, atol=1e-5)
        import itertools

        with torch.no_grad():
            ys = torch.cat([model(torch.tensor([v])) for v in itertools.product((0, 1, 2), (3, 4, 5), (1, 2, 3), (4, 5))])
        assert (ys >= bt.lower - 1e-5).all() and (ys <= bt.upper + 1e-5).all()
