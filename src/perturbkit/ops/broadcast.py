"""Operators that repeat or choose elements: Expand, Tile and Where with a constant condition.

All three are linear in their runtime inputs and every output element is one input element
(or a constant); the transpose sums the coefficients of the copies back onto the element
they came from:

* ``Expand`` (``attrs['shape']``, the absorbed ONNX input): numpy broadcast of the input
  with ``shape``; transpose: sum over the broadcast axes.
* ``Tile`` (``attrs['repeats']``): ``repeats[i]`` copies along axis ``i``; transpose: the
  coefficients viewed as ``(r_0, d_0, r_1, d_1, ...)`` summed over the ``r_i``.
* ``Where(cond, a, b)`` with a constant boolean ``cond``: ``a`` where ``cond`` holds, ``b``
  elsewhere (either branch may be a runtime value or a constant, infinite ones included:
  the choice is made by selection, never by ``cond * a + (1 - cond) * b``); transpose: the
  coefficients masked by ``cond`` for ``a`` and by ``not cond`` for ``b``, each summed down
  to its branch's broadcast shape.

None is marked ``coordinatewise``: they can copy one input coordinate to several outputs,
and the engine's shortcut for the linear prefix (a mixing map applied to a value kept
coordinatewise from a box is exact by interval arithmetic) needs every input coordinate
used once; for ``x -> Expand -> (x, x) -> x - x`` it would give ``[-2r, 2r]`` instead of 0.

Shapes: a runtime input is ``(*lead, *declared)``; constants have no leading dimensions and
broadcast from the right, as in ONNX.
"""
from __future__ import annotations

import torch

from perturbkit.errors import UnsupportedOperatorError
from perturbkit.graph.ir import Node, Shape
from perturbkit.ops.base import AffineRule, Interval
from perturbkit.ops.util import align, broadcast_shapes, int_list, n_lead, unbroadcast

Tensor = torch.Tensor


def _sum_to(A: Tensor, out_shape: Shape, in_shape: Shape) -> Tensor:
    """:func:`unbroadcast`, also for a rank-0 input (``(*lead, *out_shape)`` -> ``(*lead,)``)."""
    if in_shape:
        return unbroadcast(A, out_shape, in_shape)
    k = n_lead(A, out_shape)
    return A.sum(dim=list(range(k, A.dim()))) if out_shape else A


class Expand(AffineRule):
    """ONNX Expand: ``out_shape = broadcast(in_shape, attrs['shape'])``."""

    op_type = "Expand"
    coordinatewise = False  # copies coordinates (module docstring)

    def infer_shape(self, node: Node, *xs) -> Shape:
        try:
            return tuple(broadcast_shapes(tuple(node.in_shapes[0]), tuple(int_list(node.attrs["shape"]))))
        except RuntimeError:
            raise UnsupportedOperatorError(
                f"Expand of shape {tuple(node.in_shapes[0])} to {int_list(node.attrs['shape'])} does not broadcast "
                f"at {node.where()}") from None

    def _expand(self, node: Node, x: Tensor) -> Tensor:
        out = self.infer_shape(node)
        k = n_lead(x, node.in_shapes[0])
        return align(x, node.in_shapes[0], len(out)).expand(*x.shape[:k], *out).contiguous()

    def forward(self, node: Node, x: Tensor, *rest) -> Tensor:
        return self._expand(node, x)

    def interval(self, node: Node, x: Interval, *rest) -> Interval:
        return Interval(self._expand(node, x.lo), self._expand(node, x.hi))

    def backward(self, node: Node, A: Tensor, x, *rest):
        return [_sum_to(A, node.out_shape, node.in_shapes[0])] + [None] * len(rest)


class Tile(AffineRule):
    """ONNX Tile: ``out_shape[i] = in_shape[i] * attrs['repeats'][i]``."""

    op_type = "Tile"
    coordinatewise = False  # copies coordinates (module docstring)

    def _repeats(self, node: Node) -> list[int]:
        reps = int_list(node.attrs["repeats"])
        if len(reps) != len(node.in_shapes[0]) or any(r < 0 for r in reps):
            raise UnsupportedOperatorError(
                f"Tile repeats {reps} do not fit an input of rank {len(node.in_shapes[0])} at {node.where()}")
        return reps

    def infer_shape(self, node: Node, *xs) -> Shape:
        return tuple(d * r for d, r in zip(node.in_shapes[0], self._repeats(node)))

    def forward(self, node: Node, x: Tensor, *rest) -> Tensor:
        k = n_lead(x, node.in_shapes[0])
        return x.repeat(*([1] * k), *self._repeats(node))

    def interval(self, node: Node, x: Interval, *rest) -> Interval:
        return Interval(self.forward(node, x.lo), self.forward(node, x.hi))

    def backward(self, node: Node, A: Tensor, x, *rest):
        k = n_lead(A, node.out_shape)
        split: list[int] = []
        for d, r in zip(node.in_shapes[0], self._repeats(node)):
            split += [r, d]
        A = A.reshape((*A.shape[:k], *split))
        return [A.sum(dim=[k + 2 * i for i in range(len(node.in_shapes[0]))])] + [None] * len(rest)


def _condition(node: Node, cond) -> Tensor:
    if not isinstance(cond, Tensor) or n_lead(cond, node.in_shapes[0]) != 0:
        raise UnsupportedOperatorError(
            f"Where with a perturbed condition is not supported at {node.where()}; the condition must be constant")
    return cond if cond.dtype == torch.bool else cond != 0


class Where(AffineRule):
    """ONNX Where with a constant condition (input 0) and runtime or constant branches."""

    op_type = "Where"
    coordinatewise = False  # copies coordinates (module docstring)

    def infer_shape(self, node: Node, *xs) -> Shape:
        return tuple(broadcast_shapes(*(tuple(s) for s in node.in_shapes)))

    def _select(self, node: Node, cond: Tensor, a: Tensor, b: Tensor) -> Tensor:
        r = len(node.out_shape)
        a, b = (align(t, s, r) for t, s in zip((a, b), node.in_shapes[1:]))
        return torch.where(cond, a, b)

    def forward(self, node: Node, cond: Tensor, a: Tensor, b: Tensor) -> Tensor:
        c = _condition(node, cond)
        a, b = (t.to(torch.promote_types(a.dtype, b.dtype)) for t in (a, b))
        return self._select(node, c, a, b)

    def interval(self, node: Node, cond, a, b) -> Interval:
        c = _condition(node, cond)
        lo = [t.lo if isinstance(t, Interval) else t for t in (a, b)]
        hi = [t.hi if isinstance(t, Interval) else t for t in (a, b)]
        return Interval(self._select(node, c, *lo), self._select(node, c, *hi))

    def backward(self, node: Node, A: Tensor, cond, a, b):
        c = _condition(node, cond).to(A.device)
        zero = A.new_zeros(())
        out: list = [None]
        for t, s, keep in ((a, node.in_shapes[1], c), (b, node.in_shapes[2], ~c)):
            out.append(None if t is not None else _sum_to(torch.where(keep, A, zero), node.out_shape, s))
        return out
