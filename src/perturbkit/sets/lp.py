"""``LpBall(center, eps, norm, domain)``: ``{x : ||(x - center) / eps||_p <= 1} ∩ domain``.

``eps`` is a scalar or a per-feature tensor (broadcast to the center); the norm is inf, 2
or 1.  ``domain=(lo, hi)`` (e.g. ``(0, 1)`` for images) intersects the ball with a box: for
Linf the set stays a box (clipped); for L2/L1 the linear bound is the better of the ball's
dual-norm bound and the bound over the clipped box, both valid for the intersection.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from perturbkit.errors import InputError
from perturbkit.sets.base import PerturbationSet, TensorLike, as_tensor, expand_to, rows
from perturbkit.sets.box import Box

_DUAL = {math.inf: 1.0, 2.0: 2.0, 1.0: math.inf}


def parse_norm(norm) -> float:
    if isinstance(norm, str):
        s = norm.strip().lower()
        norm = math.inf if s in ("inf", "linf", "l_inf", "infinity") else s.lstrip("l")
    try:
        p = float(norm)
    except (TypeError, ValueError):
        raise InputError(f"unknown norm {norm!r}; use inf, 2 or 1") from None
    if p not in _DUAL:
        raise InputError(f"unsupported norm {norm!r}; use inf, 2 or 1")
    return p


@dataclass(frozen=True, init=False)
class LpBall(PerturbationSet):
    center: torch.Tensor
    eps: torch.Tensor
    norm: float
    domain: Optional[tuple[torch.Tensor, torch.Tensor]]

    def __init__(self, center: TensorLike, eps: TensorLike, norm=math.inf, domain=None):
        c = as_tensor(center, name="input")
        if isinstance(eps, (float, int)) and (math.isnan(eps) or eps < 0):
            raise InputError(f"eps must be >= 0, got {eps}")
        e = as_tensor(eps, name="eps", like=c)
        if (e < 0).any():
            raise InputError(f"eps must be >= 0, got {e.min().item()}")
        e = expand_to(e, c, "eps")
        p = parse_norm(norm)
        dom = None
        if domain is not None:
            try:
                dlo, dhi = domain
            except (TypeError, ValueError):
                raise InputError("domain must be a pair (lo, hi)") from None
            dlo = expand_to(as_tensor(dlo, name="domain lower bound", like=c), c, "domain lower bound")
            dhi = expand_to(as_tensor(dhi, name="domain upper bound", like=c), c, "domain upper bound")
            if (dlo > dhi).any():
                raise InputError("domain lower bound exceeds upper bound")
            dom = (dlo, dhi)
        object.__setattr__(self, "center", c)
        object.__setattr__(self, "eps", e)
        object.__setattr__(self, "norm", p)
        object.__setattr__(self, "domain", dom)

    @property
    def is_box(self) -> bool:  # type: ignore[override]
        return self.norm == math.inf

    @property
    def reference(self) -> torch.Tensor:
        return self.center

    def flatten(self, batch: int, n: int) -> "LpBall":
        c = rows(self.center, batch).expand(batch, n)
        e = rows(self.eps, batch).expand(batch, n)
        dom = None
        if self.domain is not None:
            dom = (rows(self.domain[0], batch).expand(batch, n), rows(self.domain[1], batch).expand(batch, n))
        return LpBall(c, e, self.norm, dom)

    def index(self, rows: torch.Tensor) -> "LpBall":
        """The flattened set's batch entries ``rows`` (a gather along the batch)."""
        dom = None if self.domain is None else (self.domain[0][rows], self.domain[1][rows])
        return LpBall(self.center[rows], self.eps[rows], self.norm, dom)

    def tile(self, k: int) -> "LpBall":
        """A flattened set (B, n) repeated ``k`` times along the batch: (k*B, n)."""
        dom = None if self.domain is None else (self.domain[0].repeat(k, 1), self.domain[1].repeat(k, 1))
        return LpBall(self.center.repeat(k, 1), self.eps.repeat(k, 1), self.norm, dom)

    def box(self) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = self.center - self.eps, self.center + self.eps
        if self.domain is not None:
            lo = torch.maximum(lo, self.domain[0])
            hi = torch.minimum(hi, self.domain[1])
            if (lo > hi).any():
                raise InputError("the perturbation ball does not meet the input domain")
        return lo, hi

    def min_linear(self, A: torch.Tensor) -> torch.Tensor:
        """A (B, S, n) -> (B, S): min of ``<a, x>`` over the set (see module docstring)."""
        if self.norm == math.inf:
            return Box(*self.box()).min_linear(A)
        q = _DUAL[self.norm]
        Ae = A * self.eps.unsqueeze(1)
        dual = Ae.abs().amax(-1) if q == math.inf else torch.linalg.vector_norm(Ae, ord=q, dim=-1)
        ball = (A @ self.center.unsqueeze(-1)).squeeze(-1) - dual
        if self.domain is None:
            return ball
        return torch.maximum(ball, Box(*self.box()).min_linear(A))

    def min_linear_local(self, A: torch.Tensor, gather, consume: bool = False) -> torch.Tensor:
        """:meth:`min_linear` for local coefficients (see ``Box.min_linear_local``)."""
        if self.norm == math.inf:
            return Box(*self.box()).min_linear_local(A, gather, consume=consume)
        q = _DUAL[self.norm]
        eps, center = gather(self.eps, self.center)
        Ae = A * eps.unsqueeze(-2)
        dual = Ae.abs().amax(-1) if q == math.inf else torch.linalg.vector_norm(Ae, ord=q, dim=-1)
        ball = (A @ center.unsqueeze(-1)).squeeze(-1) - dual
        if self.domain is None:
            return ball
        return torch.maximum(ball, Box(*self.box()).min_linear_local(A, gather, consume=consume))

    def sample(self, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Points of the set (on the sphere and inside); clipped to the domain."""
        shape = (k, *self.center.shape)
        d = torch.randn(shape, generator=generator, dtype=self.center.dtype).to(self.center.device)
        flat = d.reshape(k, -1) if self.center.dim() == 0 else d.reshape(k, d.shape[1] if self.center.dim() > 1 else 1, -1)
        if self.norm == math.inf:
            u = torch.rand(shape, generator=generator, dtype=self.center.dtype).to(self.center.device) * 2 - 1
        else:
            n = torch.linalg.vector_norm(flat, ord=self.norm, dim=-1, keepdim=True).clamp_min(1e-12)
            r = torch.rand(flat.shape[:-1] + (1,), generator=generator, dtype=self.center.dtype).to(flat.device)
            u = (flat / n * r).reshape(shape)
        x = self.center + self.eps * u
        if self.domain is not None:
            x = torch.maximum(torch.minimum(x, self.domain[1]), self.domain[0])
        return x
