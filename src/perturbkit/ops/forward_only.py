"""Operators perturbkit can execute but not bound: the second, smaller table.

Attacks only need to run a model (and differentiate it: every function here is a torch
function), so a network loaded with ``perturbkit.load(path, forward_only=True)`` may contain
these operators, typically a final Softmax.  Bound propagation has no relaxation for them:
:meth:`ForwardOnly.interval` raises an error that names the operator and the node, so
``bounds``/``verify`` on such a network fail with one clear line.  Loading without
``forward_only`` (what the bound and verify commands do) still refuses them up front.

Shapes: a runtime input carries leading (batch) dimensions before its declared shape;
``axis`` attributes count in the declared shape, so they are turned into negative axes.
Softmax and LogSoftmax follow opset 13 (one axis, default -1); for the older opsets'
default (axis 1, inputs coerced to 2-D) this is the same on (1, classes) outputs, the
usual case.
"""
from __future__ import annotations

from types import MappingProxyType
from typing import Callable, Mapping

import torch

from perturbkit.errors import UnsupportedOperatorError
from perturbkit.graph.ir import Node
from perturbkit.ops.base import OpRule

Tensor = torch.Tensor


def _axis(node: Node, default: int) -> int:
    """The node's ``axis`` as a negative axis of the declared input shape."""
    rank = len(node.in_shapes[0])
    a = int(node.attrs.get("axis", default))
    return a - rank if a >= 0 else a


def _variadic(reduce: Callable[[Tensor, Tensor], Tensor]) -> Callable[..., Tensor]:
    def run(node: Node, *xs: Tensor) -> Tensor:
        out = xs[0]
        for x in xs[1:]:
            out = reduce(out, x)
        return out
    return run


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
