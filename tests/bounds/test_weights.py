"""Bounds under weight perturbations jointly with the input (bounds/weights.py).

* eps 0 on every weight gives the input-only bounds (IBP, CROWN, CROWN-IBP, alpha-CROWN);
* soundness by sampling weights and inputs jointly (corners and interior) on a 2-layer
  MLP: Linf boxes on weights and biases, an L2 ball on a weight matrix, a Box set, and the
  ONNX export of the same MLP;
* the keys a user may give (parameter, module, node name) and one-line errors.
"""
from __future__ import annotations

import copy

import pytest
import torch

import perturbkit as pk
from perturbkit.bounds.weights import parameter_names
from perturbkit.errors import InputError

F64 = torch.float64
METHODS = ["ibp", "crown", "crown-ibp", "alpha-crown"]


@pytest.fixture(scope="module")
def mlp():
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).double()
    x = torch.randn(3, 5, dtype=F64)
    return m, x, pk.load(m, example_input=x[:1])


@pytest.mark.parametrize("method", METHODS)
def test_eps_zero_equals_input_only(mlp, method):
    m, x, net = mlp
    ball = pk.sets.LpBall(x, 0.2)
    b0 = pk.bounds(net, ball, method=method)
    bw = pk.bounds(net, ball, method=method, weights={"0.weight": 0.0, "0.bias": 0.0, "2": 0.0, "2.bias": 0.0})
    torch.testing.assert_close(bw.lower, b0.lower, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(bw.upper, b0.upper, rtol=1e-10, atol=1e-10)


def _joint_samples(m, x, eps_x, spec, k, g):
    """Outputs (k, B, 3) of the MLP at k joint samples of inputs and weights; ``spec``:
    parameter name -> function drawing one perturbed value (k corners first, then uniform)."""
    params = dict(m.named_parameters())
    out = []
    for i in range(k):
        corner = i < k // 2
        p = {n: (spec[n](corner) if n in spec else v.detach()) for n, v in params.items()}
        u = torch.rand(x.shape, generator=g, dtype=F64)
        xs = x + eps_x * (torch.where(u < 0.5, -1.0, 1.0) if corner else 2 * u - 1)
        h = torch.relu(xs @ p["0.weight"].T + p["0.bias"])
        out.append(h @ p["2.weight"].T + p["2.bias"])
    return torch.stack(out)


def _linf(v, e, g):
    def draw(corner):
        u = torch.rand(v.shape, generator=g, dtype=F64)
        return v.detach() + e * (torch.where(u < 0.5, -1.0, 1.0) if corner else 2 * u - 1)
    return draw


@pytest.mark.parametrize("method", METHODS)
def test_weight_box_sound_by_joint_sampling(mlp, method):
    m, x, net = mlp
    g = torch.Generator().manual_seed(1)
    params = dict(m.named_parameters())
    eps = {"0.weight": 0.05, "0.bias": 0.1, "2.weight": 0.03, "2.bias": 0.2}
    b = pk.bounds(net, pk.sets.LpBall(x, 0.1), method=method, weights=eps)
    y = _joint_samples(m, x, 0.1, {k: _linf(params[k], e, g) for k, e in eps.items()}, 400, g)
    assert (y >= b.lower - 1e-9).all() and (y <= b.upper + 1e-9).all()
    b0 = pk.bounds(net, pk.sets.LpBall(x, 0.1), method=method)
    assert ((b.upper - b.lower) > (b0.upper - b0.lower) + 1e-6).all()  # weights widen every bound


def test_l2_ball_and_box_weight_sets(mlp):
    m, x, net = mlp
    g = torch.Generator().manual_seed(2)
    W = m[2].weight.detach()
    lo, hi = m[0].weight.detach() - 0.02, m[0].weight.detach() + 0.04
    sets = {"2.weight": pk.sets.LpBall(W, 0.3, norm=2), "0.weight": pk.sets.Box(lo, hi)}
    for method in ("crown", "alpha-crown"):
        b = pk.bounds(net, pk.sets.LpBall(x, 0.05), method=method, weights=sets)

        def l2(corner):
            d = torch.randn(W.shape, generator=g, dtype=F64)
            d = d / d.norm() * (1.0 if corner else float(torch.rand(1, generator=g, dtype=F64)))
            return W + 0.3 * d

        def box(corner):
            u = torch.rand(lo.shape, generator=g, dtype=F64)
            return torch.where(u < 0.5, lo, hi) if corner else lo + (hi - lo) * u

        y = _joint_samples(m, x, 0.05, {"2.weight": l2, "0.weight": box}, 300, g)
        assert (y >= b.lower - 1e-9).all() and (y <= b.upper + 1e-9).all()


def test_onnx_model_weights(mlp, tmp_path):
    m, x, net = mlp
    path = tmp_path / "mlp.onnx"
    torch.onnx.export(copy.deepcopy(m).float(), torch.zeros(1, 5), path, dynamo=False, input_names=["x"])
    onet = pk.load(path)
    assert {"0.weight", "0.bias", "2.weight", "2.bias"} <= set(parameter_names(onet))
    ball = pk.sets.LpBall(x, 0.1)
    b_onnx = pk.bounds(onet, ball, method="crown", weights={"0.weight": 0.05, "2.bias": 0.1})
    b_torch = pk.bounds(net, ball, method="crown", weights={"0.weight": 0.05, "2.bias": 0.1})
    torch.testing.assert_close(b_onnx.lower, b_torch.lower, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b_onnx.upper, b_torch.upper, rtol=1e-5, atol=1e-5)


def test_keys_and_errors(mlp):
    m, x, net = mlp
    ball = pk.sets.LpBall(x, 0.1)
    by_module = pk.bounds(net, ball, weights={"0": 0.05})
    by_param = pk.bounds(net, ball, weights={"0.weight": 0.05})
    node = next(n.name for n in net.graph.nodes if "0.weight" in n.inputs)
    by_node = pk.bounds(net, ball, weights={node: 0.05})
    for b in (by_module, by_node):
        torch.testing.assert_close(b.lower, by_param.lower)
    with pytest.raises(InputError, match="no parameter 'fc9'.*parameters: 0.bias, 0.weight"):
        pk.bounds(net, ball, weights={"fc9": 0.1})
    with pytest.raises(InputError, match="has 3 elements; the parameter has shape \\(8, 5\\)"):
        pk.bounds(net, ball, weights={"0.weight": pk.sets.Box(torch.zeros(3), torch.ones(3))})
    with pytest.raises(InputError, match="must be a finite number >= 0"):
        pk.bounds(net, ball, weights={"0.weight": -1.0})
    with pytest.raises(InputError, match="given twice"):
        pk.bounds(net, ball, weights={"0": 0.1, "0.weight": 0.1})


@pytest.mark.parametrize("dims", [1, 2])
def test_conv_weights_and_biases(dims):
    """A Conv with a perturbed weight (BilinearConv) and bias: eps 0 gives the input-only
    bounds; sound by sampling inputs, weights and biases jointly."""
    torch.manual_seed(3)
    conv = torch.nn.Conv2d(2, 3, 3, stride=2, padding=1) if dims == 2 else torch.nn.Conv1d(2, 3, 3, padding=2,
                                                                                           dilation=2)
    x = torch.randn(2, 2, 6, 6, dtype=F64) if dims == 2 else torch.randn(2, 2, 7, dtype=F64)
    m = torch.nn.Sequential(conv, torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.LazyLinear(4)).double()
    m(x)
    net = pk.load(m, example_input=x[:1])
    ball = pk.sets.LpBall(x, 0.05)
    g = torch.Generator().manual_seed(4)
    W, b = conv.weight.detach().clone(), conv.bias.detach().clone()
    for method in ("ibp", "crown", "alpha-crown"):
        b0 = pk.bounds(net, ball, method=method)
        bz = pk.bounds(net, ball, method=method, weights={"0.weight": 0.0, "0.bias": 0.0})
        torch.testing.assert_close(bz.lower, b0.lower, rtol=1e-10, atol=1e-10)
        bw = pk.bounds(net, ball, method=method, weights={"0.weight": 0.05, "0.bias": 0.05})
        for k in range(200):
            corner = k < 100
            with torch.no_grad():
                for p, v in ((conv.weight, W), (conv.bias, b)):
                    u = torch.rand(v.shape, generator=g, dtype=F64)
                    p.copy_(v + 0.05 * (torch.where(u < 0.5, -1.0, 1.0) if corner else 2 * u - 1))
                u = torch.rand(x.shape, generator=g, dtype=F64)
                y = m(x + 0.05 * (torch.where(u < 0.5, -1.0, 1.0) if corner else 2 * u - 1))
            assert (y >= bw.lower - 1e-9).all() and (y <= bw.upper + 1e-9).all(), method
        with torch.no_grad():
            conv.weight.copy_(W)
            conv.bias.copy_(b)
