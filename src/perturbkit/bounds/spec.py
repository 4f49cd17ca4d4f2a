"""Output specifications: matrices ``C`` (``(B, S, n_outputs)``) whose rows are bounded."""
from __future__ import annotations

import torch

from perturbkit.errors import InputError


def margin_spec(labels, n_classes: int, *, dtype: torch.dtype = torch.float32,
                device: torch.device | str | None = None) -> torch.Tensor:
    """Classification margins ``y_label - y_j`` for every ``j != label``.

    Args:
        labels: int tensor/sequence ``(B,)`` (or one int).
        n_classes: number of outputs.
    Returns:
        ``C`` of shape ``(B, n_classes - 1, n_classes)``; row ``k`` of sample ``b`` is
        ``e_label - e_j`` for the k-th ``j != label`` in increasing order.
    """
    lab = torch.as_tensor(labels, dtype=torch.int64).reshape(-1)
    if n_classes < 2:
        raise InputError("margins need at least 2 outputs")
    if ((lab < 0) | (lab >= n_classes)).any():
        raise InputError(f"label out of range: labels must lie in [0, {n_classes - 1}], got {lab.tolist()}")
    B = lab.numel()
    eye = torch.eye(n_classes, dtype=dtype)
    C = eye[lab].unsqueeze(1) - eye.unsqueeze(0)  # (B, n, n): row j = e_label - e_j
    keep = torch.arange(n_classes).unsqueeze(0) != lab.unsqueeze(1)  # (B, n)
    C = C[keep].reshape(B, n_classes - 1, n_classes)
    return C.to(device) if device is not None else C


def others(labels, n_classes: int) -> torch.Tensor:
    """The ``j != label`` indices in the order of :func:`margin_spec` rows: ``(B, n-1)``."""
    lab = torch.as_tensor(labels, dtype=torch.int64).reshape(-1)
    ar = torch.arange(n_classes).unsqueeze(0).expand(lab.numel(), -1)
    return ar[ar != lab.unsqueeze(1)].reshape(lab.numel(), n_classes - 1)
