"""APGD: Auto-PGD, step-size free projected gradient ascent (CE, DLR and targeted DLR).

Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks" (ICML), Algorithm 1; for L1, Croce & Hein 2021, "Mind the
box: l1-APGD for sparse adversarial attacks on image classifiers" (ICML).

Linf and L2 (the paper's Algorithm 1), ``N = steps``, ``P`` the projection onto the threat
model (ball, then domain clip, as the authors' code)::

    x(0) on the sphere of radius eps around x (random direction), eta(0) = 2 eps
    x(1) = P(x(0) + eta(0) s(grad f(x(0))))                   s = sign (Linf) or g/||g||_2
    z(k+1) = P(x(k) + eta(k) s(grad f(x(k))))
    x(k+1) = P(x(k) + alpha (z(k+1) - x(k)) + (1 - alpha)(x(k) - x(k-1)))     alpha = 0.75
    at each checkpoint w_j = ceil(p_j N) (p_0 = 0, p_1 = 0.22,
    p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)) halve eta and restart from the best
    point x_max if
      (1) #{w_{j-1} <= i < w_j : f(x(i+1)) > f(x(i))} < rho (w_j - w_{j-1}), or
      (2) eta(w_{j-1}) == eta(w_j) and f_max(w_{j-1}) == f_max(w_j).

L1 (l1-APGD, following the authors' reference implementation ``autopgd_base.py``): the
step moves the top-k coordinates of ``|grad|`` by ``eta sign(g_i) / k`` and is projected
*exactly* onto the effective threat model {L1 ball} intersected with {domain box}
(:func:`.norms.project_l1_box`); eta(0) = eps; every ``max(int(0.04 N), 1)`` iterations,
``k = ||x_max - x||_0 / 1.5`` (initially 20% of the coordinates) and, if the sparsity of
``x_max`` fell by more than 5% since the last check, eta is reset to eps and the iterate
restarts from x_max, else eta is divided by 1.5 (kept in [eps/10, eps]).  As in the
reference code, the L1 step has no momentum term and the random start is a Gaussian
projected onto the ball and the box.
With ``large_eps`` (the reference's ``use_largereps``, used by L1 AutoAttack), 30%, 30%
and 40% of the iterations run at 3, 2 and 1 times eps, each phase starting from the best
point of the previous one projected onto its ball; only points inside the true ball count
as successes.

APGD-T (``targeted=True``) runs the targeted DLR loss towards each of the
``n_target_classes`` classes with the largest clean logits after the true class in turn,
``restarts`` times each, on the points still robust; the goal stays misclassification.

Two additions that keep the published algorithm's answer and save time (as our PGD):
per-point early stopping (a point fooled once keeps that iterate and leaves the batch;
sound because the attack only needs one misclassified point) and, for points never fooled,
the best-loss iterate is returned.  On the CPU, when few points are left, the runs of
several targets (or restarts) go in one batch of up to ``CPU_ROWS`` rows (a point's runs
stop together once one of them fools it): each run keeps its budget and a point is broken
exactly when one of its runs breaks it, as when the runs go one after the other, but a
small batch costs mostly the model's fixed cost per call.  Where the paper and the
authors' code differ (checkpoint rounding, the first checkpoint's conditions) we follow the
paper; the list is in ``docs/attacks/apgd_autoattack.md``.

Shapes: ``x`` (B, *sample_shape); ``y`` and targets (B,) int64; logits (B, C); step sizes,
losses and counters (B,).
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from perturbkit.attacks.base import CPU_ROWS, Attack, Classifier, ThreatModel, run_loss
from perturbkit.attacks.losses import ce, dlr, fooled
from perturbkit.attacks.norms import project_l1_box
from perturbkit.errors import InputError

Tensor = torch.Tensor

#: momentum of the APGD update (the paper's alpha)
MOMENTUM = 0.75
_LOSSES = {"ce": ce, "dlr": dlr}


def checkpoints(n_iter: int) -> list[int]:
    """The iterations ``w_j = ceil(p_j N)`` (j >= 1, ``p_j <= 1``) at which APGD may halve its
    step: ``p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``.

    Computed in exact integer arithmetic (hundredths) so that e.g. N = 100 gives
    ``[22, 41, 57, 70, 80, 87, 93, 99]``; repeated values (small N) appear once.
    """
    if int(n_iter) < 1:
        raise InputError(f"steps must be >= 1, got {n_iter}")
    n = int(n_iter)
    out: list[int] = []
    prev, p = 0, 22
    while p <= 100:
        w = -(-p * n // 100)  # ceil(p n / 100)
        if not out or w != out[-1]:
            out.append(w)
        prev, p = p, p + max(p - prev - 3, 6)
    return out


def _bcast(t: Tensor, like: Tensor) -> Tensor:
    return t.reshape(-1, *([1] * (like.dim() - 1)))


def _owners_hit(owner: Tensor, hit: Tensor) -> Tensor:
    """(points,) True for the points (``owner`` ids) with a row in ``hit``."""
    out = torch.zeros(int(owner.max()) + 1, dtype=torch.bool, device=owner.device)
    out[owner[hit]] = True
    return out


def _l0(d: Tensor) -> Tensor:
    return (d.reshape(d.shape[0], -1) != 0).sum(1).to(d.dtype)


class APGD(Attack):
    """Auto-PGD (see the module docstring for the algorithm and what differs for L1).

    Args:
        threat: the threat model (Linf, L2 or L1).
        loss: ``"ce"`` (default untargeted) or ``"dlr"`` (default with ``targeted``; with
            ``targeted`` and ``"ce"``, the targeted cross-entropy ``-CE(z, t)``).
        steps: iterations per run (the paper's N_iter, 100).
        restarts: random restarts (on the points not yet fooled); per target for APGD-T.
        targeted: APGD-T: the targeted loss towards each of the top ``n_target_classes``
            other classes in turn (untargeted goal). Given target labels (targeted threat
            model) replace the top classes.
        n_target_classes: how many target classes APGD-T tries (capped at C - 1).
        rho: the threshold of condition (1), 0.75.
        eot_iter: gradients averaged per iterate (expectation over transformation, for
            randomised models).
        large_eps: L1 only: the 3/2/1 x eps schedule of the reference's L1 AutoAttack.
        seed: seeds the random starts.
    """

    def __init__(self, threat: ThreatModel, *, loss: Optional[str] = None, steps: int = 100, restarts: int = 1,
                 targeted: bool = False, n_target_classes: int = 9, rho: float = 0.75, eot_iter: int = 1,
                 large_eps: bool = False, seed: int = 0):
        super().__init__(threat, seed=seed)
        loss = ("dlr" if targeted else "ce") if loss is None else loss
        if loss not in _LOSSES:
            raise InputError(f"unknown APGD loss {loss!r}; use ce or dlr")
        for what, v, low in (("steps", steps, 1), ("restarts", restarts, 1), ("n_target_classes", n_target_classes, 1),
                             ("eot_iter", eot_iter, 1)):
            if int(v) != v or int(v) < low:
                raise InputError(f"{what} must be an integer >= {low}, got {v}")
        if not 0 < float(rho) <= 1:
            raise InputError(f"rho must be in (0, 1], got {rho}")
        if large_eps and threat.p != 1:
            raise InputError("large_eps is for the L1 threat model only")
        self.loss = loss
        self.steps = int(steps)
        self.restarts = int(restarts)
        self.targeted = bool(targeted)
        self.n_target_classes = int(n_target_classes)
        self.rho = float(rho)
        self.eot_iter = int(eot_iter)
        self.large_eps = bool(large_eps)
        if self.targeted:
            self.name = "apgd-t" if loss == "dlr" else "apgd-t-ce"
        else:
            self.name = f"apgd-{loss}"

    def __repr__(self) -> str:
        return (f"APGD(name={self.name!r}, eps={self.threat.eps}, norm={self.threat.p}, steps={self.steps}, "
                f"restarts={self.restarts}, n_target_classes={self.n_target_classes}, eot_iter={self.eot_iter}, "
                f"large_eps={self.large_eps}, seed={self.seed})")

    # ------------------------------------------------------------------ driver
    def perturb(self, f: Classifier, x: Tensor, y: Tensor, target: Optional[Tensor],
                generator: torch.Generator) -> Tensor:
        with torch.no_grad():
            z0 = f(x)
        C = z0.shape[1]
        targeted_loss = self.targeted or target is not None
        need = 4 if (targeted_loss and self.loss == "dlr") else 3 if self.loss == "dlr" else 2
        if C < need:
            raise InputError(f"{self.name}: the {'targeted ' if targeted_loss else ''}{self.loss.upper()} loss needs "
                             f">= {need} classes, the model has {C}")
        if self.targeted and target is None:
            # the k-th largest clean logit after the true class, k = 1..n_target_classes
            order = z0.scatter(1, y[:, None], math.inf).argsort(1, descending=True)
            loss_targets = [order[:, k] for k in range(1, min(self.n_target_classes, C - 1) + 1)]
        else:
            loss_targets = [target]  # None (untargeted) or the given targets
        B = x.shape[0]
        out = x.clone()
        out_loss = torch.full((B,), -math.inf, dtype=x.dtype, device=x.device)
        done = torch.zeros(B, dtype=torch.bool, device=x.device)
        runs = [lt_all for lt_all in loss_targets for _ in range(self.restarts)]
        cpu = x.device.type == "cpu"
        j = 0
        while j < len(runs):
            idx = torch.nonzero(~done).flatten()
            if not idx.numel():
                return out
            n = idx.numel()
            # several runs at once on the same points when they are few (CPU); a point broken
            # by one of them leaves all (as if the runs had been one after the other)
            g = max(1, min(len(runs) - j, CPU_ROWS // n)) if cpu else 1
            group, j = runs[j:j + g], j + g
            reps = (g,) + (1,) * (x.dim() - 1)
            lt = None if group[0] is None else torch.cat([lt_all[idx] for lt_all in group])
            goal = None if target is None else target[idx].repeat(g)
            owner = torch.arange(n, device=x.device).repeat(g) if g > 1 else None
            x_hit, hit, x_best, l_best = self._schedule(f, x[idx].repeat(reps), y[idx].repeat(g), lt, goal, generator,
                                                        owner=owner)
            for i in range(g):  # in the order of the runs
                rows = slice(i * n, (i + 1) * n)
                h, live = hit[rows], ~done[idx]
                better = live & ~h & (l_best[rows] > out_loss[idx])
                out[idx[better]] = x_best[rows][better]
                out_loss[idx[better]] = l_best[rows][better]
                h = h & live
                out[idx[h]] = x_hit[rows][h]
                done[idx[h]] = True
        return out

    def _schedule(self, f, x, y, lt, goal, gen, *, owner: Optional[Tensor] = None):
        """One run (restart) of APGD on every row, through the large-eps phases for L1 if asked.

        ``owner`` (rows,): the point of each row when a point has several rows (runs batched
        together): once one of its rows is fooled, the others stop."""
        eps = self.threat.eps
        start = self._random_start(x, 3 * eps if self.large_eps else eps, gen)
        if not self.large_eps:
            return self._apgd(f, x, y, lt, goal, eps, self.steps, None, gen, start=start, owner=owner)
        n1 = n2 = math.ceil(0.3 * self.steps)
        phases = [(3 * eps, n1), (2 * eps, n2), (eps, max(self.steps - n1 - n2, 1))]
        B = x.shape[0]
        x_hit, hit = x.clone(), torch.zeros(B, dtype=torch.bool, device=x.device)
        x_best = x.clone()
        l_best = torch.full((B,), -math.inf, dtype=x.dtype, device=x.device)
        prev: Optional[Tensor] = None
        for e, n in phases:
            alive = ~hit if owner is None else ~_owners_hit(owner, hit)[owner]
            idx = torch.nonzero(alive).flatten()
            if not idx.numel():
                break
            init = None if prev is None else x[idx] + project_l1_box(prev[idx] - x[idx], e, *self._room(x[idx]))
            sub = (None if lt is None else lt[idx], None if goal is None else goal[idx])
            xh, h, xb, lb = self._apgd(f, x[idx], y[idx], sub[0], sub[1], e, n, init, gen,
                                       start=None if prev is not None else start[idx],
                                       owner=None if owner is None else owner[idx])
            x_hit[idx[h]] = xh[h]
            hit[idx[h]] = True
            prev = x_best.clone()
            prev[idx] = xb
            x_best[idx], l_best[idx] = xb, lb  # the last phase's best lies in the true ball
        return x_hit, hit, x_best, l_best

    # ------------------------------------------------------------------ pieces
    def _room(self, x: Tensor) -> tuple[Optional[Tensor], Optional[Tensor]]:
        """How far each coordinate may move down / up inside the domain: (lo <= 0, hi >= 0)."""
        dom = self.threat.domain
        if dom is None:
            return None, None
        return (dom[0] - x).clamp_max(0), (dom[1] - x).clamp_min(0)

    def _project(self, x: Tensor, v: Tensor, eps: float) -> Tensor:
        if self.threat.p == 1:
            return x + project_l1_box(v - x, eps, *self._room(x))
        return self.threat.project(x, v, eps)

    def _random_start(self, x: Tensor, eps: float, gen: torch.Generator) -> Tensor:
        """A random point on the sphere of radius eps (Linf, L2), clipped to the domain; for L1 a
        Gaussian projected onto the ball and the domain (as the reference)."""
        p = self.threat.p
        if p == 1:
            t = torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device)
            return x + project_l1_box(t, eps, *self._room(x))
        if p == math.inf:
            t = (2 * torch.rand(x.shape, generator=gen, dtype=x.dtype) - 1).to(x.device)
        else:
            t = torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device)
        nrm = t.reshape(t.shape[0], -1).norm(p=p, dim=1)
        return self.threat.clip(x + eps * t / _bcast(nrm + 1e-12, t))

    def _loss_grad(self, f, x, y, lt):
        """Logits, loss and gradient, the last two averaged over ``eot_iter`` evaluations."""
        loss = _LOSSES[self.loss]
        z, l, g = run_loss(f, loss, x, y, lt)
        for _ in range(self.eot_iter - 1):
            z, l2, g2 = run_loss(f, loss, x, y, lt)
            l, g = l + l2, g + g2
        if self.eot_iter > 1:
            l, g = l / self.eot_iter, g / self.eot_iter
        return z, l, g

    @staticmethod
    def _sparse_step(g: Tensor, frac: Tensor) -> Tensor:
        """L1 step direction: sign(g_i) / k on the top-k = ceil(frac n) coordinates by |g_i|
        (ties included; as the reference, coordinates at the domain bound are not excluded:
        the projection onto the ball and the box discards their share)."""
        gf = g.reshape(g.shape[0], -1)
        a = gf.abs()
        n = a.shape[1]
        k = (frac * n).ceil().clamp(1, n).long()
        thr = a.sort(1, descending=True).values.gather(1, (k - 1)[:, None])
        mask = (a >= thr) & (a > 0)
        cnt = mask.sum(1, keepdim=True).clamp_min(1).to(g.dtype)
        return (gf.sign() * mask.to(g.dtype) / cnt).reshape(g.shape)

    def _apgd(self, f, x, y, lt, goal, eps, n_iter, x_init, gen, trace: Optional[list] = None, *,
              start: Optional[Tensor] = None, owner: Optional[Tensor] = None):
        """One APGD run of ``n_iter`` iterations at radius ``eps``.

        Returns ``(x_hit, hit, x_max, f_max)``: the fooling iterate and a mask of the points
        fooled (inside the true threat model), and the best-loss iterate and its loss.
        ``trace`` (a list) receives ``(t, step sizes of the active points)`` after each checkpoint.
        ``start``: the random start, drawn by the caller (None: drawn here; ignored when
        ``x_init`` is given).  ``owner``: see :meth:`_schedule`; a row stops when a row of the
        same owner is fooled (it is then not reported as fooled itself).
        """
        tm = self.threat
        l1 = tm.p == 1
        B = x.shape[0]
        n_fts = x[0].numel()
        check_inside = eps > tm.eps
        if x_init is not None:
            xa = x_init.clone()
        else:
            xa = self._random_start(x, eps, gen) if start is None else start.clone()
        z, fx, g = self._loss_grad(f, xa, y, lt)

        x_hit, hit_all = x.clone(), torch.zeros(B, dtype=torch.bool, device=x.device)
        x_max_out, f_max_out = xa.clone(), fx.clone()

        eta0 = (1.0 if l1 else 2.0) * eps
        S = {  # per-point state of the points still active
            "idx": torch.arange(B, device=x.device), "owner": owner, "x0": x, "y": y, "lt": lt, "goal": goal,
            "xa": xa, "x_prev": xa.clone(), "g": g, "f_cur": fx,
            "x_max": xa.clone(), "g_max": g.clone(), "f_max": fx.clone(),
            "eta": torch.full((B,), eta0, dtype=x.dtype, device=x.device),
            "n_inc": torch.zeros(B, dtype=x.dtype, device=x.device),
            "eta_ck": torch.full((B,), eta0, dtype=x.dtype, device=x.device), "f_max_ck": fx.clone(),
        }
        if l1:
            if x_init is None:
                S["topk"] = torch.full((B,), 0.2, dtype=x.dtype, device=x.device)
                S["sp_old"] = torch.full((B,), float(n_fts), dtype=x.dtype, device=x.device)
            else:
                S["sp_old"] = _l0(xa - x)
                S["topk"] = S["sp_old"] / n_fts / 1.5
        W = set(checkpoints(n_iter))
        k_l1 = max(int(0.04 * n_iter), 1)
        w_prev = 0

        def write_back(rows=None):
            """The best iterates of the active points (or of ``rows`` of them) into the output."""
            if rows is None:
                x_max_out[S["idx"]], f_max_out[S["idx"]] = S["x_max"], S["f_max"]
            else:
                x_max_out[S["idx"][rows]], f_max_out[S["idx"][rows]] = S["x_max"][rows], S["f_max"][rows]

        def settle(z):
            """Record the points fooled at the current iterate and drop them from the batch
            (with, under ``owner``, the other rows of their owners)."""
            hit = fooled(z, S["y"], S["goal"])
            if check_inside:
                hit &= tm.contains(S["x0"], S["xa"])
            if bool(hit.any()):
                x_hit[S["idx"][hit]] = S["xa"][hit].detach()
                hit_all[S["idx"][hit]] = True
                keep = ~hit
                if S["owner"] is not None:
                    keep &= ~_owners_hit(S["owner"], hit)[S["owner"]]
                write_back(~keep)
                for key, v in S.items():
                    if v is not None:
                        S[key] = v[keep]
            return bool(S["idx"].numel())

        if not settle(z):
            return x_hit, hit_all, x_max_out, f_max_out
        for t in range(1, n_iter + 1):  # computes x(t)
            xa, x0 = S["xa"], S["x0"]
            eta = _bcast(S["eta"], xa)
            with torch.no_grad():
                if l1:
                    x_new = self._project(x0, xa + eta * self._sparse_step(S["g"], S["topk"]), eps)
                else:
                    d = S["g"].sign() if tm.p == math.inf else S["g"] / _bcast(
                        S["g"].reshape(xa.shape[0], -1).norm(dim=1) + 1e-12, xa)
                    z1 = self._project(x0, xa + eta * d, eps)
                    a = MOMENTUM if t > 1 else 1.0
                    x_new = self._project(x0, xa + a * (z1 - xa) + (1 - a) * (xa - S["x_prev"]), eps)
            S["x_prev"], S["xa"] = xa, x_new.detach()
            z, fx, g = self._loss_grad(f, S["xa"], S["y"], S["lt"])
            S["g"] = g
            S["n_inc"] = S["n_inc"] + (fx > S["f_cur"]).to(fx.dtype)
            S["f_cur"] = fx
            better = fx > S["f_max"]
            S["x_max"] = torch.where(_bcast(better, xa), S["xa"], S["x_max"])
            S["g_max"] = torch.where(_bcast(better, xa), g, S["g_max"])
            S["f_max"] = torch.where(better, fx, S["f_max"])
            if not settle(z):
                break
            if t == n_iter:
                write_back()
                break
            if l1 and t % k_l1 == 0:
                sp = _l0(S["x_max"] - S["x0"])
                sparser = sp / S["sp_old"].clamp_min(1) < 0.95
                S["topk"] = sp / n_fts / 1.5
                S["eta"] = torch.where(sparser, torch.full_like(S["eta"], eta0), S["eta"] / 1.5).clamp(eta0 / 10, eta0)
                S["sp_old"] = sp
                self._restart_from_best(S, sparser)
            elif not l1 and t in W:
                cond1 = S["n_inc"] < self.rho * (t - w_prev)
                cond2 = (S["eta"] == S["eta_ck"]) & (S["f_max"] <= S["f_max_ck"])
                halve = cond1 | cond2
                S["eta_ck"], S["f_max_ck"] = S["eta"].clone(), S["f_max"].clone()
                S["eta"] = torch.where(halve, S["eta"] / 2, S["eta"])
                self._restart_from_best(S, halve)
                S["n_inc"] = torch.zeros_like(S["n_inc"])
                w_prev = t
            else:
                continue
            if trace is not None:
                trace.append((t, S["eta"].clone()))
        return x_hit, hit_all, x_max_out, f_max_out

    @staticmethod
    def _restart_from_best(S: dict, which: Tensor) -> None:
        """x(k) <- x_max (with its gradient and loss) for the points in ``which``."""
        m = _bcast(which, S["xa"])
        S["xa"] = torch.where(m, S["x_max"], S["xa"])
        S["g"] = torch.where(m, S["g_max"], S["g"])
        S["f_cur"] = torch.where(which, S["f_max"], S["f_cur"])
