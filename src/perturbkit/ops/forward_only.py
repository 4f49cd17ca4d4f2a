"""Operators perturbkit can execute but not bound: the second, smaller table.

Attacks only need to run a model (and differentiate it: every function here is a torch
function), so a network loaded with ``perturbkit.load(path, forward_only=True)`` may contain
these operators (Floor, Ceil: rounding steps).  Bound propagation has no relaxation for them:
:meth:`ForwardOnly.interval` raises an error that names the operator and the node, so
``bounds``/``verify`` on such a network fail with one clear line.  Loading without
``forward_only`` (what the bound and verify commands do) still refuses them up front.
(Softmax, Exp, Log, ... were here once; they have bound rules now.)
"""
from __future__ import annotations

from types import MappingProxyType
from typing import Callable, Mapping

import torch

from perturbkit.errors import UnsupportedOperatorError
from perturbkit.graph.ir import Node
from perturbkit.ops.base import OpRule

Tensor = torch.Tensor


_FUNCTIONS: dict[str, Callable[..., Tensor]] = {
    "Floor": lambda n, x: torch.floor(x),
    "Ceil": lambda n, x: torch.ceil(x),
}


class ForwardOnly(OpRule):
    """An operator with a forward function and no bound rule (see the module docstring)."""

    kind = "forward"

    def __init__(self, op_type: str, fn: Callable[..., Tensor]):
        self._op = op_type
        self._fn = fn

    def forward(self, node: Node, *xs: Tensor) -> Tensor:
        return self._fn(node, *xs)

    def interval(self, node: Node, *xs) -> None:
        from perturbkit.ops.registry import supported

        raise UnsupportedOperatorError(
            f"no bound rule for '{self._op}' at {node.where()}: perturbkit can run it (attacks) but not "
            f"bound it; bounds and verification support: {', '.join(supported())}")


FORWARD_ONLY: Mapping[str, ForwardOnly] = MappingProxyType({op: ForwardOnly(op, fn) for op, fn in _FUNCTIONS.items()})
