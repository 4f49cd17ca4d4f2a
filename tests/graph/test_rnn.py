"""Recurrent layers (graph/rnn.py, torch_fx/recurrent.py, the ONNX importer's hook).

Oracles: the PyTorch module itself (float32 within 1e-5, float64 within 1e-10), ONNX Runtime
on the ``torch.onnx.export`` of the module and on hand-built ONNX nodes (ORT runs only
``layout=0``: a ``layout=1`` node is checked against its ``layout=0`` twin on the transposed
sequence).  Both front ends must give the same op sequence, hence the same bounds.
"""
from __future__ import annotations

import contextlib
import io
import itertools
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
from onnx import TensorProto, helper, numpy_helper

import perturbkit as pk
from perturbkit.errors import UnsupportedOperatorError
from perturbkit.graph.from_onnx import graph_from_onnx
from perturbkit.graph.from_torch import graph_from_module

SEQ, N_IN, HIDDEN = 4, 3, 5


# ----------------------------------------------------------------------------------------
# modules
# ----------------------------------------------------------------------------------------
def make_rnn(kind: str, *, batch_first: bool, layers: int, bidirectional: bool, bias: bool = True) -> nn.Module:
    cls, extra = {"LSTM": (nn.LSTM, {}), "GRU": (nn.GRU, {}), "RNN": (nn.RNN, {}),
                  "RNN-relu": (nn.RNN, {"nonlinearity": "relu"})}[kind]
    return cls(N_IN, HIDDEN, num_layers=layers, batch_first=batch_first, bidirectional=bidirectional,
               bias=bias, **extra)


class Classifier(nn.Module):
    """A sequence classifier reading the last output step, the last hidden state, or both."""

    def __init__(self, kind: str, head: str = "out", **kw):
        super().__init__()
        self.rnn = make_rnn(kind, **kw)
        self.lstm, self.head, self.batch_first = kind == "LSTM", head, kw["batch_first"]
        d = HIDDEN * (2 if kw["bidirectional"] else 1)
        self.fc = nn.Linear(d, 2)
        self.fc_h = nn.Linear(HIDDEN, 2)

    def forward(self, x):
        if self.lstm:
            out, (h, c) = self.rnn(x)
        else:
            out, h = self.rnn(x)
        last = out[:, -1] if self.batch_first else out[-1]
        if self.head == "out":
            return self.fc(last)
        if self.head == "h":
            return self.fc_h(h[-1])
        y = self.fc(last) + self.fc_h(h[-1])
        return y + self.fc_h(c[0]) if self.lstm else y


class Returns(nn.Module):
    """The layer's output sequence, ``h_n`` or ``c_n`` itself (for the op-sequence check)."""

    def __init__(self, kind: str, what: str, **kw):
        super().__init__()
        self.rnn, self.what, self.lstm = make_rnn(kind, **kw), what, kind == "LSTM"

    def forward(self, x):
        out, state = self.rnn(x)
        if self.what == "out":
            return out
        return state[int(self.what == "c")] if self.lstm else state


def example(batch_first: bool, seed: int = 0, n: int = 1, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (n, 1, SEQ, N_IN) if batch_first else (n, SEQ, 1, N_IN)
    return torch.randn(*shape, generator=g, dtype=dtype)


def seeded(m: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return m.eval()


def per_sample(m: nn.Module, xs: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.stack([m(x) for x in xs])


CONFIGS = [dict(batch_first=bf, layers=nl, bidirectional=bi)
           for bf, nl, bi in itertools.product((True, False), (1, 2), (False, True))]
KINDS = ("LSTM", "GRU", "RNN", "RNN-relu")


def _id(cfg: dict) -> str:
    return f"{'bf' if cfg['batch_first'] else 'sf'}-{cfg['layers']}l-{'bi' if cfg['bidirectional'] else 'uni'}"


# ----------------------------------------------------------------------------------------
# the torch front end against the module
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("cfg", CONFIGS, ids=_id)
@pytest.mark.parametrize("kind", KINDS)
def test_module_matches_torch(kind, cfg):
    head = ("out", "h", "both")[(CONFIGS.index(cfg) + KINDS.index(kind)) % 3]
    m = seeded(Classifier(kind, head, **cfg))
    xs = example(cfg["batch_first"], n=3)
    net = pk.load(m, xs[0])
    torch.testing.assert_close(net.run(xs)[net.graph.output_name], per_sample(m, xs), rtol=0, atol=1e-5)
    m64 = m.double()
    xs64 = xs.double()
    net64 = pk.load(m64, xs64[0])
    torch.testing.assert_close(net64.run(xs64)[net64.graph.output_name], per_sample(m64, xs64), rtol=0, atol=1e-10)


class WithState(nn.Module):
    """No biases, a constant initial state (a buffer), and the same layer on an unbatched input."""

    def __init__(self, kind: str, unbatched: bool = True):
        super().__init__()
        self.rnn = make_rnn(kind, batch_first=True, layers=2, bidirectional=True, bias=False)
        self.lstm, self.unbatched = kind == "LSTM", unbatched
        g = torch.Generator().manual_seed(5)
        self.register_buffer("h0", torch.randn(4, 1, HIDDEN, generator=g))
        self.register_buffer("c0", torch.randn(4, 1, HIDDEN, generator=g))

    def forward(self, x):
        out, _ = self.rnn(x, (self.h0, self.c0) if self.lstm else self.h0)
        if not self.unbatched:
            return out
        out2, _ = self.rnn(x[0])  # (seq, in)
        return out[0] + out2


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_no_bias_constant_state_and_unbatched_input(kind, tmp_path):
    m = seeded(WithState(kind), 2).double()
    xs = example(True, n=2, dtype=torch.float64)
    net = pk.load(m, xs[0])
    torch.testing.assert_close(net.run(xs)[net.graph.output_name], per_sample(m, xs), rtol=0, atol=1e-10)
    m = seeded(WithState(kind, unbatched=False), 2)
    x = example(True)[0]
    _export(m, x, tmp_path / "m.onnx")
    _vs_ort(tmp_path / "m.onnx", example(True, n=2))
    assert [n.op_type for n in graph_from_module(m, x).nodes] == \
        [n.op_type for n in graph_from_onnx(tmp_path / "m.onnx").nodes]


def test_torch_refusals_are_clear():
    class Proj(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.LSTM(N_IN, HIDDEN, proj_size=2, batch_first=True)

        def forward(self, x):
            return self.rnn(x)[0]

    class InputState(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.GRU(N_IN, N_IN, batch_first=True)

        def forward(self, x):
            return self.rnn(x, x[:, :1].transpose(0, 1).contiguous())[0]

    x = example(True)[0]
    with pytest.raises(UnsupportedOperatorError, match=r"proj_size=2 .*fx node 'rnn'"):
        pk.load(Proj(), x)
    with pytest.raises(UnsupportedOperatorError, match="initial state that depends on the network input"):
        pk.load(InputState(), x)


# ----------------------------------------------------------------------------------------
# ONNX exports against ONNX Runtime, and against the torch front end
# ----------------------------------------------------------------------------------------
def _export(m: nn.Module, x: torch.Tensor, path, dynamo: bool = False) -> None:
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (x,), str(path), dynamo=dynamo, opset_version=18 if dynamo else 17)


def _vs_ort(path, xs: torch.Tensor, atol: float = 1e-5) -> pk.Network:
    net = pk.load(path)
    sess = ort.InferenceSession(str(path))
    name = sess.get_inputs()[0].name
    ref = np.stack([sess.run(None, {name: x.numpy()})[0] for x in xs])
    got = net.run(xs)[net.graph.output_name].numpy()
    np.testing.assert_allclose(got, ref, rtol=0, atol=atol)
    return net


@pytest.mark.parametrize("cfg", CONFIGS[::3] + CONFIGS[1::3], ids=_id)
@pytest.mark.parametrize("kind", KINDS)
def test_export_matches_onnxruntime(kind, cfg, tmp_path):
    head = ("out", "h", "both")[(CONFIGS.index(cfg) + KINDS.index(kind)) % 3]
    m = seeded(Classifier(kind, head, **cfg))
    xs = example(cfg["batch_first"], n=3)
    _export(m, xs[0], tmp_path / "m.onnx")
    _vs_ort(tmp_path / "m.onnx", xs)


@pytest.mark.parametrize("kind,cfg", [("LSTM", CONFIGS[3]), ("GRU", CONFIGS[4]), ("RNN", CONFIGS[0])],
                         ids=["LSTM", "GRU", "RNN"])
def test_dynamo_export_matches_onnxruntime(kind, cfg, tmp_path):
    pytest.importorskip("onnxscript")
    m = seeded(Classifier(kind, "out", **cfg))
    xs = example(cfg["batch_first"], n=2)
    _export(m, xs[0], tmp_path / "m.onnx", dynamo=True)
    _vs_ort(tmp_path / "m.onnx", xs)


@pytest.mark.parametrize("kind,what", [("LSTM", "out"), ("LSTM", "h"), ("LSTM", "c"), ("GRU", "out"),
                                       ("GRU", "h"), ("RNN", "out"), ("RNN", "h")])
def test_both_front_ends_give_the_same_graph(kind, what, tmp_path):
    for i, cfg in enumerate((CONFIGS[0], CONFIGS[7])):
        m = seeded(Returns(kind, what, **cfg), i)
        x = example(cfg["batch_first"])[0]
        _export(m, x, tmp_path / f"m{i}.onnx")
        ops_torch = [n.op_type for n in graph_from_module(m, x).nodes]
        ops_onnx = [n.op_type for n in graph_from_onnx(tmp_path / f"m{i}.onnx").nodes]
        assert ops_torch == ops_onnx


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_both_front_ends_give_the_same_bounds(kind, tmp_path):
    m = seeded(Classifier(kind, "both", batch_first=True, layers=1, bidirectional=False))
    x = example(True)[0]
    _export(m, x, tmp_path / "m.onnx")
    nets = [pk.load(m, x), pk.load(tmp_path / "m.onnx")]
    box = pk.sets.LpBall(x, 0.05)
    for method in ("ibp", "crown"):
        b_torch, b_onnx = (pk.bounds(n, box, method=method) for n in nets)
        torch.testing.assert_close(b_torch.lower, b_onnx.lower, rtol=0, atol=1e-5)
        torch.testing.assert_close(b_torch.upper, b_onnx.upper, rtol=0, atol=1e-5)
        u = torch.rand(256, *x.shape[1:], generator=torch.Generator().manual_seed(3))
        u[:128] = u[:128].round()  # corners and interior points
        pts = x + 0.05 * (2 * u - 1)
        with torch.no_grad():
            y = m(pts)
        assert (y >= b_torch.lower - 1e-5).all() and (y <= b_torch.upper + 1e-5).all()


# ----------------------------------------------------------------------------------------
# hand-built ONNX nodes: omitted optional inputs, every output, both layouts
# ----------------------------------------------------------------------------------------
ROLES = {"LSTM": ("X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P"),
         "GRU": ("X", "W", "R", "B", "sequence_lens", "initial_h"),
         "RNN": ("X", "W", "R", "B", "sequence_lens", "initial_h")}
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
BATCH = 2


def recurrent_model(kind: str, *, layout: int = 0, direction: str = "forward", given=("B",),
                    outputs=("Y", "Y_h"), seed: int = 0, **attrs) -> onnx.ModelProto:
    """One recurrent node; its outputs, each in layout-0 order and flattened, concatenated
    into the graph output ``(1, total)``.  ``given``: the optional inputs present (the
    others are omitted, as ``""`` where a later one is given)."""
    rng = np.random.default_rng(seed)
    D, G, n = (2 if direction == "bidirectional" else 1), GATES[kind], HIDDEN
    states = {k: rng.normal(size=(D, BATCH, n)) for k in ("initial_h", "initial_c")}
    arrays = {"W": rng.normal(size=(D, G * n, N_IN)) * 0.6, "R": rng.normal(size=(D, G * n, n)) * 0.6,
              "B": rng.normal(size=(D, 2 * G * n)) * 0.3, "P": rng.normal(size=(D, 3 * n)) * 0.5,
              "sequence_lens": np.full(BATCH, SEQ, dtype=np.int32),
              **{k: (v if layout == 0 else v.transpose(1, 0, 2)) for k, v in states.items()}}
    names = [r if r in ("X", "W", "R") or r in given else "" for r in ROLES[kind]]
    while names[-1] == "":
        names.pop()
    inits = [numpy_helper.from_array(arrays[r].astype(np.int32 if r == "sequence_lens" else np.float32), r)
             for r in names if r not in ("", "X")]
    outs = [o if o in outputs else "" for o in ("Y", "Y_h", "Y_c")[:3 if kind == "LSTM" else 2]]
    while outs[-1] == "":
        outs.pop()
    nodes = [helper.make_node(kind, names, outs, name="rnn", hidden_size=n, direction=direction,
                              layout=layout, **attrs)]
    flat = []
    for o in outputs:
        v = o
        if layout == 1:  # back to layout 0: Y (batch, seq, D, n) -> (seq, D, batch, n); states (batch, D, n)
            nodes.append(helper.make_node("Transpose", [o], [o + "_t"], perm=[1, 2, 0, 3] if o == "Y" else [1, 0, 2]))
            v = o + "_t"
        nodes.append(helper.make_node("Reshape", [v, "flat"], [o + "_flat"]))
        flat.append(o + "_flat")
    nodes.append(helper.make_node("Concat", flat, ["out"], axis=1))
    inits.append(numpy_helper.from_array(np.array([1, -1], dtype=np.int64), "flat"))
    x_shape = [SEQ, BATCH, N_IN] if layout == 0 else [BATCH, SEQ, N_IN]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, x_shape)],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _check_node(kind: str, layout: int = 0, **kw) -> pk.Network:
    """perturbkit on the node (a batch of 3 sequences) against ORT on its layout-0 twin."""
    model = recurrent_model(kind, layout=layout, **kw)
    twin = recurrent_model(kind, layout=0, **kw)
    sess = ort.InferenceSession(twin.SerializeToString())
    xs = torch.from_numpy(np.random.default_rng(7).normal(size=(3, SEQ, BATCH, N_IN)).astype(np.float32))
    ref = np.stack([sess.run(None, {"X": x.numpy()})[0] for x in xs])
    net = pk.load(model)
    got = net.run(xs if layout == 0 else xs.transpose(1, 2))[net.graph.output_name].numpy()
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)
    return net


@pytest.mark.parametrize("layout", [0, 1])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_lstm_node_with_omitted_inputs_in_the_middle(direction, layout):
    # inputs X, W, R, B, "", initial_h, "", P: sequence_lens and initial_c omitted between given ones
    _check_node("LSTM", layout, direction=direction, given=("B", "initial_h", "P"), outputs=("Y", "Y_h", "Y_c"))


@pytest.mark.parametrize("given", [(), ("sequence_lens",), ("B", "sequence_lens", "initial_h", "initial_c"),
                                   ("initial_c",)], ids=["bare", "lens", "all-but-P", "c-only"])
def test_lstm_node_optional_input_sets(given):
    _check_node("LSTM", 0, direction="bidirectional", given=given, outputs=("Y_c", "Y"))


@pytest.mark.parametrize("layout", [0, 1])
@pytest.mark.parametrize("lbr", [0, 1])
@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
def test_gru_node_linear_before_reset(direction, lbr, layout):
    _check_node("GRU", layout, direction=direction, given=("B", "initial_h"), linear_before_reset=lbr)
    _check_node("GRU", layout, direction=direction, given=(), outputs=("Y_h",), linear_before_reset=lbr)


@pytest.mark.parametrize("acts", [["Tanh"], ["Relu"], ["Relu", "Tanh"]])
def test_rnn_node_activations(acts):
    direction = "bidirectional" if len(acts) == 2 else "reverse"
    _check_node("RNN", 0, direction=direction, given=("B", "initial_h"), activations=acts)


def test_lstm_activations_spelled_out_and_y_only():
    net = _check_node("LSTM", 1, given=("B",), outputs=("Y",), activations=["Sigmoid", "Tanh", "Tanh"])
    assert {"Sigmoid", "Tanh", "MatMul"} <= set(net.graph.op_types())


def test_unrolled_graph_is_lean():
    """One MatMul for x_t W^T of all steps, then per step: one slice of it, one recurrent MatMul."""
    g = graph_from_onnx(recurrent_model("LSTM", given=("B",), outputs=("Y_h",)))
    ops = [n.op_type for n in g.nodes]
    assert ops[:2] == ["MatMul", "Add"] and ops.count("MatMul") == 1 + (SEQ - 1)
    assert ops.count("Sigmoid") == SEQ and ops.count("Tanh") == 2 * SEQ and ops.count("Mul") == 3 * SEQ - 1
    assert len(ops) == 2 + 9 + 15 * (SEQ - 1) + 2  # xW, bias; step 0 (no state terms); later steps; output


@pytest.mark.parametrize("kind,attrs,given,match", [
    ("LSTM", {"clip": 1.0}, (), "LSTM with 'clip' is not supported at node 'rnn' \\(LSTM\\)"),
    ("LSTM", {"input_forget": 1}, (), "input_forget=1"),
    ("LSTM", {"activations": ["HardSigmoid", "Tanh", "Tanh"]}, (), "activation 'HardSigmoid' is not supported"),
    ("GRU", {"activations": ["Sigmoid", "Softsign"]}, (), "activation 'Softsign'.*supported: Sigmoid, Tanh, Relu"),
    ("RNN", {"direction": "sideways"}, (), "direction 'sideways'"),
])
def test_onnx_refusals_are_clear(kind, attrs, given, match):
    model = recurrent_model(kind, given=given, **attrs)
    with pytest.raises(UnsupportedOperatorError, match=match):
        graph_from_onnx(model)


def test_onnx_refuses_unequal_sequence_lens_and_runtime_state():
    model = recurrent_model("GRU", given=("sequence_lens",))
    lens = next(i for i in model.graph.initializer if i.name == "sequence_lens")
    lens.CopyFrom(numpy_helper.from_array(np.array([SEQ, SEQ - 1], dtype=np.int32), "sequence_lens"))
    with pytest.raises(UnsupportedOperatorError, match=r"sequence_lens \[4, 3\] other than the sequence length 4"):
        graph_from_onnx(model)
    # initial_h computed from X: X (seq, batch, in) with in == hidden, initial_h = X[:1]
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [SEQ, BATCH, HIDDEN])
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=s).astype(np.float32), nm)
             for nm, s in (("W", (1, HIDDEN, HIDDEN)), ("R", (1, HIDDEN, HIDDEN)))]
    inits += [numpy_helper.from_array(np.array(v, dtype=np.int64), nm)
              for nm, v in (("st", [0]), ("en", [1]), ("ax", [0]))]
    nodes = [helper.make_node("Slice", ["X", "st", "en", "ax"], ["h0"]),
             helper.make_node("RNN", ["X", "W", "R", "", "", "h0"], ["", "Y_h"], name="rnn", hidden_size=HIDDEN)]
    g = helper.make_graph(nodes, "g", [x], [helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(UnsupportedOperatorError, match="RNN with a non-constant 'initial_h' input"):
        graph_from_onnx(model)
