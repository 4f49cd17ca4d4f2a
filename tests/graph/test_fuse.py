"""Pattern fusions (``perturbkit.graph.fuse``) on small hand-written ONNX graphs.

Each positive case spells GELU, SiLU or LayerNorm out in primitive operators in one of the
orders exporters or users write, and checks (a) the fused graph has the one operator and
none of the pieces, and (b) the fused graph computes what ONNX Runtime computes on the
original (the fused operators evaluated by their torch definitions, so this checks the
fusion's attributes, not the operator rules; tolerance 1e-6).  Negative cases change one
constant, add a consumer to an intermediate value, or change an axis: nothing is fused.
"""
from __future__ import annotations

import math

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

from perturbkit.graph.from_onnx import graph_from_onnx
from perturbkit.graph.fuse import fuse
from perturbkit.ops.registry import rule_for

SHAPE = (1, 4, 8)
F32 = np.float32
SQRT2 = F32(math.sqrt(2.0))
A_TANH = F32(math.sqrt(2.0 / math.pi))
B_TANH = F32(0.044715)
C = {"half": F32(0.5), "one": F32(1.0), "s2": SQRT2, "inv_s2": F32(1 / math.sqrt(2.0)), "a": A_TANH, "b": B_TANH,
     "ab": F32(A_TANH * B_TANH), "three": F32(3.0), "two": F32(2.0), "eps": F32(1e-5), "mhalf": F32(-0.5),
     "w": np.linspace(0.5, 1.5, 8, dtype=F32), "bias": np.linspace(-1, 1, 8, dtype=F32)}


def model(spec, consts=None, shape=SHAPE, axes=(-1,)):
    """ONNX model from ``(op, inputs, output, attrs)`` tuples; the last output is ``y``.
    ReduceMean nodes get ``axes`` (opset 17: an attribute)."""
    consts = {**C, **(consts or {})}
    used = {i for _, ins, _, _ in spec for i in ins}
    nodes = []
    for op, ins, out, attrs in spec:
        if op == "ReduceMean":
            attrs = {"axes": list(axes), **attrs}
        nodes.append(helper.make_node(op, list(ins), [out], **attrs))
    inits = [numpy_helper.from_array(np.asarray(v, dtype=F32), k) for k, v in consts.items() if k in used]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _layer_norm(node, x, scale, bias):
    k = -int(node.attrs["axis"])
    return F.layer_norm(x, x.shape[-k:], scale, bias, float(node.attrs["epsilon"]))


REFERENCE = {
    "Gelu": lambda n, x: F.gelu(x, approximate=n.attrs["approximate"]),
    "Swish": lambda n, x: x * torch.sigmoid(float(n.attrs["alpha"]) * x),
    "LayerNormalization": _layer_norm,
}


def run(graph, x):
    env = {graph.input_name: x}
    for n in graph.nodes:
        args = [graph.constants[i] if i in graph.constants else env[i] for i in n.inputs]
        env[n.output] = REFERENCE[n.op_type](n, *args) if n.op_type in REFERENCE else rule_for(n).forward(n, *args)
    return env[graph.output_name]


def check(spec, fused_op, consts=None, shape=SHAPE, axes=(-1,), **attrs):
    m = model(spec, consts, shape, axes)
    g = fuse(graph_from_onnx(m, forward_only=True))
    assert [n.op_type for n in g.nodes] == [fused_op], [n.op_type for n in g.nodes]
    for k, v in attrs.items():
        got = g.nodes[0].attrs[k]
        assert (abs(got - v) < 1e-9) if isinstance(v, float) else got == v, (k, got)
    x = np.random.default_rng(0).normal(scale=2.0, size=shape).astype(F32)
    ref = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(run(g, torch.from_numpy(x)).numpy(), ref, atol=1e-6, rtol=0)
    return g


def unfused(spec, op, consts=None, axes=(-1,)):
    g = fuse(graph_from_onnx(model(spec, consts, axes=axes), forward_only=True))
    assert op not in g.op_types(), g.op_types()
    return g


# ---- GELU, erf form --------------------------------------------------------------------------------
GELU_ERF = {
    "torchscript_order": [("Div", ("x", "s2"), "t", {}), ("Erf", ("t",), "e", {}), ("Add", ("e", "one"), "p", {}),
                          ("Mul", ("x", "p"), "m", {}), ("Mul", ("m", "half"), "y", {})],
    "half_first_times_inverse": [("Mul", ("x", "half"), "h", {}), ("Mul", ("x", "inv_s2"), "t", {}),
                                 ("Erf", ("t",), "e", {}), ("Add", ("one", "e"), "p", {}), ("Mul", ("h", "p"), "y", {})],
    "constant_left": [("Div", ("x", "s2"), "t", {}), ("Erf", ("t",), "e", {}), ("Add", ("one", "e"), "p", {}),
                      ("Mul", ("x", "p"), "m", {}), ("Mul", ("half", "m"), "y", {})],
    "distributed": [("Mul", ("x", "half"), "h1", {}), ("Mul", ("half", "x"), "h2", {}), ("Div", ("x", "s2"), "t", {}),
                    ("Erf", ("t",), "e", {}), ("Mul", ("h2", "e"), "he", {}), ("Add", ("h1", "he"), "y", {})],
    "half_inside_sum": [("Mul", ("inv_s2", "x"), "t", {}), ("Erf", ("t",), "e", {}), ("Mul", ("e", "half"), "he", {}),
                        ("Add", ("half", "he"), "p", {}), ("Mul", ("p", "x"), "y", {})],
}


@pytest.mark.parametrize("case", list(GELU_ERF))
def test_gelu_erf_fused(case):
    check(GELU_ERF[case], "Gelu", approximate="none")


GELU_TANH = {
    "torchscript_order": [("Mul", ("x", "x"), "x2", {}), ("Mul", ("x", "x2"), "x3", {}), ("Mul", ("b", "x3"), "bx3", {}),
                          ("Add", ("x", "bx3"), "u", {}), ("Mul", ("a", "u"), "au", {}), ("Tanh", ("au",), "th", {}),
                          ("Add", ("one", "th"), "p", {}), ("Mul", ("x", "p"), "m", {}), ("Mul", ("half", "m"), "y", {})],
    "pow3_distributed": [("Mul", ("x", "a"), "u1", {}), ("Pow", ("x", "three"), "x3", {}), ("Mul", ("x3", "ab"), "u2", {}),
                         ("Add", ("u1", "u2"), "u", {}), ("Tanh", ("u",), "th", {}), ("Add", ("th", "one"), "p", {}),
                         ("Mul", ("x", "half"), "h", {}), ("Mul", ("h", "p"), "y", {})],
}


@pytest.mark.parametrize("case", list(GELU_TANH))
def test_gelu_tanh_fused(case):
    check(GELU_TANH[case], "Gelu", approximate="tanh")


def test_gelu_constants_to_a_few_ulps():
    spec = GELU_ERF["torchscript_order"]
    near = np.nextafter(np.nextafter(SQRT2, F32(2)), F32(2))  # 2 float32 ulps off
    check(spec, "Gelu", {"s2": near})
    unfused(spec, "Gelu", {"s2": F32(SQRT2 * (1 + 100 * 2.0 ** -23))})
    unfused(spec, "Gelu", {"half": F32(0.6)})
    unfused(GELU_TANH["torchscript_order"], "Gelu", {"b": F32(0.05)})


def test_gelu_not_fused_when_a_piece_is_read_elsewhere():
    spec = GELU_ERF["torchscript_order"]
    y_plus = [(op, ins, "g" if out == "y" else out, a) for op, ins, out, a in spec]
    g = unfused(y_plus + [("Add", ("g", "e"), "y", {})], "Gelu")  # erf(x / sqrt 2) read again
    assert "Erf" in g.op_types()
    unfused(y_plus + [("Add", ("g", "p"), "y", {})], "Gelu")  # 1 + erf read again
    # the gate reads another value than the one multiplied
    unfused([("Relu", ("x",), "z", {})] + [(op, ("z", "s2") if op == "Div" else ins, out, a) for op, ins, out, a in spec],
            "Gelu")


def test_gelu_output_read_twice_still_fused():
    spec = GELU_ERF["torchscript_order"]
    spec = [(op, ins, "g" if out == "y" else out, a) for op, ins, out, a in spec] + [("Mul", ("g", "g"), "y", {})]
    g = fuse(graph_from_onnx(model(spec), forward_only=True))
    assert g.op_types() == ["Gelu", "Mul"]


# ---- SiLU / Swish ----------------------------------------------------------------------------------
@pytest.mark.parametrize("spec,alpha", [
    ([("Sigmoid", ("x",), "s", {}), ("Mul", ("x", "s"), "y", {})], 1.0),
    ([("Sigmoid", ("x",), "s", {}), ("Mul", ("s", "x"), "y", {})], 1.0),
    ([("Mul", ("x", "k"), "kx", {}), ("Sigmoid", ("kx",), "s", {}), ("Mul", ("s", "x"), "y", {})], float(F32(1.702))),
], ids=["x_sigmoid", "sigmoid_x", "sigmoid_1.702x"])
def test_swish_fused(spec, alpha):
    check(spec, "Swish", {"k": F32(1.702)}, alpha=alpha)


def test_swish_only_where_exact():
    unfused([("Relu", ("x",), "z", {}), ("Sigmoid", ("z",), "s", {}), ("Mul", ("x", "s"), "y", {})], "Swish")
    unfused([("Sigmoid", ("x",), "s", {}), ("Mul", ("x", "s"), "m", {}), ("Add", ("m", "s"), "y", {})], "Swish")
    # 2 x sigmoid(x): the product x sigmoid(x) is fused, the scaling stays
    g = fuse(graph_from_onnx(model([("Sigmoid", ("x",), "s", {}), ("Mul", ("x", "s"), "m", {}),
                                    ("Mul", ("m", "two"), "y", {})]), forward_only=True))
    assert [n.op_type for n in g.nodes] == ["Swish", "Mul"]


# ---- LayerNorm ---------------------------------------------------------------------------------
def ln_spec(inverse="div", square="pow", scale=True, bias=True, eps_first=False, recentre=False):
    spec = [("ReduceMean", ("x",), "m", {}), ("Sub", ("x", "m"), "d", {})]
    dv = "d"
    if recentre:
        spec += [("ReduceMean", ("x",), "m2", {}), ("Sub", ("x", "m2"), "d2", {})]
        dv = "d2"
    spec.append(("Pow", (dv, "two"), "sq", {}) if square == "pow" else ("Mul", (dv, dv), "sq", {}))
    spec += [("ReduceMean", ("sq",), "v", {}), ("Add", ("eps", "v") if eps_first else ("v", "eps"), "ve", {})]
    last = "n"
    if inverse == "div":
        spec += [("Sqrt", ("ve",), "r", {}), ("Div", ("d", "r"), last, {})]
    elif inverse == "reciprocal":
        spec += [("Sqrt", ("ve",), "r", {}), ("Reciprocal", ("r",), "ri", {}), ("Mul", ("ri", "d"), last, {})]
    else:
        spec += [("Pow", ("ve", "mhalf"), "ri", {}), ("Mul", ("d", "ri"), last, {})]
    if scale:
        spec.append(("Mul", ("w", last), "s", {}))
        last = "s"
    if bias:
        spec.append(("Add", (last, "bias"), "b", {}))
        last = "b"
    spec[-1] = spec[-1][:2] + ("y", spec[-1][3])
    return spec


@pytest.mark.parametrize("kw", [
    {}, {"inverse": "reciprocal"}, {"inverse": "pow"}, {"square": "mul"}, {"scale": False}, {"bias": False},
    {"scale": False, "bias": False}, {"eps_first": True}, {"recentre": True},
], ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()) or "torchscript_order")
def test_layernorm_fused(kw):
    g = check(ln_spec(**kw), "LayerNormalization", axis=-1, epsilon=float(F32(1e-5)))
    scale, bias = (g.constants[i] for i in g.nodes[0].inputs[1:])
    assert torch.equal(scale, torch.from_numpy(C["w"]) if kw.get("scale", True) else torch.ones(8))
    assert torch.equal(bias, torch.from_numpy(C["bias"]) if kw.get("bias", True) else torch.zeros(8))


def test_layernorm_two_trailing_axes_and_broadcast_scale():
    consts = {"w": np.linspace(0.5, 1.5, 8, dtype=F32).reshape(1, 1, 8)}
    g = check(ln_spec(), "LayerNormalization", consts, axes=(1, 2), axis=-2)
    assert tuple(g.constants[g.nodes[0].inputs[1]].shape) == (4, 8)


def test_layernorm_not_fused():
    unfused(ln_spec(), "LayerNormalization", axes=(1,))  # not the trailing axes
    unfused(ln_spec(), "LayerNormalization", {"eps": F32(-1e-5)})
    unfused(ln_spec(), "LayerNormalization", {"two": F32(3.0)})
    spec = ln_spec()
    unfused(spec[:-1] + [("Add", ("s", "bias"), "b", {}), ("Add", ("b", "v"), "y", {})], "LayerNormalization")


def test_layernorm_scale_varying_over_other_axes_stays_outside():
    """A scale that varies along the sequence is not a LayerNorm parameter: only the
    normalisation is fused, the product and the bias stay."""
    m = model(ln_spec()[:-2] + [("Mul", ("n", "w"), "s", {}), ("Add", ("s", "bias"), "y", {})],
              {"w": np.linspace(0.5, 1.5, 4, dtype=F32).reshape(4, 1)})
    g = fuse(graph_from_onnx(m, forward_only=True))
    assert [n.op_type for n in g.nodes] == ["LayerNormalization", "Mul", "Add"]
    x = np.random.default_rng(0).normal(size=SHAPE).astype(F32)
    ref = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(run(g, torch.from_numpy(x)).numpy(), ref, atol=1e-6, rtol=0)


# ---- BatchNormalization folded into the Conv before it ---------------------------------------------
def _conv_bn_model(with_bias: bool, extra_reader: bool = False, group: int = 1):
    rng = np.random.default_rng(3)
    consts = {"W": (0.05 * rng.normal(size=(6, 4 // group, 3, 3))).astype(F32), "cb": rng.normal(size=6).astype(F32),
              "g": rng.uniform(0.5, 2.0, 6).astype(F32), "be": rng.normal(size=6).astype(F32),
              "mu": rng.normal(size=6).astype(F32), "var": rng.uniform(0.1, 3.0, 6).astype(F32)}
    spec = [("Conv", ("x", "W", "cb") if with_bias else ("x", "W"), "c", {"pads": [1, 1, 1, 1], "group": group}),
            ("BatchNormalization", ("c", "g", "be", "mu", "var"), "y" if not extra_reader else "n",
             {"epsilon": 1e-3})]
    if extra_reader:
        spec.append(("Add", ("n", "c"), "y", {}))
    return spec, consts


@pytest.mark.parametrize("with_bias,group", [(True, 1), (False, 1), (True, 2)])
def test_conv_batchnorm_folded(with_bias, group):
    spec, consts = _conv_bn_model(with_bias, group=group)
    g = check(spec, "Conv", consts, shape=(1, 4, 5, 5), group=group)
    assert len(g.nodes[0].inputs) == 3 and all(i in g.constants for i in g.nodes[0].inputs[1:])
    assert "W" not in g.nodes[0].inputs  # a new constant: W itself may be read elsewhere


def test_conv_batchnorm_not_folded_when_the_conv_output_is_read_elsewhere():
    spec, consts = _conv_bn_model(True, extra_reader=True)
    g = fuse(graph_from_onnx(model(spec, consts, shape=(1, 4, 5, 5)), forward_only=True))
    assert g.op_types().count("BatchNormalization") == 1


def test_torch_conv_batchnorm_same_graph_as_the_onnx_export_and_weights_keep_their_names(tmp_path):
    """The torch front end emits BatchNormalization; after the fold both front ends bound the
    same Conv.  Weight perturbation still names the model's own parameters."""
    from perturbkit.graph.network import Network
    from perturbkit.graph.from_torch import graph_from_module
    from perturbkit.bounds.weights import parameter_names, resolve

    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.BatchNorm2d(3), torch.nn.ReLU()).eval()
    with torch.no_grad():
        m[1].running_mean.normal_()
        m[1].running_var.uniform_(0.5, 2.0)
    net = Network(graph_from_module(m, torch.randn(1, 2, 6, 6)))
    assert "BatchNormalization" not in net.graph.op_types()
    assert "BatchNormalization" in net.imported_graph.op_types()
    assert "0.weight" in parameter_names(net) and resolve(net, "1") == "1.weight"
    x = torch.randn(4, 2, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(net(x), m(x), atol=1e-5, rtol=1e-5)
