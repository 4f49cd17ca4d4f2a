"""``Box(lower, upper)``: the set ``{x : lower <= x <= upper}``."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from perturbkit.errors import InputError
from perturbkit.sets.base import PerturbationSet, TensorLike, as_tensor, expand_to, rows


@dataclass(frozen=True, init=False)
class Box(PerturbationSet):
    """Axis-aligned box.  ``lower``/``upper`` are tensors of the batch's shape (broadcastable)."""

    lower: torch.Tensor
    upper: torch.Tensor

    def __init__(self, lower: TensorLike, upper: TensorLike):
        lo = as_tensor(lower, name="box lower bound")
        hi = as_tensor(upper, name="box upper bound", like=lo)
        if lo.dim() < hi.dim():
            lo = expand_to(lo, hi, "box lower bound")
        else:
            hi = expand_to(hi, lo, "box upper bound")
        if (lo > hi).any():
            raise InputError("box lower bound exceeds upper bound")
        object.__setattr__(self, "lower", lo)
        object.__setattr__(self, "upper", hi)

    @property
    def reference(self) -> torch.Tensor:
        return self.lower

    def flatten(self, batch: int, n: int) -> "Box":
        lo = rows(self.lower, batch).expand(batch, n)
        hi = rows(self.upper, batch).expand(batch, n)
        return Box(lo, hi)

    def box(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.lower, self.upper

    def index(self, rows: torch.Tensor) -> "Box":
        """The flattened set's batch entries ``rows`` (a gather along the batch)."""
        return Box(self.lower[rows], self.upper[rows])

    def tile(self, k: int) -> "Box":
        """A flattened set (B, n) repeated ``k`` times along the batch: (k*B, n)."""
        return Box(self.lower.repeat(k, 1), self.upper.repeat(k, 1))

    def min_linear(self, A: torch.Tensor) -> torch.Tensor:
        """min over the box of ``A @ x``: ``A mid - |A| rad``.  A: (B, S, n) -> (B, S)."""
        mid = ((self.upper + self.lower) / 2).unsqueeze(-1)
        rad = ((self.upper - self.lower) / 2).unsqueeze(-1)
        return (A @ mid).squeeze(-1) - (A.abs() @ rad).squeeze(-1)

    def min_linear_local(self, A: torch.Tensor, gather, consume: bool = False) -> torch.Tensor:
        """Like :meth:`min_linear` for coefficients known only on local entries (patches):
        ``A`` is (B', G, R, m) and ``gather(t1, t2, ...)`` maps (B, n) tensors to their
        (B, G, m) entries under group G's patch (shared by the R rows of the group).
        Returns (B, G, R).  ``consume=True`` lets it overwrite ``A``."""
        mid, rad = gather((self.upper + self.lower) / 2, (self.upper - self.lower) / 2)
        lin = (A @ mid.unsqueeze(-1)).squeeze(-1)
        absA = A.abs_() if consume else A.abs()
        return lin - (absA @ rad.unsqueeze(-1)).squeeze(-1)

    def sample(self, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
        u = torch.rand((k, *self.lower.shape), generator=generator, dtype=self.lower.dtype).to(self.lower.device)
        return self.lower + u * (self.upper - self.lower)

    def to(self, dtype=None, device=None) -> "Box":
        return Box(self.lower.to(dtype=dtype, device=device), self.upper.to(dtype=dtype, device=device))
