"""ONNX files of Transformer-era modules, from both torch exporters, import and run exactly.

Each module is exported with ``torch.onnx.export(..., dynamo=False)`` (opset 17; a few at
opset 18 and with a dynamic batch axis too) and with the dynamo exporter (its default
opset; needs ``onnxscript``), loaded with ``perturbkit.load`` (no ``forward_only``: every
operator has a rule) and executed: outputs must equal ONNX Runtime's and the module's own
to ``ATOL``.  The fused graphs (``graph_from_onnx`` + ``fuse``) contain the one-operator
forms of GELU, SiLU and LayerNorm.  The second half checks the constant folding of the
exporters' shape arithmetic and the lowering of Split against ONNX Runtime (exactly) on
small hand-made models, the one-line refusals, and the broadcast rules on the patterns
exporters emit (copies keep IBP exact on linear networks; masked_fill with -inf).

Exports are small (d_model 8, 4 tokens) and made once per test session.
"""
from __future__ import annotations

import contextlib
import io
import warnings
import zlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

import perturbkit as pk
from perturbkit.errors import ModelError, UnsupportedOperatorError
from perturbkit.graph.from_onnx import graph_from_onnx
from perturbkit.graph.fuse import fuse
from perturbkit.graph.onnx_fold import FOLD, split_sizes
from perturbkit.graph.ir import Node, frozen_attrs

ATOL = 1e-5
D, S, HEADS = 8, 4, 2


# ---- the modules ---------------------------------------------------------------------------------
class Attention(nn.Module):
    def __init__(self, batch_first: bool):
        super().__init__()
        self.mha = nn.MultiheadAttention(D, HEADS, batch_first=batch_first)

    def forward(self, x):
        return self.mha(x, x, x, need_weights=False)[0]


class Called(nn.Module):
    """``layer(x)`` inside a module: ``torch.onnx.export(layer, dynamo=False)`` on a bare
    TransformerEncoderLayer fails in torch 2.13 (its traced ``is_causal`` becomes a tensor)."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return self.layer(x)


class SDPA(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(D, 3 * D)

    def forward(self, x):
        q, k, v = (t.reshape(1, S, HEADS, D // HEADS).transpose(1, 2) for t in self.qkv(x).split(D, dim=-1))
        return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(1, S, D)


class ViT(nn.Module):
    """Patches (Conv, stride = kernel) + class token + position embedding, a 2-layer GELU
    encoder, mean pooling, linear head."""

    def __init__(self):
        super().__init__()
        self.patch = nn.Conv2d(1, D, 4, stride=4)
        self.cls = nn.Parameter(torch.randn(1, 1, D))
        self.pos = nn.Parameter(torch.randn(1, 5, D))
        layer = nn.TransformerEncoderLayer(D, HEADS, 16, dropout=0.0, batch_first=True, activation="gelu")
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(D, 3)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(x.shape[0], -1, -1), t], dim=1) + self.pos
        return self.head(self.encoder(t).mean(dim=1))


class HandLayerNorm(nn.Module):
    """LayerNorm spelled out, as older exports and hand-written modules do."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(D))
        self.b = nn.Parameter(torch.randn(D))

    def forward(self, x):
        c = x - x.mean(-1, keepdim=True)
        return c / torch.sqrt((c ** 2).mean(-1, keepdim=True) + 1e-5) * self.w + self.b


def _layer(norm_first: bool, activation: str) -> nn.Module:
    return Called(nn.TransformerEncoderLayer(D, HEADS, 16, dropout=0.0, batch_first=True, norm_first=norm_first,
                                             activation=activation))


MODULES = {
    "mha_batch_first": (lambda: Attention(True), (1, S, D)),
    "mha_seq_first": (lambda: Attention(False), (S, 1, D)),
    "encoder_layer_post_relu": (lambda: _layer(False, "relu"), (1, S, D)),
    "encoder_layer_post_gelu": (lambda: _layer(False, "gelu"), (1, S, D)),
    "encoder_layer_pre_relu": (lambda: _layer(True, "relu"), (1, S, D)),
    "encoder_layer_pre_gelu": (lambda: _layer(True, "gelu"), (1, S, D)),
    "encoder_2_layers": (lambda: nn.TransformerEncoder(
        nn.TransformerEncoderLayer(D, HEADS, 16, dropout=0.0, batch_first=True), 2, enable_nested_tensor=False),
        (1, S, D)),
    "sdpa": (SDPA, (1, S, D)),
    "gelu": (nn.GELU, (1, D)),
    "gelu_tanh": (lambda: nn.GELU(approximate="tanh"), (1, D)),
    "silu": (nn.SiLU, (1, D)),
    "elu": (nn.ELU, (1, D)),
    "layernorm": (lambda: nn.LayerNorm(D), (1, S, D)),
    "hand_layernorm": (HandLayerNorm, (1, S, D)),
    "softmax": (lambda: nn.Softmax(dim=-1), (1, D)),
    "vit": (ViT, (1, 1, 8, 8)),
}
#: exporters: "ts<opset>" (dynamo=False), "dynamo"; "_batch": a dynamic batch axis
EXPORTS = ([(m, "ts17") for m in MODULES] + [(m, "dynamo") for m in MODULES]
           + [(m, "ts18") for m in ("mha_batch_first", "encoder_layer_pre_gelu", "vit")]
           + [("mha_batch_first", "ts17_batch"), ("vit", "ts17_batch"), ("vit", "dynamo_batch")])


def _export(module: nn.Module, x: torch.Tensor, path: str, exporter: str) -> None:
    """Export with the named exporter.  A dynamic batch axis is declared 1 in the IR, so the
    shape arithmetic on it folds; the dynamo exporter is given a batch of 2 then (torch.export
    specialises a dimension whose example size is 1)."""
    kind, _, batch = exporter.partition("_")
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        if kind == "dynamo":
            dims = ({0: torch.export.Dim("batch", min=1, max=64)},) if batch else None
            x = torch.cat([x, x]) if batch else x
            torch.onnx.export(module, (x,), path, dynamo=True, verbose=False, dynamic_shapes=dims)
        else:
            torch.onnx.export(module, (x,), path, dynamo=False, opset_version=int(kind[2:]), input_names=["x"],
                              dynamic_axes={"x": {0: "batch"}} if batch else None)


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """``get(name, exporter) -> (path, module, declared input shape)``, exported once per session."""
    root = tmp_path_factory.mktemp("exports")
    cache: dict[tuple[str, str], tuple[str, nn.Module, tuple[int, ...]]] = {}

    def get(name: str, exporter: str):
        if exporter.startswith("dynamo"):
            pytest.importorskip("onnxscript")
        key = (name, exporter)
        if key not in cache:
            build, shape = MODULES[name]
            torch.manual_seed(zlib.crc32(name.encode()))
            module = build().eval()
            path = str(root / f"{name}_{exporter}.onnx")
            _export(module, torch.randn(shape), path, exporter)
            cache[key] = (path, module, shape)
        return cache[key]
    return get


def _ort(path: str, x: np.ndarray) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize("name,exporter", EXPORTS, ids=[f"{m}-{e}" for m, e in EXPORTS])
def test_export_runs_like_onnxruntime_and_torch(exported, name, exporter):
    path, module, shape = exported(name, exporter)
    net = pk.load(path)
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(3, *shape, generator=g)
    ys = net(xs).reshape(3, -1)
    for i in range(3):
        ref = _ort(path, xs[i].numpy())  # (a dynamic batch axis: one sample at a time, as declared)
        with torch.no_grad():
            mine = module(xs[i]).numpy()
        np.testing.assert_allclose(ys[i].numpy(), ref.reshape(-1), atol=ATOL, rtol=0)
        np.testing.assert_allclose(ys[i].numpy(), mine.reshape(-1), atol=ATOL, rtol=0)


# ---- fusions in the imported graphs -------------------------------------------------------------
def _fused_ops(path: str) -> list[str]:
    return [n.op_type for n in fuse(graph_from_onnx(path)).nodes]


@pytest.mark.parametrize("name,exporter,fused,gone", [
    ("gelu", "ts17", {"Gelu": 1}, {"Erf", "Mul", "Div", "Add"}),
    ("gelu_tanh", "ts17", {"Gelu": 1}, {"Tanh", "Mul", "Add", "Pow"}),
    ("silu", "ts17", {"Swish": 1}, {"Sigmoid", "Mul"}),
    ("silu", "dynamo", {"Swish": 1}, {"Sigmoid", "Mul"}),
    ("gelu", "dynamo", {"Gelu": 1}, {"Erf"}),
    ("hand_layernorm", "ts17", {"LayerNormalization": 1}, {"ReduceMean", "Sqrt", "Div", "Pow", "Sub"}),
    ("hand_layernorm", "dynamo", {"LayerNormalization": 1}, {"ReduceMean", "Sqrt", "Div", "Pow", "Sub"}),
    ("encoder_layer_post_gelu", "ts17", {"Gelu": 1, "LayerNormalization": 2}, {"Erf"}),
    ("vit", "ts17", {"Gelu": 2, "LayerNormalization": 4}, {"Erf"}),
    ("vit", "ts18", {"Gelu": 2, "LayerNormalization": 4}, {"Erf"}),
])
def test_fusions_happen(exported, name, exporter, fused, gone):
    path, _, _ = exported(name, exporter)
    ops = _fused_ops(path)
    for op, count in fused.items():
        assert ops.count(op) == count, (op, ops)
    assert not gone & set(ops), ops


def test_gelu_attributes_and_layernorm_from_opset16(tmp_path):
    """The fused nodes carry the attributes of the exported function: GELU's approximation,
    LayerNorm's axis, epsilon and parameters (opset 16 has no LayerNormalization op)."""
    for approx in ("none", "tanh"):
        p = str(tmp_path / f"gelu_{approx}.onnx")
        _export(nn.GELU(approximate=approx), torch.randn(1, D), p, "ts17")
        (node,) = fuse(graph_from_onnx(p)).nodes
        assert node.op_type == "Gelu" and node.attrs["approximate"] == approx
    torch.manual_seed(1)
    ln = nn.LayerNorm((S, D), eps=1e-3).eval()
    with torch.no_grad():
        ln.weight.normal_()
        ln.bias.normal_()
    p = str(tmp_path / "ln16.onnx")
    _export(ln, torch.randn(1, S, D), p, "ts16")
    g = fuse(graph_from_onnx(p))
    (node,) = g.nodes
    assert node.op_type == "LayerNormalization" and node.attrs["axis"] == -2
    assert abs(node.attrs["epsilon"] - 1e-3) < 1e-9
    torch.testing.assert_close(g.constants[node.inputs[1]], ln.weight.detach())
    torch.testing.assert_close(g.constants[node.inputs[2]], ln.bias.detach())
    x = torch.randn(3, S, D)
    with torch.no_grad():
        np.testing.assert_allclose(pk.load(p)(x).numpy(), ln(x).numpy(), atol=ATOL, rtol=0)


def test_masked_attention_mask_is_folded(tmp_path):
    """A causal SDPA export (dynamo=False) computes its mask with Shape, Trilu, Equal, Where,
    Expand on constants: it folds to the additive -inf mask."""
    class Causal(nn.Module):
        def forward(self, x):
            q = x.reshape(1, S, HEADS, D // HEADS).transpose(1, 2)
            return F.scaled_dot_product_attention(q, q, q, is_causal=True).transpose(1, 2).reshape(1, S, D)

    p = str(tmp_path / "causal.onnx")
    _export(Causal(), torch.randn(1, S, D), p, "ts17")
    ops = {n.op_type for n in onnx.load(p).graph.node}
    assert {"Trilu", "Where", "Equal", "Expand"} <= ops
    g = graph_from_onnx(p)
    assert not {"Trilu", "Where", "Equal", "Expand", "Shape"} & set(g.op_types())
    masks = [g.constants[i] for n in g.nodes for i in n.inputs if i in g.constants and g.constants[i].numel() == S * S]
    want = torch.zeros(S, S).masked_fill(torch.ones(S, S, dtype=torch.bool).triu(1), float("-inf"))
    assert any(torch.equal(m.reshape(S, S), want) for m in masks)


# ---- constant folding of shape arithmetic, against ONNX Runtime ---------------------------------
def _model(nodes, inits: dict, x_shape, opset: int = 17) -> onnx.ModelProto:
    """``y = x + Cast(folded, float)``: the folded subgraph's value read through a runtime Add."""
    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()]
    nodes = list(nodes) + [helper.make_node("Cast", ["r"], ["rf"], to=TensorProto.FLOAT),
                           helper.make_node("Add", ["x", "rf"], ["y"])]
    graph = helper.make_graph(nodes, "fold", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _check_folds(model: onnx.ModelProto, x_shape):
    g = graph_from_onnx(model)
    assert [n.op_type for n in g.nodes] == ["Add"], g.op_types()  # everything else folded
    x = np.random.default_rng(0).standard_normal(x_shape).astype(np.float32)
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    ours = pk.load(model)(torch.from_numpy(x[None])).numpy().reshape(ref.shape)
    np.testing.assert_array_equal(ours, ref)


I64 = np.int64
A_INT = np.array([-7, -6, -1, 0, 5, 7], dtype=I64)
B_INT = np.array([3, -4, 2, -3, -2, 7], dtype=I64)
FOLD_CASES = {
    "mod_int": ([helper.make_node("Mod", ["a", "b"], ["r"])], {"a": A_INT, "b": B_INT}, (6,)),
    "mod_fmod_int": ([helper.make_node("Mod", ["a", "b"], ["r"], fmod=1)], {"a": A_INT, "b": B_INT}, (6,)),
    "mod_fmod_float": ([helper.make_node("Mod", ["a", "b"], ["r"], fmod=1)],
                       {"a": np.array([-7.5, 5.25, -1.0], np.float32), "b": np.array([2.0, -1.5, 3.0], np.float32)},
                       (3,)),
    "div_int_truncates": ([helper.make_node("Div", ["a", "b"], ["r"])], {"a": A_INT, "b": B_INT}, (6,)),
    "mul_sub_add_int": ([helper.make_node("Mul", ["a", "b"], ["m"]), helper.make_node("Sub", ["m", "a"], ["s"]),
                         helper.make_node("Add", ["s", "b"], ["r"])], {"a": A_INT, "b": B_INT}, (6,)),
    "range_int": ([helper.make_node("Range", ["s", "l", "d"], ["r"])],
                  {"s": np.array(10, I64), "l": np.array(-3, I64), "d": np.array(-4, I64)}, (4,)),
    "range_float": ([helper.make_node("Range", ["s", "l", "d"], ["r"])],
                    {"s": np.array(0.5, np.float32), "l": np.array(2.0, np.float32), "d": np.array(0.4, np.float32)},
                    (4,)),
    "where_bcast": ([helper.make_node("Less", ["a", "b"], ["c"]), helper.make_node("Where", ["c", "a", "z"], ["r"])],
                    {"a": A_INT, "b": B_INT, "z": np.array([-100], I64)}, (6,)),
    "constant_of_shape": ([helper.make_node("Shape", ["x"], ["sh"]),
                           helper.make_node("ConstantOfShape", ["sh"], ["r"],
                                            value=numpy_helper.from_array(np.array([3], I64)))], {}, (2, 3)),
    "constant_of_shape_default": ([helper.make_node("Shape", ["x"], ["sh"], start=-1),
                                   helper.make_node("ConstantOfShape", ["sh"], ["r"])], {}, (2, 3)),
    "logic": ([helper.make_node("Equal", ["a", "b"], ["e"]), helper.make_node("Greater", ["a", "b"], ["g"]),
               helper.make_node("Or", ["e", "g"], ["o"]), helper.make_node("Not", ["o"], ["n"]),
               helper.make_node("Xor", ["n", "g"], ["r"])], {"a": A_INT, "b": B_INT}, (6,)),
    "cast_truncates": ([helper.make_node("Cast", ["a"], ["r"], to=TensorProto.INT64)],
                       {"a": np.array([-2.7, -0.5, 0.5, 2.7], np.float32)}, (4,)),
    "castlike": ([helper.make_node("CastLike", ["a", "b"], ["r"])],
                 {"a": np.array([-2.7, 3.9], np.float32), "b": np.array([1], I64)}, (2,)),
    "expand_tile": ([helper.make_node("Expand", ["a", "sh"], ["e"]), helper.make_node("Tile", ["e", "rep"], ["r"])],
                    {"a": np.array([[1], [2]], I64), "sh": np.array([2, 3], I64), "rep": np.array([1, 2], I64)}, (2, 6)),
    "trilu_lower_k": ([helper.make_node("Trilu", ["a", "k"], ["r"], upper=0)],
                      {"a": np.arange(12, dtype=I64).reshape(3, 4), "k": np.array(1, I64)}, (3, 4)),
    "trilu_upper": ([helper.make_node("Trilu", ["a"], ["r"])], {"a": np.ones((3, 3), np.float32)}, (3, 3)),
    "round_floor_ceil": ([helper.make_node("Round", ["a"], ["o"]), helper.make_node("Floor", ["a"], ["f"]),
                          helper.make_node("Ceil", ["a"], ["c"]), helper.make_node("Concat", ["o", "f", "c"], ["r"], axis=0)],
                         {"a": np.array([-2.5, -0.5, 0.5, 1.5, 2.5], np.float32)}, (15,)),
    "pow_int_base": ([helper.make_node("Pow", ["a", "e"], ["r"])],
                     {"a": np.array([2, -3, 4], I64), "e": np.array(2.0, np.float32)}, (3,)),
    "shape_slices": ([helper.make_node("Shape", ["x"], ["sh"], start=1, end=-1),
                      helper.make_node("Size", ["x"], ["n"]), helper.make_node("Unsqueeze", ["n", "ax"], ["nu"]),
                      helper.make_node("Concat", ["sh", "nu"], ["r"], axis=0)], {"ax": np.array([0], I64)}, (2, 3, 4, 1)),
    "cumsum_exclusive_reverse": ([helper.make_node("CumSum", ["a", "ax"], ["r"], exclusive=1, reverse=1)],
                                 {"a": np.array([1, 2, 3, 4], I64), "ax": np.array(0, I64)}, (4,)),
    "reduce_prod_max": ([helper.make_node("ReduceProd", ["a"], ["p"], axes=[1], keepdims=0),
                         helper.make_node("ReduceMax", ["a"], ["m"], axes=[1], keepdims=0),
                         helper.make_node("Concat", ["p", "m"], ["r"], axis=0)],
                        {"a": np.array([[1, -2, 3], [4, 5, -6]], I64)}, (4,)),
    "gather_slice_squeeze": ([helper.make_node("Gather", ["a", "i"], ["gt"], axis=1),
                              helper.make_node("Slice", ["gt", "st", "en"], ["sl"]),
                              helper.make_node("Squeeze", ["sl", "ax"], ["r"])],
                             {"a": np.arange(12, dtype=I64).reshape(3, 4), "i": np.array([3, -4], I64),
                              "st": np.array([1], I64), "en": np.array([2], I64), "ax": np.array([0], I64)}, (2,)),
}


@pytest.mark.parametrize("case", list(FOLD_CASES))
def test_folding_matches_onnxruntime(case):
    nodes, inits, shape = FOLD_CASES[case]
    _check_folds(_model(nodes, inits, shape), shape)


def test_multihead_attention_mod_folds(exported):
    """The node that stopped ``nn.MultiheadAttention`` exports: Mod on constants."""
    path, _, _ = exported("mha_batch_first", "ts17")
    assert "Mod" in {n.op_type for n in onnx.load(path).graph.node}
    assert "Mod" not in graph_from_onnx(path).op_types()


def _node(op: str, **attrs) -> Node:
    return Node("n", op, (), "y", frozen_attrs(attrs))


def test_fold_edge_cases():
    ints = lambda *v: torch.tensor(v, dtype=torch.int64)  # noqa: E731
    assert FOLD["Range"](_node("Range"), ints(5), ints(5), ints(1)).numel() == 0  # empty
    assert FOLD["Range"](_node("Range"), ints(0), ints(7), ints(3)).tolist() == [0, 3, 6]
    r = FOLD["Range"](_node("Range"), torch.tensor(1.0, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64),
                      torch.tensor(-0.25, dtype=torch.float64))
    assert r.dtype == torch.float64 and r.tolist() == [1.0, 0.75, 0.5, 0.25]
    with pytest.raises(ModelError, match="fmod=1"):
        FOLD["Mod"](_node("Mod"), torch.tensor([1.5]), torch.tensor([1.0]))
    c = FOLD["ConstantOfShape"](_node("ConstantOfShape"), ints())
    assert c.shape == () and c.dtype == torch.float32 and float(c) == 0.0
    assert FOLD["Div"](_node("Div"), ints(-7, 7), ints(2, -2)).tolist() == [-3, -3]
    assert FOLD["Mod"](_node("Mod"), ints(-7, 7), ints(2, -2)).tolist() == [1, -1]
    assert FOLD["Where"](_node("Where"), torch.tensor([True, False]), ints(1, 2), ints(9)).tolist() == [1, 9]


# ---- Split -------------------------------------------------------------------------------------
def _split_model(split_node: onnx.NodeProto, inits: dict, parts: list[str], opset: int) -> onnx.ModelProto:
    """``y = Concat(2 * parts[-1], parts[:-1]...)`` of a Split of the runtime input ``x`` (3, 7)."""
    nodes = [split_node, helper.make_node("Mul", [parts[-1], "two"], ["scaled"]),
             helper.make_node("Concat", ["scaled", *parts[:-1]], ["y"], axis=1)]
    inits = {"two": np.array(2.0, np.float32), **inits}
    graph = helper.make_graph(nodes, "split", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 7])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


SPLITS = {
    "input_sizes_13": (helper.make_node("Split", ["x", "sizes"], ["p0", "p1", "p2"], axis=1),
                       {"sizes": np.array([2, 4, 1], I64)}, ["p0", "p1", "p2"], 13),
    "attr_sizes_11": (helper.make_node("Split", ["x"], ["p0", "p1"], axis=-1, split=[3, 4]), {}, ["p0", "p1"], 11),
    "num_outputs_18_uneven": (helper.make_node("Split", ["x"], ["p0", "p1", "p2"], axis=1, num_outputs=3), {},
                              ["p0", "p1", "p2"], 18),
    "equal_axis0_13": (helper.make_node("Split", ["x"], ["p0", "p1", "p2"], axis=0), {}, ["p0", "p1", "p2"], 13),
}


@pytest.mark.parametrize("case", list(SPLITS))
def test_split_lowered_to_slices(case):
    node, inits, parts, opset = SPLITS[case]
    model = _split_model(node, inits, parts, opset)
    g = graph_from_onnx(model)
    assert "Split" not in g.op_types() and g.op_types().count("Slice") == 1
    assert sum(n.op_type == "Slice" for n in g.nodes) == len(parts)
    x = np.random.default_rng(1).standard_normal((3, 7)).astype(np.float32)
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_array_equal(pk.load(model)(torch.from_numpy(x[None])).numpy().reshape(ref.shape), ref)


def test_split_of_a_constant_folds_and_sizes_are_checked():
    a = np.arange(6, dtype=np.float32).reshape(1, 6)
    nodes = [helper.make_node("Split", ["a"], ["q0", "q1"], axis=1, num_outputs=2),
             helper.make_node("Sub", ["q1", "q0"], ["r"])]
    _check_folds(_model(nodes, {"a": a}, (1, 3), opset=18), (1, 3))
    assert split_sizes(_node("Split", num_outputs=3), 7, 3) == [3, 3, 1]
    assert split_sizes(_node("Split"), 6, 3) == [2, 2, 2]
    with pytest.raises(ModelError, match="equal parts"):
        split_sizes(_node("Split"), 7, 3)
    with pytest.raises(ModelError, match="do not fit"):
        split_sizes(_node("Split", split=[2, 2]), 5, 2)


# ---- refusals: one line naming op, node and file ---------------------------------------------------
@pytest.mark.parametrize("op,extra,match", [
    ("Mod", {"fmod": 1}, "only supported on constants"),
    ("Hardmax", {}, "no rule for 'Hardmax'"),
])
def test_unsupported_runtime_op_is_one_line(tmp_path, op, extra, match):
    node = helper.make_node(op, ["x", "b"] if op == "Mod" else ["x"], ["y"], name="the_node", **extra)
    graph = helper.make_graph([node], "bad", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
                              initializer=[numpy_helper.from_array(np.ones(3, np.float32), "b")])
    p = tmp_path / "bad.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), p)
    with pytest.raises(UnsupportedOperatorError) as e:
        graph_from_onnx(p)
    msg = str(e.value)
    assert match in msg and "'the_node'" in msg and str(p) in msg and len(msg.splitlines()) == 1


# ---- the broadcast rules on exported patterns -------------------------------------------------------
def _linear_model(first: onnx.NodeProto, inits: dict) -> onnx.ModelProto:
    """``y = flatten(first(x)) @ W`` with W cancelling the copies of ``x[0]``: the exact range is {0}."""
    w = np.zeros((4, 1), np.float32)
    w[0, 0], w[2, 0] = 1.0, -1.0
    nodes = [first, helper.make_node("Reshape", ["e", "s4"], ["f"]), helper.make_node("MatMul", ["f", "W"], ["y"])]
    inits = {"s4": np.array([1, 4], I64), "W": w, **inits}
    graph = helper.make_graph(nodes, "copies", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])],
                              initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("first,inits", [
    (helper.make_node("Expand", ["x", "sh"], ["e"]), {"sh": np.array([2, 1, 2], I64)}),
    (helper.make_node("Tile", ["x", "rep"], ["e"]), {"rep": np.array([1, 2], I64)}),
], ids=["Expand", "Tile"])
def test_copies_keep_linear_prefix_exact(first, inits):
    """IBP on a linear network stays exact through maps that copy coordinates."""
    from perturbkit.sets import Box

    b = pk.bounds(pk.load(_linear_model(first, inits)), Box(-torch.ones(1, 2), torch.ones(1, 2)), method="ibp")
    assert float(b.lower.abs().max()) < 1e-6 and float(b.upper.abs().max()) < 1e-6


def test_where_masked_fill_with_infinite_constant():
    """``masked_fill(mask, -inf)``: the choice is a selection (no 0 * inf), the transpose masks."""
    from perturbkit.ops.base import Interval
    from perturbkit.ops.registry import RULES

    rule = RULES["Where"]
    cond = torch.tensor([[True, False, True]])
    node = Node("w", "Where", ("c", "f", "x"), "y", frozen_attrs({}), ((1, 3), (), (2, 3)), (2, 3))
    fill = torch.tensor(float("-inf"))
    x = torch.randn(5, 2, 3)
    y = rule.forward(node, cond, fill, x)
    assert torch.equal(y, torch.where(cond, fill, x)) and not torch.isnan(y).any()
    box = rule.interval(node, cond, fill, Interval(x - 1, x + 1))
    assert torch.equal(box.lo[..., 1], x[..., 1] - 1) and bool((box.hi[..., 0] == -np.inf).all())
    A = torch.randn(5, 2, 3)
    (_, a_fill, a_x) = rule.backward(node, A, cond, fill, None)
    assert a_fill is None and torch.equal(a_x, torch.where(cond, 0.0, A))
