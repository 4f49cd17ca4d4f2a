"""Lowering: rewrite a :class:`Graph` so that the bound algorithms meet only primitive rules.

Run once when a :class:`~perturbkit.graph.network.Network` is built (both front ends end
there), after the pattern fusions of :mod:`perturbkit.graph.fuse`.  Every node is offered to
its rule's :meth:`~perturbkit.ops.base.OpRule.lower`; a rule that rewrites the node emits
replacement nodes through an :class:`Emitter`, and those are offered again, until no rule
asks for more.  Examples: a Mul of two runtime values becomes a BilinearMul; a Div by a
runtime value a Reciprocal and a BilinearMul; Softmax and LayerNormalization their
decompositions (:class:`~perturbkit.ops.base.CompositeRule`).

The last node a rule emits produces the original output name, so consumers are untouched.
New values are named ``<output>/<hint>`` and new nodes ``<node>/<hint>``, so errors about
them still point at the node of the imported model they came from.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import torch

from perturbkit.errors import ModelError
from perturbkit.graph.ir import Graph, Node, Shape, frozen_attrs
from perturbkit.ops.registry import rule_for

Tensor = torch.Tensor

#: a rewrite that keeps emitting rewrites is a bug in a rule; stop it loudly
_MAX_EMITTED = 1_000_000


class Emitter:
    """What a rule's ``lower`` uses to emit replacement nodes and constants for ``node``."""

    def __init__(self, node: Node, shapes: dict[str, Shape], consts: dict[str, Tensor], names: set[str], source: str):
        self.orig = node
        self._shapes = shapes
        self._consts = consts
        self._names = names
        self._source = source
        self.nodes: list[Node] = []

    def _fresh(self, base: str) -> str:
        name = base
        k = 1
        while name in self._names:
            k += 1
            name = f"{base}.{k}"
        self._names.add(name)
        return name

    # -- reading the graph ------------------------------------------------------------------
    def shape(self, value: str) -> Shape:
        """Declared shape of a runtime value or a constant."""
        if value in self._consts:
            return tuple(self._consts[value].shape)
        return self._shapes[value]

    def is_const(self, value: str) -> bool:
        return value in self._consts

    def value(self, value: str) -> Tensor:
        """The tensor of a constant."""
        return self._consts[value]

    # -- emitting -------------------------------------------------------------------------
    def const(self, tensor: Tensor, hint: str) -> str:
        """A new constant; returns its name."""
        name = self._fresh(f"{self.orig.output}/{hint}")
        self._consts[name] = tensor
        return name

    def node(self, op_type: str, inputs: tuple[str, ...] | list[str], attrs: Optional[Mapping[str, Any]] = None,
             *, hint: str = "", output: Optional[str] = None) -> str:
        """Emit one node; its declared output shape is inferred by its rule.  Returns the
        output value name (``output`` when given: the last node must produce the original).
        A node whose inputs are all constants is folded into a new constant instead."""
        hint = hint or op_type.lower()
        if output is None and inputs and all(i in self._consts for i in inputs):
            probe = Node(name=self.orig.name, op_type=op_type, inputs=tuple(inputs), output="",
                         attrs=frozen_attrs(dict(attrs or {})), in_shapes=tuple(self.shape(i) for i in inputs))
            rule = rule_for(probe, self._source)
            args = [self._consts[i] for i in inputs]
            probe = Node(probe.name, op_type, probe.inputs, "", probe.attrs, probe.in_shapes,
                         tuple(int(d) for d in rule.infer_shape(probe, *args)))
            return self.const(rule.forward(probe, *args), hint)
        out = output if output is not None else self._fresh(f"{self.orig.output}/{hint}")
        self._names.add(out)
        name = self.orig.name if output == self.orig.output else self._fresh(f"{self.orig.name}/{hint}")
        in_shapes = tuple(self.shape(i) for i in inputs)
        node = Node(name=name, op_type=op_type, inputs=tuple(inputs), output=out,
                    attrs=frozen_attrs(dict(attrs or {})), in_shapes=in_shapes)
        rule = rule_for(node, self._source)
        floats = [self._consts[i].dtype for i in inputs if i in self._consts and self._consts[i].is_floating_point()]
        dtype = floats[0] if floats else torch.float32
        xs = [self._consts[i] if i in self._consts else torch.zeros(s, dtype=dtype) for i, s in zip(inputs, in_shapes)]
        try:
            out_shape = tuple(int(d) for d in rule.infer_shape(node, *xs))
        except Exception as e:  # noqa: BLE001 - a lowering that does not fit its node
            raise ModelError(f"lowering {self.orig.where(self._source)}: {op_type} does not fit "
                             f"({type(e).__name__}: {e})") from None
        node = Node(name=node.name, op_type=op_type, inputs=node.inputs, output=out, attrs=node.attrs,
                    in_shapes=in_shapes, out_shape=out_shape)
        self._shapes[out] = out_shape
        self.nodes.append(node)
        return out


def lower_graph(graph: Graph) -> Graph:
    """The graph with every node its rule rewrites replaced by the rewrite (see module docs)."""
    from perturbkit.graph.fuse import fuse

    graph = fuse(graph)
    shapes = dict(graph.shapes)
    consts = dict(graph.constants)
    names = {n.name for n in graph.nodes} | {n.output for n in graph.nodes} | set(consts) | {graph.input_name}
    todo = list(reversed(graph.nodes))  # a stack: emitted nodes are offered before the rest
    out: list[Node] = []
    changed = False
    emitted = 0
    while todo:
        node = todo.pop()
        rule = rule_for(node, graph.source)
        runtime = tuple(i not in consts for i in node.inputs)
        em = Emitter(node, shapes, consts, names, graph.source)
        if not rule.lower(node, runtime, em):
            out.append(node)
            continue
        changed = True
        if not em.nodes or em.nodes[-1].output != node.output:
            raise ModelError(f"lowering {node.where(graph.source)} did not produce its output")
        emitted += len(em.nodes)
        if emitted > _MAX_EMITTED:  # pragma: no cover - a rule bug
            raise ModelError(f"lowering {node.where(graph.source)} does not terminate")
        todo.extend(reversed(em.nodes))
    if not changed:
        return graph
    used = {i for n in out for i in n.inputs}
    return Graph(nodes=tuple(out), input_name=graph.input_name, output_name=graph.output_name,
                 shapes={k: v for k, v in shapes.items() if k in used or k == graph.output_name
                         or k == graph.input_name or k in {n.output for n in out}},
                 constants={k: v for k, v in consts.items() if k in used}, source=graph.source)
