"""Falsification: look for a counterexample before (and while) trying to prove.

Two cheap searches over an input box, for every clause ``C y <= d`` of its output
specification (a clause holds when all its rows hold):

* sampling: uniform points, the centre, random corners, and points on faces of every
  dimension (each coordinate at one of its bounds with probability 1/2, uniform otherwise:
  piecewise-linear networks take their extremes on the boundary, and counterexamples
  often sit on a face, e.g. ACAS Xu 1_9/prop_7 at X_0 and X_1 both at their lower bound,
  in a region that 200 000 uniform samples and PGD from 128 starts all missed);
* PGD, signed-gradient steps projected on the box, from the best samples and random
  starts, on two objectives per clause: the violation ``max_i (C_i f(x) - d_i)`` (<= 0
  exactly when the clause holds) and the hinge sum ``sum_i relu(C_i f(x) - d_i + margin)``
  (its gradient pushes every violated row at once; it finds ACAS Xu counterexamples the
  max misses).

A point found here is only a *candidate*: :mod:`perturbkit.verify.check` executes the
network on it (ONNX Runtime for ONNX models) before anything says "sat".
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

import torch

from perturbkit.graph.network import Network

Tensor = torch.Tensor


@dataclass(frozen=True)
class FalsifyConfig:
    samples: int = 1024
    restarts: int = 128
    steps: int = 100
    margin: float = 1e-4  # the hinge objective pushes rows below -margin


def clause_max(g: Tensor, clause_of_row: Tensor, n_clauses: int) -> Tensor:
    """Row values (N, R) -> per clause the largest of its rows (N, n_clauses).

    With ``g = C y - d`` this is <= 0 exactly where the clause holds; with row margins
    (lower bound - d) it is > 0 exactly where some row proves the clause never holds.
    """
    out = torch.full((g.shape[0], n_clauses), float("-inf"), dtype=g.dtype, device=g.device)
    return out.scatter_reduce(1, clause_of_row.expand(g.shape[0], -1), g, reduce="amax")


def violation(net: Network, x: Tensor, C: Tensor, d: Tensor, clause_of_row: Tensor, n_clauses: int,
              hinge: float | None = None) -> Tensor:
    """Per point and clause, ``max_i (C_i f(x) - d_i)`` over the clause's rows: (N, n_clauses);
    with ``hinge`` the sum of ``relu(C_i f(x) - d_i + hinge)`` instead.

    x: (N, n) flat inputs; C: (R, n_out); d: (R,); clause_of_row: (R,) int64.
    """
    g = _rows(net, x, C, d)
    return _hinged(g, clause_of_row, n_clauses, hinge) if hinge is not None else clause_max(g, clause_of_row, n_clauses)


def violations(net: Network, x: Tensor, C: Tensor, d: Tensor, clause_of_row: Tensor, n_clauses: int,
               hinge: float) -> tuple[Tensor, Tensor]:
    """``violation`` without and with ``hinge``, from one evaluation of the network."""
    g = _rows(net, x, C, d)
    return clause_max(g, clause_of_row, n_clauses), _hinged(g, clause_of_row, n_clauses, hinge)


def _rows(net: Network, x: Tensor, C: Tensor, d: Tensor) -> Tensor:
    """``C f(x) - d``: (N, R)."""
    y = net(x.reshape(x.shape[0], *net.sample_shape)).reshape(x.shape[0], -1)
    return y @ C.T - d


def _hinged(g: Tensor, clause_of_row: Tensor, n_clauses: int, hinge: float) -> Tensor:
    out = torch.zeros((g.shape[0], n_clauses), dtype=g.dtype, device=g.device)
    return out.scatter_add(1, clause_of_row.expand(g.shape[0], -1), torch.relu(g + hinge))


def search(net: Network, lo: Tensor, hi: Tensor, C: Tensor, d: Tensor, clause_of_row: Tensor, n_clauses: int,
           config: FalsifyConfig, generator: torch.Generator, deadline: float = float("inf")) -> Optional[Tensor]:
    """A candidate x (n,) in the box [lo, hi] where some clause holds (objective <= 0), or None."""
    n = lo.numel()
    dt = lo.dtype

    def rand(k: int) -> Tensor:
        return lo + torch.rand(k, n, generator=generator, dtype=dt).to(lo.device) * (hi - lo)

    corners = torch.where(torch.rand(config.samples // 4, n, generator=generator, dtype=dt).to(lo.device) < 0.5, lo, hi)
    # points on faces of every dimension: each coordinate at a bound with probability 1/2
    r = torch.rand(config.samples, n, generator=generator, dtype=dt).to(lo.device)
    faces = torch.where(r < 0.25, lo, torch.where(r < 0.5, hi, rand(config.samples)))
    pts = torch.cat([((lo + hi) / 2).unsqueeze(0), corners, faces, rand(config.samples)])
    with torch.no_grad():
        v = violation(net, pts, C, d, clause_of_row, n_clauses)
    hit = _first_hit(v, pts)
    if hit is not None or config.restarts == 0:
        return hit
    # PGD from the best samples and random starts, one clause objective per start
    k = config.restarts
    best = v.min(1).values.argsort()[: k // 2]
    starts = torch.cat([pts[best], rand(k - best.numel())])
    target = v[best].argmin(1) if best.numel() else torch.zeros(0, dtype=torch.int64)
    target = torch.cat([target, torch.randint(0, n_clauses, (k - best.numel(),), generator=generator)])
    x = starts.clone()
    width = (hi - lo)
    use_hinge = torch.arange(k, device=x.device) % 2 == 1  # half the starts on each objective
    for step in range(config.steps):
        if time.monotonic() > deadline:
            break
        x.requires_grad_(True)
        with torch.enable_grad():
            v, h = violations(net, x, C, d, clause_of_row, n_clauses, hinge=config.margin)
            t = target.to(v.device).unsqueeze(1)
            obj = torch.where(use_hinge, h.gather(1, t).squeeze(1), v.gather(1, t).squeeze(1))
            (grad,) = torch.autograd.grad(obj.sum(), x)
        with torch.no_grad():
            hit = _first_hit(v.detach(), x.detach())
            if hit is not None:
                return hit
            size = 0.25 * (1 - step / config.steps) + 0.01
            x = torch.maximum(torch.minimum(x.detach() - size * width * grad.sign(), hi), lo)
    with torch.no_grad():
        return _first_hit(violation(net, x, C, d, clause_of_row, n_clauses), x)


def _first_hit(v: Tensor, pts: Tensor) -> Optional[Tensor]:
    ok = (v <= 0).any(1)
    if bool(ok.any()):
        i = int(torch.nonzero(ok)[0])
        return pts[i].detach().clone()
    return None


def pgd_in_boxes(net: Network, lo: Tensor, hi: Tensor, C: Tensor, d: Tensor, clause_of_row: Tensor,
                 n_clauses: int, steps: int = 10, deadline: float = float("inf")) -> Optional[Tensor]:
    """PGD from the centres of several boxes at once (lo, hi: (M, n)), each iterate projected
    on its own box, minimising the most nearly satisfied clause's violation.  Returns a
    candidate point (n,) where some clause holds, or None.  Used inside branch and bound on
    the sub-boxes whose centres come closest to a counterexample."""
    return pgd_from(net, (lo + hi) / 2, lo, hi, C, d, clause_of_row, n_clauses, steps=steps, deadline=deadline)


def pgd_from(net: Network, x0: Tensor, lo: Tensor, hi: Tensor, C: Tensor, d: Tensor, clause_of_row: Tensor,
             n_clauses: int, steps: int = 10, deadline: float = float("inf")) -> Optional[Tensor]:
    """PGD from the points ``x0`` (M, n), each iterate projected on the box [lo, hi] ((M, n),
    or (n,) shared), on the hinge of the most nearly satisfied clause; signed steps of
    0.55 down to 0.05 box widths.  A candidate point (n,) where some clause holds, or None.
    (ReLU-splitting branch and bound starts it from its bounds' minimisers.)"""
    x = x0.clone()
    width = hi - lo
    for step in range(steps):
        if time.monotonic() > deadline:
            break
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            v, h = violations(net, x, C, d, clause_of_row, n_clauses, hinge=1e-4)
            obj = h.gather(1, v.argmin(1, keepdim=True)).squeeze(1)  # hinge of the closest clause
            (grad,) = torch.autograd.grad(obj.sum(), x)
        with torch.no_grad():
            hit = _first_hit(v.detach(), x.detach())
            if hit is not None:
                return hit
            size = 0.5 * (1 - step / steps) + 0.05
            x = torch.maximum(torch.minimum(x - size * width * grad.sign(), hi), lo)
    with torch.no_grad():
        return _first_hit(violation(net, x, C, d, clause_of_row, n_clauses), x)
