"""Operators that select or repeat elements: Slice, Gather (constant indices) and Pad.

Each is a composition of per-axis selections ``y = x.index_select(axis, idx)`` (Pad in
constant mode: a zero pad or crop plus a constant), so the transpose is the per-axis
scatter-add ``index_add`` applied in reverse order (Pad constant: the opposite pad).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from perturbkit.errors import UnsupportedOperatorError
from perturbkit.graph.ir import Node, Shape
from perturbkit.ops.base import AffineRule, Interval
from perturbkit.ops.util import attr_str, int_list, n_lead, norm_axis, torch_pad_order

Tensor = torch.Tensor
Plan = list[tuple[int, list[int]]]  # (declared axis, selected input positions)


def _select(x: Tensor, k: int, plan: Plan, in_shape: Shape) -> Tensor:
    for axis, idx in plan:
        x = x.index_select(k + axis, torch.tensor(idx, dtype=torch.int64, device=x.device))
    return x


def _select_t(A: Tensor, k: int, plan: Plan, in_shape: Shape) -> Tensor:
    """Transpose of :func:`_select`: scatter-add back, last selection first."""
    sizes = list(in_shape)
    shapes = []
    for axis, idx in plan:  # declared shape before each selection
        shapes.append(list(sizes))
        sizes[axis] = len(idx)
    for (axis, idx), before in zip(reversed(plan), reversed(shapes)):
        out = A.new_zeros(*A.shape[:k], *before)
        A = out.index_add_(k + axis, torch.tensor(idx, dtype=torch.int64, device=A.device), A)
    return A


class _Selection(AffineRule):
    def plan(self, node: Node) -> Plan:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, node: Node, x: Tensor, *rest) -> Tensor:
        return _select(x, n_lead(x, node.in_shapes[0]), self.plan(node), node.in_shapes[0])

    def interval(self, node: Node, x: Interval, *rest) -> Interval:
        return Interval(self.forward(node, x.lo), self.forward(node, x.hi))

    def backward(self, node: Node, A: Tensor, x, *rest):
        k = n_lead(A, node.out_shape)
        before = _select_shape(node.in_shapes[0], self.plan(node))
        A = A.reshape((*A.shape[:k], *before))
        return [_select_t(A, k, self.plan(node), node.in_shapes[0])] + [None] * len(rest)


def _select_shape(in_shape: Shape, plan: Plan) -> Shape:
    s = list(in_shape)
    for axis, idx in plan:
        s[axis] = len(idx)
    return tuple(s)


class Slice(_Selection):
    """ONNX Slice: ``starts``, ``ends``, optional ``axes`` and ``steps`` (negative ones too),
    with ONNX clamping."""

    op_type = "Slice"
    coordinatewise = True

    def plan(self, node: Node) -> Plan:
        shape = node.in_shapes[0]
        r = len(shape)
        starts = int_list(node.attrs["starts"])
        ends = int_list(node.attrs["ends"])
        axes = int_list(node.attrs["axes"]) if node.attrs.get("axes") is not None else list(range(len(starts)))
        steps = int_list(node.attrs["steps"]) if node.attrs.get("steps") is not None else [1] * len(starts)
        out: Plan = []
        for st, en, ax, sp in zip(starts, ends, axes, steps):
            ax = norm_axis(ax, r, node)
            d = shape[ax]
            if sp == 0:
                raise UnsupportedOperatorError(f"Slice with step 0 at {node.where()}")
            st = st + d if st < 0 else st
            en = en + d if en < 0 else en
            if sp > 0:
                st, en = min(max(st, 0), d), min(max(en, 0), d)
            else:
                st, en = min(max(st, 0), d - 1), min(max(en, -1), d - 1)
            out.append((ax, list(range(st, en, sp))))
        return out

    def infer_shape(self, node: Node, *xs) -> Shape:
        return _select_shape(node.in_shapes[0], self.plan(node))


class Gather(AffineRule):
    """Gather of a perturbed ``data`` with constant ``attrs['indices']`` along ``axis``:
    ``out.shape = data.shape[:axis] + indices.shape + data.shape[axis + 1:]``."""

    op_type = "Gather"
    coordinatewise = True

    def is_coordinatewise(self, node: Node, runtime: int) -> bool:
        """Distinct indices copy each coordinate at most once; repeated ones copy it twice."""
        if runtime != 0 or "indices" not in node.attrs:
            return False
        flat = self._geom(node)[2]
        return flat.unique().numel() == flat.numel()

    def _geom(self, node: Node):
        shape = node.in_shapes[0]
        axis = norm_axis(int(node.attrs.get("axis", 0)), len(shape), node)
        ind = node.attrs["indices"]
        ind = ind if isinstance(ind, Tensor) else torch.as_tensor(ind)
        ind = ind.to(torch.int64)
        d = shape[axis]
        flat = torch.where(ind < 0, ind + d, ind).reshape(-1)
        if bool(((flat < 0) | (flat >= d)).any()):
            raise UnsupportedOperatorError(f"Gather index out of range for axis of size {d} at {node.where()}")
        return axis, tuple(ind.shape), flat

    def lower(self, node: Node, runtime, emit) -> bool:
        """Gather by runtime indices (embeddings) -> TableLookup (the table constant, or
        perturbed as a weight: TableLookup bounds it from the table's interval)."""
        if len(node.inputs) < 2 or not runtime[1]:
            return False
        emit.node("TableLookup", [node.inputs[1], node.inputs[0]], {"axis": int(node.attrs.get("axis", 0))},
                  output=node.output)
        return True

    def forward(self, node: Node, x: Tensor, *rest) -> Tensor:
        if "indices" not in node.attrs:  # a table gathered by runtime indices (before lowering)
            from perturbkit.ops.embedding import lookup

            axis = norm_axis(int(node.attrs.get("axis", 0)), len(node.in_shapes[0]), node)
            return lookup(node, rest[0], x, node.in_shapes[1], axis)
        axis, ishape, flat = self._geom(node)
        k = n_lead(x, node.in_shapes[0])
        y = x.index_select(k + axis, flat.to(x.device))
        return y.reshape((*x.shape[:k + axis], *ishape, *x.shape[k + axis + 1:]))

    def interval(self, node: Node, x: Interval, *rest) -> Interval:
        return Interval(self.forward(node, x.lo), self.forward(node, x.hi))

    def backward(self, node: Node, A: Tensor, x, *rest):
        axis, ishape, flat = self._geom(node)
        in_shape = node.in_shapes[0]
        k = n_lead(A, node.out_shape)
        A = A.reshape((*A.shape[:k], *in_shape[:axis], flat.numel(), *in_shape[axis + 1:]))
        out = A.new_zeros(*A.shape[:k], *in_shape)
        return [out.index_add_(k + axis, flat.to(A.device), A)] + [None] * len(rest)


class Pad(AffineRule):
    """ONNX Pad: ``attrs['pads']`` (``[b_1..b_n, e_1..e_n]``, negative crops), optional
    ``attrs['axes']``, ``constant_value`` (default 0) and ``mode`` constant, reflect, edge or wrap."""

    op_type = "Pad"
    coordinatewise = True

    def is_coordinatewise(self, node: Node, runtime: int) -> bool:
        """Constant padding adds constants and crops: no copies; the other modes copy."""
        return runtime == 0 and self._mode(node) == "constant"

    def _pads(self, node: Node) -> tuple[list[int], list[int]]:
        r = len(node.in_shapes[0])
        pads = int_list(node.attrs["pads"])
        axes = node.attrs.get("axes")
        axes = list(range(r)) if axes is None else [norm_axis(a, r, node) for a in int_list(axes)]
        n = len(axes)
        if len(pads) != 2 * n:
            raise UnsupportedOperatorError(f"Pad expects {2 * n} pads, got {len(pads)} at {node.where()}")
        pb, pe = [0] * r, [0] * r
        for i, a in enumerate(axes):
            pb[a], pe[a] = pads[i], pads[n + i]
        return pb, pe

    def _mode(self, node: Node) -> str:
        mode = attr_str(node, "mode", "constant")
        if mode not in ("constant", "reflect", "edge", "wrap"):
            raise UnsupportedOperatorError(
                f"Pad mode '{mode}' is not supported at {node.where()}; supported: constant, reflect, edge, wrap")
        return mode

    def _value(self, node: Node) -> float:
        v = node.attrs.get("constant_value")
        if v is None:
            return 0.0
        return float(v.reshape(-1)[0].item()) if isinstance(v, Tensor) else float(v)

    def plan(self, node: Node) -> Plan:
        """Per-axis source positions for the reflect, edge and wrap modes."""
        shape = node.in_shapes[0]
        pb, pe = self._pads(node)
        mode = self._mode(node)
        out: Plan = []
        for ax, d in enumerate(shape):
            if pb[ax] == 0 and pe[ax] == 0:
                continue
            src = []
            for j in range(-pb[ax], d + pe[ax]):
                if mode == "edge":
                    src.append(min(max(j, 0), d - 1))
                elif mode == "wrap":
                    src.append(j % d)
                else:  # reflect without repeating the edge (numpy 'reflect')
                    period = 2 * (d - 1)
                    m = j % period if period else 0
                    src.append(period - m if m >= d else m)
            out.append((ax, src))
        return out

    def forward(self, node: Node, x: Tensor, *rest) -> Tensor:
        k = n_lead(x, node.in_shapes[0])
        if self._mode(node) == "constant":
            pb, pe = self._pads(node)
            if not any(pb) and not any(pe):
                return x
            return F.pad(x, torch_pad_order(pb, pe), value=self._value(node))
        return _select(x, k, self.plan(node), node.in_shapes[0])

    def interval(self, node: Node, x: Interval, *rest) -> Interval:
        return Interval(self.forward(node, x.lo), self.forward(node, x.hi))

    def backward(self, node: Node, A: Tensor, x, *rest):
        k = n_lead(A, node.out_shape)
        if self._mode(node) == "constant":
            pb, pe = self._pads(node)
            if any(pb) or any(pe):
                A = F.pad(A, torch_pad_order([-p for p in pb], [-p for p in pe]))
            return [A] + [None] * len(rest)
        return [_select_t(A, k, self.plan(node), node.in_shapes[0])] + [None] * len(rest)
