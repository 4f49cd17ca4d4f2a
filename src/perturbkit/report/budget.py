"""How much work a report does: three named budgets (``fast`` for ``perturbkit demo``,
``standard``, ``thorough``), each a frozen :class:`Budget`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

from perturbkit.errors import InputError


@dataclass(frozen=True)
class Budget:
    """``points``: how many data points every measurement uses (None: all); ``attacks``: the
    empirical attacks (the last one is the strongest: the power law is fitted to it);
    ``alpha_iterations``: alpha-CROWN's iterations; ``smoothing_n0``, ``smoothing_n``,
    ``smoothing_points``: CERTIFY's samples and points; ``saliency_samples`` images shown and
    ``smoothgrad_n`` noisy copies each; ``pgd_steps`` of the PGD stage."""

    name: str
    points: Optional[int]
    attacks: tuple[str, ...]
    alpha_iterations: int
    smoothing_n0: int
    smoothing_n: int
    smoothing_points: Optional[int]
    saliency_samples: int = 4
    smoothgrad_n: int = 16
    pgd_steps: int = 20


BUDGETS: Mapping[str, Budget] = {
    "fast": Budget("fast", 40, ("pgd", "autoattack-fast"), 10, 50, 500, 40, smoothgrad_n=8, pgd_steps=10),
    "standard": Budget("standard", 200, ("pgd", "autoattack-fast"), 20, 100, 2000, 100),
    "thorough": Budget("thorough", None, ("pgd", "autoattack"), 30, 100, 10_000, None, smoothgrad_n=32, pgd_steps=40),
}


def budget(name: str) -> Budget:
    try:
        return BUDGETS[name]
    except KeyError:
        raise InputError(f"unknown budget {name!r}; available: {', '.join(BUDGETS)}") from None


__all__ = ["BUDGETS", "Budget", "budget"]
