"""beta-CROWN bounds with split constraints hold on every point of their split region.

For random networks (an MLP, a CNN, a residual block with LeakyReLU) the root bounds are
alpha-CROWN's; then random split patterns (taken from a sampled point, so the region is not
empty, and sometimes mixed with random signs), random slopes in range and random (also
large) multipliers give bounds that every sampled point satisfying the splits must respect,
before and after optimisation.  Float64, tolerance 1e-9."""
import math

import pytest
import torch
from torch import nn

import perturbkit as pk
from perturbkit.bounds.beta_crown import BetaConfig, beta_crown, clamp_intervals
from perturbkit.verify.relu_split import ReluSplitConfig, _domain_context, prepare_root

DT = torch.float64


class _Res(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.a = nn.Linear(n, 10)
        self.b = nn.Linear(10, 10)
        self.c = nn.Linear(10, 3)
        self.act = nn.LeakyReLU(0.1)

    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.c(self.act(self.b(h)) + h)


def _net(kind: str, seed: int):
    torch.manual_seed(seed)
    if kind == "mlp":
        m = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 3))
        shape = (1, 6)
    elif kind == "cnn":
        m = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3))
        shape = (1, 1, 4, 4)
    else:
        m = _Res(6)
        shape = (1, 6)
    m = m.double().eval()
    return pk.load(m, torch.zeros(*shape, dtype=DT)), m


def _pre(net, root, x):
    vals = net.run(net.internal(x.reshape(x.shape[0], *net.sample_shape), x.shape[0]))
    return torch.cat([vals[n.inputs[0]].reshape(x.shape[0], -1)[:, i] for n, i, *_ in root.split.parts()], 1)


@pytest.mark.parametrize("kind", ["mlp", "cnn", "res"])
@pytest.mark.parametrize("seed", range(3))
def test_split_bounds_hold_in_their_region(kind, seed):
    net, model = _net(kind, seed)
    n = net.n_inputs
    g = torch.Generator().manual_seed(seed)
    lo = -0.6 * torch.ones(n, dtype=DT)
    hi = 0.6 * torch.ones(n, dtype=DT)
    C = torch.randn(4, net.n_outputs, generator=g, dtype=DT)
    root = prepare_root(net, lo, hi, C, ReluSplitConfig(root_iterations=5, dtype=DT))
    U = root.split.total
    assert U > 0
    x = lo + (hi - lo) * torch.rand(60000, n, generator=g, dtype=DT)
    with torch.no_grad():
        y = net(x.reshape(-1, *net.sample_shape)).reshape(x.shape[0], -1)
        z = _pre(net, root, x)
    val = y @ C.T  # (P, R)
    # the root bounds hold everywhere
    assert bool((val >= root.lower - 1e-9).all())
    N = 12
    signs = torch.zeros(N, U, dtype=torch.int8)
    for i in range(N):
        k = 1 + i % min(U, 6)
        js = torch.randperm(U, generator=g)[:k]
        p = int(torch.randint(0, x.shape[0], (1,), generator=g))
        s = torch.where(z[p, js] >= 0, 1, -1).to(torch.int8)
        if i % 4 == 3:  # a random (maybe empty) region too
            s = torch.where(torch.rand(k, generator=g) < 0.5, 1, -1).to(torch.int8)
        signs[i, js] = s
    alpha = torch.rand(N, 4, U, generator=g, dtype=DT)
    beta = torch.rand(N, 4, U, generator=g, dtype=DT) * torch.tensor([0.1, 1.0, 10.0], dtype=DT).repeat(4)[:N, None, None]
    A = C.reshape(1, 4, *net.graph.output_shape).expand(N, 4, *net.graph.output_shape)
    for iters, prune in ((0, False), (6, False), (12, True)):
        ctx = _domain_context(root, clamp_intervals(root.intervals, root.split, signs), N)
        # with prune: half the sub-problems count as done at once (they leave the optimisation)
        stop = torch.where(torch.arange(N)[:, None] % 2 == 0, -math.inf, math.inf).expand(N, 4).to(DT) if prune else None
        res = beta_crown(ctx, root.split, signs, A, alpha, beta, BetaConfig(iterations=iters, stop_above=None,
                                                                            prune_every=2), stop_at=stop)
        assert res.lower.shape == (N, 4)
        for i in range(N):
            s = signs[i].to(DT)
            inside = ((z * s) >= 0).all(1)  # every split neuron has its sign (free ones: 0 >= 0)
            if not bool(inside.any()):
                continue
            worst = val[inside].min(0).values
            lb = res.lower[i]
            ok = torch.isnan(lb) | (worst >= lb - 1e-9 * (1 + worst.abs()))
            assert bool(ok.all()), (kind, seed, iters, i, worst, lb)


def test_optimisation_improves_on_the_split_bound():
    """With a split the multipliers move the bound up (or keep it): never below beta = 0."""
    net, _ = _net("mlp", 7)
    n = net.n_inputs
    lo, hi = -torch.ones(n, dtype=DT), torch.ones(n, dtype=DT)
    C = torch.eye(net.n_outputs, dtype=DT)[:1] - torch.eye(net.n_outputs, dtype=DT)[1:2]
    root = prepare_root(net, lo, hi, C, ReluSplitConfig(root_iterations=5, dtype=DT))
    U = root.split.total
    signs = torch.zeros(4, U, dtype=torch.int8)
    signs[0, 0] = 1
    signs[1, 0] = -1
    signs[2, :2] = torch.tensor([1, -1], dtype=torch.int8)
    signs[3, :3] = torch.tensor([-1, -1, 1], dtype=torch.int8)
    A = C.reshape(1, 1, *net.graph.output_shape).expand(4, 1, *net.graph.output_shape)
    alpha = root.alpha.expand(4, -1, -1)
    beta = torch.zeros(4, 1, U, dtype=DT)
    ctx = _domain_context(root, clamp_intervals(root.intervals, root.split, signs), 4)
    base = beta_crown(ctx, root.split, signs, A, alpha, beta, BetaConfig(iterations=0)).lower
    opt = beta_crown(ctx, root.split, signs, A, alpha, beta, BetaConfig(iterations=20, stop_above=None)).lower
    assert bool((opt >= base - 1e-12).all())
    assert math.isfinite(float(opt.min()))


@pytest.mark.parametrize("kind", ["mlp", "cnn", "res"])
@pytest.mark.parametrize("seed", range(3))
def test_refined_intervals_hold_in_their_region(kind, seed):
    """Per-domain CROWN bounds of the splittable neurons (refine_intervals) contain every
    sampled pre-activation of the split region, are never looser than the root's, and a
    domain called empty has no sampled point; beta-CROWN on the refined intervals stays sound."""
    from perturbkit.bounds.beta_crown import compress, refine_intervals

    net, _ = _net(kind, seed)
    n = net.n_inputs
    g = torch.Generator().manual_seed(100 + seed)
    lo, hi = -0.6 * torch.ones(n, dtype=DT), 0.6 * torch.ones(n, dtype=DT)
    C = torch.randn(3, net.n_outputs, generator=g, dtype=DT)
    root = prepare_root(net, lo, hi, C, ReluSplitConfig(root_iterations=5, dtype=DT))
    U = root.split.total
    x = lo + (hi - lo) * torch.rand(60000, n, generator=g, dtype=DT)
    with torch.no_grad():
        y = net(x.reshape(-1, *net.sample_shape)).reshape(x.shape[0], -1)
        z = _pre(net, root, x)
    N = 16
    first = root.split.offsets[1]  # neurons of the first split node: splitting them moves the rest
    signs = torch.zeros(N, U, dtype=torch.int8)
    for i in range(N):
        k = 1 + i % 4
        js = torch.randperm(max(1, first), generator=g)[:k] if first else torch.randperm(U, generator=g)[:k]
        p = int(torch.randint(0, x.shape[0], (1,), generator=g))
        s = torch.where(z[p, js] >= 0, 1, -1).to(torch.int8)
        if i % 4 == 3:
            s = torch.where(torch.rand(k, generator=g) < 0.5, 1, -1).to(torch.int8)
        signs[i, js] = s
    ctx = _domain_context(root, clamp_intervals(root.intervals, root.split, signs), N)
    rlo, rhi = compress(ctx.intervals, root.split, N)
    flo, fhi, empty = refine_intervals(ctx, root.split, signs)
    assert bool((flo >= rlo - 1e-12).all() and (fhi <= rhi + 1e-12).all())
    if kind == "mlp":  # the splits of the first layer do move the second's bounds
        assert float((fhi - flo).sum()) < float((rhi - rlo).sum()) - 1e-6
    checked = 0
    for i in range(N):
        inside = ((z * signs[i].to(DT)) >= 0).all(1)
        if not bool(inside.any()):
            continue
        assert not bool(empty[i]), (kind, seed, i)
        zi = z[inside]
        assert bool((zi >= flo[i] - 1e-9).all() and (zi <= fhi[i] + 1e-9).all()), (kind, seed, i)
        checked += 1
    assert checked >= N // 2
    A = C.reshape(1, 3, *net.graph.output_shape).expand(N, 3, *net.graph.output_shape)
    ctx2 = _domain_context(root, clamp_intervals(root.intervals, root.split, signs, flo, torch.maximum(fhi, flo)), N)
    res = beta_crown(ctx2, root.split, signs, A, root.alpha.expand(N, -1, -1), torch.zeros(N, 3, U, dtype=DT),
                     BetaConfig(iterations=8, stop_above=None))
    val = y @ C.T
    for i in range(N):
        inside = ((z * signs[i].to(DT)) >= 0).all(1)
        if bool(inside.any()):
            worst = val[inside].min(0).values
            assert bool((worst >= res.lower[i] - 1e-9 * (1 + worst.abs())).all()), (kind, seed, i)
