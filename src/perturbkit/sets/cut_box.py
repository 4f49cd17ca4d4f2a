"""``CutBox(lower, upper, H, g)``: a box cut by half-spaces, ``{lo <= x <= hi : H x + g >= 0}``.

Branch and bound with ReLU splitting makes these: splitting neuron ``z`` of a sub-box into
``z >= 0`` and ``z <= 0`` keeps, in each child, the half-space implied by a linear bound of
``z`` over the parent (``U(x) >= 0`` resp. ``L(x) <= 0``), so later bounds only look at the
part of the box where the split can hold.

Linear minimisation (:meth:`CutBox.min_linear`) is by Lagrangian duality: for any
``mu >= 0``, ``min_{x in box} (a - mu^T H) x - mu^T g`` is a lower bound of ``min a x`` over
the cut box.  For one half-space the dual ``phi(mu)`` is concave and piecewise linear with
a breakpoint where a coefficient ``a_i - mu h_i`` changes sign; its slope drops by
``|h_i| (hi_i - lo_i)`` there, so the best ``mu`` is found exactly by sorting the
breakpoints and a cumulative sum (O(n log n)): this is the exact minimum over box ∩
half-space.  With several half-spaces we do block-coordinate ascent (each ``mu_k`` in turn,
exactly, the others fixed; ``sweeps`` rounds): every iterate is a valid lower bound, the
last one is returned.  An empty set makes ``phi`` unbounded; we then stop at the last
breakpoint (a finite, still valid, bound) and :meth:`CutBox.is_empty` reports emptiness a
single half-space can witness.

The box itself is tightened at construction (``min``/``max`` of every coordinate over the
cut box, by the same dual), so interval propagation benefits from the cuts too.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from perturbkit.errors import InputError
from perturbkit.sets.base import PerturbationSet

Tensor = torch.Tensor


def _dual_one(a: Tensor, h: Tensor, g: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """Best ``mu >= 0`` for ``min_{x in [lo, hi]} (a - mu h) x - mu g``.

    a: (B, S, n); h: (B, 1, n); g: (B, 1); lo, hi: (B, 1, n)  ->  mu (B, S).
    """
    w = hi - lo
    # slope of phi just right of mu = 0: -g - h . x*(0+), x* minimising (a - mu h) x
    c0 = torch.where(a != 0, a, -h)  # sign of a_i - mu h_i for small mu > 0
    x0 = torch.where(c0 > 0, lo, hi)
    slope0 = -g - (h * x0).sum(-1)  # (B, S)
    hs = torch.where(h != 0, h, torch.ones_like(h))
    t = torch.where((h != 0) & (a * h > 0), a / hs, torch.full_like(a, torch.inf))  # breakpoints > 0
    order = t.argsort(-1)
    ts = t.gather(-1, order)
    drop = (h.abs() * w).expand_as(a).gather(-1, order)
    after = slope0.unsqueeze(-1) - drop.cumsum(-1)  # slope right of each sorted breakpoint
    # mu* = first breakpoint after which the slope is <= 0 (0 when slope0 <= 0)
    stop = (after <= 0) & torch.isfinite(ts)
    first = torch.where(stop.any(-1), stop.to(torch.int8).argmax(-1), torch.full_like(slope0, -1, dtype=torch.int64))
    finite = torch.where(torch.isfinite(ts), ts, torch.zeros_like(ts))
    last = finite.max(-1).values  # unbounded dual (empty set): stop at the last breakpoint
    mu = torch.where(first >= 0, ts.gather(-1, first.clamp_min(0).unsqueeze(-1)).squeeze(-1), last)
    return torch.where(slope0 <= 0, torch.zeros_like(mu), mu)


def _box_min(c: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """min over [lo, hi] of c x: (B, S, n), (B, 1, n) -> (B, S)."""
    return torch.minimum(c * lo, c * hi).sum(-1)


def cut_min_linear(A: Tensor, lo: Tensor, hi: Tensor, H: Tensor, g: Tensor, sweeps: int = 2) -> Tensor:
    """Lower bound of ``min A x`` over ``{lo <= x <= hi, H x + g >= 0}`` (exact for K = 1).

    A: (B, S, n); lo, hi: (B, n); H: (B, K, n); g: (B, K)  ->  (B, S).
    """
    B, S, n = A.shape
    K = H.shape[1]
    lo3, hi3 = lo.unsqueeze(1), hi.unsqueeze(1)
    mu = torch.zeros(B, S, K, dtype=A.dtype, device=A.device)
    for _ in range(sweeps if K > 1 else 1):
        for k in range(K):
            others = mu.clone()
            others[:, :, k] = 0
            a = A - others @ H  # (B, S, n)
            mu[:, :, k] = _dual_one(a, H[:, k:k + 1], g[:, k:k + 1], lo3, hi3)
    c = A - mu @ H
    return _box_min(c, lo3, hi3) - (mu * g.unsqueeze(1)).sum(-1)


@dataclass(frozen=True, init=False)
class CutBox(PerturbationSet):
    """``{lower <= x <= upper : H x + g >= 0}``, flattened: lower/upper (B, n), H (B, K, n), g (B, K)."""

    lower: Tensor
    upper: Tensor
    H: Tensor
    g: Tensor
    empty: Tensor
    is_box = False

    def __init__(self, lower: Tensor, upper: Tensor, H: Tensor, g: Tensor, *, tighten: bool = True):
        if lower.dim() != 2 or lower.shape != upper.shape:
            raise InputError("CutBox bounds must be (B, n) tensors of one shape")
        B, n = lower.shape
        if H.shape[0] != B or H.shape[2] != n or g.shape != H.shape[:2]:
            raise InputError(f"CutBox half-spaces must be H (B, K, n) and g (B, K) for B={B}, n={n}")
        best = torch.maximum(H * lower.unsqueeze(1), H * upper.unsqueeze(1)).sum(-1) + g
        empty = (best < 0).any(-1)  # one half-space misses the box
        if tighten and H.shape[1]:
            E = torch.eye(n, dtype=lower.dtype, device=lower.device).unsqueeze(0).expand(B, n, n)
            both = cut_min_linear(torch.cat([E, -E], 1), lower, upper, H, g)
            new_lo, new_hi = both[:, :n], -both[:, n:]
            empty = empty | (new_lo > upper).any(1) | (new_hi < lower).any(1) | (new_lo > new_hi).any(1)
            lower = torch.minimum(torch.maximum(lower, new_lo), upper)
            upper = torch.maximum(torch.minimum(upper, new_hi), lower)  # empty sets collapse
        object.__setattr__(self, "empty", empty)
        object.__setattr__(self, "lower", lower)
        object.__setattr__(self, "upper", upper)
        object.__setattr__(self, "H", H)
        object.__setattr__(self, "g", g)
        # the half-spaces that cut the box at all (the others hold on all of it and change no
        # minimum), moved to the front of each row: min_linear only works on those
        live = (torch.minimum(H * lower.unsqueeze(1), H * upper.unsqueeze(1)).sum(-1) + g) < 0  # (B, K)
        rows = torch.nonzero(live.any(1)).flatten()
        k = int(live.sum(1).max()) if rows.numel() else 0
        order = torch.sort((~live[rows]).to(torch.int8), dim=1, stable=True).indices[:, :k]
        keep = live[rows].gather(1, order).to(H.dtype)  # slots past a row's live cuts: zero
        object.__setattr__(self, "_rows", rows)
        object.__setattr__(self, "_H_live", H[rows].gather(1, order.unsqueeze(2).expand(-1, -1, n)) * keep.unsqueeze(2))
        object.__setattr__(self, "_g_live", g[rows].gather(1, order) * keep)

    @property
    def reference(self) -> Tensor:
        return self.lower

    def flatten(self, batch: int, n: int) -> "CutBox":
        if self.lower.shape != (batch, n):
            raise InputError(f"CutBox of shape {tuple(self.lower.shape)} used with batch {batch} and {n} inputs")
        return self

    def box(self) -> tuple[Tensor, Tensor]:
        return self.lower, self.upper

    def index(self, rows: Tensor) -> "CutBox":
        out = CutBox(self.lower[rows], self.upper[rows], self.H[rows], self.g[rows], tighten=False)
        object.__setattr__(out, "empty", self.empty[rows] | out.empty)
        return out

    def tile(self, k: int) -> "CutBox":
        out = CutBox(self.lower.repeat(k, 1), self.upper.repeat(k, 1), self.H.repeat(k, 1, 1),
                     self.g.repeat(k, 1), tighten=False)
        object.__setattr__(out, "empty", self.empty.repeat(k) | out.empty)
        return out

    def is_empty(self) -> Tensor:
        """(B,) True where the set is certainly empty: one half-space misses the box, or the
        tightening found a coordinate range that is empty.  (False does not prove non-empty.)"""
        return self.empty

    def min_linear(self, A: Tensor) -> Tensor:
        mid, rad = (self.upper + self.lower) / 2, (self.upper - self.lower) / 2
        out = (A @ mid.unsqueeze(-1)).squeeze(-1) - (A.abs() @ rad.unsqueeze(-1)).squeeze(-1)
        rows = self._rows
        if rows.numel():  # rows with a half-space that cuts the box: the dual, on those only
            out = out.index_put((rows,), cut_min_linear(A[rows], self.lower[rows], self.upper[rows], self._H_live,
                                                        self._g_live))
        return out

    def sample(self, k: int, generator: torch.Generator | None = None) -> Tensor:
        """``k`` points per batch entry (k, B, n) by rejection from the box; entries whose
        points all miss after 64 rounds (tiny or empty sets) keep box points."""
        lo, hi = self.lower, self.upper
        out = lo + torch.rand((k, *lo.shape), generator=generator, dtype=lo.dtype).to(lo.device) * (hi - lo)
        ok = self.contains(out)
        for _ in range(64):
            if bool(ok.all()):
                break
            fresh = lo + torch.rand((k, *lo.shape), generator=generator, dtype=lo.dtype).to(lo.device) * (hi - lo)
            take = ~ok & self.contains(fresh)
            out = torch.where(take.unsqueeze(-1), fresh, out)
            ok = ok | take
        return out

    def contains(self, x: Tensor, tol: float = 0.0) -> Tensor:
        """x (..., B, n) -> (..., B) membership."""
        inside = ((x >= self.lower - tol) & (x <= self.upper + tol)).all(-1)
        cut = ((x.unsqueeze(-2) * self.H).sum(-1) + self.g >= -tol).all(-1)
        return inside & cut

    def to(self, dtype=None, device=None) -> "CutBox":
        return CutBox(self.lower.to(dtype=dtype, device=device), self.upper.to(dtype=dtype, device=device),
                      self.H.to(dtype=dtype, device=device), self.g.to(dtype=dtype, device=device), tighten=False)
