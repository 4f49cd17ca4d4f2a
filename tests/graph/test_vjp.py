"""GradientProgram (perturbkit.graph.vjp) against autograd on the same forward function.

Every conformance case (one node per operator, all attribute variants) is run as a graph
with one input; cases with several perturbed inputs get them from slices of one flat
input.  The program's output must equal the interpreter's and its pull-back must equal
autograd's vector-Jacobian product.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import perturbkit as pk
from perturbkit.attacks.base import Classifier
from perturbkit.graph.interpret import execute
from perturbkit.graph.ir import Graph, Node, frozen_attrs
from perturbkit.graph.network import Network
from perturbkit.graph.conv_transpose import ConvTranspose, takes_fast_transpose
from perturbkit.graph.vjp import GradientProgram, input_gradient
from perturbkit.models import bundled_path, load_digits_test
from perturbkit.ops.registry import rule_for
from tests.conformance.cases import CASES, F64

B = 3


def _ints(*v):
    return torch.tensor(v, dtype=torch.int64)


def _node(name, op, inputs, output, attrs, in_shapes, consts) -> Node:
    node = Node(name=name, op_type=op, inputs=tuple(inputs), output=output, attrs=frozen_attrs(attrs),
                in_shapes=tuple(tuple(s) for s in in_shapes))
    xs = [consts[i] if i in consts else torch.zeros(s, dtype=F64) for i, s in zip(inputs, in_shapes)]
    return dataclasses.replace(node, out_shape=tuple(rule_for(node).infer_shape(node, *xs)))


def network_for(case) -> Network:
    """The case's node as a one-input graph (several perturbed inputs: slices of one input)."""
    consts = {f"in{i}": c for i, c in case.consts.items()}
    pert = case.perturbed
    nodes, shapes = [], {}
    if len(pert) == 1:
        inp = f"in{pert[0]}"
        shapes[inp] = tuple(case.in_shapes[pert[0]])
    else:
        sizes = [math.prod(case.in_shapes[i]) for i in pert]
        inp, total, off = "x", sum(sizes), 0
        shapes[inp] = (total,)
        for i, n in zip(pert, sizes):
            nodes.append(_node(f"slice{i}", "Slice", ["x"], f"s{i}",
                               {"starts": _ints(off), "ends": _ints(off + n), "axes": _ints(0)}, [(total,)], consts))
            nodes.append(_node(f"reshape{i}", "Reshape", [f"s{i}"], f"in{i}",
                               {"shape": _ints(*case.in_shapes[i])}, [(n,)], consts))
            off += n
    node = case.node()
    nodes.append(node)
    for n in nodes:
        shapes[n.output] = tuple(n.out_shape)
    return Network(Graph(nodes=tuple(nodes), input_name=inp, output_name=node.output, shapes=shapes,
                         constants=consts, source=f"case {case.id}"))


DIFF_CASES = [c for c in CASES if c.perturbed]


@pytest.mark.parametrize("case", DIFF_CASES, ids=[c.id for c in DIFF_CASES])
def test_pullback_matches_autograd_on_every_case(case):
    net = network_for(case)
    prog = GradientProgram(net)
    g = torch.Generator().manual_seed(hash(case.id) % (2 ** 31))
    shape = net.graph.input_shape
    x = (torch.rand(B, *shape, generator=g, dtype=F64) * 2 - 1) * case.scale
    if case.domain != "real":  # a partial function (Log, Sqrt, Pow, ...): stay inside its domain
        x = x.abs() + 0.1 * case.scale
    y, tape = prog.forward(x)
    ref = execute(net, x)[net.graph.output_name]
    assert torch.equal(y, ref)
    dz = torch.randn(y.shape, generator=g, dtype=F64)
    ours = prog.pullback(tape, dz)
    xg = x.clone().requires_grad_(True)
    out = execute(net, xg)[net.graph.output_name]
    if out.requires_grad:
        (want,) = torch.autograd.grad(out, xg, dz, allow_unused=True)
        want = torch.zeros_like(x) if want is None else want
    else:
        want = torch.zeros_like(x)
    assert ours.shape == x.shape
    torch.testing.assert_close(ours, want, rtol=1e-9, atol=1e-9)
    # a tape can be pulled back again (FAB pulls back once per logit)
    torch.testing.assert_close(prog.pullback(tape, 2 * dz), 2 * want, rtol=1e-9, atol=1e-9)


CONV_CASES = [c for c in DIFF_CASES if c.op_type == "Conv" and math.prod(c.in_shapes[0][:-len(c.in_shapes[1]) + 1]) == 1]


@pytest.mark.parametrize("case", CONV_CASES, ids=[c.id for c in CONV_CASES])
def test_conv_transpose_equals_the_rule_on_every_geometry(case):
    """ConvTranspose (whichever layers the program gives it) is the rule's transpose for
    every Conv case: strides, dilations, groups, asymmetric and SAME pads, 1-D."""
    node = case.node()
    W = case.consts[1]
    plan = ConvTranspose(node, W, int(node.attrs.get("group", 1)))
    B = 5
    A = torch.randn(B, *node.out_shape, generator=torch.Generator().manual_seed(3), dtype=F64)
    got = plan(A.reshape(B, -1).t().contiguous()).t().reshape(B, *node.in_shapes[0])
    (want,) = case.rule.backward(node, A, None, *[case.consts[i] for i in range(1, len(case.in_shapes))])[:1]
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def _conv_node(c_in, c_out, size, stride, kernel):
    m = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=1)
    net = pk.load(m, torch.zeros(1, c_in, size, size))
    (node,) = net.graph.nodes
    return node, net.graph.constants[node.inputs[1]].float()


@pytest.mark.parametrize("shape,cols,rows", [
    ((1, 8, 8, 1, 3), True, False),     # few input channels; 9 taps for 8 output channels
    ((8, 16, 8, 2, 3), True, True),     # strided, small channel product, 72 taps
    ((1, 16, 28, 2, 4), True, False),   # 16 taps for 16 output channels: a rows cotangent stays
    ((8, 8, 16, 1, 3), False, False),   # stride 1 with 8 channels: the rule is faster
    ((1, 32, 28, 1, 2), False, False),  # 4 taps per input channel
    ((16, 32, 14, 2, 4), False, False),  # channel product 512
])
def test_which_convolutions_take_the_fast_transpose(shape, cols, rows):
    node, W = _conv_node(*shape)
    cpu = torch.device("cpu")
    assert takes_fast_transpose(node, W, torch.float32, cpu, columns_in=True) == cols
    assert takes_fast_transpose(node, W, torch.float32, cpu, columns_in=False) == rows
    assert not takes_fast_transpose(node, W.double(), torch.float64, cpu, columns_in=True)


def test_layout_of_the_cotangent_is_read_from_the_graph():
    """digits-cnn: the second convolution (read by Flatten-Gemm) gets a rows cotangent and
    takes the fast transpose for its 72 taps; the first one gets columns from it."""
    net = pk.load(str(bundled_path("digits-cnn")))
    prog = GradientProgram(net)
    c1, c2 = [s for s in prog.steps if s.node.op_type == "Conv"]
    cpu = torch.device("cpu")
    assert prog._columns_in(c1, torch.float32, cpu) and not prog._columns_in(c2, torch.float32, cpu)
    assert prog._takes_fast(c1, torch.float32, cpu) and prog._takes_fast(c2, torch.float32, cpu)
    assert not prog._columns_in(c1, torch.float64, cpu)  # the second one is not fast in float64


def check_against_autograd(net, x, dz, rtol, atol):
    """``input_gradient`` gives the network's exact output and autograd's gradient."""
    z, g = input_gradient(net, x, dz)
    xg = x.clone().requires_grad_(True)
    out = net(xg)
    (want,) = torch.autograd.grad(out, xg, dz)
    torch.testing.assert_close(z, out.detach(), rtol=0, atol=0)
    torch.testing.assert_close(g, want, rtol=rtol, atol=atol)


class _Residual(nn.Module):
    """Several kinds of steps at once: sparse and dense convolutions, BatchNorm, a skip
    connection (a value with two consumers), Sigmoid and MaxPool (autograd steps)."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)
        self.wide = nn.Conv2d(4, 80, 1)        # channel product 320: the rule's transpose
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(80 * 3 * 3, 5)

    def forward(self, x):
        h = torch.relu(self.bn(self.c1(x)))
        h = torch.relu(self.c2(h) + h)
        h = torch.sigmoid(self.wide(h))
        return self.fc(self.pool(h).flatten(1))


def test_residual_network_matches_autograd():
    torch.manual_seed(0)
    m = _Residual().eval()
    with torch.no_grad():
        m.bn.running_mean.uniform_(-0.5, 0.5)
        m.bn.running_var.uniform_(0.5, 2.0)
    x0 = torch.rand(1, 2, 6, 6)
    net = pk.load(m, x0)
    kinds = {s.node.op_type: s.kind for s in GradientProgram(net).steps}
    assert kinds["Sigmoid"] == "autograd" and kinds["MaxPool"] == "autograd"
    x = torch.rand(7, 2, 6, 6, dtype=torch.float64)
    check_against_autograd(net, x, torch.randn(7, 5, dtype=torch.float64), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", ["digits-mlp", "digits-cnn"])
def test_bundled_models_float32(name):
    net = pk.load(str(bundled_path(name)))
    x, _ = load_digits_test()
    dz = torch.randn(50, 10, generator=torch.Generator().manual_seed(1))
    check_against_autograd(net, torch.from_numpy(x[:50]), dz, rtol=1e-4, atol=1e-5)


def test_classifier_with_normalisation_matches_autograd(monkeypatch):
    net = pk.load(str(bundled_path("digits-cnn")))
    x, _ = load_digits_test()
    x = torch.from_numpy(x[:20]).double()
    dz = torch.randn(20, 10, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    f = Classifier(net, mean=(0.3,), std=(0.4,))
    assert f.program is not None
    z, pull = f.forward_vjp(x)
    g = pull(dz)
    monkeypatch.setenv("PERTURBKIT_GRADIENTS", "autograd")
    f_ref = Classifier(net, mean=(0.3,), std=(0.4,))
    assert f_ref.program is None
    z_ref, pull_ref = f_ref.forward_vjp(x)
    torch.testing.assert_close(z, z_ref, rtol=0, atol=0)
    torch.testing.assert_close(g, pull_ref(dz), rtol=1e-9, atol=1e-10)


def test_errors_name_the_node():
    """A failure inside the pull-back names the node, like the interpreter does."""
    case = next(c for c in CASES if c.op_type == "Gemm")
    net = network_for(case)
    prog = GradientProgram(net)
    _, tape = prog.forward(torch.zeros(2, *net.graph.input_shape, dtype=F64))
    with pytest.raises(pk.ModelError, match="while differentiating node"):
        prog.pullback(tape, torch.zeros(2, 99, dtype=F64))


def test_output_independent_of_input_gives_zero_gradient():
    c = torch.tensor([1.0, 2.0], dtype=F64)
    node = _node("const", "Identity", ["k"], "y", {}, [(2,)], {"k": c})
    net = Network(Graph(nodes=(node,), input_name="x", output_name="y", shapes={"x": (3,), "y": (2,)},
                        constants={"k": c}, source="const"))
    prog = GradientProgram(net)
    y, tape = prog.forward(torch.ones(4, 3, dtype=F64))
    assert np.allclose(y.numpy(), [1.0, 2.0])
    g = prog.pullback(tape, torch.ones(4, 2, dtype=F64))
    assert g.shape == (4, 3) and not g.any()


def test_columns_pass_through_reshapes():
    """Conv -> Relu -> Flatten -> Unflatten -> Conv: the first convolution's cotangent comes
    from the second in columns, through the reshapes, and the gradient is autograd's."""
    torch.manual_seed(4)
    m = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Unflatten(1, (8, 8, 8)),
                      nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 5)).eval()
    net = pk.load(m, torch.zeros(1, 1, 8, 8))
    prog = GradientProgram.for_network(net)
    c1 = next(s for s in prog.steps if s.node.op_type == "Conv")
    assert prog._columns_in(c1, torch.float32, torch.device("cpu"))
    x = torch.rand(40, 1, 8, 8)
    check_against_autograd(net, x, torch.randn(40, 5), rtol=1e-4, atol=1e-5)


DATA = Path(__file__).resolve().parents[1] / "data"
NETS = sorted({p.name: p for p in DATA.rglob("*.onnx")}.values())


@pytest.mark.parametrize("path", NETS, ids=[p.stem for p in NETS])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_vnncomp_networks_match_autograd(path, dtype):
    """The VNN-COMP networks copied into tests/data (ACAS Xu, the test set, the lirpa
    reference CNNs with BatchNorm, residual and HardTanh layers)."""
    net = pk.load(str(path))
    g = torch.Generator().manual_seed(5)
    x = torch.rand(6, *net.sample_shape, generator=g, dtype=dtype)
    dz = torch.randn(6, *net.output_sample_shape, generator=g, dtype=dtype)
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    check_against_autograd(net, x, dz, rtol=tol, atol=tol)
