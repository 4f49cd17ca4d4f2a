"""Perturbation sets: :class:`Box` and :class:`LpBall` (norm inf, 2, 1; scalar or per-feature eps)."""
from perturbkit.sets.base import PerturbationSet
from perturbkit.sets.box import Box
from perturbkit.sets.lp import LpBall, parse_norm

__all__ = ["PerturbationSet", "Box", "LpBall", "parse_norm"]
