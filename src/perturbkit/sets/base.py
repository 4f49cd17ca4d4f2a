"""Perturbation sets: the input regions bounds are computed over.

A set is batched: its tensors are shaped like the user batch ``(B, *sample_shape)`` (or one
unbatched sample).  The bound engine calls :meth:`PerturbationSet.flatten` to get the same
set with tensors of shape ``(B, n)`` and then uses two operations on it:

* :meth:`box`: elementwise bounds ``lo <= x <= hi`` (for IBP);
* :meth:`min_linear`: the exact minimum of ``<a, x>`` over the set for each row ``a`` of
  ``A`` (``(B, S, n)`` -> ``(B, S)``), i.e. concretisation by the dual norm.
"""
from __future__ import annotations

import math
from typing import Union

import numpy as np
import torch

from perturbkit.errors import InputError

TensorLike = Union[torch.Tensor, np.ndarray, float, int]


def as_tensor(x: TensorLike, *, name: str, like: torch.Tensor | None = None) -> torch.Tensor:
    """Tensor from user input; floating point; checked for NaN/inf."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    elif not isinstance(x, torch.Tensor):
        try:
            x = torch.tensor(x, dtype=like.dtype if like is not None else torch.float32)
        except Exception as e:  # noqa: BLE001
            raise InputError(f"{name} must be a number or a tensor, got {type(x).__name__}") from e
    if not x.is_floating_point():
        x = x.to(like.dtype if like is not None else torch.float32)
    if like is not None:
        x = x.to(device=like.device, dtype=like.dtype)
    if not torch.isfinite(x).all():
        raise InputError(f"{name} contains NaN or inf")
    return x


def rows(x: torch.Tensor, batch: int) -> torch.Tensor:
    """``x`` (a batch, one sample, or something broadcastable to a sample) as ``(batch, n)``."""
    if x.dim() == 0:
        return x.reshape(1, 1)
    if x.shape[0] == batch and (batch > 1 or x.dim() > 1):
        return x.reshape(batch, -1)
    return x.reshape(1, -1)


class PerturbationSet:
    """Base class; see the module docstring."""

    #: True when the set is an axis-aligned box (then IBP of one affine map is exact)
    is_box: bool = True

    def flatten(self, batch: int, n: int) -> "PerturbationSet":  # pragma: no cover - abstract
        raise NotImplementedError

    def box(self) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def index(self, rows: torch.Tensor) -> "PerturbationSet":  # pragma: no cover - abstract
        """The flattened set's batch entries ``rows`` (a gather along the batch)."""
        raise NotImplementedError

    def tile(self, k: int) -> "PerturbationSet":  # pragma: no cover - abstract
        """A flattened set (B, n) repeated ``k`` times along the batch: (k*B, n)."""
        raise NotImplementedError

    def min_linear(self, A: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def reference(self) -> torch.Tensor:  # pragma: no cover - abstract
        """A tensor carrying the batch layout, dtype and device of the set."""
        raise NotImplementedError

    def sample(self, k: int, generator: torch.Generator | None = None) -> torch.Tensor:  # pragma: no cover
        """``k`` points of the set per batch element, shape ``(k, *reference.shape)``."""
        raise NotImplementedError


def expand_to(x: torch.Tensor, ref: torch.Tensor, name: str) -> torch.Tensor:
    try:
        return torch.broadcast_to(x, ref.shape)
    except RuntimeError:
        pass
    if x.numel() == math.prod(ref.shape[1:]) and ref.dim() > 1:
        return x.reshape(ref.shape[1:]).expand(ref.shape)
    raise InputError(f"{name} of shape {tuple(x.shape)} does not broadcast to the input shape {tuple(ref.shape)}")
