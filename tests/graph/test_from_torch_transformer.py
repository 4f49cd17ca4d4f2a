"""The PyTorch front end on Transformer-era modules: attention, encoder layers, LayerNorm,
Softmax, smooth activations, elementwise functions, max/min, broadcasting and embeddings.

Every network is converted from an example and run by ``Network`` on a batch of random
samples; it must agree with the module sample by sample within 1e-5 (float32) or 1e-10
(float64).  The reference is PyTorch's documented computation of the attention modules (the
fused inference fast path is switched off for it, as the conversion itself does).
"""
from __future__ import annotations

import io
import math
import warnings
from contextlib import contextmanager

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from perturbkit.errors import ModelError, UnsupportedOperatorError
from perturbkit.graph.from_torch import graph_from_module, supported_torch
from perturbkit.graph.ir import Graph
from perturbkit.graph.network import Network
from perturbkit.graph.torch_fx.attention import MASKED

B = 3
ATOL = {torch.float32: 1e-5, torch.float64: 1e-10}
DTYPES = [torch.float32, torch.float64]
L, E = 4, 8  # sequence length, model width


@contextmanager
def documented_path():
    old = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(old)


def check(m: nn.Module, example: torch.Tensor, dtype: torch.dtype = torch.float32, seed: int = 1) -> Graph:
    """Convert ``m`` on ``example`` and compare ``Network(graph)`` with ``m`` on B random samples."""
    m = m.to(dtype).eval()
    example = example.to(dtype)
    graph = graph_from_module(m, example)
    g = torch.Generator().manual_seed(seed)
    xs = torch.randn(B, *example.shape, generator=g, dtype=dtype)
    with torch.no_grad(), documented_path():
        ref = torch.stack([m(x) for x in xs])
    got = Network(graph)(xs)
    torch.testing.assert_close(got, ref.reshape(got.shape), atol=ATOL[dtype], rtol=ATOL[dtype])
    return graph


def runtime_products(graph: Graph) -> list[str]:
    """Op types of the nodes multiplying two runtime values."""
    return [n.op_type for n in graph.nodes
            if n.op_type in ("MatMul", "Mul") and all(i not in graph.constants for i in n.inputs)]


def ops(graph: Graph, op: str) -> list:
    return [n for n in graph.nodes if n.op_type == op]


def seq_example(batch_first: bool) -> torch.Tensor:
    return torch.randn(1, L, E) if batch_first else torch.randn(L, 1, E)


# ----------------------------------------------------------------------------------------
# nn.MultiheadAttention
# ----------------------------------------------------------------------------------------
class SelfAttention(nn.Module):
    def __init__(self, batch_first=True, bias=True, need_weights=True, out="output", **masks):
        super().__init__()
        self.attn = nn.MultiheadAttention(E, 2, batch_first=batch_first, bias=bias, dropout=0.1)
        self.need_weights, self.out, self.masks = need_weights, out, masks

    def forward(self, x):
        y, w = self.attn(x, x, x, need_weights=self.need_weights, **self.masks)
        return y if self.out == "output" else w


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("need_weights", [True, False])
def test_self_attention(batch_first, bias, need_weights, dtype):
    graph = check(SelfAttention(batch_first, bias, need_weights), seq_example(batch_first), dtype)
    assert runtime_products(graph) == ["MatMul", "MatMul"]  # q k^T, then attn v
    (sm,) = ops(graph, "Softmax")
    assert sm.attrs["axis"] == -1


def test_attention_scaling_follows_the_onnx_export():
    """Both exports scale before the product: q alone (need_weights), q and k^T by sqrt(scale) (SDPA)."""
    for need_weights, expected, scale in ((True, ("Mul", "Transpose"), 0.5), (False, ("Mul", "Mul"), 0.5 ** 0.5)):
        graph = check(SelfAttention(need_weights=need_weights), seq_example(True))
        prod = graph.producer()
        scores = next(n for n in ops(graph, "MatMul") if all(i not in graph.constants for i in n.inputs))
        assert tuple(prod[i].op_type for i in scores.inputs) == expected
        muls = [prod[i] for i in scores.inputs if prod[i].op_type == "Mul"]
        for mul in muls:
            c = next(graph.constants[i] for i in mul.inputs if i in graph.constants)
            assert float(c) == pytest.approx(scale)  # head size 4


class CrossAttention(nn.Module):
    """query, key and value from different runtime values (and from one, for key = value)."""

    def __init__(self, same_kv: bool, kdim=None, vdim=None):
        super().__init__()
        self.attn = nn.MultiheadAttention(E, 2, batch_first=True, kdim=kdim, vdim=vdim)
        self.k = nn.Linear(E, kdim or E)
        self.v = nn.Linear(E, vdim or E)
        self.same_kv = same_kv

    def forward(self, x):
        k = self.k(x[:, 1:])
        v = k if self.same_kv else self.v(x[:, 1:])
        return self.attn(x, k, v)[0] + self.attn(torch.tanh(x), k, v, need_weights=False)[0]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("same_kv,kdim,vdim", [(True, None, None), (False, None, None), (False, 6, 5)])
def test_general_query_key_value(same_kv, kdim, vdim, dtype):
    check(CrossAttention(same_kv, kdim, vdim), seq_example(True), dtype)


class AttentionPooling(nn.Module):
    """A constant (learned) query attending to the runtime tokens."""

    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(E, 2, batch_first=True)
        self.query = nn.Parameter(torch.randn(1, 2, E))

    def forward(self, x):
        q = self.query.expand(x.shape[0], -1, -1)
        return self.attn(q, x, x)[0] + self.attn(q, x, x, need_weights=False)[0]


@pytest.mark.parametrize("dtype", DTYPES)
def test_constant_query(dtype):
    graph = check(AttentionPooling(), seq_example(True), dtype)
    assert runtime_products(graph) == ["MatMul", "MatMul"]  # attn v; q k^T has a constant side


causal_bool = torch.triu(torch.ones(L, L, dtype=torch.bool), 1)
causal_float = nn.Transformer.generate_square_subsequent_mask(L)  # -inf above the diagonal
padding = torch.tensor([[False, True, False, False]])
MASKS = {
    "causal bool": dict(attn_mask=causal_bool),
    "causal float -inf": dict(attn_mask=causal_float),
    "float": dict(attn_mask=torch.randn(L, L, generator=torch.Generator().manual_seed(5))),
    "per head (N*H, L, S)": dict(attn_mask=torch.randn(2, L, L, generator=torch.Generator().manual_seed(6))),
    "is_causal hint": dict(attn_mask=causal_bool, is_causal=True),
    "key padding bool": dict(key_padding_mask=padding),
    "key padding float": dict(key_padding_mask=padding.float() * -2.5),
    "causal and padding": dict(attn_mask=causal_bool, key_padding_mask=padding),
}


@pytest.mark.parametrize("need_weights", [True, False])
@pytest.mark.parametrize("name", sorted(MASKS))
def test_masks(name, need_weights):
    check(SelfAttention(need_weights=need_weights, **MASKS[name]), seq_example(True))


@pytest.mark.parametrize("dtype", DTYPES)
def test_masks_float64_seq_first(dtype):
    m = SelfAttention(batch_first=False, need_weights=False, **MASKS["causal and padding"])
    check(m, seq_example(False), dtype)


def test_masked_positions_get_weight_exactly_zero():
    m = SelfAttention(out="weights", attn_mask=causal_bool, key_padding_mask=padding)
    graph = check(m, seq_example(True))
    w = Network(graph)(torch.randn(B, L, E))
    masked = causal_bool | padding
    assert (w[:, masked] == 0).all() and (w[:, ~masked] > 0).all()
    mask_consts = [graph.constants[i] for n in ops(graph, "Add") for i in n.inputs if i in graph.constants]
    assert all(torch.isfinite(c).all() for c in mask_consts)
    assert any((c == MASKED).any() for c in mask_consts)


@pytest.mark.parametrize("average", [True, False])
@pytest.mark.parametrize("batch_first", [True, False])
def test_attention_weights_output(average, batch_first):
    class Weights(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(E, 2, batch_first=batch_first)

        def forward(self, x):
            y, w = self.attn(x, x, x, average_attn_weights=average)
            return y.sum() + w

    graph = check(Weights(), seq_example(batch_first))
    assert len(ops(graph, "ReduceMean")) == int(average)


def test_unbatched_attention():
    class Unbatched(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(E, 2)

        def forward(self, x):  # x: (L, E)
            return self.attn(x, x, x)[0] + self.attn(x, x, x, need_weights=False)[0]

    check(Unbatched(), torch.randn(L, E))


# ----------------------------------------------------------------------------------------
# F.scaled_dot_product_attention
# ----------------------------------------------------------------------------------------
class SDPA(nn.Module):
    def __init__(self, **kw):
        super().__init__()
        self.qkv = nn.Linear(E, 3 * E)
        self.kw = kw

    def forward(self, x):  # (1, L, E) -> heads (1, 2, L, 4)
        h = self.qkv(x)
        q, k, v = (h[..., i * E:(i + 1) * E].reshape(1, L, 2, 4).transpose(1, 2) for i in range(3))
        return F.scaled_dot_product_attention(q, k, v, **self.kw).transpose(1, 2).reshape(1, L, E)


keep = torch.tensor([[True, False, True, True]] * L)
SDPA_CASES = {"plain": {}, "is_causal": dict(is_causal=True), "scale": dict(scale=0.3),
              "bool mask (True attends)": dict(attn_mask=keep), "float mask": dict(attn_mask=torch.randn(L, L)),
              "per-head mask": dict(attn_mask=torch.randn(2, L, L)), "dropout 0": dict(dropout_p=0.0)}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(SDPA_CASES))
def test_scaled_dot_product_attention(name, dtype):
    graph = check(SDPA(**SDPA_CASES[name]), seq_example(True), dtype)
    assert runtime_products(graph) == ["MatMul", "MatMul"]


# ----------------------------------------------------------------------------------------
# encoder layers and stacks
# ----------------------------------------------------------------------------------------
def encoder_layer(batch_first=True, norm_first=False, activation="relu", **kw) -> nn.TransformerEncoderLayer:
    return nn.TransformerEncoderLayer(E, 2, 16, dropout=0.1, activation=activation, batch_first=batch_first,
                                      norm_first=norm_first, **kw)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("batch_first", [True, False])
def test_encoder_layer(batch_first, norm_first, dtype):
    graph = check(encoder_layer(batch_first, norm_first), seq_example(batch_first), dtype)
    assert [n.op_type for n in graph.nodes if n.op_type in ("LayerNormalization", "Softmax", "Relu")] == (
        ["LayerNormalization", "Softmax", "LayerNormalization", "Relu"] if norm_first
        else ["Softmax", "LayerNormalization", "Relu", "LayerNormalization"])


ACTIVATIONS = {"relu": ("relu", "Relu"), "gelu": ("gelu", "Gelu"), "F.gelu": (F.gelu, "Gelu"),
               "F.relu": (F.relu, "Relu"), "nn.GELU": (nn.GELU(), "Gelu"), "nn.GELU tanh": (nn.GELU("tanh"), "Gelu"),
               "nn.ReLU": (nn.ReLU(), "Relu")}


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_encoder_layer_activations(name):
    act, op = ACTIVATIONS[name]
    graph = check(encoder_layer(activation=act, norm_first=True), seq_example(True))
    (node,) = ops(graph, op)
    if op == "Gelu":
        assert node.attrs["approximate"] == ("tanh" if name == "nn.GELU tanh" else "none")


def test_encoder_layer_without_bias_and_with_masks():
    class Masked(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = encoder_layer(bias=False, layer_norm_eps=1e-3)

        def forward(self, x):
            return self.layer(x, src_mask=causal_bool, src_key_padding_mask=padding)

    graph = check(Masked(), seq_example(True))
    assert all(n.attrs["epsilon"] == pytest.approx(1e-3) for n in ops(graph, "LayerNormalization"))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm_first,batch_first", [(False, True), (True, False)])
def test_encoder_stack(norm_first, batch_first, dtype):
    enc = nn.TransformerEncoder(encoder_layer(batch_first, norm_first, "gelu"), 2, norm=nn.LayerNorm(E),
                                enable_nested_tensor=False)
    graph = check(enc, seq_example(batch_first), dtype)
    assert len(ops(graph, "Softmax")) == 2 and len(ops(graph, "LayerNormalization")) == 5


def test_encoder_stack_with_masks_and_causal_detection():
    class Causal(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = nn.TransformerEncoder(encoder_layer(), 2, enable_nested_tensor=False)

        def forward(self, x):
            return self.enc(x, mask=causal_float) + self.enc(x, mask=causal_bool, is_causal=True) + \
                self.enc(x, src_key_padding_mask=padding)

    check(Causal(), seq_example(True))


def test_nonlinear_structure_matches_the_onnx_export():
    """The export (opset 17, TorchScript exporter) has the same nonlinear nodes in the same order."""
    import onnx  # (a dependency of perturbkit)

    class Wrap(nn.Module):
        def __init__(self, m, attention=False):
            super().__init__()
            self.m, self.attention = m, attention

        def forward(self, x):
            return self.m(x, x, x)[0] if self.attention else self.m(x)

    def exported(m, x) -> list[str]:
        f = io.BytesIO()
        with torch.no_grad(), documented_path(), warnings.catch_warnings():  # the fast path does not export
            warnings.simplefilter("ignore")
            torch.onnx.export(m, (x,), f, dynamo=False, opset_version=17)
        g = onnx.load_from_string(f.getvalue()).graph
        const, out = {i.name for i in g.initializer}, []
        for n in g.node:
            ins = [i for i in n.input if i]
            if n.op_type in ("Constant", "Shape") or all(i in const for i in ins):
                const.update(n.output)
            elif n.op_type in ("Softmax", "LayerNormalization", "Relu") or \
                    n.op_type == "MatMul" and all(i not in const for i in ins):
                out.append(n.op_type)
        return out

    for m in (Wrap(nn.MultiheadAttention(E, 2, batch_first=True), attention=True), Wrap(encoder_layer()),
              Wrap(encoder_layer(batch_first=False, norm_first=True))):
        x = seq_example(m.m.batch_first if m.attention else m.m.self_attn.batch_first)
        graph = check(m, x)
        mine = [n.op_type for n in graph.nodes if n.op_type in ("Softmax", "LayerNormalization", "Relu")
                or n.op_type == "MatMul" and all(i not in graph.constants for i in n.inputs)]
        assert mine == exported(m.eval(), x)


# ----------------------------------------------------------------------------------------
# whole models
# ----------------------------------------------------------------------------------------
class TokenClassifier(nn.Module):
    """Linear patch input, 2-layer encoder (GELU MLP), mean pooling, linear head."""

    def __init__(self, d=16, classes=3):
        super().__init__()
        self.embed = nn.Linear(6, d)
        self.enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(d, 2, 32, activation="gelu", batch_first=True),
                                         2, enable_nested_tensor=False)
        self.head = nn.Linear(d, classes)

    def forward(self, x):  # (N, 5, 6)
        return self.head(self.enc(self.embed(x)).mean(dim=1))


class ViT(nn.Module):
    """8x8 images, 4x4 patches as tokens, a class token, learned positions, pre-norm encoder."""

    def __init__(self, d=16, classes=10):
        super().__init__()
        self.embed = nn.Linear(16, d)
        self.cls = nn.Parameter(torch.randn(1, 1, d))
        self.pos = nn.Parameter(torch.randn(1, 5, d) * 0.1)
        layer = nn.TransformerEncoderLayer(d, 2, 32, activation=nn.GELU(), batch_first=True, norm_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, norm=nn.LayerNorm(d), enable_nested_tensor=False)
        self.head = nn.Linear(d, classes)

    def forward(self, x):  # (N, 1, 8, 8)
        n = x.shape[0]
        p = x.reshape(n, 2, 4, 2, 4).permute(0, 1, 3, 2, 4).reshape(n, 4, 16)
        t = torch.cat([self.cls.expand(n, -1, -1), self.embed(p)], dim=1) + self.pos
        return self.head(self.enc(t)[:, 0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_transformer_classifier(dtype):
    graph = check(TokenClassifier(), torch.randn(1, 5, 6), dtype)
    assert graph.output_shape == (1, 3)


@pytest.mark.parametrize("dtype", DTYPES)
def test_vit_on_8x8_digits(dtype):
    graph = check(ViT(), torch.randn(1, 1, 8, 8), dtype)
    assert len(runtime_products(graph)) == 4


def test_root_modules_and_leaf_subclasses():
    class MyLayer(nn.TransformerEncoderLayer):  # keeps forward: a leaf, converted as the base class
        pass

    check(encoder_layer(), seq_example(True))  # a bare layer as the root module
    check(nn.Sequential(MyLayer(E, 2, 16, batch_first=True), nn.Linear(E, 2)), seq_example(True))


# ----------------------------------------------------------------------------------------
# LayerNorm, Softmax, activations, elementwise functions
# ----------------------------------------------------------------------------------------
class Apply(nn.Module):
    """A function applied after a linear layer (so that its input depends on the network input)."""

    def __init__(self, f, width=6):
        super().__init__()
        self.lin = nn.Linear(width, width)
        self.f = f

    def forward(self, x):
        return self.f(self.lin(x))


def test_layer_norm():
    w, b = torch.randn(2, 3), torch.randn(2, 3)
    for f in (nn.LayerNorm(6), nn.LayerNorm(6, elementwise_affine=False), nn.LayerNorm(6, bias=False),
              lambda x: F.layer_norm(x, (6,), eps=1e-3), lambda x: F.layer_norm(x.reshape(1, 2, 3), [2, 3], w, b)):
        graph = check(Apply(f), torch.randn(1, 6))
        (ln,) = ops(graph, "LayerNormalization")
        scale, shift = (graph.constants[i] for i in ln.inputs[1:])
        assert ln.attrs["axis"] == -scale.dim() and scale.shape == shift.shape


def test_layer_norm_defaults_are_ones_and_zeros():
    graph = check(Apply(nn.LayerNorm(6, elementwise_affine=False)), torch.randn(1, 6))
    (ln,) = ops(graph, "LayerNormalization")
    assert ln.attrs["epsilon"] == pytest.approx(1e-5)
    assert torch.equal(graph.constants[ln.inputs[1]], torch.ones(6))
    assert torch.equal(graph.constants[ln.inputs[2]], torch.zeros(6))


SOFTMAX = {
    "nn.Softmax": (nn.Softmax(dim=-1), "Softmax", -1), "nn.Softmax(1)": (nn.Softmax(dim=1), "Softmax", 1),
    "F.softmax": (lambda x: F.softmax(x, dim=-1), "Softmax", -1),
    "torch.softmax": (lambda x: torch.softmax(x, 1), "Softmax", 1),
    "method": (lambda x: x.softmax(-1), "Softmax", -1), "implicit dim": (nn.Softmax(), "Softmax", 1),
    "nn.LogSoftmax": (nn.LogSoftmax(dim=-1), "LogSoftmax", -1),
    "F.log_softmax": (lambda x: F.log_softmax(x, -1), "LogSoftmax", -1),
    "log method": (lambda x: x.log_softmax(dim=1), "LogSoftmax", 1),
}


@pytest.mark.parametrize("name", sorted(SOFTMAX))
def test_softmax(name):
    f, op, axis = SOFTMAX[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the implicit dim is deprecated
        (node,) = ops(check(Apply(f), torch.randn(1, 6)), op)
    assert node.attrs["axis"] == axis


ACTS = {
    "nn.GELU": (nn.GELU(), "Gelu", {"approximate": "none"}),
    "nn.GELU tanh": (nn.GELU(approximate="tanh"), "Gelu", {"approximate": "tanh"}),
    "F.gelu": (F.gelu, "Gelu", {"approximate": "none"}),
    "F.gelu tanh": (lambda x: F.gelu(x, approximate="tanh"), "Gelu", {"approximate": "tanh"}),
    "nn.SiLU": (nn.SiLU(), "Swish", {"alpha": 1.0}), "F.silu": (F.silu, "Swish", {"alpha": 1.0}),
    "nn.ELU": (nn.ELU(0.7), "Elu", {"alpha": 0.7}), "F.elu": (lambda x: F.elu(x, 0.3), "Elu", {"alpha": 0.3}),
    "nn.SELU": (nn.SELU(), "Selu", {}), "F.selu": (F.selu, "Selu", {}),
    "nn.Hardsigmoid": (nn.Hardsigmoid(), "HardSigmoid", {"alpha": 1 / 6, "beta": 0.5}),
    "F.hardsigmoid": (F.hardsigmoid, "HardSigmoid", {"alpha": 1 / 6, "beta": 0.5}),
    "nn.Hardswish": (nn.Hardswish(), "HardSwish", {}), "F.hardswish": (F.hardswish, "HardSwish", {}),
    "nn.Softsign": (nn.Softsign(), "Softsign", {}), "F.softsign": (F.softsign, "Softsign", {}),
}


@pytest.mark.parametrize("name", sorted(ACTS))
def test_activations(name):
    f, op, attrs = ACTS[name]
    graph = check(Apply(f), torch.randn(1, 6) * 3)
    (node,) = ops(graph, op)
    assert {k: node.attrs[k] for k in attrs} == pytest.approx(attrs)


def positive(x):
    return torch.exp(x) + 0.5


ELEMENTWISE = {
    "exp": (torch.exp, ["Exp"]), ".exp": (lambda x: x.exp(), ["Exp"]),
    "log": (lambda x: torch.log(positive(x)), ["Exp", "Add", "Log"]),
    ".log": (lambda x: positive(x).log(), ["Exp", "Add", "Log"]),
    "sqrt": (lambda x: torch.sqrt(positive(x)), ["Exp", "Add", "Sqrt"]),
    ".sqrt": (lambda x: positive(x).sqrt(), ["Exp", "Add", "Sqrt"]),
    "rsqrt": (lambda x: torch.rsqrt(positive(x)), ["Exp", "Add", "Pow"]),
    ".rsqrt": (lambda x: positive(x).rsqrt(), ["Exp", "Add", "Pow"]),
    "reciprocal": (lambda x: torch.reciprocal(positive(x)), ["Exp", "Add", "Reciprocal"]),
    ".reciprocal": (lambda x: positive(x).reciprocal(), ["Exp", "Add", "Reciprocal"]),
    "erf": (torch.erf, ["Erf"]), ".erf": (lambda x: x.erf(), ["Erf"]),
    "sin": (torch.sin, ["Sin"]), ".cos": (lambda x: x.cos(), ["Cos"]), "cos": (torch.cos, ["Cos"]),
    "x ** 2": (lambda x: x ** 2, ["Pow"]), "torch.pow 3": (lambda x: torch.pow(x, 3), ["Pow"]),
    ".pow 0.5": (lambda x: positive(x).pow(0.5), ["Exp", "Add", "Pow"]),
}


@pytest.mark.parametrize("name", sorted(ELEMENTWISE))
def test_elementwise_functions(name):
    f, expected = ELEMENTWISE[name]
    graph = check(Apply(f), torch.randn(1, 6))
    assert [n.op_type for n in graph.nodes][1:] == expected
    for n in ops(graph, "Pow"):
        exponent = float(graph.constants[n.inputs[1]])
        assert exponent == {"x ** 2": 2.0, "torch.pow 3": 3.0, ".pow 0.5": 0.5}.get(name, -0.5)


# ----------------------------------------------------------------------------------------
# max/min, broadcasting, repetition, selection
# ----------------------------------------------------------------------------------------
cond = torch.tensor([True, False, False, True, True, False])
SELECTIONS = {
    "torch.maximum": (lambda x: torch.maximum(x, 1 - 2 * x), "Max", None),
    "torch.minimum": (lambda x: torch.minimum(x, torch.full((6,), 0.2)), "Min", None),
    "torch.max(a, b)": (lambda x: torch.max(x, 0.5 - x), "Max", None),
    "x.min(b)": (lambda x: x.min(0.5 - x), "Min", None),
    "amax": (lambda x: x.amax(-1), "ReduceMax", dict(axes=[1], keepdims=0)),
    "torch.amin keepdim": (lambda x: torch.amin(x, dim=1, keepdim=True), "ReduceMin", dict(axes=[1], keepdims=1)),
    "torch.max(x, 1).values": (lambda x: torch.max(x, 1).values, "ReduceMax", dict(axes=[1], keepdims=0)),
    "x.min(dim=-1, keepdim=True)[0]": (lambda x: x.min(dim=-1, keepdim=True)[0], "ReduceMin",
                                       dict(axes=[1], keepdims=1)),
    "torch.max(x)": (lambda x: x - torch.max(x), "ReduceMax", dict(axes=[0, 1], keepdims=0)),
    "expand": (lambda x: x.unsqueeze(1).expand(-1, 3, -1), "Expand", dict(shape=[1, 3, 6])),
    "expand_as": (lambda x: x[:, :1].expand_as(x), "Expand", dict(shape=[1, 6])),
    "repeat": (lambda x: x.repeat(1, 2), "Tile", dict(repeats=[1, 2])),
    "repeat new axes": (lambda x: x.repeat(2, 1, 3), "Tile", dict(repeats=[2, 1, 3])),
    "torch.tile": (lambda x: torch.tile(x, (2,)), "Tile", dict(repeats=[1, 2])),
    "torch.where": (lambda x: torch.where(cond, x, -x), "Where", None),
    "torch.where scalar": (lambda x: torch.where(cond, x, 0.5), "Where", None),
    "x.where": (lambda x: x.where(cond, 2.0), "Where", None),
    "masked_fill": (lambda x: x.masked_fill(cond, -1.0), "Where", None),
}


@pytest.mark.parametrize("name", sorted(SELECTIONS))
def test_max_min_broadcast_and_selection(name):
    f, op, attrs = SELECTIONS[name]
    graph = check(Apply(f), torch.randn(1, 6))
    (node,) = ops(graph, op)
    for k, v in (attrs or {}).items():
        assert list(node.attrs[k]) == v if isinstance(v, list) else node.attrs[k] == v
    if op == "Where":
        assert graph.constants[node.inputs[0]].dtype == torch.bool


# ----------------------------------------------------------------------------------------
# embeddings: integer token ids, a constant table
# ----------------------------------------------------------------------------------------
class TokenModel(nn.Module):
    def __init__(self, functional: bool):
        super().__init__()
        self.emb = nn.Embedding(10, E)
        self.functional = functional
        self.head = nn.Linear(E, 3)

    def forward(self, ids):  # (1, L) int64
        e = F.embedding(ids, self.emb.weight) if self.functional else self.emb(ids)
        return self.head(e.mean(dim=1))


@pytest.mark.parametrize("functional", [False, True])
def test_embedding_is_a_gather_from_the_constant_table(functional):
    m = TokenModel(functional).eval()
    graph = graph_from_module(m, torch.tensor([[1, 4, 7, 2]]))
    gather = graph.nodes[0]
    assert gather.op_type == "Gather" and gather.attrs["axis"] == 0
    assert gather.inputs[0] in graph.constants and gather.inputs[1] == graph.input_name
    assert torch.equal(graph.constants[gather.inputs[0]], m.emb.weight.detach())
    ids = torch.randint(0, 10, (B, L), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(Network(graph)(ids), m(ids), atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------
# refusals: one line naming the module and the option
# ----------------------------------------------------------------------------------------
class Dynamic(nn.Module):
    def __init__(self, what: str):
        super().__init__()
        self.attn = nn.MultiheadAttention(E, 2, batch_first=True)
        self.what = what

    def forward(self, x):
        if self.what == "mask":  # a float mask read from the input
            return self.attn(x, x, x, attn_mask=x[0, :, :L])[0]
        if self.what == "padding":
            return self.attn(x, x, x, key_padding_mask=x[..., 0])[0]
        return x + torch.max(x, -1, keepdim=True)[1]


REFUSALS = {
    "add_bias_kv": (lambda: nn.MultiheadAttention(E, 2, add_bias_kv=True, batch_first=True), "add_bias_kv=True"),
    "add_zero_attn": (lambda: nn.MultiheadAttention(E, 2, add_zero_attn=True, batch_first=True), "add_zero_attn=True"),
    "sdpa dropout": (lambda: SDPA(dropout_p=0.1), "dropout_p=0.1"),
    "encoder activation": (lambda: encoder_layer(activation=nn.Tanh()), "TransformerEncoderLayer with activation Tanh"),
    "encoder norm": (lambda: nn.TransformerEncoder(encoder_layer(), 1, norm=nn.Identity(), enable_nested_tensor=False),
                     "norm of type Identity"),
    "runtime mask": (lambda: Dynamic("mask"), "attn_mask of nn.MultiheadAttention depends on the network input"),
    "runtime padding": (lambda: Dynamic("padding"), "key_padding_mask of nn.MultiheadAttention depends"),
    "argmax": (lambda: Dynamic("argmax"), "indices of torch.max"),
}


class _Self(nn.Module):
    def __init__(self, attn):
        super().__init__()
        self.attn = attn

    def forward(self, x):
        return self.attn(x, x, x)[0]


@pytest.mark.parametrize("name", sorted(REFUSALS))
def test_refusals_name_module_and_option(name):
    build, match = REFUSALS[name]
    m = build()
    if isinstance(m, nn.MultiheadAttention):
        m = _Self(m)
    with pytest.raises(UnsupportedOperatorError, match=match) as e:
        graph_from_module(m, seq_example(True))
    assert "\n" not in str(e.value) and "fx node" in str(e.value)


def test_embedding_refusals():
    m = nn.Sequential(nn.Embedding(10, E, max_norm=1.0))
    with pytest.raises(UnsupportedOperatorError, match="max_norm"):
        graph_from_module(m, torch.tensor([[1, 2]]))
    with pytest.raises(ModelError, match="floating-point.*nn.Embedding"):
        graph_from_module(nn.Linear(3, 2), torch.ones(1, 3, dtype=torch.int64))


def test_fast_path_setting_is_restored():
    before = torch.backends.mha.get_fastpath_enabled()
    check(encoder_layer(), seq_example(True))
    with pytest.raises(UnsupportedOperatorError):
        graph_from_module(_Self(nn.MultiheadAttention(E, 2, add_zero_attn=True, batch_first=True)), seq_example(True))
    assert torch.backends.mha.get_fastpath_enabled() == before


def test_supported_torch_lists_the_new_conversions():
    s = supported_torch()
    for name in ("MultiheadAttention", "TransformerEncoderLayer", "TransformerEncoder", "LayerNorm", "Softmax",
                 "LogSoftmax", "GELU", "SiLU", "ELU", "SELU", "Hardsigmoid", "Hardswish", "Softsign", "Embedding"):
        assert name in s["modules"]
    for name in ("F.scaled_dot_product_attention", "F.layer_norm", "F.gelu", "F.silu", "F.embedding", "torch.exp",
                 "torch.rsqrt", "torch.maximum", "torch.where", "torch.amax"):
        assert name in s["functions"]
    for name in ("softmax", "exp", "pow", "amax", "max", "expand", "repeat", "masked_fill"):
        assert name in s["methods"]
    assert math.isfinite(MASKED) and MASKED < -1e29
