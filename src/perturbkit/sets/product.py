"""``ProductSet``: the Cartesian product of flattened sets over consecutive coordinate blocks.

Used for perturbations of an input jointly with weights (:mod:`perturbkit.bounds.weights`):
the bound engine sees one input vector ``[x, w_1, w_2, ...]`` whose blocks vary
independently, each in its own set.  The minimum of a linear function over a product is the
sum of the blocks' minima, so :meth:`min_linear` stays exact.

Shapes: every block is flattened, ``(B, n_i)``; the product is ``(B, sum n_i)``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from perturbkit.errors import InputError
from perturbkit.sets.base import PerturbationSet


@dataclass(frozen=True)
class ProductSet(PerturbationSet):
    blocks: tuple[PerturbationSet, ...]

    def __post_init__(self):
        refs = [b.reference for b in self.blocks]
        if not refs or any(r.dim() != 2 for r in refs) or len({r.shape[0] for r in refs}) != 1:
            raise InputError("a product set needs flattened blocks (B, n_i) with one batch size")

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(int(b.reference.shape[1]) for b in self.blocks)

    @property
    def is_box(self) -> bool:  # type: ignore[override]
        return all(b.is_box for b in self.blocks)

    @property
    def reference(self) -> torch.Tensor:
        return torch.cat([b.reference for b in self.blocks], 1)

    def flatten(self, batch: int, n: int) -> "ProductSet":
        B = self.blocks[0].reference.shape[0]
        if batch != B or n != sum(self.sizes):
            raise InputError(f"a product set of shape ({B}, {sum(self.sizes)}) does not fit ({batch}, {n})")
        return self

    def box(self) -> tuple[torch.Tensor, torch.Tensor]:
        parts = [b.box() for b in self.blocks]
        return torch.cat([p[0] for p in parts], 1), torch.cat([p[1] for p in parts], 1)

    def index(self, rows: torch.Tensor) -> "ProductSet":
        return ProductSet(tuple(b.index(rows) for b in self.blocks))

    def tile(self, k: int) -> "ProductSet":
        return ProductSet(tuple(b.tile(k) for b in self.blocks))

    def min_linear(self, A: torch.Tensor) -> torch.Tensor:
        """A (B, S, sum n_i) -> (B, S): the sum of each block's minimum."""
        out = None
        off = 0
        for b, n in zip(self.blocks, self.sizes):
            m = b.min_linear(A[..., off:off + n])
            out = m if out is None else out + m
            off += n
        return out

    def sample(self, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.cat([b.sample(k, generator) for b in self.blocks], -1)
