"""alpha-CROWN: sound by sampling, never looser than CROWN, at least as tight as auto_LiRPA's
alpha-CROWN reference (probe_mlp; probe_cnn is run by bench/), warm starts."""
import numpy as np
import pytest
import torch
import torch.nn as nn

import perturbkit as pk
from perturbkit.bounds.alpha_crown import AlphaConfig, alpha_crown
from perturbkit.bounds.engine import make_context
from nets import network
from tests.conftest import DATA


@pytest.mark.parametrize("kind", ["mlp", "cnn", "residual"])
@pytest.mark.parametrize("act", [nn.ReLU, lambda: nn.LeakyReLU(0.2), nn.Sigmoid])
def test_sound_and_never_looser_than_crown(kind, act):
    net, module, shape = network(kind, act)
    torch.manual_seed(3)
    x = torch.rand(2, *shape[1:], dtype=torch.float64)
    s = pk.sets.LpBall(x, 0.1)
    C = pk.margin_spec(torch.tensor([0, 1]), net.n_outputs, dtype=torch.float64)
    crown = pk.bounds(net, s, method="crown", C=C)
    alpha = pk.bounds(net, s, method="alpha-crown", C=C)
    assert (alpha.lower >= crown.lower - 1e-12).all() and (alpha.upper <= crown.upper + 1e-12).all()
    g = torch.Generator().manual_seed(0)
    xs = torch.cat([s.sample(400, generator=g),
                    x + 0.1 * (torch.randint(0, 2, (200, *x.shape), generator=g).double() * 2 - 1)])
    with torch.no_grad():
        ys = module(xs.reshape(-1, *shape[1:])).reshape(xs.shape[0], 2, -1)
    m = torch.einsum("bsn,kbn->kbs", C, ys)
    assert (m >= alpha.lower - 1e-9).all() and (m <= alpha.upper + 1e-9).all()


@pytest.mark.parametrize("act", [nn.ReLU, nn.Tanh])
def test_tighter_than_crown_somewhere(act):
    """ReLU lower slopes and the tangent points of S-shaped activations are optimised."""
    net, module, shape = network("mlp", act)
    x = torch.rand(3, *shape[1:], dtype=torch.float64)
    s = pk.sets.LpBall(x, 0.3)
    crown = pk.bounds(net, s, method="crown")
    alpha = pk.bounds(net, s, method="alpha-crown")
    assert ((alpha.lower - crown.lower) > 1e-6).any()


@pytest.mark.parametrize("name", ["probe_mlp", "probe_cnn"])
def test_as_tight_as_auto_lirpa(name):
    net = pk.load(DATA / "lirpa" / f"{name}.onnx")
    d = np.load(DATA / "lirpa" / f"{name}.npz")
    b = pk.bounds(net, pk.sets.LpBall(torch.from_numpy(d["x"]), float(d["eps"])), method="alpha-crown")
    tol = 1e-6 * np.maximum(1.0, np.abs(d["alpha_CROWN_lower"]))  # float32 rounding
    assert (b.lower.numpy() >= d["alpha_CROWN_lower"] - tol).all()
    assert (b.upper.numpy() <= d["alpha_CROWN_upper"] + tol).all()


def test_warm_start_and_early_stop():
    net, module, shape = network("mlp")
    x = torch.rand(2, *shape[1:], dtype=torch.float64)
    s = pk.sets.LpBall(x, 0.15)
    ctx = make_context(net, s)
    lo1, hi1, alphas = alpha_crown(ctx, None, AlphaConfig(iterations=10))
    assert alphas and all(a.requires_grad is False for d in alphas.values() for a in d.values())
    crown = pk.bounds(net, s, method="crown")
    # one evaluation at the returned parameters reproduces the best iterate: it keeps the
    # gain over CROWN and is bounded by the elementwise best of the run
    ctx = make_context(net, s)
    lo2, hi2, _ = alpha_crown(ctx, None, AlphaConfig(iterations=1), warm_start=alphas)
    gain = lambda lo, hi: float((lo - crown.lower).sum() + (crown.upper - hi).sum())  # noqa: E731
    assert gain(lo2, hi2) > 0.5 * gain(lo1, hi1) > 0
    assert gain(lo2, hi2) <= gain(lo1, hi1) + 1e-9
    # stop as soon as the lower bounds exceed a (trivially reached) threshold
    ctx = make_context(net, s)
    lo3, _, _ = alpha_crown(ctx, None, AlphaConfig(iterations=50, stop_above=-1e9))
    assert torch.isfinite(lo3).all()
