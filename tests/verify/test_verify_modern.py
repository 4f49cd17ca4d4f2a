"""The verifier on networks with the Transformer-era operators: GELU/SiLU/ELU MLPs, a tiny
attention block (softmax, LayerNorm, products of perturbed values), an LSTM and a GRU.

Each network is exported to ONNX (``torch.onnx.export``, opset 17), so counterexamples are
executed by ONNX Runtime before ``sat``.  Properties ``y_k <= t`` over an input box with a
known answer: ``sat`` thresholds lie below an output value found by sampling (a witness
exists); ``unsat`` thresholds lie above the largest output on a dense grid by a margin much
wider than the output can vary between grid points (the box is small and every network is
Lipschitz with a modest constant), so the verifier must never answer ``sat`` there, and
``unsat`` or ``unknown`` are the only right answers.  The verifier must prove the easy
``unsat`` ones (input splitting: these networks have at most 8 inputs).
"""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn

import perturbkit as pk
from perturbkit.verify.spec import Case, Clause, InputBox, OutputSpec, Property


class Attention(nn.Module):
    """3 tokens of 2 features: LayerNorm, one-head self-attention, residual, a linear head."""

    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(2)
        self.attn = nn.MultiheadAttention(2, 1, batch_first=True)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        t = x.reshape(-1, 3, 2)
        h = self.norm(t)
        a, _ = self.attn(h, h, h, need_weights=False)
        return self.head((t + a).flatten(1))


class Recurrent(nn.Module):
    def __init__(self, cell):
        super().__init__()
        self.rnn = cell(2, 4, batch_first=True)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        out, _ = self.rnn(x.reshape(-1, 3, 2))
        return self.head(out[:, -1])


def _mlp(act):
    return nn.Sequential(nn.Linear(4, 8), act, nn.Linear(8, 8), act, nn.Linear(8, 2))


MODELS = {
    "gelu_mlp": lambda: _mlp(nn.GELU()),
    "silu_mlp": lambda: _mlp(nn.SiLU()),
    "elu_mlp": lambda: _mlp(nn.ELU()),
    "attention": Attention,
    "lstm": lambda: Recurrent(nn.LSTM),
    "gru": lambda: Recurrent(nn.GRU),
}
N_IN = {"gelu_mlp": 4, "silu_mlp": 4, "elu_mlp": 4, "attention": 6, "lstm": 6, "gru": 6}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = {}
    folder = tmp_path_factory.mktemp("modern")
    for name, make in MODELS.items():
        torch.manual_seed(7)
        m = make().eval()
        path = folder / f"{name}.onnx"
        with torch.enable_grad():
            torch.onnx.export(m, (torch.zeros(1, N_IN[name]),), str(path), opset_version=17, dynamo=False,
                              input_names=["x"])
        out[name] = path
    return out


def _grid_outputs(path, lo, hi, k):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    axes = [np.linspace(a, b, k) for a, b in zip(lo, hi)]
    pts = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, len(lo)).astype(np.float32)
    return np.concatenate([sess.run(None, {"x": pts[i:i + 1]})[0] for i in range(len(pts))])


def _prop(lo, hi, k, t, n_out=2):
    """The unsafe region ``y_k >= t`` (written ``-y_k <= -t``) over the box."""
    row = np.zeros(n_out)
    row[k] = -1.0
    clause = Clause(C=row.reshape(1, -1), d=np.array([-t]))
    return Property(n_inputs=len(lo), n_outputs=n_out,
                    cases=(Case(InputBox(np.asarray(lo), np.asarray(hi)), OutputSpec((clause,))),))


@pytest.mark.parametrize("name", list(MODELS))
def test_known_answers_and_checked_counterexamples(exported, name):
    path = exported[name]
    net = pk.load(path)
    n = N_IN[name]
    rng = np.random.default_rng(0)
    c = rng.uniform(-0.5, 0.5, n)
    lo, hi = c - 0.05, c + 0.05
    y = _grid_outputs(path, lo, hi, 4 if n > 4 else 6)
    span = float(y[:, 0].max() - y[:, 0].min())
    # sat: y_0 >= t has a witness on the grid
    r = pk.verify(net, _prop(lo, hi, 0, float(y[:, 0].max()) - 0.25 * span), timeout=30)
    assert r.verdict == "sat", r.verdict
    x, yy = r.counterexample
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    y_ort = sess.run(None, {"x": np.asarray(x, dtype=np.float32).reshape(1, -1)})[0].reshape(-1)
    np.testing.assert_allclose(yy, y_ort, atol=1e-6)
    assert y_ort[0] >= float(y[:, 0].max()) - 0.25 * span - 1e-6
    # unsat: the threshold is far above anything the box reaches
    r = pk.verify(net, _prop(lo, hi, 0, float(y[:, 0].max()) + 2.0 * span + 0.05), timeout=30)
    assert r.verdict == "unsat", r.verdict


@pytest.mark.parametrize("name", ["gelu_mlp", "silu_mlp", "elu_mlp"])
def test_input_splitting_without_relus(exported, name):
    """A threshold just above the sampled maximum needs branch and bound on the inputs (one
    bound on the whole box does not prove it); these networks have no ReLU to split."""
    path = exported[name]
    net = pk.load(path)
    n = N_IN[name]
    rng = np.random.default_rng(1)
    c = rng.uniform(-0.5, 0.5, n)
    r = 0.6 if n <= 4 else 0.3
    lo, hi = c - r, c + r
    y = _grid_outputs(path, lo, hi, 5 if n > 4 else 8)
    span = float(y[:, 0].max() - y[:, 0].min())
    r = pk.verify(net, _prop(lo, hi, 0, float(y[:, 0].max()) + 0.1 * span), timeout=60)
    assert r.verdict == "unsat", r.verdict
    assert r.stats["boxes"] > 1  # it did split
