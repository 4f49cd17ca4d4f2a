"""The networks of bench/modern_bounds.py (seeded, random weights unless trained).

Each entry: ``name -> (module factory, input shape (batch 1), eps)``; inputs are drawn
uniformly in [0, 1) with seed 0 and perturbed in an Linf ball of radius eps.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]


class PatchTransformer(nn.Module):
    """A 2-layer Transformer encoder classifier on 8 tokens of 8 features (linear patch input):
    Linear embedding, position embedding, ``layers`` post- or pre-norm encoder layers (MHA,
    LayerNorm, GELU MLP), mean pooling, Linear head."""

    def __init__(self, tokens=8, features=8, d=32, heads=4, ff=64, layers=2, norm_first=False):
        super().__init__()
        self.tokens, self.features = tokens, features
        self.embed = nn.Linear(features, d)
        self.pos = nn.Parameter(torch.randn(1, tokens, d) * 0.1)
        layer = nn.TransformerEncoderLayer(d, heads, ff, dropout=0.0, activation="gelu", batch_first=True,
                                           norm_first=norm_first)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, 10)

    def forward(self, x):
        t = self.embed(x.reshape(-1, self.tokens, self.features)) + self.pos
        return self.head(self.encoder(t).mean(1))


class ManualAttention(nn.Module):
    """One attention layer written out, with the softmax either as ``torch.softmax`` (perturbkit
    bounds it in the pairwise form) or spelled ``exp(s) / sum exp(s)`` (the textbook decomposition,
    bounded through a product of two perturbed values)."""

    def __init__(self, tokens=6, d=8, textbook=False):
        super().__init__()
        self.tokens, self.d, self.textbook = tokens, d, textbook
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.head = nn.Linear(tokens * d, 10)

    def forward(self, x):
        t = x.reshape(-1, self.tokens, self.d)
        s = self.q(t) @ self.k(t).transpose(1, 2) / math.sqrt(self.d)
        if self.textbook:
            e = torch.exp(s)
            a = e / e.sum(-1, keepdim=True)
        else:
            a = torch.softmax(s, -1)
        return self.head((a @ self.v(t)).flatten(1))


class SequenceClassifier(nn.Module):
    def __init__(self, cell, steps=8, features=4, hidden=16):
        super().__init__()
        self.steps, self.features = steps, features
        self.rnn = cell(features, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 10)

    def forward(self, x):
        out, _ = self.rnn(x.reshape(-1, self.steps, self.features))
        return self.head(out[:, -1])


class HandEncoderLayer(nn.Module):
    """A pre-norm Transformer encoder layer written with primitive operations (the same
    mathematics as ``nn.TransformerEncoderLayer(norm_first=True, activation="relu")``), the
    spelling auto_LiRPA 0.7.1 can parse on torch 2.13."""

    def __init__(self, d=32, heads=4, ff=64):
        super().__init__()
        self.h = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.q, self.k, self.v, self.o = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.ff1, self.ff2 = nn.Linear(d, ff), nn.Linear(ff, d)

    def forward(self, x):
        b, n, d = x.shape
        hd = d // self.h
        y = self.ln1(x)
        q = self.q(y).reshape(b, n, self.h, hd).transpose(1, 2)
        k = self.k(y).reshape(b, n, self.h, hd).transpose(1, 2)
        v = self.v(y).reshape(b, n, self.h, hd).transpose(1, 2)
        a = torch.softmax(q.matmul(k.transpose(2, 3)) / math.sqrt(hd), dim=-1)
        x = x + self.o(a.matmul(v).transpose(1, 2).reshape(b, n, d))
        return x + self.ff2(torch.relu(self.ff1(self.ln2(x))))


class HandTransformer(nn.Module):
    """Linear patch embedding, ``layers`` HandEncoderLayers, mean pooling, Linear head."""

    def __init__(self, tokens=8, features=8, d=32, heads=4, ff=64, layers=2):
        super().__init__()
        self.tokens, self.features = tokens, features
        self.embed = nn.Linear(features, d)
        self.layers = nn.ModuleList([HandEncoderLayer(d, heads, ff) for _ in range(layers)])
        self.head = nn.Linear(d, 10)

    def forward(self, x):
        t = self.embed(x.reshape(-1, self.tokens, self.features))
        for layer in self.layers:
            t = layer(t)
        return self.head(t.mean(1))


class HandLSTM(nn.Module):
    """An LSTM sequence classifier with the gates written out (slices of two Linear maps,
    sigmoid/tanh, products), unrolled over ``steps``: what ``nn.LSTM`` computes, in the
    spelling auto_LiRPA 0.7.1 can parse on torch 2.13 (its LSTM and LSTMCell paths fail)."""

    def __init__(self, steps=8, features=4, hidden=16):
        super().__init__()
        self.steps, self.features, self.hidden = steps, features, hidden
        self.ih = nn.Linear(features, 4 * hidden)
        self.hh = nn.Linear(hidden, 4 * hidden, bias=False)
        self.head = nn.Linear(hidden, 10)

    def forward(self, x):
        xs = x.reshape(-1, self.steps, self.features)
        H = self.hidden
        h = c = None
        for t in range(self.steps):
            g = self.ih(xs[:, t]) if h is None else self.ih(xs[:, t]) + self.hh(h)
            i, f = torch.sigmoid(g[:, :H]), torch.sigmoid(g[:, H:2 * H])
            cand, o = torch.tanh(g[:, 2 * H:3 * H]), torch.sigmoid(g[:, 3 * H:])
            c = i * cand if c is None else f * c + i * cand
            h = o * torch.tanh(c)
        return self.head(h)


def act_mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 64), nn.SiLU(),
                         nn.Linear(64, 64), nn.ELU(), nn.Linear(64, 10))


def vit_digits():
    """The bundled digits Transformer's architecture and training (models/train_transformer.py,
    seeded), so that both libraries bound the same torch module."""
    sys.path.insert(0, str(ROOT / "src"))
    from perturbkit.models.train_digits import load_split
    from perturbkit.models.train_transformer import DigitsTransformer, train

    x_tr, y_tr, _, _ = load_split()
    torch.manual_seed(0)
    return train(DigitsTransformer(), torch.from_numpy(x_tr), torch.from_numpy(y_tr))


MODELS = {
    "hand_transformer2": (lambda: HandTransformer(), (1, 64), 0.01),
    "hand_lstm": (lambda: HandLSTM(), (1, 32), 0.02),
    "transformer2": (lambda: PatchTransformer(), (1, 64), 0.01),
    "transformer2_prenorm": (lambda: PatchTransformer(norm_first=True), (1, 64), 0.01),
    "attention_softmax": (lambda: ManualAttention(), (1, 48), 0.02),
    "attention_textbook": (lambda: ManualAttention(textbook=True), (1, 48), 0.02),
    "lstm": (lambda: SequenceClassifier(nn.LSTM), (1, 32), 0.02),
    "gru": (lambda: SequenceClassifier(nn.GRU), (1, 32), 0.02),
    "gelu_silu_elu_mlp": (act_mlp, (1, 1, 8, 8), 0.02),
    "vit_digits": (vit_digits, (1, 1, 8, 8), 0.005),
}


def build(name: str) -> tuple[nn.Module, torch.Tensor, float]:
    make, shape, eps = MODELS[name]
    torch.manual_seed(0)
    model = make().eval()
    x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    return model, x, eps
