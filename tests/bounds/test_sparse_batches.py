"""Many small boxes at once (branch and bound): the pair-wise intermediate bounds
(pairs.tighten_pairs) equal the shared-index computation, and prior bounds (a parent
box's) only ever tighten intervals and stay sound."""
import torch

import perturbkit as pk
from perturbkit.bounds import engine, pairs
from perturbkit.bounds.crown import crown
from perturbkit.bounds.engine import make_context
from nets import network


def _boxes(shape, n, width, seed=0):
    g = torch.Generator().manual_seed(seed)
    lo = torch.rand(n, *shape[1:], generator=g, dtype=torch.float64)
    return lo, lo + width


def test_pairs_equal_shared(monkeypatch):
    net, module, shape = network("mlp")
    lo, hi = _boxes(shape, 64, 0.05)
    calls = []
    orig = pairs.tighten_pairs
    monkeypatch.setattr(pairs, "tighten_pairs", lambda *a: calls.append(1) or orig(*a))
    ctx = make_context(net, pk.sets.Box(lo, hi))
    a = crown(ctx, None)
    assert calls, "the pair-wise path was not taken"
    monkeypatch.setattr(pairs, "tighten_pairs", lambda *a: (_ for _ in ()).throw(AssertionError))
    ctx = make_context(net, pk.sets.Box(lo, hi))
    import importlib

    crown_mod = importlib.import_module("perturbkit.bounds.crown")

    orig_tighten = engine.tighten
    monkeypatch.setattr(crown_mod, "tighten",
                        lambda ctx, name, itv, idx, mask=None, **kw: orig_tighten(ctx, name, itv, idx, **kw))
    b = crown(ctx, None)
    torch.testing.assert_close(a[0], b[0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(a[1], b[1], rtol=1e-10, atol=1e-10)


def test_prior_bounds_tighten_and_stay_sound():
    net, module, shape = network("cnn")
    lo, hi = _boxes(shape, 8, 0.2, seed=1)
    parent = make_context(net, pk.sets.Box(lo, hi))
    crown(parent, None)
    mid = (lo + hi) / 2
    child_hi = hi.clone()
    child_hi[..., :4] = mid[..., :4]  # half of the box along some coordinates
    plain = make_context(net, pk.sets.Box(lo, child_hi))
    crown(plain, None)
    ctx = make_context(net, pk.sets.Box(lo, child_hi))
    ctx.prior = dict(parent.intervals)
    lb, ub = crown(ctx, None)
    tighter = 0
    for name, itv in ctx.intervals.items():
        if name == net.graph.input_name:
            continue
        assert (itv.lo >= parent.intervals[name].lo).all() and (itv.hi <= parent.intervals[name].hi).all()
        tighter += int((itv.hi - itv.lo < plain.intervals[name].hi - plain.intervals[name].lo - 1e-12).sum())
    assert tighter > 0, "the prior should tighten some intermediate interval here"
    g = torch.Generator().manual_seed(0)
    xs = lo + torch.rand(300, *lo.shape, generator=g, dtype=torch.float64) * (child_hi - lo)
    with torch.no_grad():
        ys = module(xs.reshape(-1, *shape[1:])).reshape(300, lo.shape[0], -1)
    assert (ys >= lb - 1e-9).all() and (ys <= ub + 1e-9).all()
