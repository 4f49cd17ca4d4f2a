"""The bundled digits Transformer (models/digits_transformer.onnx, train_transformer.py)."""
from __future__ import annotations

import torch

import perturbkit as pk
from perturbkit.attacks import PGD, ThreatModel
from perturbkit.bounds.alpha_crown import AlphaConfig
from perturbkit.models import bundled_path, load_digits_test


def test_accuracy_and_sound_certificates():
    net = pk.load(str(bundled_path("digits-transformer")))
    assert {"BilinearMatMul", "Exp", "Gelu", "KnownRange"} <= set(net.graph.op_types())
    x, y = load_digits_test()
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    with torch.no_grad():
        acc = float((net(x).argmax(1) == y).float().mean())
    assert acc >= 0.95, acc
    xs, ys = x[:16], y[:16]
    eps = 0.01
    ball = pk.sets.LpBall(xs, eps, domain=(0, 1))
    C = pk.margin_spec(ys, 10)
    crown = pk.bounds(net, ball, method="crown", C=C)
    alpha = pk.bounds(net, ball, method="alpha-crown", C=C, alpha=AlphaConfig(optimize_intermediate=False))
    assert (alpha.lower >= crown.lower - 1e-6).all()
    certified = (alpha.lower > 0).all(1)
    assert int(certified.sum()) >= 8  # most of them (15 of 16 when measured)
    # no certified digit is broken, and PGD's points and random samples respect the margin bounds
    r = PGD(ThreatModel(eps=eps, domain=(0, 1)), steps=20, restarts=2, seed=0)(net, xs, ys)
    assert not bool((r.success & certified).any())
    g = torch.Generator().manual_seed(0)
    pts = torch.cat([r.x_adv, (xs + eps * (2 * torch.rand(xs.shape, generator=g) - 1)).clamp(0, 1)])
    with torch.no_grad():
        m = torch.einsum("bsn,bn->bs", C.repeat(2, 1, 1), net(pts))
    assert (m >= crown.lower.repeat(2, 1) - 1e-4).all()


def test_crown_ibp_not_looser_than_ibp():
    # CROWN-IBP's backward pass meets reciprocals whose IBP interval touches 0 (NaN
    # coefficients); the output interval still bounds it, and it stays sound
    net = pk.load(str(bundled_path("digits-transformer")))
    x, y = load_digits_test()
    xs, ys = torch.from_numpy(x[:4]), torch.from_numpy(y[:4])
    ball = pk.sets.LpBall(xs, 0.01, domain=(0, 1))
    C = pk.margin_spec(ys, 10)
    ibp = pk.bounds(net, ball, method="ibp", C=C)
    cibp = pk.bounds(net, ball, method="crown-ibp", C=C)
    assert torch.isfinite(cibp.lower).all() and torch.isfinite(cibp.upper).all()
    assert (cibp.lower >= ibp.lower - 1e-5).all() and (cibp.upper <= ibp.upper + 1e-5).all()
    g = torch.Generator().manual_seed(1)
    rep = xs.repeat(50, *[1] * (xs.dim() - 1))
    pts = (rep + 0.01 * (2 * torch.rand(rep.shape, generator=g) - 1)).clamp(0, 1)
    with torch.no_grad():
        m = torch.einsum("bsn,bn->bs", C.repeat(50, 1, 1), net(pts))
    assert (m >= cibp.lower.repeat(50, 1) - 1e-4).all() and (m <= cibp.upper.repeat(50, 1) + 1e-4).all()
