"""Patch mode (perturbkit.bounds.patches) against the dense backward pass: the same CROWN
bounds, to rounding, on convolution chains with every geometry the mode handles, and on
nets where it has to hand over to the dense pass (residual adds, BatchNorm, pooling)."""
import pytest
import torch
import torch.nn as nn

import perturbkit as pk
from perturbkit.bounds import engine
from nets import to_network


def _bounds(net, s, patches: bool, monkeypatch, method="crown"):
    orig = engine.make_context

    def make(n, st):
        ctx = orig(n, st)
        ctx.use_patches = patches
        return ctx

    monkeypatch.setattr(engine, "make_context", make)
    import perturbkit.api as api

    monkeypatch.setattr(api, "make_context", make)
    return pk.bounds(net, s, method=method)


GEOMETRIES = [
    dict(kernel_size=3, stride=1, padding=1),
    dict(kernel_size=4, stride=2, padding=1),
    dict(kernel_size=3, stride=2, padding=0),
    dict(kernel_size=3, stride=1, padding=2, dilation=2),
    dict(kernel_size=3, stride=1, padding=1, groups=2),
    dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 0)),
    dict(kernel_size=3, stride=1, padding="same"),
]


@pytest.mark.parametrize("geo", GEOMETRIES, ids=lambda g: "-".join(f"{k}{v}" for k, v in g.items()))
@pytest.mark.parametrize("norm", ["inf", 2])
def test_conv_chain_patches_equal_dense(geo, norm, monkeypatch):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(2, 4, **geo), nn.ReLU(), nn.Conv2d(4, 4, **geo), nn.ReLU(),
                      nn.Conv2d(4, 2, 3, padding=1), nn.ReLU(), nn.Flatten())
    x0 = torch.zeros(1, 2, 9, 9)
    n_out = m(x0).numel()
    m = nn.Sequential(*m, nn.Linear(n_out, 3))
    net = to_network(m, x0)
    x = torch.rand(2, 2, 9, 9, dtype=torch.float64)
    s = pk.sets.LpBall(x, 0.05 if norm == "inf" else 0.3, norm=norm)
    from perturbkit.bounds import patches

    calls = []
    orig = patches.lower_upper
    monkeypatch.setattr(patches, "lower_upper", lambda *a: calls.append(1) or orig(*a))
    a = _bounds(net, s, True, monkeypatch)
    assert calls, "patch mode was not used"
    b = _bounds(net, s, False, monkeypatch)
    torch.testing.assert_close(a.lower, b.lower, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(a.upper, b.upper, rtol=1e-9, atol=1e-9)


def test_asymmetric_pad_and_handover(monkeypatch):
    """An explicit asymmetric Pad before a conv, a residual Add, BatchNorm and pooling make
    the patch walk hand over to the dense pass."""
    from nets import network

    net, module, shape = network("residual")
    x = torch.rand(2, *shape[1:], dtype=torch.float64)
    s = pk.sets.LpBall(x, 0.1)
    a = _bounds(net, s, True, monkeypatch)
    b = _bounds(net, s, False, monkeypatch)
    torch.testing.assert_close(a.lower, b.lower, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(a.upper, b.upper, rtol=1e-9, atol=1e-9)
    m = nn.Sequential(nn.ZeroPad2d((1, 0, 2, 0)), nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Conv2d(3, 3, 3, stride=2),
                      nn.ReLU(), nn.Flatten(), nn.Linear(27, 2))
    net = to_network(m, torch.zeros(1, 1, 8, 8))
    s = pk.sets.LpBall(torch.rand(3, 1, 8, 8, dtype=torch.float64), 0.1)
    a = _bounds(net, s, True, monkeypatch)
    b = _bounds(net, s, False, monkeypatch)
    torch.testing.assert_close(a.lower, b.lower, rtol=1e-9, atol=1e-9)


def test_many_specs_first_layer_transpose_matches_autograd():
    """The conv transpose used for many specs and few input channels (matmul + fold) equals
    the gradient of the convolution, with asymmetric pads, stride and dilation."""
    from perturbkit.graph.ir import Node
    from perturbkit.ops.registry import RULES

    rule = RULES["Conv"]
    W = torch.randn(5, 3, 3, 2, dtype=torch.float64)
    attrs = {"pads": [1, 0, 2, 1], "strides": [2, 1], "dilations": [1, 2], "kernel_shape": [3, 2]}
    node = Node("c", "Conv", ("x", "W"), "y", attrs, ((1, 3, 9, 8), tuple(W.shape)))
    out_shape = rule.infer_shape(node, torch.zeros(1, 3, 9, 8, dtype=torch.float64), W)
    node = Node("c", "Conv", ("x", "W"), "y", attrs, ((1, 3, 9, 8), tuple(W.shape)), out_shape)
    A = torch.randn(40, *out_shape, dtype=torch.float64)
    x = torch.zeros(40, 1, 3, 9, 8, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(rule.forward(node, x, W), x, A)
    got = rule.backward(node, A, None, W)[0]
    torch.testing.assert_close(got, g, rtol=1e-12, atol=1e-12)


POOLS = [
    lambda: nn.MaxPool2d(2),
    lambda: nn.MaxPool2d(3, stride=2, padding=1),
    lambda: nn.MaxPool2d(3, stride=1),
    lambda: nn.MaxPool2d(2, stride=1, dilation=2),
    lambda: nn.AvgPool2d(2),
    lambda: nn.AvgPool2d(3, stride=2),
    lambda: nn.AvgPool2d(3, stride=1, padding=1),  # padded: hands over to the dense pass
]


@pytest.mark.parametrize("k", range(len(POOLS)))
@pytest.mark.parametrize("norm", ["inf", 2])
def test_pooling_in_patch_mode_equals_dense(k, norm, monkeypatch):
    """Patch mode through MaxPool (the coefficients move to each window's selected element)
    and AveragePool gives the dense pass's CROWN bounds; sampled outputs stay inside them."""
    torch.manual_seed(k)
    m = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), POOLS[k](), nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
                      nn.Conv2d(4, 2, 3, stride=2), nn.ReLU(), nn.Flatten())
    x0 = torch.zeros(1, 2, 12, 12)
    m = nn.Sequential(*m, nn.Linear(m(x0).numel(), 3))
    net = to_network(m, x0)
    md = __import__("copy").deepcopy(m).double()
    x = torch.rand(2, 2, 12, 12, dtype=torch.float64)
    s = pk.sets.LpBall(x, 0.05 if norm == "inf" else 0.4, norm=norm)
    from perturbkit.bounds import patches

    calls = []
    for fn in ("_maxpool_back", "_avgpool_back"):
        orig = getattr(patches, fn)
        monkeypatch.setattr(patches, fn, lambda *a, _o=orig: calls.append(1) or _o(*a))
    a = _bounds(net, s, True, monkeypatch)
    assert bool(calls) == (k != 6), "the pooling did not (or, padded AveragePool, did) stay in patch mode"
    b = _bounds(net, s, False, monkeypatch)
    torch.testing.assert_close(a.lower, b.lower, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(a.upper, b.upper, rtol=1e-9, atol=1e-9)
    g = torch.Generator().manual_seed(0)
    for i in range(2):
        d = torch.rand(400, 2, 12, 12, generator=g, dtype=torch.float64) * 2 - 1
        if norm == "inf":
            d = d * 0.05
        else:
            d = d / d.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * 0.4 * torch.rand(400, 1, 1, 1, generator=g, dtype=torch.float64)
        with torch.no_grad():
            y = md(x[i] + d)
        assert bool((y >= a.lower[i] - 1e-9).all() and (y <= a.upper[i] + 1e-9).all())
