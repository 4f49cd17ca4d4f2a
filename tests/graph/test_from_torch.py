"""The PyTorch front end: ``graph_from_module`` reproduces the module, op by op.

Every network below is converted from a one-sample example ``(1, *sample)`` and executed by
``Network`` on a random batch of 3 in float64; it must agree with the module within 1e-6.
"""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from perturbkit.errors import ModelError, UnsupportedOperatorError
from perturbkit.graph.from_torch import graph_from_module
from perturbkit.graph.network import Network

B = 3


# ----------------------------------------------------------------------------------------
# the networks
# ----------------------------------------------------------------------------------------
def randomize_bn(m: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial running statistics and affine parameters for every BatchNorm."""
    g = torch.Generator().manual_seed(seed)
    for mod in m.modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            n = mod.num_features
            mod.running_mean.copy_(torch.randn(n, generator=g) * 0.3)
            mod.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            if mod.affine:
                with torch.no_grad():
                    mod.weight.copy_(torch.randn(n, generator=g))
                    mod.bias.copy_(torch.randn(n, generator=g) * 0.2)
    return m


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 8), nn.LeakyReLU(0.1),
                         nn.Dropout(0.3), nn.Linear(8, 3))


def cnn_bn_pool() -> nn.Module:
    return randomize_bn(nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding="same"), nn.BatchNorm2d(8), nn.ReLU(), nn.AvgPool2d(2),
        nn.Conv2d(8, 8, 3, padding="valid"), nn.ReLU(), nn.AdaptiveAvgPool2d((1, 1)),
        nn.Flatten(), nn.Linear(8, 4)))


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.shortcut = nn.Sequential(nn.Conv2d(3, 8, 1, stride=2, bias=False), nn.BatchNorm2d(8))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(8 * 4 * 4, 5))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + self.shortcut(x)
        out = self.relu(out)
        return self.head(out)


def residual() -> nn.Module:
    return randomize_bn(Residual())


class HardtanhCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 4, 3, stride=2, padding=1)
        self.c2 = nn.Conv2d(4, 4, 3, dilation=2, groups=2)
        self.act1, self.act2 = nn.Hardtanh(), nn.ReLU6()
        self.fc = nn.Linear(4 * 1 * 1, 3)

    def forward(self, x):
        y = self.act2(self.c2(self.act1(self.c1(x) * 3.0)))
        y = F.hardtanh(y - 1.0, -0.5, 0.5)
        return self.fc(torch.flatten(y, 1))


class Conv1dNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(2, 4, 3, padding=1), nn.BatchNorm1d(4), nn.ReLU(), nn.MaxPool1d(2),
            nn.Conv1d(4, 4, 3, padding="same", dilation=2), nn.ReLU(), nn.AvgPool1d(2),
            nn.Conv1d(4, 3, 2, stride=2))
        self.fc = nn.Linear(3 * 2, 4)
        self.bn = nn.BatchNorm1d(4)

    def forward(self, x):
        return self.bn(self.fc(self.features(x).flatten(1)))


def conv1d_net() -> nn.Module:
    return randomize_bn(Conv1dNet())


class ViewNet(nn.Module):
    """Shape arithmetic, functional layers and arithmetic with constants in both orders."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3)
        self.w = nn.Parameter(torch.randn(6, 3 * 4 * 4) * 0.3)
        self.b = nn.Parameter(torch.randn(6))
        self.register_buffer("scale", torch.linspace(0.5, 1.5, 6))

    def forward(self, x):
        y = torch.relu(self.conv(x))
        y = y.view(x.size(0), -1)
        y = F.linear(y, self.w, self.b)
        y = F.relu(y) + 0.1 * y
        y = 1 - y
        y = (2 * y - y / 4) * self.scale
        z = -y + x.shape[1]
        z = torch.add(z, y, alpha=0.5)
        z = torch.sub(z, 0.25) + torch.mul(y, 0.5)
        return z.reshape(x.shape[0], 2, 3).flatten(1)


class CatSliceTranspose(nn.Module):
    def forward(self, x):  # x: (1, 4, 6)
        a = x[:, 1:3, :]  # (1, 2, 6)
        b = x[..., ::2]  # (1, 4, 3)
        c = b.transpose(1, 2)  # (1, 3, 4)
        d = c.permute(0, 2, 1).contiguous()  # (1, 4, 3)
        e = torch.cat([d, x[:, :, 3:]], dim=-1)  # (1, 4, 6)
        f = e[:, 0]  # (1, 6)
        g = x[:, None, 2]  # (1, 1, 6)
        h = g.squeeze(1)  # (1, 6)
        i = h.unsqueeze(-1)  # (1, 6, 1)
        p, q = torch.chunk(a, 2, dim=1)  # (1, 1, 6) each
        s = torch.stack([p.squeeze(1), q[:, 0, :]], dim=1)  # (1, 2, 6)
        t = x[:, torch.tensor([3, 0])]  # (1, 2, 6)
        u = torch.index_select(x, 2, torch.tensor([5, 1, 1]))  # (1, 4, 3)
        parts = [f, h, i.squeeze(-1), a.mean(dim=1), a.sum(-1), e.mean(dim=(1, 2), keepdim=True).flatten(1),
                 s.sum(dim=1), (t - s).flatten(1), u.flatten(1), x[:, -1, -2:]]
        return torch.cat(parts, dim=1)


def sigmoid_tanh_net() -> nn.Module:
    class STNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(5, 8), nn.Sigmoid(), nn.Linear(8, 8), nn.Tanh(),
                                      nn.Linear(8, 6), nn.Softplus())
            self.out = nn.Linear(6, 3)

        def forward(self, x):
            y = self.body(x)
            y = torch.sigmoid(y) + F.softplus(y - 1) - torch.tanh(y).abs()
            return self.out(y.tanh() + y.sigmoid())
    return STNet()


class ConvTransposeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.down = nn.Conv2d(2, 4, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(4, 3, 3, stride=2, padding=1, output_padding=1)
        self.up1 = nn.ConvTranspose1d(3, 2, 4, stride=2, padding=1)

    def forward(self, x):  # (1, 2, 6, 6)
        y = torch.relu(self.up(torch.relu(self.down(x))))  # (1, 3, 6, 6)
        y = y.mean(dim=2)  # (1, 3, 6)
        return self.up1(y).flatten(1)  # (1, 2, 12)


class PadNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.zero = nn.ZeroPad2d((1, 0, 2, 1))
        self.refl = nn.ReflectionPad2d(1)
        self.repl = nn.ReplicationPad2d((0, 2, 1, 0))
        self.cref = nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect")
        self.crep = nn.Conv2d(2, 2, 3, padding=2, padding_mode="replicate")

    def forward(self, x):  # (1, 2, 5, 5)
        y = F.pad(x, (1, 1, 2, 0), value=0.5)  # (1, 2, 7, 7)
        y = F.pad(y, (1, 1, 1, 1), mode="reflect")  # (1, 2, 9, 9)
        y = F.pad(y, (0, 1, 1, 0), mode="replicate")  # (1, 2, 10, 10)
        z = self.repl(self.refl(self.zero(x)))  # (1, 2, 10, 10)
        return torch.cat([self.cref(y).flatten(1), self.crep(z).flatten(1)], 1)


class FunctionalCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 3, 3, 3) * 0.3)
        self.b = nn.Parameter(torch.randn(4) * 0.1)
        self.fc_w = nn.Parameter(torch.randn(2, 4) * 0.5)

    def forward(self, x):  # (1, 3, 9, 9)
        y = F.conv2d(x, self.w, self.b, stride=2, padding=1)  # (1, 4, 5, 5)
        y = F.max_pool2d(F.leaky_relu(y, 0.2), 2, stride=1)  # (1, 4, 4, 4)
        y = F.avg_pool2d(y, 2)  # (1, 4, 2, 2)
        y = F.adaptive_avg_pool2d(y, 1)  # (1, 4, 1, 1)
        return F.linear(torch.flatten(y, 1), self.fc_w)


class ClampAbsDiv(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.W = nn.Parameter(torch.randn(6, 4) * 0.4)

    def forward(self, x):  # (1, 2, 6)
        y = self.fc(x)  # Linear on rank 3: MatMul + Add
        y = torch.abs(y) - x.clamp(min=-0.5, max=0.5) + torch.clamp(y, min=0.1)
        y = y.clamp_max(1.0) + F.relu6(y * 4) / 3 - y.div(2) - torch.neg(y)
        return (y @ self.W).flatten(1)


NETS = {
    "mlp": (mlp, (3, 4)),
    "cnn_bn_pool": (cnn_bn_pool, (3, 12, 12)),
    "residual": (residual, (3, 8, 8)),
    "hardtanh_cnn": (HardtanhCNN, (1, 10, 10)),
    "conv1d": (conv1d_net, (2, 16)),
    "view": (ViewNet, (2, 6, 6)),
    "cat_slice_transpose": (CatSliceTranspose, (4, 6)),
    "sigmoid_tanh": (sigmoid_tanh_net, (5,)),
    "conv_transpose": (ConvTransposeNet, (2, 6, 6)),
    "pad": (PadNet, (2, 5, 5)),
    "functional_cnn": (FunctionalCNN, (3, 9, 9)),
    "clamp_abs_div": (ClampAbsDiv, (2, 6)),
}


def build(name: str, dtype=torch.float64) -> tuple[nn.Module, tuple[int, ...]]:
    torch.manual_seed(sum(map(ord, name)))
    factory, sample = NETS[name]
    return factory().to(dtype).eval(), sample


# ----------------------------------------------------------------------------------------
# the module and its graph compute the same function
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(NETS))
def test_graph_reproduces_module(name):
    m, sample = build(name)
    g = torch.Generator().manual_seed(1)
    example = torch.randn(1, *sample, generator=g, dtype=torch.float64)
    graph = graph_from_module(m, example)
    assert graph.input_shape == (1, *sample)
    net = Network(graph)
    x = torch.randn(B, *sample, generator=g, dtype=torch.float64)
    with torch.no_grad():
        want = m(x)
    got = net(x)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name", sorted(NETS))
def test_graph_is_well_formed(name):
    m, sample = build(name)
    graph = graph_from_module(m, torch.zeros(1, *sample, dtype=torch.float64))
    produced = {graph.input_name}
    for node in graph.nodes:
        assert len(node.in_shapes) == len(node.inputs), node
        for i, s in zip(node.inputs, node.in_shapes):
            assert i in produced or i in graph.constants, (node, i)
            assert tuple(s) == (tuple(graph.constants[i].shape) if i in graph.constants else graph.shapes[i])
        assert graph.shapes[node.output] == tuple(node.out_shape)
        assert node.output not in produced and node.output not in graph.constants
        produced.add(node.output)
    for k, t in graph.constants.items():
        assert not t.requires_grad, k
    used = {i for n in graph.nodes for i in n.inputs}
    assert set(graph.constants) <= used  # no dead constants
    assert graph.output_name in produced


def test_float32_module():
    m, sample = build("cnn_bn_pool", torch.float32)
    graph = graph_from_module(m, torch.randn(1, *sample))
    x = torch.randn(B, *sample)
    with torch.no_grad():
        torch.testing.assert_close(Network(graph)(x), m(x), atol=1e-5, rtol=1e-5)
        x64 = x.double()  # the graph runs in the dtype of its input
        torch.testing.assert_close(Network(graph)(x64), m.double()(x64), atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------
# the nodes look like an ONNX import
# ----------------------------------------------------------------------------------------
def _by_op(graph, op):
    return [n for n in graph.nodes if n.op_type == op]


def test_linear_is_gemm_with_transposed_weight():
    m = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2, bias=False)).eval()
    graph = graph_from_module(m, torch.randn(1, 4))
    assert [n.op_type for n in graph.nodes] == ["Gemm", "Relu", "Gemm"]
    gemm = graph.nodes[0]
    assert gemm.attrs["transB"] == 1 and gemm.inputs[1:] == ("0.weight", "0.bias")
    assert torch.equal(graph.constants["0.weight"], m[0].weight.detach())
    assert len(graph.nodes[2].inputs) == 2
    assert graph.input_shape == (1, 4) and graph.output_shape == (1, 2)


def test_conv_attributes():
    m = nn.Conv2d(3, 4, (3, 5), stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=1)
    graph = graph_from_module(m, torch.randn(1, 3, 10, 12))
    (conv,) = graph.nodes
    assert conv.op_type == "Conv"
    assert dict(conv.attrs) == {"kernel_shape": [3, 5], "strides": [2, 1], "pads": [1, 2, 1, 2],
                                "dilations": [1, 2], "group": 1}
    assert conv.out_shape == tuple(m(torch.randn(1, 3, 10, 12)).shape)


@pytest.mark.filterwarnings("ignore:Using padding=.same.")
def test_same_padding_is_asymmetric_for_even_kernels():
    m = nn.Conv1d(2, 2, 4, padding="same").double()
    graph = graph_from_module(m, torch.randn(1, 2, 9, dtype=torch.float64))
    assert graph.nodes[0].attrs["pads"] == [1, 2]
    x = torch.randn(B, 2, 9, dtype=torch.float64)
    torch.testing.assert_close(Network(graph)(x), m(x).detach())


def test_activation_op_types_and_attrs():
    m = nn.Sequential(nn.LeakyReLU(0.3), nn.Hardtanh(-2.0, 3.0), nn.ReLU6(), nn.Sigmoid(), nn.Tanh(),
                      nn.Softplus(), nn.Dropout(), nn.Identity(), nn.Flatten())
    graph = graph_from_module(m, torch.randn(1, 5))
    assert [n.op_type for n in graph.nodes] == ["LeakyRelu", "Clip", "Clip", "Sigmoid", "Tanh", "Softplus",
                                                "Identity", "Identity", "Flatten"]
    assert graph.nodes[0].attrs["alpha"] == pytest.approx(0.3)
    assert dict(graph.nodes[1].attrs) == {"min": -2.0, "max": 3.0}
    assert dict(graph.nodes[2].attrs) == {"min": 0.0, "max": 6.0}


def test_flatten_and_reshape_choice():
    class M(nn.Module):
        def forward(self, x):  # (1, 2, 3, 4)
            return torch.cat([torch.flatten(x, 1), x.flatten(2).flatten(1), x.view(-1, 24)], 1)
    graph = graph_from_module(M(), torch.randn(1, 2, 3, 4))
    ops = [n.op_type for n in graph.nodes]
    assert ops.count("Flatten") == 2 and ops.count("Reshape") == 2
    reshape = _by_op(graph, "Reshape")
    assert reshape[0].attrs["shape"] == [1, 2, 12]


def test_size_and_shape_become_constants():
    class M(nn.Module):
        def forward(self, x):
            n, c = x.size(0), x.shape[1]
            return x.view(n, -1) * c
    graph = graph_from_module(M(), torch.randn(1, 2, 2, 2))
    assert [n.op_type for n in graph.nodes] == ["Reshape", "Mul"]
    assert graph.nodes[0].attrs["shape"] == [1, 8]
    (c,) = [graph.constants[i] for i in graph.nodes[1].inputs if i in graph.constants]
    assert float(c) == 2.0


def test_constant_subgraphs_are_folded():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("s", torch.tensor([1.0, 2.0, 3.0]))

        def forward(self, x):
            k = torch.exp(self.s) * 2 + torch.ones(3)  # no dependence on x
            return x * k
    graph = graph_from_module(M(), torch.randn(1, 3))
    assert [n.op_type for n in graph.nodes] == ["Mul"]
    (k,) = graph.constants.values()
    torch.testing.assert_close(k, torch.exp(torch.tensor([1.0, 2.0, 3.0])) * 2 + 1)


def test_dead_code_is_dropped():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.unused = nn.Linear(3, 3), nn.Linear(3, 3)

        def forward(self, x):
            _ = torch.sigmoid(self.unused(x))
            return self.fc(x)
    graph = graph_from_module(M(), torch.randn(1, 3))
    assert [n.op_type for n in graph.nodes] == ["Gemm"]
    assert set(graph.constants) == {"fc.weight", "fc.bias"}


def test_constants_are_detached_copies():
    m = nn.Linear(3, 2)
    graph = graph_from_module(m, torch.randn(1, 3))
    with torch.no_grad():
        m.weight.add_(1.0)
    assert not torch.equal(graph.constants["weight"], m.weight.detach())
    assert not graph.constants["weight"].requires_grad
    assert all(t.is_floating_point() for t in graph.constants.values())


def test_identity_module_output_is_the_input():
    graph = graph_from_module(nn.Identity(), torch.randn(1, 4))
    assert graph.output_name != graph.input_name
    x = torch.randn(B, 4)
    torch.testing.assert_close(Network(graph)(x), x)


# ----------------------------------------------------------------------------------------
# modes and errors
# ----------------------------------------------------------------------------------------
def test_training_flags_are_restored():
    m = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3), nn.Dropout(0.5))
    m.train()
    m[2].eval()  # mixed modes survive
    graph = graph_from_module(m, torch.randn(1, 3))
    assert [mod.training for mod in m.modules()] == [True, True, True, False]
    assert "BatchNormalization" in graph.op_types() and "Identity" in graph.op_types()


def test_training_flags_are_restored_on_error():
    m = nn.Sequential(nn.Linear(3, 3), nn.PReLU())
    m.train()
    with pytest.raises(UnsupportedOperatorError):
        graph_from_module(m, torch.randn(1, 3))
    assert all(mod.training for mod in m.modules())


def test_unsupported_module_names_node_target_and_alternatives():
    m = nn.Sequential(nn.Linear(3, 3), nn.PReLU())
    with pytest.raises(UnsupportedOperatorError) as e:
        graph_from_module(m, torch.randn(1, 3))
    msg = str(e.value)
    assert "PReLU" in msg and "fx node '_1'" in msg and "Sequential" in msg
    assert "supported modules:" in msg and "Conv2d" in msg and "Linear" in msg
    assert "\n" not in msg


def test_unsupported_function_and_method():
    class Fn(nn.Module):
        def forward(self, x):
            return torch.cumsum(x, 1)

    class Meth(nn.Module):
        def forward(self, x):
            return x.cumsum(-1)

    with pytest.raises(UnsupportedOperatorError, match=r"torch\.cumsum.*fx node 'cumsum'.*supported functions:.*F\.relu"):
        graph_from_module(Fn(), torch.randn(1, 3))
    with pytest.raises(UnsupportedOperatorError, match=r"cumsum.*supported methods:.*view"):
        graph_from_module(Meth(), torch.randn(1, 3))


def test_untraceable_module_suggests_onnx():
    class ControlFlow(nn.Module):
        def forward(self, x):
            if x.sum() > 0:
                return x
            return -x

    with pytest.raises(ModelError, match=r"cannot trace ControlFlow with torch\.fx .*torch\.onnx\.export") as e:
        graph_from_module(ControlFlow(), torch.randn(1, 3))
    assert "\n" not in str(e.value)


def test_softplus_beta_must_be_one():
    with pytest.raises(UnsupportedOperatorError, match="beta=2"):
        graph_from_module(nn.Softplus(beta=2.0), torch.randn(1, 3))


def test_batchnorm_without_running_stats_is_rejected():
    with pytest.raises(UnsupportedOperatorError, match="running statistics"):
        graph_from_module(nn.BatchNorm1d(3, track_running_stats=False), torch.randn(1, 3, 4))


def test_two_inputs_are_rejected():
    class Two(nn.Module):
        def forward(self, x, y):
            return x + y

    with pytest.raises(ModelError, match="exactly one input"):
        graph_from_module(Two(), torch.randn(1, 3))


def test_optional_argument_takes_its_default():
    class Opt(nn.Module):
        def forward(self, x, scale: float = 2.0):
            return x * scale

    graph = graph_from_module(Opt(), torch.randn(1, 3))
    x = torch.randn(B, 3)
    torch.testing.assert_close(Network(graph)(x), 2 * x)


def test_bad_example_input():
    with pytest.raises(ModelError, match="floating-point"):
        graph_from_module(nn.Linear(3, 2), torch.ones(1, 3, dtype=torch.int64))
    with pytest.raises(ModelError, match="fails on the example input"):
        graph_from_module(nn.Linear(3, 2), torch.ones(1, 4))


# ----------------------------------------------------------------------------------------
# acceptance: a module and its ONNX export give the same bounds
# ----------------------------------------------------------------------------------------
SETS = [("inf", 0.05), (2, 0.2)]
METHODS = ["ibp", "crown", "crown-ibp"]


def _export(m: nn.Module, example: torch.Tensor, path) -> None:
    pytest.importorskip("onnx")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated, and says so
        torch.onnx.export(m, (example,), str(path), dynamo=False, opset_version=13)


@pytest.mark.parametrize("name", sorted(NETS))
def test_same_bounds_as_onnx_export(name, tmp_path):
    import perturbkit
    from perturbkit.sets import LpBall

    m, sample = build(name, torch.float32)
    g = torch.Generator().manual_seed(2)
    example = torch.randn(1, *sample, generator=g)
    path = tmp_path / f"{name}.onnx"
    _export(m, example, path)
    from_module = perturbkit.load(m, example)
    from_onnx = perturbkit.load(path)
    assert from_module.input_shape == from_onnx.input_shape
    assert from_module.graph.output_shape == from_onnx.graph.output_shape
    x = torch.randn(B, *sample, generator=g, dtype=torch.float64)
    torch.testing.assert_close(from_module(x), from_onnx(x), atol=1e-5, rtol=1e-5)
    for norm, eps in SETS:
        s = LpBall(x, eps=eps, norm=norm)
        for method in METHODS:
            a = perturbkit.bounds(from_module, s, method=method)
            b = perturbkit.bounds(from_onnx, s, method=method)
            scale = 1e-5 * (1.0 + float(b.upper.abs().max()))
            for got, want in ((a.lower, b.lower), (a.upper, b.upper)):
                torch.testing.assert_close(got, want, rtol=1e-5, atol=scale,
                                           msg=lambda m, method=method, norm=norm: f"{method}, L{norm}: {m}")
            assert (a.lower <= a.upper).all()


# ----------------------------------------------------------------------------------------
# more conversions
# ----------------------------------------------------------------------------------------
def _same(m: nn.Module, sample, atol=1e-6):
    m = m.double().eval()
    g = torch.Generator().manual_seed(3)
    graph = graph_from_module(m, torch.randn(1, *sample, generator=g, dtype=torch.float64))
    x = torch.randn(B, *sample, generator=g, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(Network(graph)(x), m(x), atol=atol, rtol=atol)
    return graph


def test_in_place_operations_rebind_the_mutated_value():
    class InPlace(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.relu = nn.ReLU(inplace=True)

        def forward(self, x):
            y = self.fc(x)
            z = self.relu(y)  # y itself now holds relu(y)
            w = z * 1.0
            v = w.relu_() - 0.5  # w too
            u = F.leaky_relu(v, 0.1, inplace=True)
            return y + z + w + v + u

    _same(InPlace(), (4,))


def test_split_unbind_stack_and_gather():
    class M(nn.Module):
        def forward(self, x):  # (1, 6, 4)
            parts = x.split([1, 2, 3], dim=1)  # fx cannot unpack a traced tuple: index it
            a, b, c = parts[0], parts[1], parts[2]
            r = torch.unbind(b, dim=1)
            s = torch.stack([r[0], r[1], a[:, 0]], dim=-1)  # (1, 4, 3)
            t = x[:, [5, 0, 0]]  # (1, 3, 4)
            return torch.cat([s.flatten(1), t.flatten(1), c.sum(1), x[..., 1].flatten(1)], dim=1)

    graph = _same(M(), (6, 4))
    assert {"Slice", "Squeeze", "Unsqueeze", "Concat", "Gather"} <= set(graph.op_types())


def test_adaptive_and_global_pooling():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.AdaptiveAvgPool2d((2, 2))
            self.g = nn.AdaptiveAvgPool2d(1)
            self.same = nn.AdaptiveAvgPool1d(8)

        def forward(self, x):  # (1, 3, 4, 8)
            return torch.cat([self.a(x).flatten(1), self.g(x).flatten(1),
                              self.same(x.mean(2)).flatten(1), F.adaptive_avg_pool1d(x.sum(3), 1).flatten(1)], 1)

    graph = _same(M(), (3, 4, 8))
    pools = [n for n in graph.nodes if n.op_type in ("AveragePool", "GlobalAveragePool")]
    assert [n.op_type for n in pools] == ["AveragePool", "GlobalAveragePool", "GlobalAveragePool"]
    assert pools[0].attrs["kernel_shape"] == [2, 4] and pools[0].attrs["strides"] == [2, 4]


def test_bare_layers_convert():
    bn = randomize_bn(nn.BatchNorm2d(3))
    graph = _same(bn, (3, 4, 4))
    assert graph.op_types() == ["BatchNormalization"]
    assert set(graph.nodes[0].inputs[1:]) == {"weight", "bias", "running_mean", "running_var"}
    assert _same(nn.Conv1d(2, 3, 3, padding=1), (2, 7)).op_types() == ["Conv"]


def test_advanced_indexing_limits_are_reported():
    class M(nn.Module):
        def forward(self, x):
            return x[:, [0, 1], [1, 0]]

    with pytest.raises(UnsupportedOperatorError, match="one index tensor"):
        graph_from_module(M(), torch.randn(1, 3, 3))


def test_perturbed_divisor_is_kept_for_the_bound_engine_to_reject():
    class M(nn.Module):
        def forward(self, x):
            return 1.0 / (x * x + 1.0)

    graph = graph_from_module(M(), torch.randn(1, 3))
    assert [n.op_type for n in graph.nodes] == ["Mul", "Add", "Div"]
