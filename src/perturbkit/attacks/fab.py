"""FAB: the Fast Adaptive Boundary attack, untargeted and targeted (FAB-T), Linf / L2 / L1.

Croce & Hein 2020, "Minimally distorted adversarial examples with a fast adaptive boundary
attack" (ICML); FAB-T as used in AutoAttack (Croce & Hein 2020, "Reliable evaluation of
adversarial robustness with an ensemble of diverse parameter-free attacks").

FAB looks for the adversarial point *closest* to ``x``.  At the iterate ``x1`` it linearises
the decision boundary between the true class ``y`` and every other class ``j``::

    f_j(z) - f_y(z) ~ df_j + dg_j . (z - x1),   df_j = f_j(x1) - f_y(x1),  dg_j = grad of it

and picks the class whose linearised boundary is nearest in the threat's norm (distance
``|df_j| / ||dg_j||_q``, q the dual norm).  That hyperplane ``{z : w . z = b}`` with
``w = dg_j``, ``b = dg_j . x1 - df_j``, intersected with the input box, is where both the
iterate and the original point are projected (:func:`project_hyperplane_box`, the paper's
Sec. 3.1 problem ``min ||d||_p s.t. w . (t + d) = b, t + d in box``), giving ``d1`` (from
``x1``) and ``d2`` (from ``x``).  The step is biased towards the original point and
extrapolated a little beyond the boundary::

    alpha = min(||d1|| / (||d1|| + ||d2||), alpha_max)
    x1 <- clip((1 - alpha) (x1 + eta d1) + alpha (x + eta d2))

and when ``x1`` is adversarial it is recorded (if closer than the best so far) and pulled
back, ``x1 <- x + beta (x1 - x)``, so that the search continues on the near side of the
boundary and the norm keeps shrinking.  Restarts after the first start at a random point at
distance ``min(best, eps) / 2`` from ``x`` (AutoAttack's setting), clipped to the domain.

FAB-T (``targeted=True``): for the ``k``-th most likely class at the clean point, ``k = 2, 3,
..., n_target_classes + 1`` in turn, linearise only ``f_t - f_y`` (one gradient per step
instead of one per class), on the points not yet fooled within ``eps``; success is still
misclassification.  Under a *targeted* threat model (targets given) the boundary is
``f_t - max_{j != t} f_j`` and success means predicting the target.

The threat model has a fixed ``eps``: a point counts as broken when an adversarial point
within ``eps`` has been found.  Restarts and further target classes run only on the points
not yet broken (per-point early stopping across runs); on the CPU, with one restart (every
run starts at ``x``, so the runs are independent), the runs of several target classes on
few points go in one batch of up to ``CPU_ROWS`` rows (a small batch costs mostly the
model's fixed cost per call): each point keeps the closest point of its runs (the earliest
run's on ties), and a point broken by one run of a batch still finishes the others there
(which can only shrink its norm; with ``min_norm=False`` they stop with it).  Within a run
every point keeps iterating to shrink its norm (the paper's minimum-norm behaviour);
``min_norm=False`` stops a point as soon as it is broken within ``eps`` (same robust
accuracy, fewer gradients).

Shapes: ``x`` (B, *shape), ``y`` (B,); hyperplanes ``w`` (N, n), ``b`` (N,); points (N, n).
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from perturbkit.attacks.base import CPU_ROWS, Attack, Classifier, ThreatModel
from perturbkit.attacks.losses import fooled
from perturbkit.attacks.norms import lp_norm, sort_rows
from perturbkit.errors import InputError

Tensor = torch.Tensor

#: stands in for an unbounded side of the box in the (float64) projection
_BIG = 1e100


def _room(t: Tensor, w: Tensor, domain: Optional[tuple[float, float]]) -> Tensor:
    """How far each coordinate may move in the direction of ``sign(w)`` inside the box (N, n) >= 0.

    Where ``w_i = 0`` the value is arbitrary (here the room downwards): such a coordinate
    adds nothing to ``w . d`` and its step is ``sign(w_i) * ... = 0`` in every projection."""
    if domain is None:
        return torch.full_like(t, _BIG)
    up = (domain[1] - t).clamp_min(0)
    down = (t - domain[0]).clamp_min(0)
    return torch.where(w > 0, up, down)


def _first_reaching(cum: Tensor, c: Tensor) -> Tensor:
    """Index of the first column where the nondecreasing ``cum`` (N, n) reaches ``c`` (N,): (N, 1)."""
    k = (cum < c[:, None]).sum(1, keepdim=True)
    return k.clamp_max(cum.shape[1] - 1)


def _proj_linf(a: Tensor, room: Tensor, c: Tensor) -> Tensor:
    """Smallest ``r`` with ``sum_i a_i min(r, room_i) = c``: then ``|d_i| = min(r, room_i)``.

    ``g(r) = sum_i a_i min(r, room_i)`` is piecewise linear and nondecreasing with kinks at
    the sorted ``room``; on the segment ending at the k-th kink it is
    ``sum_{j<k} a_j room_j + r sum_{j>=k} a_j``."""
    s, order = sort_rows(room)
    a_s = a.gather(1, order)
    as_ = a_s * s
    before = as_.cumsum(1) - as_  # sum_{j<k} a_j room_j
    tail = a_s.flip(1).cumsum(1).flip(1)  # sum_{j >= k} a_j
    k = _first_reaching(before + s * tail, c)  # g at each kink
    r = (c[:, None] - before.gather(1, k)) / tail.gather(1, k).clamp_min(1e-300)
    return torch.minimum(r, room)


def _proj_l2(a: Tensor, room: Tensor, c: Tensor) -> Tensor:
    """KKT of ``min ||d||_2``: ``|d_i| = min(lam a_i, room_i)`` with ``lam`` the root of the
    nondecreasing piecewise-linear ``h(lam) = sum_i a_i min(lam a_i, room_i) = c`` (kinks at
    ``room_i / a_i``, sorted)."""
    kink = torch.where(a > 0, room / a.clamp_min(1e-300), torch.full_like(a, math.inf))
    s, order = sort_rows(kink)
    a_s, r_s = a.gather(1, order), room.gather(1, order)
    full = (a_s * r_s).cumsum(1)  # sum_{j<=k} a_j room_j
    tail2 = (a_s * a_s).flip(1).cumsum(1).flip(1)  # sum_{j>=k} a_j^2
    after = tail2 - a_s * a_s
    h = full + torch.where(after > 0, s * after, torch.zeros_like(s))
    k = _first_reaching(h, c)
    before = (full - a_s * r_s).gather(1, k)
    lam = (c[:, None] - before) / tail2.gather(1, k).clamp_min(1e-300)
    return torch.minimum(lam * a, room)


def _proj_l1(a: Tensor, room: Tensor, c: Tensor) -> Tensor:
    """The linear program ``min ||d||_1``: fill the coordinates of largest ``a_i`` first (each
    unit of ``|d_i|`` buys ``a_i`` of progress), up to their room."""
    a_s, order = sort_rows(a, descending=True)
    r_s = room.gather(1, order)
    cum = (a_s * r_s).cumsum(1)
    k = _first_reaching(cum, c)
    rank = torch.arange(a.shape[1], device=a.device).unsqueeze(0)
    before = (cum - a_s * r_s).gather(1, k)
    part = ((c[:, None] - before) / a_s.gather(1, k).clamp_min(1e-300)).clamp_min(0)
    mag_s = torch.where(rank < k, r_s, torch.where(rank == k, torch.minimum(part, r_s), torch.zeros_like(r_s)))
    return torch.zeros_like(mag_s).scatter(1, order, mag_s)


_PROJECTIONS = {math.inf: _proj_linf, 2.0: _proj_l2, 1.0: _proj_l1}
_DUAL = {math.inf: 1.0, 2.0: 2.0, 1.0: math.inf}


def project_hyperplane_box(t: Tensor, w: Tensor, b: Tensor, p: float,
                           domain: Optional[tuple[float, float]] = None) -> Tensor:
    """The smallest step onto a hyperplane inside a box (FAB's projection, Croce & Hein 2020, Sec. 3.1).

    Solves ``min ||d||_p  s.t.  w . (t + d) = b,  lo <= t + d <= hi`` exactly for p in
    {inf, 2, 1}: the signs of ``d`` follow ``w`` (after orienting ``w`` so that the required
    change ``c = b - w . t`` is >= 0), and the magnitudes come from the root of a monotone
    piecewise-linear function found by sorting (O(n log n)).  When the hyperplane does not
    meet the box, the step goes to the box corner furthest along ``w`` (the point of the box
    closest to the hyperplane in value of ``w . z``).

    Shapes: ``t`` (N, n) points inside the box, ``w`` (N, n), ``b`` (N,) -> ``d`` (N, n).
    Computed in float64, returned in ``t``'s dtype.
    """
    if p not in _PROJECTIONS:
        raise InputError(f"fab: unsupported norm {p}; use inf, 2 or 1")
    dt = t.dtype
    t64, w64, b64 = t.double(), w.double(), b.double().reshape(-1)
    c = b64 - (w64 * t64).sum(1)
    sgn = torch.where(c < 0, -1.0, 1.0).to(torch.float64)
    w64 = w64 * sgn[:, None]
    c = c * sgn
    a = w64.abs()
    room = _room(t64, w64, domain)
    mag = _PROJECTIONS[p](a, room, c)  # 0 where c = 0 (already on the hyperplane)
    miss = (a * room).sum(1) < c
    if bool(miss.any()):  # the hyperplane misses the box: the furthest corner
        mag[miss] = room[miss]
    return (w64.sign() * mag).to(dt)


class FAB(Attack):
    """Fast Adaptive Boundary attack (see the module docstring).

    Args:
        threat: the threat model (Linf, L2 or L1).
        steps: iterations per run (AutoAttack: 100).
        restarts: runs per target; the first starts at ``x``, the others at random points.
        targeted: FAB-T, attacking the top ``n_target_classes`` non-true classes in turn.
        n_target_classes: how many classes FAB-T tries (at most C - 1 are used).
        alpha_max: the largest bias of a step towards the original point.
        eta: extrapolation beyond the linearised boundary (> 1 overshoots).
        beta: backward step towards ``x`` after each success (0 < beta < 1).
        min_norm: keep shrinking the perturbation of points already broken within eps
            (True, the paper) or stop them at once (False, faster, same robust accuracy).
        seed: seeds the random restarts.
    """

    name = "fab"

    def __init__(self, threat: ThreatModel, *, steps: int = 100, restarts: int = 1, targeted: bool = False,
                 n_target_classes: int = 9, alpha_max: float = 0.1, eta: float = 1.05, beta: float = 0.9,
                 min_norm: bool = True, seed: int = 0):
        super().__init__(threat, seed=seed)
        for what, v, lo in (("steps", steps, 1), ("restarts", restarts, 1), ("n_target_classes", n_target_classes, 1)):
            if int(v) != v or int(v) < lo:
                raise InputError(f"fab: {what} must be an integer >= {lo}, got {v}")
        if not 0 <= alpha_max <= 1:
            raise InputError(f"fab: alpha_max must be in [0, 1], got {alpha_max}")
        if not (math.isfinite(eta) and eta >= 1):
            raise InputError(f"fab: eta must be >= 1, got {eta}")
        if not 0 < beta < 1:
            raise InputError(f"fab: beta must be in (0, 1), got {beta}")
        self.steps, self.restarts = int(steps), int(restarts)
        self.targeted, self.n_target_classes = bool(targeted), int(n_target_classes)
        self.alpha_max, self.eta, self.beta = float(alpha_max), float(eta), float(beta)
        self.min_norm = bool(min_norm)
        self.name = "fab-t" if self.targeted else "fab"

    # -- linearisation -------------------------------------------------------------------
    @staticmethod
    def _jacobian(f: Classifier, x: Tensor) -> tuple[Tensor, Tensor]:
        """Logits (N, C) and the gradients of every logit (N, C, n): one forward, C backward passes."""
        z, pull = f.forward_vjp(x)
        C = z.shape[1]
        eye = torch.eye(C, dtype=z.dtype, device=z.device)
        grads = [pull(eye[j].expand_as(z)).reshape(x.shape[0], -1) for j in range(C)]
        return z, torch.stack(grads, 1)

    @staticmethod
    def _pair_gradient(f: Classifier, x: Tensor, pos: Tensor, neg: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """``df = f_pos - f_neg`` (N, 1) and its gradient (N, 1, n) in one backward pass;
        ``neg=None``: the largest logit other than ``pos`` at ``x``.  Also the logits (N, C)."""
        z, pull = f.forward_vjp(x)
        if neg is None:
            neg = z.scatter(1, pos[:, None], -math.inf).argmax(1)
        diff = z.gather(1, pos[:, None]).squeeze(1) - z.gather(1, neg[:, None]).squeeze(1)
        dz = torch.zeros_like(z)
        dz.scatter_(1, pos[:, None], 1.0)
        dz.scatter_add_(1, neg[:, None], torch.full_like(diff[:, None], -1.0))
        g = pull(dz)
        return z, diff[:, None], g.reshape(x.shape[0], 1, -1)

    def _boundaries(self, f: Classifier, x1: Tensor, y: Tensor, t: Optional[Tensor], mode: str):
        """Linearised boundaries at ``x1``: values ``df`` (N, K) (negative on the correct side)
        and gradients ``dg`` (N, K, n); classes that are not boundaries get ``df = -inf``."""
        if mode == "untargeted":
            z, J = self._jacobian(f, x1)
            ar = torch.arange(x1.shape[0], device=x1.device)
            df = z - z[ar, y][:, None]
            dg = J - J[ar, y][:, None]
            df[ar, y] = -math.inf
            return df, dg
        if mode == "fab-t":  # f_t - f_y, t the k-th most likely clean class
            _, df, dg = self._pair_gradient(f, x1, t, y)
            return df, dg
        _, df, dg = self._pair_gradient(f, x1, t, None)  # threat-targeted: f_t - max_{j != t} f_j
        return df, dg

    # -- one run ---------------------------------------------------------------------------
    def _run(self, f: Classifier, x: Tensor, y: Tensor, t: Optional[Tensor], goal: Optional[Tensor], mode: str,
             x1: Tensor, best: Tensor, best_norm: Tensor, owner: Optional[Tensor] = None) -> None:
        """``steps`` FAB iterations from ``x1``; updates ``best`` / ``best_norm`` in place.

        ``goal``: the targets that define success (None: misclassification).  ``owner``: the
        point of each row when the rows of several runs are batched together (for
        ``min_norm=False``: a row stops when its point is broken by any of its rows).
        """
        tm = self.threat
        N = x.shape[0]
        idx = torch.arange(N, device=x.device)
        xo, xo_flat, ya, ta, ga = x, x.reshape(N, -1), y, t, goal
        for _ in range(self.steps):
            if not self.min_norm:
                if owner is None:
                    keep = best_norm[idx] > tm.eps
                else:
                    point = best_norm.new_full((int(owner.max()) + 1,), math.inf).scatter_reduce(
                        0, owner, best_norm, "amin")
                    keep = point[owner[idx]] > tm.eps
                if not bool(keep.all()):  # the active rows shrink only when a point is broken
                    idx, x1, xo, xo_flat, ya = idx[keep], x1[keep], xo[keep], xo_flat[keep], ya[keep]
                    ta = None if ta is None else ta[keep]
                    ga = None if ga is None else ga[keep]
                if not idx.numel():
                    return
            df, dg = self._boundaries(f, x1, ya, ta, mode)
            x1 = self._step(x1, xo, xo_flat, df, dg)
            with torch.no_grad():
                z = f(x1)
            hit = fooled(z, ya, ga)
            if bool(hit.any()):
                norms = tm.distance(xo, x1)
                closer = hit & (norms < best_norm[idx])
                best[idx[closer]] = x1[closer]
                best_norm[idx[closer]] = norms[closer]
                x1 = torch.where(hit.reshape(-1, *([1] * (x1.dim() - 1))), xo + self.beta * (x1 - xo), x1)

    def _step(self, x1: Tensor, xo: Tensor, xo_flat: Tensor, df: Tensor, dg: Tensor) -> Tensor:
        """One FAB step from ``x1`` on the nearest linearised boundary (``df`` (n, K), ``dg`` (n, K, d))."""
        tm = self.threat
        p, q = tm.p, _DUAL[tm.p]
        n = x1.shape[0]
        if df.shape[1] == 1:  # one boundary (FAB-T): nothing to choose
            w, dfk = dg[:, 0], df[:, 0]
        else:
            dist = df.abs() / lp_norm(dg.reshape(-1, dg.shape[2]), q).reshape(df.shape).clamp_min(1e-12)
            dist = torch.where(torch.isfinite(df), dist, torch.full_like(dist, math.inf))
            k = dist.argmin(1)
            ar = torch.arange(n, device=x1.device)
            w, dfk = dg[ar, k], df[ar, k]
        x1f = x1.reshape(n, -1)
        b = (w * x1f).sum(1) - dfk
        d = project_hyperplane_box(torch.cat((x1f, xo_flat)), torch.cat((w, w)), torch.cat((b, b)), p, tm.domain)
        d1, d2 = d[:n], d[n:]
        a1 = lp_norm(d1, p).clamp_min(1e-8)
        a2 = lp_norm(d2, p).clamp_min(1e-8)
        alpha = (a1 / (a1 + a2)).clamp(0, self.alpha_max)[:, None]
        x1f = (1 - alpha) * (x1f + self.eta * d1) + alpha * (xo_flat + self.eta * d2)
        return tm.clip(x1f.reshape(xo.shape))

    def _start(self, x: Tensor, restart: int, best_norm: Tensor, generator: torch.Generator) -> Tensor:
        """The first run starts at x; later ones at distance min(best, eps) / 2 in a random direction."""
        if restart == 0:
            return x.clone()
        tm = self.threat
        n = x[0].numel()
        if tm.p == math.inf:
            u = 2 * torch.rand((x.shape[0], n), generator=generator, dtype=x.dtype) - 1
        else:
            u = torch.randn((x.shape[0], n), generator=generator, dtype=x.dtype)
        u = u.to(x.device)
        r = 0.5 * best_norm.clamp_max(tm.eps)
        u = u / lp_norm(u, tm.p).clamp_min(1e-12)[:, None] * r[:, None]
        return tm.clip(x + u.reshape(x.shape))

    def perturb(self, f: Classifier, x: Tensor, y: Tensor, target: Optional[Tensor],
                generator: torch.Generator) -> Tensor:
        tm = self.threat
        B = x.shape[0]
        best = x.clone()
        best_norm = torch.full((B,), math.inf, dtype=x.dtype, device=x.device)
        if tm.eps == 0:
            return best
        if target is not None:  # the threat model asks for a given target
            plans = [("targeted", target, target)]
        elif self.targeted:
            with torch.no_grad():
                order = f(x).argsort(1, descending=True)
            n_cls = min(self.n_target_classes, order.shape[1] - 1)
            plans = [("fab-t", order[:, k], None) for k in range(1, n_cls + 1)]
        else:
            plans = [("untargeted", None, None)]
        runs = [(mode, t, goal, restart) for mode, t, goal in plans for restart in range(self.restarts)]
        cpu = x.device.type == "cpu"
        j = 0
        while j < len(runs):
            idx = torch.nonzero(best_norm > tm.eps).flatten()
            if not idx.numel():
                return best
            n = idx.numel()
            # runs that all start at x (one restart) are independent: on the CPU, several at once
            # on few points (each row keeps its own best; a point takes the closest of its rows)
            g = max(1, min(len(runs) - j, CPU_ROWS // n)) if cpu and self.restarts == 1 else 1
            group, j = runs[j:j + g], j + g
            mode, restart = group[0][0], group[0][3]
            reps = (g,) + (1,) * (x.dim() - 1)
            xr, yr = x[idx].repeat(reps), y[idx].repeat(g)
            tr = None if group[0][1] is None else torch.cat([r[1][idx] for r in group])
            gr = None if group[0][2] is None else torch.cat([r[2][idx] for r in group])
            sub_best, sub_norm = best[idx].repeat(reps), best_norm[idx].repeat(g)
            x1 = self._start(xr, restart, sub_norm, generator)
            owner = torch.arange(n, device=x.device).repeat(g) if g > 1 else None
            self._run(f, xr, yr, tr, gr, mode, x1, sub_best, sub_norm, owner)
            for i in range(g):  # in the order of the runs: the earliest of equally close points
                rows = slice(i * n, (i + 1) * n)
                closer = sub_norm[rows] < best_norm[idx]
                best[idx[closer]] = sub_best[rows][closer]
                best_norm[idx[closer]] = sub_norm[rows][closer]
        return best
