"""CutBox: a box cut by half-spaces; its linear minimum against an LP solver."""
import numpy as np
import pytest
import torch

from perturbkit.sets.cut_box import CutBox, cut_min_linear

scipy_opt = pytest.importorskip("scipy.optimize")


def _case(seed: int, K: int, n: int):
    g = torch.Generator().manual_seed(seed)
    dt = torch.float64
    lo = torch.randn(1, n, generator=g, dtype=dt)
    hi = lo + torch.rand(1, n, generator=g, dtype=dt) * 2
    H = torch.randn(1, K, n, generator=g, dtype=dt)
    H[torch.rand(H.shape, generator=g, dtype=dt) < 0.2] = 0
    x0 = lo + (hi - lo) * torch.rand(1, n, generator=g, dtype=dt)
    gg = -(H @ x0[0]).reshape(1, K) + torch.rand(1, K, generator=g, dtype=dt) * 0.5  # x0 is inside
    A = torch.randn(1, 5, n, generator=g, dtype=dt)
    A[torch.rand(A.shape, generator=g, dtype=dt) < 0.2] = 0
    return lo, hi, H, gg, A


def _lp(a, lo, hi, H, g):
    r = scipy_opt.linprog(a.numpy(), A_ub=-H.numpy(), b_ub=g.numpy(), bounds=list(zip(lo.numpy(), hi.numpy())),
                          method="highs")
    assert r.status == 0
    return r.fun


@pytest.mark.parametrize("seed", range(40))
def test_one_cut_is_exact(seed):
    lo, hi, H, g, A = _case(seed, 1, 1 + seed % 6)
    lb = cut_min_linear(A, lo, hi, H, g)
    for s in range(A.shape[1]):
        assert lb[0, s].item() == pytest.approx(_lp(A[0, s], lo[0], hi[0], H[0], g[0]), abs=1e-9)


@pytest.mark.parametrize("seed", range(40))
@pytest.mark.parametrize("K", [2, 4])
def test_several_cuts_are_sound_and_tighter_than_the_box(seed, K):
    lo, hi, H, g, A = _case(100 + seed, K, 1 + seed % 6)
    lb = cut_min_linear(A, lo, hi, H, g)
    box = cut_min_linear(A, lo, hi, H[:, :0], g[:, :0])
    for s in range(A.shape[1]):
        assert lb[0, s].item() <= _lp(A[0, s], lo[0], hi[0], H[0], g[0]) + 1e-9
        assert lb[0, s].item() >= box[0, s].item() - 1e-12


def test_tightened_box_and_sampling_stay_in_the_set():
    lo, hi, H, _, _ = _case(7, 1, 4)
    g = -(H @ ((lo + hi) / 2)[0]).reshape(1, 1)  # the cut passes through the centre
    s = CutBox(lo, hi, H, g)
    assert (s.lower >= lo).all() and (s.upper <= hi).all()
    assert ((s.upper - s.lower) < (hi - lo) - 1e-9).any()
    pts = s.sample(500, torch.Generator().manual_seed(0))
    assert bool(s.contains(pts, tol=1e-12).all())
    # with one cut, every coordinate's new range is the LP's optimum
    for i in range(lo.shape[1]):
        e = torch.zeros(lo.shape[1], dtype=lo.dtype)
        e[i] = 1
        assert s.lower[0, i].item() == pytest.approx(_lp(e, lo[0], hi[0], H[0], g[0]), abs=1e-7)
        assert s.upper[0, i].item() == pytest.approx(-_lp(-e, lo[0], hi[0], H[0], g[0]), abs=1e-7)


def test_empty_set_is_reported():
    lo = torch.zeros(1, 2, dtype=torch.float64)
    hi = torch.ones(1, 2, dtype=torch.float64)
    H = torch.tensor([[[1.0, 1.0]]], dtype=torch.float64)
    g = torch.tensor([[-3.0]], dtype=torch.float64)  # x0 + x1 >= 3: misses the unit square
    assert bool(CutBox(lo, hi, H, g).is_empty().all())
    assert not bool(CutBox(lo, hi, H, torch.tensor([[-1.5]], dtype=torch.float64)).is_empty().any())


@pytest.mark.parametrize("seed", range(12))
def test_min_linear_skips_half_spaces_that_do_not_cut_the_box(seed):
    """A batch mixing rows without cuts, rows whose cuts all hold on the whole box, and rows
    with one live cut among redundant ones (in any slot): CutBox.min_linear works on the live
    cuts only, and must still equal the LP over the whole set (one live cut: exact)."""
    g = torch.Generator().manual_seed(seed)
    dt = torch.float64
    B, K, n = 6, 3, 1 + seed % 5
    lo = torch.randn(B, n, generator=g, dtype=dt)
    hi = lo + torch.rand(B, n, generator=g, dtype=dt) * 2
    H = torch.randn(B, K, n, generator=g, dtype=dt)
    mid = (lo + hi) / 2
    slack = (H.abs() * (hi - lo).unsqueeze(1)).sum(-1)  # a cut offset by this holds on all the box
    gg = -(H @ mid.unsqueeze(-1)).squeeze(-1) + slack
    H[0] = 0  # row 0: no cuts at all (zero slots)
    gg[0] = 0
    live = seed % K  # rows 2..: one live cut (through the box's centre), in slot `live`
    gg[2:, live] = -(H[2:, live] * mid[2:]).sum(-1)
    A = torch.randn(B, 4, n, generator=g, dtype=dt)
    s = CutBox(lo, hi, H, gg, tighten=False)
    assert s._rows.tolist() == [2, 3, 4, 5]
    lb = s.min_linear(A)
    full = cut_min_linear(A, lo, hi, H, gg)
    for b in range(B):
        for r in range(A.shape[1]):
            exact = _lp(A[b, r], lo[b], hi[b], H[b], gg[b])
            assert lb[b, r].item() == pytest.approx(exact, abs=1e-9)
            assert full[b, r].item() <= exact + 1e-9
