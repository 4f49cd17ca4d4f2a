"""Lp geometry for attacks: norms, projections, random starts and steepest-ascent steps.

Shapes: perturbations ``delta`` are ``(B, *sample_shape)``; per-sample radii ``eps`` are
floats or ``(B,)`` tensors; every function returns ``(B,)`` or ``(B, *sample_shape)``.

* Linf: projection is a clamp; the steepest step is ``sign(g)``.
* L2: projection rescales; the steepest step is ``g / ||g||_2``.
* L1: projection onto the L1 ball by sorting (Duchi et al. 2008, "Efficient projections
  onto the l1-ball for learning in high dimensions"); the steepest L1 step moves a single
  coordinate, so, as in SLIDE (Tramer & Boneh 2019) and APGD-L1 (Croce & Hein 2021), we move
  the top-q fraction of coordinates by |g| (those that can still move inside the domain),
  each by ``sign(g_i) / k`` so that the step has L1 norm 1.
"""
from __future__ import annotations

import math
from typing import Optional, Union

import numpy as np
import torch

Tensor = torch.Tensor
Radius = Union[float, Tensor]


def _flat(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1)


def _col(eps: Radius, like: Tensor) -> Tensor:
    """eps as a (B, 1) tensor broadcastable against (B, n)."""
    if isinstance(eps, Tensor):
        return eps.to(dtype=like.dtype, device=like.device).reshape(-1, 1)
    return torch.full((1, 1), float(eps), dtype=like.dtype, device=like.device)


def lp_norm(delta: Tensor, p: float) -> Tensor:
    """``||delta_b||_p`` per sample: (B,)."""
    d = _flat(delta)
    if p == math.inf:
        return d.abs().amax(1) if d.shape[1] else d.new_zeros(d.shape[0])
    if p == 2:
        return d.norm(dim=1)
    if p == 1:
        return d.abs().sum(1)
    raise ValueError(f"unsupported norm {p}")


def project_l1(d: Tensor, eps: Tensor) -> Tensor:
    """Euclidean projection of rows of ``d`` (B, n) onto L1 balls of radii ``eps`` (B, 1)."""
    a = d.abs()
    inside = a.sum(1, keepdim=True) <= eps
    s, _ = a.sort(1, descending=True)
    cs = s.cumsum(1) - eps
    k = torch.arange(1, d.shape[1] + 1, device=d.device, dtype=d.dtype).unsqueeze(0)
    cond = s - cs / k > 0
    rho = cond.to(torch.int64).cumsum(1).argmax(1, keepdim=True)  # last index where cond holds
    theta = (cs.gather(1, rho) / (rho + 1).to(d.dtype)).clamp_min(0)
    out = d.sign() * (a - theta).clamp_min(0)
    return torch.where(inside, d, out)


def project_ball(delta: Tensor, eps: Radius, p: float) -> Tensor:
    """Nearest point (Euclidean) of the Lp ball of radius ``eps`` to each ``delta_b``
    (for Linf and L2 the standard clamp / rescale; for L1 the exact projection)."""
    d = _flat(delta)
    e = _col(eps, d)
    if p == math.inf:
        out = torch.maximum(torch.minimum(d, e), -e)
    elif p == 2:
        n = d.norm(dim=1, keepdim=True)
        out = d * torch.where(n > e, e / n.clamp_min(1e-30), torch.ones_like(n))
    elif p == 1:
        out = project_l1(d, e)
    else:
        raise ValueError(f"unsupported norm {p}")
    return out.reshape(delta.shape)


def random_in_ball(like: Tensor, eps: Radius, p: float, generator: Optional[torch.Generator] = None) -> Tensor:
    """Uniform random points of the Lp ball of radius ``eps`` (same shape as ``like``)."""
    B = like.shape[0]
    n = like[0].numel()
    dt, dev = like.dtype, like.device
    e = _col(eps, like.reshape(B, -1))
    if p == math.inf:
        u = torch.rand((B, n), generator=generator, dtype=dt).to(dev)
        out = (2 * u - 1) * e
    elif p == 2:
        g = torch.randn((B, n), generator=generator, dtype=dt).to(dev)
        r = torch.rand((B, 1), generator=generator, dtype=dt).to(dev) ** (1.0 / max(n, 1))
        out = g / g.norm(dim=1, keepdim=True).clamp_min(1e-30) * r * e
    elif p == 1:
        # uniform in the L1 ball: Laplace direction normalised, radius u^(1/n)
        ex = -torch.log(torch.rand((B, n), generator=generator, dtype=dt).clamp_min(1e-30)).to(dev)
        sign = torch.where(torch.rand((B, n), generator=generator, dtype=dt).to(dev) < 0.5, -1.0, 1.0).to(dt)
        r = torch.rand((B, 1), generator=generator, dtype=dt).to(dev) ** (1.0 / max(n, 1))
        out = sign * ex / ex.sum(1, keepdim=True).clamp_min(1e-30) * r * e
    else:
        raise ValueError(f"unsupported norm {p}")
    return out.reshape(like.shape)


def random_start(like: Tensor, eps: Radius, p: float, generator: Optional[torch.Generator] = None) -> Tensor:
    """PGD's random start: uniform in the Linf box; for L2 and L1 a uniformly random
    direction with a radius uniform in [0, eps].  (Uniform in the L2/L1 ball would put
    almost every start near the sphere in high dimension, e.g. at 0.98 eps in 64
    dimensions, which measurably weakens L2 PGD; torchattacks and AdverTorch draw the
    radius uniformly too.)"""
    if p == math.inf:
        return random_in_ball(like, eps, p, generator)
    B = like.shape[0]
    d = random_in_ball(like, 1.0, p, generator).reshape(B, -1)
    unit = d / lp_norm(d, p).clamp_min(1e-30).unsqueeze(1)
    r = torch.rand((B, 1), generator=generator, dtype=like.dtype).to(like.device) * _col(eps, d)
    return (unit * r).reshape(like.shape)


def steepest_direction(grad: Tensor, p: float, *, x: Optional[Tensor] = None,
                       domain: Optional[tuple[float, float]] = None, l1_fraction: float = 0.01) -> Tensor:
    """The unit-norm (in ``p``) direction of steepest ascent of a linear function ``grad``.

    For L1 (sparse step), coordinates already at the domain bound in the direction of their
    gradient are skipped (``x`` and ``domain`` given), and the top ``l1_fraction`` (at least
    one) of the others by ``|grad|`` share the step equally.
    """
    g = _flat(grad)
    if p == math.inf:
        out = g.sign()
    elif p == 2:
        out = g / g.norm(dim=1, keepdim=True).clamp_min(1e-30)
    elif p == 1:
        a = g.abs()
        if x is not None and domain is not None:
            xf = _flat(x)
            stuck = ((xf >= domain[1]) & (g > 0)) | ((xf <= domain[0]) & (g < 0))
            a = torch.where(stuck, torch.zeros_like(a), a)
        k = max(1, int(math.ceil(l1_fraction * g.shape[1])))
        top = a.topk(k, dim=1).values[:, -1:]
        mask = (a >= top) & (a > 0)
        cnt = mask.sum(1, keepdim=True).clamp_min(1).to(g.dtype)
        out = g.sign() * mask.to(g.dtype) / cnt
    else:
        raise ValueError(f"unsupported norm {p}")
    return out.reshape(grad.shape)


def project_l1_box(v: Tensor, eps: float, lo: Optional[Tensor], hi: Optional[Tensor]) -> Tensor:
    """Euclidean projection of each row of ``v`` onto ``{d : ||d||_1 <= eps, lo <= d <= hi}``
    (``lo <= 0 <= hi``), exactly, by sorting the breakpoints (Croce & Hein 2021, Sec. 3).

    The solution is ``d_i = sign(v_i) min(max(|v_i| - lam, 0), u_i)`` with ``u_i`` the room in
    the direction of ``v_i`` and ``lam >= 0`` the smallest value that meets the budget.

    Shapes: ``v``, ``lo``, ``hi`` (B, *shape) (``lo``/``hi`` None: no box); returns v.shape.
    """
    shape, dt = v.shape, v.dtype
    vf = v.reshape(v.shape[0], -1).double()
    a = vf.abs()
    if lo is None:
        u = a
    else:
        lof = lo.reshape(vf.shape).double().clamp_max(0)
        hif = hi.reshape(vf.shape).double().clamp_min(0)
        u = torch.minimum(torch.where(vf >= 0, hif, -lof), a)  # capping at |v_i| changes nothing
    full = u.sum(1)  # the L1 norm at lam = 0
    B, n = a.shape
    # g(lam) = sum_i clamp(a_i - lam, 0, u_i): slope -1 per coordinate with a_i - u_i < lam < a_i
    e = torch.cat([a, a - u], 1)
    w = torch.cat([torch.ones_like(a), -torch.ones_like(a)], 1)
    e_s, order = e.sort(dim=1, descending=True, stable=True)
    s = w.gather(1, order).cumsum(1)  # |slope| on (e_s[k+1], e_s[k])
    G = torch.cat([a.new_zeros(B, 1), (s[:, :-1] * (e_s[:, :-1] - e_s[:, 1:])).cumsum(1)], 1)  # g(e_s[k])
    k = ((G < eps).sum(1) - 1).clamp(0, 2 * n - 1)
    Gk = G.gather(1, k[:, None]).squeeze(1)
    lam = e_s.gather(1, k[:, None]).squeeze(1) - (eps - Gk) / s.gather(1, k[:, None]).squeeze(1).clamp_min(1)
    lam = torch.where(full <= eps, torch.zeros_like(lam), lam.clamp_min(0))
    d = vf.sign() * torch.minimum((a - lam[:, None]).clamp_min(0), u)
    return d.to(dt).reshape(shape)


def sort_rows(v: Tensor, descending: bool = False) -> tuple[Tensor, Tensor]:
    """``v.sort(1, descending)`` for a 2-D tensor without gradient: (values, indices), ties
    in any order.  On the CPU through numpy's argsort: torch's CPU sort slows down sharply
    beyond a few thousand elements (e.g. 210 x 64 float64: ~270 us against ~40 us)."""
    if v.device.type != "cpu" or v.requires_grad or v.numel() < 2048 or v.dtype not in (torch.float32, torch.float64):
        return v.sort(1, descending=descending)
    a = v.numpy()
    order = torch.from_numpy(np.argsort(-a if descending else a, axis=1))
    return v.gather(1, order), order
