"""Non-conformity scores of classification: larger = the label conforms less.  All take
softmax probabilities ``probs (N, C)`` and return ``(N, C)`` scores in [0, 1] (bounded, as
randomized smoothing of scores needs).

* ``thr``: ``1 - p_y``, the threshold score of Sadinle, Lei and Wasserman 2019 ("Least
  ambiguous set-valued classifiers with bounded error levels"): sets ``{y : p_y >= 1 - q}``.
* ``hps``: the same score under the name the robust conformal papers give it (HPS in Gendler
  et al. 2022 and Yan et al. 2024), so their settings can be given by name.
* ``aps``: adaptive prediction sets (Romano, Sesia and Candes 2020): the probability mass of
  the classes more likely than ``y`` plus ``u * p_y``, with ``u ~ U(0, 1)`` per point
  (randomised) or ``u = 1`` (not).
"""
from __future__ import annotations

from typing import Callable, Mapping, Optional

import torch
from torch import Tensor

from perturbkit.errors import InputError


def thr(probs: Tensor, u: Optional[Tensor] = None) -> Tensor:
    """``1 - p_y`` for every class ``y``.  Shapes: probs (N, C) -> (N, C)."""
    return 1.0 - probs


def aps(probs: Tensor, u: Optional[Tensor] = None) -> Tensor:
    """``sum_{y' : p_y' > p_y} p_y' + u * p_y`` (``u`` (N,) in [0, 1]; None: 1).  Shapes:
    probs (N, C), u (N,) -> (N, C).  Differentiable in ``probs`` away from ties."""
    sorted_p, order = torch.sort(probs, dim=1, descending=True)
    before = torch.cumsum(sorted_p, dim=1) - sorted_p  # mass strictly ahead in the order
    mass_ahead = torch.empty_like(probs).scatter_(1, order, before)
    w = torch.ones(probs.shape[0], 1, dtype=probs.dtype) if u is None else u.reshape(-1, 1).to(probs.dtype)
    return (mass_ahead + w * probs).clamp(0.0, 1.0)


#: score name -> function(probs (N, C), u (N,) or None) -> scores (N, C)
SCORES: Mapping[str, Callable[[Tensor, Optional[Tensor]], Tensor]] = {"thr": thr, "hps": thr, "aps": aps}
#: scores that use the per-point uniform ``u``
RANDOMISED = frozenset({"aps"})


def score_fn(name: str) -> Callable[[Tensor, Optional[Tensor]], Tensor]:
    try:
        return SCORES[name]
    except KeyError:
        raise InputError(f"unknown conformal score {name!r}; available: {', '.join(SCORES)}") from None


__all__ = ["RANDOMISED", "SCORES", "aps", "score_fn", "thr"]
