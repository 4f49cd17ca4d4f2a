"""ReLU splitting in branch and bound: every child's bound holds on its part of the parent.

A child of a split of neuron z is the parent's box with z's sign fixed and the half-space
that the parent's linear bound of z implies.  Its lower bound must hold at every point of
the parent box where the sign holds (sampled), down to grandchildren (two splits)."""
import pytest
import torch
from torch import nn

import perturbkit as pk
from perturbkit.verify import bab


def _net(seed: int, n_in: int = 3):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(n_in, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(),
                      nn.Linear(12, 2)).double().eval()
    return pk.load(m, torch.zeros(1, n_in, dtype=torch.float64))


def _root(neurons, lo, hi, K):
    n = lo.numel()
    dt = lo.dtype
    return bab._Boxes(lo[None], hi[None], torch.zeros(1, K, n, dtype=dt), torch.zeros(1, K, dtype=dt),
                      torch.zeros(1, dtype=torch.int64), torch.zeros(1, neurons.total, dtype=torch.int8),
                      torch.full((1, 2), -float("inf"), dtype=dt), torch.full((1, K), -1, dtype=torch.int64))


def _split_all(net, neurons, bx, C, d, owner):
    ctx, lb, A, empty = bab.bound_boxes(net, neurons, bx, C, record=True)
    margin = lb - d
    per_clause = bab.clause_max(margin, owner, 1)
    sel = torch.arange(len(bx))
    unstable, score = bab._neuron_scores(ctx, neurons, sel, margin, per_clause, owner)
    mask = unstable > 0
    assert bool(mask.all())
    return lb, bab._Boxes.cat(bab._relu_children(ctx, neurons, bx, sel, mask, score))


def _setup(seed: int):
    """A random 3-input net on [-0.7, 0.7]^3, the rows +-(y_0 - y_1) of one clause, and
    40 000 sample points of the box."""
    net = _net(seed)
    neurons = bab._Neurons(net)
    dt = torch.float64
    lo = -torch.ones(3, dtype=dt) * 0.7
    hi = torch.ones(3, dtype=dt) * 0.7
    C = torch.tensor([[1.0, -1.0], [-1.0, 1.0]], dtype=dt)
    d = torch.zeros(2, dtype=dt)
    owner = torch.zeros(2, dtype=torch.int64)
    x = lo + (hi - lo) * torch.rand(40000, 3, generator=torch.Generator().manual_seed(seed), dtype=dt)
    return net, neurons, lo, hi, C, d, owner, x


def _pre_activations(net, neurons, x):
    vals = net.run(x)
    return torch.cat([vals[node.inputs[0]].reshape(x.shape[0], -1) for node in neurons.nodes], 1)


@pytest.mark.parametrize("seed", range(6))
def test_children_bounds_hold_where_their_signs_hold(seed):
    net, neurons, lo, hi, C, d, owner, x = _setup(seed)
    dt = torch.float64
    root = _root(neurons, lo, hi, K=4)
    with torch.no_grad():
        y = net(x)
        z = _pre_activations(net, neurons, x)
    parent_lb, kids = _split_all(net, neurons, root, C, d, owner)
    assert bool(((y @ C.T) >= parent_lb - 1e-9).all())
    _, grandkids = _split_all(net, neurons, kids, C, d, owner)
    for level in (kids, grandkids):
        ctx, lb, _, empty = bab.bound_boxes(net, neurons, level, C)
        covered = torch.zeros(x.shape[0], dtype=torch.bool)
        for i in range(len(level)):
            s = level.signs[i].to(dt)
            holds = ((z * s >= 0) | (s == 0)).all(1)
            covered |= holds
            if bool(holds.any()):
                assert not bool(empty[i]), "a child with points was declared empty"
                assert bool(((y[holds] @ C.T) >= lb[i] - 1e-9).all())
                # the tightened box still holds those points
                assert bool(((x[holds] >= level.lo[i] - 1e-9) & (x[holds] <= level.hi[i] + 1e-9)).all())
        assert bool(covered.all()), "the children must cover the parent"


@pytest.mark.parametrize("seed", range(6))
def test_inherited_signs_and_refreshed_cuts_hold_on_descendants(seed):
    """After bounding, an open sub-problem fixes the sign of every neuron its bounds show
    stable and refreshes its cuts from its own bounds; its input-split children inherit both.
    At every sampled point of a child's box where the child's *split* signs hold, all its
    fixed signs, all its cuts and its lower bound must hold."""
    net, neurons, lo, hi, C, d, owner, x = _setup(seed)
    dt = torch.float64
    width0 = hi - lo
    with torch.no_grad():
        y = net(x)
        z = _pre_activations(net, neurons, x)
    _, level = _split_all(net, neurons, _root(neurons, lo, hi, K=4), C, d, owner)
    checked = 0
    for _ in range(3):
        ctx, lb, A, empty = bab.bound_boxes(net, neurons, level, C, record=True)
        sel = torch.nonzero(~empty).flatten()
        level = level.take(sel)
        level.signs = bab._with_stable_signs(ctx, neurons, sel, level.signs)
        bab._refresh_cuts(ctx, neurons, sel, level)
        margin = lb[sel] - d
        level = bab._Boxes.cat(bab._input_children(level, A[sel], margin, bab.clause_max(margin, owner, 1), owner,
                                                   width0))
        ctx, lb, _, empty = bab.bound_boxes(net, neurons, level, C)
        for i in range(len(level)):
            inside = ((x >= level.lo[i] - 1e-12) & (x <= level.hi[i] + 1e-12)).all(1)
            split = level.neuron[i][level.neuron[i] >= 0]
            s = level.signs[i, split].to(dt)
            pts = inside & (z[:, split] * s >= 0).all(1)
            if not bool(pts.any()):
                continue
            checked += int(pts.sum())
            assert not bool(empty[i]), "a child with points was declared empty"
            fixed = level.signs[i].to(dt)
            assert bool(((z[pts] * fixed >= -1e-9) | (fixed == 0)).all()), "an inherited sign does not hold"
            k = int(level.used[i])
            cut = x[pts] @ level.H[i, :k].T + level.g[i, :k]
            assert bool((cut >= -1e-9).all()), "a refreshed cut excludes a point of the sub-problem"
            assert bool(((y[pts] @ C.T) >= lb[i] - 1e-9).all())
    assert checked > 1000


def test_input_sensitivity_is_the_first_layers_column_norm():
    """sens_j = sum_k |dz_k/dx_j| over the first layer's pre-activations, normalisation
    included (a Sub/Div in front scales it), a dimension the network ignores gets a floor."""
    torch.manual_seed(0)
    lin = nn.Linear(4, 6).double()
    with torch.no_grad():
        lin.weight[:, 3] = 0.0

    class Normalised(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = lin
            self.tail = nn.Sequential(nn.ReLU(), nn.Linear(6, 2).double())

        def forward(self, x):
            return self.tail(self.lin((x - 0.5) / torch.tensor([1.0, 2.0, 4.0, 1.0], dtype=torch.float64)))

    net = pk.load(Normalised().eval(), torch.zeros(1, 4, dtype=torch.float64))
    sens = bab.input_sensitivity(net, torch.full((4,), 0.3, dtype=torch.float64))
    expect = lin.weight.detach().abs().sum(0) / torch.tensor([1.0, 2.0, 4.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(sens[:3], expect[:3])
    assert 0 < float(sens[3]) <= 1e-12 * float(sens.max()) * 1.0001
