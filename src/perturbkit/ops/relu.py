"""ReLU and LeakyReLU: the triangle relaxation (CROWN, Zhang et al. 2018).

For an unstable neuron (``lo < 0 < hi``) the upper line is the chord through
``(lo, f(lo))`` and ``(hi, f(hi))``; the lower line has slope 1 when ``hi > -lo`` and slope
0 (``alpha`` for LeakyReLU) otherwise ("adaptive" choice, which minimises the area of the
relaxation).  Stable neurons are exact.
"""
from __future__ import annotations

import torch

from perturbkit.graph.ir import Node
from perturbkit.ops.base import ActivationRule, Line, Relaxation


class Relu(ActivationRule):
    op_type = "Relu"
    monotone = True
    constant_below_zero = True

    def _alpha(self, node: Node) -> float:
        return 0.0

    def forward(self, node: Node, x: torch.Tensor, *consts) -> torch.Tensor:
        a = self._alpha(node)
        return torch.relu(x) if a == 0.0 else torch.where(x >= 0, x, a * x)

    def unstable(self, node: Node, lo: torch.Tensor, hi: torch.Tensor, *consts) -> torch.Tensor:
        return (lo < 0) & (hi > 0)

    def relax(self, node: Node, lo: torch.Tensor, hi: torch.Tensor, *consts) -> Relaxation:
        a = self._alpha(node)
        active = lo >= 0
        inactive = hi <= 0
        unstable = ~(active | inactive)
        one = torch.ones_like(lo)
        # upper: chord on unstable, identity/alpha on stable
        denom = torch.where(unstable, hi - lo, one)
        chord = (hi - a * lo) / denom
        chord = torch.where(unstable, chord, torch.where(active, one, one * a))
        # intercept of the chord, (a - 1) * hi * lo / (hi - lo): no cancellation (``(a - chord) * lo`` loses
        # all digits of ``a - chord`` when hi << -lo, e.g. 3 % error in float32 for lo = -1e6, hi = 0.3)
        u_int = torch.where(unstable, (a - 1.0) * hi * (lo / denom), torch.zeros_like(lo))
        # lower: adaptive slope in {alpha, 1}
        l_slope = torch.where(unstable, torch.where(hi > -lo, one, one * a),
                              torch.where(active, one, one * a))
        zero = torch.zeros_like(lo)
        if a > 1.0:  # LeakyReLU with alpha > 1 is concave: swap the roles of the lines
            return Relaxation(lower=Line(chord, u_int), upper=Line(l_slope, zero))
        return Relaxation(lower=Line(l_slope, zero), upper=Line(chord, u_int))

    # alpha-CROWN (Xu et al. 2021): the slope of the line through the origin (the lower line,
    # or the upper one when alpha > 1) is free in [min(a, 1), max(a, 1)] for unstable neurons.
    def alpha_range(self, node: Node) -> tuple[float, float]:
        a = self._alpha(node)
        return (min(a, 1.0), max(a, 1.0))

    def alpha_init(self, node: Node, lo: torch.Tensor, hi: torch.Tensor, *consts) -> torch.Tensor:
        rel = self.relax(node, lo, hi)
        return (rel.upper if self._alpha(node) > 1.0 else rel.lower).slope

    def relax_alpha(self, node: Node, lo: torch.Tensor, hi: torch.Tensor, alpha: torch.Tensor,
                    *consts) -> Relaxation:
        """As :meth:`relax` with the origin line's slope ``alpha`` on unstable neurons.

        Shapes: lo, hi broadcast with alpha (e.g. (B, 1, *shape) and (B, S, *shape)); the
        returned lines have the broadcast shape.
        """
        return self.relax_from_base(node, self.alpha_base(node, lo, hi), alpha)

    def alpha_base(self, node: Node, lo: torch.Tensor, hi: torch.Tensor) -> tuple:
        """What :meth:`relax_alpha` computes from the bounds alone (cached by the engine
        across the iterations of an optimisation): the unstable mask and the relaxation."""
        return (lo < 0) & (hi > 0), self.relax(node, lo, hi)

    def relax_from_base(self, node: Node, base: tuple, alpha: torch.Tensor) -> Relaxation:
        unstable, rel = base
        if self._alpha(node) > 1.0:
            slope = torch.where(unstable, alpha, rel.upper.slope)
            return Relaxation(lower=rel.lower, upper=Line(slope, slope.new_zeros(())))
        slope = torch.where(unstable, alpha, rel.lower.slope)
        return Relaxation(lower=Line(slope, slope.new_zeros(())), upper=rel.upper)


class LeakyRelu(Relu):
    op_type = "LeakyRelu"
    monotone = False  # (a negative slope is allowed)
    constant_below_zero = False

    def _alpha(self, node: Node) -> float:
        return float(node.attrs.get("alpha", 0.01))

    def interval(self, node: Node, x, *consts):
        from perturbkit.ops.base import Interval
        a = self._alpha(node)
        if a >= 0:
            return Interval(self.forward(node, x.lo), self.forward(node, x.hi))
        # negative alpha: not monotone; evaluate on the endpoints and at 0
        vals = torch.stack([self.forward(node, x.lo), self.forward(node, x.hi)])
        lo = vals.min(0).values
        hi = vals.max(0).values
        inside = (x.lo < 0) & (x.hi > 0)
        lo = torch.where(inside, torch.minimum(lo, torch.zeros_like(lo)), lo)
        return Interval(lo, hi)
