"""Ordered top-K targeted attacks: make the model's K highest logits exactly given classes,
in a given order.

For a sample with ordered targets ``t = (t_1, ..., t_K)`` (distinct, none equal to the
label) the attack succeeds at ``x_adv`` when

    z_{t_1} > z_{t_2} > ... > z_{t_K} > max_{j not in t} z_j          (strictly; ties fail)

for the logits ``z = f(x_adv)``, with ``x_adv`` inside the threat model.

Two methods share one projected-gradient loop (same start, steps, step sizes, early stopping
and best-iterate rule), so that they can be compared at an equal budget:

* ``"quad"``, after QuadAttacK (Paniagua, Grainger & Wu 2023, "QuadAttacK: A quadratic
  programming approach to learning ordered top-K adversarial attacks"): at the current
  logits ``z`` solve the quadratic program

      z* = argmin_w ||w - z||_2^2  s.t.  w_{t_i} >= w_{t_{i+1}} + m  (i < K),
                                          w_{t_K} >= w_j + m          (j not in t)

  (the closest logits that satisfy the ordered constraints with margin ``m``), then take a
  step that decreases ``1/2 ||f(x) - z*||_2^2 + penalty ||x - x_0||_2^2``; ``z*`` is
  re-solved every ``resolve_every`` steps.  Re-solved every step, the gradient
  ``J^T (z - z*)`` is exactly the gradient of half the squared distance of the logits to
  the feasible polyhedron.  The QP is solved exactly and batched, with no solver
  (:func:`ordered_topk_projection`): shifting each coordinate by a constant turns it into
  an isotonic regression on a tree (a chain ``t_1 >= ... >= t_K`` with every other class
  hanging below ``t_K``); its solution keeps the others in their order, so it equals the
  isotonic regression on one chain ``t_1, ..., t_K, o_1, ..., o_{C-K}`` (others sorted by
  decreasing logit), which has the closed form
  ``u_i = min_{j <= i} max_{k >= i} mean(b_j..b_k)`` (Barlow et al. 1972).
* ``"naive"``: the loss-based baseline of earlier ordered top-K attacks (the hinge losses
  of Zhang & Wu 2020, "Learning ordered top-k adversarial attacks via adversarial
  distillation", CW-style): decrease
  ``sum_{i<K} max(0, m - (z_{t_i} - z_{t_{i+1}})) + max(0, m - (z_{t_K} - max_{j not in t} z_j))``.

The loop: projected steepest descent (``sign`` steps for Linf, normalised gradient for L2,
sparse steps for L1, as in :class:`~perturbkit.attacks.pgd.PGD`), step size decayed by a
cosine schedule from ``step_size`` to ``step_size / 10`` (by default the steps add up to
``2.5 eps``, the total path of Madry et al.'s PGD step rule); per-point early stopping on
success; the best iterate is kept (a success first, else the fewest violated constraints,
then the smallest total violation ``sum max(0, -(gap))``).

Targets are ``(B, K)``, which the base class's ``__call__`` (labels and targets ``(B,)``)
cannot validate, so :class:`OrderedTopK` provides :meth:`OrderedTopK.attack` and routes its
``__call__`` there.  ``attack`` keeps every promise of the base class, with the base
class's own helpers: inputs validated, eval mode, sanity flags on the clean batch, only the
points not already at their targets attacked, the result projected onto the threat model
and success re-evaluated ("top-K equal to the targets, in order") on the projected points.

Shapes: ``x`` (B, *sample_shape), ``y`` (B,) int64, ``targets`` (B, K) int64, logits (B, C).
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable, Optional

import numpy as np
import torch

from perturbkit.attacks.base import (Attack, AttackResult, Classifier, ThreatModel, adopt, as_tensor_batch, check_classes,
                                     sanity_flags)
from perturbkit.attacks.norms import random_start, steepest_direction
from perturbkit.errors import InputError

Tensor = torch.Tensor


# ----------------------------------------------------------------------------- constraints

def ordered_gaps(z: Tensor, targets: Tensor) -> Tensor:
    """The K gaps that must be positive: ``z_{t_i} - z_{t_{i+1}}`` for i < K, then
    ``z_{t_K} - max_{j not in t} z_j``.  ``z`` (B, C), ``targets`` (B, K) -> (B, K)."""
    zt = z.gather(1, targets)
    others = z.scatter(1, targets, -math.inf).amax(1)
    return torch.cat([zt[:, :-1] - zt[:, 1:], (zt[:, -1] - others)[:, None]], 1)


def topk_hit(z: Tensor, targets: Tensor) -> Tensor:
    """(B,) bool: the top-K classes of ``z`` are ``targets`` in this order (strict: a tie fails)."""
    return (ordered_gaps(z, targets) > 0).all(1)


def violations(z: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Number of violated ordered constraints (B,) int64 and total violation (B,)."""
    gaps = ordered_gaps(z, targets)
    return (gaps <= 0).sum(1), (-gaps).clamp_min(0).sum(1)


def isotonic_nonincreasing(b: Tensor, *, max_elements: int = 1 << 22) -> Tensor:
    """Row-wise least-squares non-increasing fit: ``argmin_u ||u - b||^2, u_1 >= ... >= u_L``.

    Closed form (Barlow, Bartholomew, Bremner & Brunk 1972, "Statistical inference under
    order restrictions"): ``u_i = min_{j <= i} max_{k >= i} mean(b_j, ..., b_k)``, computed
    from prefix sums in O(L^2) per row, rows in chunks of at most ``max_elements`` entries.

    Shapes: ``b`` (B, L) -> (B, L).
    """
    B, L = b.shape
    dt = b.dtype
    bd = b.to(torch.float64)
    pos = torch.arange(L, device=b.device)
    j, k = pos[:, None], pos[None, :]
    count = (k - j + 1).clamp_min(1).to(torch.float64)
    below = k < j  # (j, k) pairs that are not intervals; as (j, i): j > i, outside min_{j <= i}
    out = []
    chunk = max(1, max_elements // max(L * L, 1))
    for s in range(0, B, chunk):
        S = torch.nn.functional.pad(bd[s:s + chunk].cumsum(1), (1, 0))          # (b, L+1)
        mean = (S[:, None, 1:] - S[:, :L, None]) / count                         # (b, j, k)
        mean = mean.masked_fill(below, -math.inf)
        upper = mean.flip(2).cummax(2).values.flip(2)                            # max_{k >= i}
        out.append(upper.masked_fill(below, math.inf).amin(1))                 # min_{j <= i}
    return torch.cat(out, 0).to(dt) if out else b.clone()


def ordered_topk_projection(z: Tensor, targets: Tensor, margin: float) -> Tensor:
    """The closest logits (Euclidean) satisfying the ordered top-K constraints with margin:

        argmin_w ||w - z||^2  s.t.  w_{t_i} >= w_{t_{i+1}} + margin,  w_{t_K} >= w_j + margin (j not in t).

    Exact (see the module docstring): chain ``t_1, ..., t_K`` then the other classes by
    decreasing logit; shift position ``p`` by ``c_p = (K-1-p) margin`` (targets) or
    ``-margin`` (others) so that the constraints read ``u_p >= u_{p+1}``; isotonic
    regression; shift back.

    Shapes: ``z`` (B, C), ``targets`` (B, K) int64 -> (B, C).
    """
    B, C = z.shape
    K = targets.shape[1]
    zd = z.detach()
    rest = zd.scatter(1, targets, -math.inf).sort(1, descending=True).indices[:, :C - K]
    chain = torch.cat([targets, rest], 1)                                        # (B, C)
    p = torch.arange(C, device=z.device, dtype=zd.dtype)
    shift = torch.where(p < K, (K - 1 - p) * margin, torch.full_like(p, -margin))
    u = isotonic_nonincreasing(zd.gather(1, chain) - shift) + shift
    return torch.empty_like(zd).scatter(1, chain, u)


def random_targets(y: Any, k: int, n_classes: int, generator: Optional[torch.Generator] = None) -> Tensor:
    """K distinct classes per sample, in a uniformly random order, none equal to the label.

    Shapes: ``y`` (B,) -> (B, k) int64.
    """
    y = torch.as_tensor(np.asarray(y) if not isinstance(y, Tensor) else y).reshape(-1).long()
    if not 1 <= int(k) <= int(n_classes) - 1:
        raise InputError(f"k must be in 1..{int(n_classes) - 1} (targets exclude the label), got {k}")
    if bool(((y < 0) | (y >= n_classes)).any()):
        raise InputError(f"labels must be in 0..{int(n_classes) - 1}")
    scores = torch.rand((y.numel(), int(n_classes)), generator=generator)
    scores.scatter_(1, y[:, None].cpu(), -1.0)
    return scores.argsort(1, descending=True)[:, :int(k)].to(y.device)


# ----------------------------------------------------------------------------- losses (minimised)

def quad_loss(z: Tensor, z_star: Tensor, targets: Tensor, margin: float) -> Tensor:
    """``1/2 ||z - z*||^2`` per sample (B,)."""
    return 0.5 * ((z - z_star) ** 2).sum(1)


def naive_loss(z: Tensor, z_star: Optional[Tensor], targets: Tensor, margin: float) -> Tensor:
    """Sum of the ordered hinge losses ``max(0, margin - gap)`` per sample (B,)."""
    return (margin - ordered_gaps(z, targets)).clamp_min(0).sum(1)


METHODS: dict[str, Callable[..., Tensor]] = {"quad": quad_loss, "naive": naive_loss}


# ----------------------------------------------------------------------------- attack

class OrderedTopK(Attack):
    """Ordered top-K targeted attack, ``"quad"`` (QuadAttacK-style) or ``"naive"`` (hinge).

    Args:
        threat: the threat model (its ``targeted`` flag is not used: this attack always is).
        k: number of ordered targets per sample (>= 1).
        steps: gradient steps (one forward and backward pass each).
        method: ``"quad"`` or ``"naive"`` (see the module docstring).
        step_size: first step length in the threat's norm (the schedule decays it, see
            :meth:`decay`); default: the one whose steps add up to ``travel * eps``.
        travel: see ``step_size``; 2.5 is Madry et al.'s total path (PGD's ``2.5 eps / steps``).
        margin: margin ``m`` of the constraints, in logits, for the QP and the hinges.
        resolve_every: ``"quad"``: re-solve the QP every this many steps.
        penalty: ``"quad"``: weight of ``||x_adv - x||_2^2`` in the loss.
        random_start: start uniformly in the ball (else at x).
        l1_fraction: share of coordinates an L1 step moves.
        seed: seeds the random start.

    Call ``attack(model, x, y, targets)`` (or the instance itself, ``target=targets``) with
    ``targets`` (B, K) int64; the result's ``success`` is "top-K of the re-evaluated logits
    equal to the targets in order".
    """

    name = "ordered-topk"

    def __init__(self, threat: ThreatModel, *, k: int, steps: int = 100, method: str = "quad",
                 step_size: Optional[float] = None, travel: float = 2.5, margin: float = 1.0,
                 resolve_every: int = 1, penalty: float = 0.0, random_start: bool = False,
                 l1_fraction: float = 0.01, seed: int = 0):
        super().__init__(threat, seed=seed)
        if isinstance(k, bool) or int(k) != k or int(k) < 1:
            raise InputError(f"k must be an integer >= 1, got {k!r}")
        if int(steps) < 1:
            raise InputError(f"steps must be >= 1, got {steps}")
        if method not in METHODS:
            raise InputError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
        if step_size is not None and not (math.isfinite(step_size) and step_size > 0):
            raise InputError(f"step size must be > 0, got {step_size}")
        if not (math.isfinite(travel) and travel > 0):
            raise InputError(f"travel must be > 0, got {travel}")
        if not (math.isfinite(margin) and margin >= 0):
            raise InputError(f"margin must be >= 0, got {margin}")
        if int(resolve_every) < 1:
            raise InputError(f"resolve_every must be >= 1, got {resolve_every}")
        if not (math.isfinite(penalty) and penalty >= 0):
            raise InputError(f"penalty must be >= 0, got {penalty}")
        self.k = int(k)
        self.steps = int(steps)
        self.method = method
        total = sum(self.decay(s) for s in range(self.steps))
        self.step_size = float(step_size) if step_size is not None else travel * threat.eps / total
        self.margin = float(margin)
        self.resolve_every = int(resolve_every)
        self.penalty = float(penalty)
        self.random_start = bool(random_start)
        self.l1_fraction = l1_fraction

    # -- entry points ----------------------------------------------------------------------

    def __call__(self, model: Any, x: Any, y: Any, *, target: Any = None) -> AttackResult:
        """Same as :meth:`attack` (``target``: the (B, K) ordered targets)."""
        return self.attack(model, x, y, target)

    def check_ordered_targets(self, y: Tensor, targets: Any, n_classes: int) -> Tensor:
        """``targets`` as a validated (B, K) int64 tensor."""
        if targets is None:
            raise InputError(f"{self.name}: give ordered targets (B, {self.k}), e.g. random_targets(y, k, n_classes)")
        if isinstance(targets, np.ndarray):
            targets = torch.from_numpy(np.ascontiguousarray(targets))
        t = torch.as_tensor(targets)
        if t.is_floating_point() and not bool((t == t.round()).all()):
            raise InputError(f"{self.name}: targets must be integers")
        t = t.long().to(y.device)
        if t.dim() == 1 and self.k == 1:
            t = t[:, None]
        if t.dim() != 2 or t.shape != (y.shape[0], self.k):
            raise InputError(f"{self.name}: targets must have shape (B, K) = ({y.shape[0]}, {self.k}), "
                             f"got {tuple(t.shape)}")
        if self.k > n_classes - 1:
            raise InputError(f"{self.name}: k = {self.k} but the model has {n_classes} outputs; targets exclude "
                             f"the label, so k <= {n_classes - 1}")
        bad = (t < 0) | (t >= n_classes)
        if bool(bad.any()):
            raise InputError(f"target {int(t[bad][0])} out of range for a model with {n_classes} outputs")
        if self.k > 1:
            s = t.sort(1).values
            dup = (s[:, 1:] == s[:, :-1]).any(1)
            if bool(dup.any()):
                raise InputError(f"{self.name}: the targets of sample {int(torch.nonzero(dup)[0])} repeat a class")
        has_y = (t == y[:, None]).any(1)
        if bool(has_y.any()):
            raise InputError(f"{self.name}: the targets of sample {int(torch.nonzero(has_y)[0])} contain its label")
        return t

    def attack(self, model: Any, x: Any, y: Any, targets: Any) -> AttackResult:
        """Attack ``x`` (labels ``y``) towards the ordered ``targets`` (B, K); see the class."""
        t0 = time.perf_counter()
        x, y, _ = as_tensor_batch(x, y)
        f = self.threat.classifier(model, x)
        gen = torch.Generator().manual_seed(self.seed)
        with f.attacking():
            with torch.no_grad():
                z0 = f(x)
            C = z0.shape[1]
            check_classes(C, label=y)
            t = self.check_ordered_targets(y, targets, C)
            flags = sanity_flags(f, x, y, z0)
            clean = topk_hit(z0, t)
            x_adv = x.clone()
            todo = torch.nonzero(~clean).flatten()
            if todo.numel():
                x_adv[todo] = adopt(self.threat, x[todo], self.perturb(f, x[todo], y[todo], t[todo], gen))
            with torch.no_grad():
                z = f(x_adv)
        success = topk_hit(z, t) | clean
        return AttackResult(f"{self.name}-{self.method}", x_adv, success, z, clean,
                            self.threat.distance(x, x_adv), flags, time.perf_counter() - t0)

    # -- the optimisation ------------------------------------------------------------------

    def decay(self, step: int) -> float:
        """Cosine decay of the step size: 1 at step 0, 0.1 at the last step."""
        frac = step / max(self.steps - 1, 1)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac))

    def step_length(self, step: int) -> float:
        return self.step_size * self.decay(step)

    def perturb(self, f: Classifier, x: Tensor, y: Tensor, target: Optional[Tensor],
                generator: torch.Generator) -> Tensor:
        """Candidate points (B, *shape) for ``x`` (B, *shape) and ordered targets (B, K)."""
        if target is None or target.dim() != 2:
            raise InputError(f"{self.name}: perturb needs ordered targets of shape (B, K)")
        tm = self.threat
        loss_fn = METHODS[self.method]
        B = x.shape[0]
        best = x.clone()
        best_n = torch.full((B,), self.k + 1, dtype=torch.int64, device=x.device)
        best_v = torch.full((B,), math.inf, dtype=x.dtype, device=x.device)
        idx = torch.arange(B, device=x.device)
        x0, t0 = x, target
        xa = tm.project(x0, x0 + random_start(x0, tm.eps, tm.p, generator)) if self.random_start else x0.clone()
        z_star: Optional[Tensor] = None
        for step in range(self.steps + 1):
            xg = xa.detach().requires_grad_(True)
            with torch.enable_grad():
                z = f(xg)
                if self.method == "quad" and (z_star is None or step % self.resolve_every == 0):
                    z_star = ordered_topk_projection(z.detach(), t0, self.margin)
                loss = loss_fn(z, z_star, t0, self.margin)
                if self.penalty:
                    loss = loss + self.penalty * ((xg - x0) ** 2).reshape(xg.shape[0], -1).sum(1)
                (g,) = torch.autograd.grad(loss.sum(), xg)
            z = z.detach()
            n_viol, v = violations(z, t0)
            hit = n_viol == 0
            better = (n_viol < best_n[idx]) | ((n_viol == best_n[idx]) & (v < best_v[idx]))
            best[idx[better]] = xa[better].detach()
            best_n[idx[better]] = n_viol[better]
            best_v[idx[better]] = v[better]
            keep = ~hit
            if step == self.steps or not bool(keep.any()):
                break
            idx, x0, t0, xa, g = idx[keep], x0[keep], t0[keep], xa[keep], g[keep]
            if z_star is not None:
                z_star = z_star[keep]
            d = steepest_direction(-g, tm.p, x=xa, domain=tm.domain, l1_fraction=self.l1_fraction)
            xa = tm.project(x0, xa.detach() + self.step_length(step) * d)
        return best


__all__ = ["OrderedTopK", "ordered_topk_projection", "isotonic_nonincreasing", "random_targets",
           "topk_hit", "ordered_gaps", "violations"]
