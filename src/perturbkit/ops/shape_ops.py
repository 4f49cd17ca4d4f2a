"""Structural operators: Transpose, Concat and Constant.

Transpose permutes the declared axes (leading dimensions stay in front); its transpose is the
inverse permutation.  Concat joins perturbed and constant inputs along a declared axis
(constants are broadcast over the leading dimensions); its transpose splits the
coefficients.  Constant has no inputs and returns ``attrs['value']``.
"""
from __future__ import annotations

import torch

from perturbkit.errors import UnsupportedOperatorError
from perturbkit.graph.ir import Node, Shape
from perturbkit.ops.base import AffineRule, Interval
from perturbkit.ops.util import broadcast_shapes, int_list, n_lead, norm_axis

Tensor = torch.Tensor


class Transpose(AffineRule):
    op_type = "Transpose"
    coordinatewise = True

    @staticmethod
    def perm(node: Node) -> list[int]:
        r = len(node.in_shapes[0])
        p = node.attrs.get("perm")
        return list(reversed(range(r))) if p is None else [norm_axis(a, r, node) for a in int_list(p)]

    def forward(self, node: Node, x: Tensor) -> Tensor:
        k = n_lead(x, node.in_shapes[0])
        return x.permute(*range(k), *[k + a for a in self.perm(node)])

    def interval(self, node: Node, x: Interval) -> Interval:
        return Interval(self.forward(node, x.lo), self.forward(node, x.hi))

    def backward(self, node: Node, A: Tensor, x):
        perm = self.perm(node)
        inv = [0] * len(perm)
        for i, a in enumerate(perm):
            inv[a] = i
        k = n_lead(A, node.out_shape)
        return [A.permute(*range(k), *[k + a for a in inv])]


class Concat(AffineRule):
    op_type = "Concat"
    coordinatewise = True

    def is_coordinatewise(self, node: Node, runtime: int) -> bool:
        """With one runtime input, the others are constants: each coordinate is copied once."""
        return True

    def _axis(self, node: Node) -> int:
        return norm_axis(int(node.attrs["axis"]), len(node.in_shapes[0]), node)

    def _cat(self, node: Node, xs: list[Tensor]) -> Tensor:
        leads = [x.shape[:n_lead(x, s)] for x, s in zip(xs, node.in_shapes)]
        lead = broadcast_shapes(*leads)
        xs = [x.expand(*lead, *s) for x, s in zip(xs, node.in_shapes)]
        return torch.cat(xs, dim=len(lead) + self._axis(node))

    def forward(self, node: Node, *xs: Tensor) -> Tensor:
        return self._cat(node, list(xs))

    def interval(self, node: Node, *xs) -> Interval:
        lo = [x.lo if isinstance(x, Interval) else x for x in xs]
        hi = [x.hi if isinstance(x, Interval) else x for x in xs]
        return Interval(self._cat(node, lo), self._cat(node, hi))

    def backward(self, node: Node, A: Tensor, *xs):
        k = n_lead(A, node.out_shape)
        axis = self._axis(node)
        parts = torch.split(A, [s[axis] for s in node.in_shapes], dim=k + axis)
        return [p if x is None else None for p, x in zip(parts, xs)]


def constant_value(node: Node) -> Tensor:
    a = node.attrs
    if "value" in a:
        v = a["value"]
        return v if isinstance(v, Tensor) else torch.as_tensor(v)
    for key, dtype in (("value_float", torch.float32), ("value_floats", torch.float32),
                       ("value_int", torch.int64), ("value_ints", torch.int64)):
        if key in a:
            return torch.as_tensor(a[key], dtype=dtype)
    raise UnsupportedOperatorError(
        f"Constant without a 'value' attribute is not supported at {node.where()}; "
        f"supported: value, value_float(s), value_int(s)")


class Constant(AffineRule):
    op_type = "Constant"

    def forward(self, node: Node, *xs) -> Tensor:
        return constant_value(node)

    def infer_shape(self, node: Node, *xs) -> Shape:
        return tuple(constant_value(node).shape)

    def interval(self, node: Node, *xs) -> Interval:
        v = constant_value(node)
        return Interval(v, v)

    def backward(self, node: Node, A: Tensor, *xs):
        return []
