"""Pattern fusions: decomposed spellings of one operator folded back into that operator.

Exporters and hand-written modules spell some functions out in primitive operators (GELU
as ``0.5 * x * (1 + erf(x / sqrt(2)))``, SiLU as ``x * sigmoid(x)``).  Bounding the
spelled-out form relaxes each piece on its own (a product of two perturbed values), which is
much looser than one relaxation of the whole function, so :func:`fuse` rewrites each
recognised pattern into the single operator before lowering (:mod:`perturbkit.graph.lower`).

A fusion is a function ``(graph, node, index) -> Optional[Fusion]`` tried at every node
(``index``: the graph's helper maps); it matches only when every matched value other than
the final one has no other consumer, and every constant in the pattern has the exact value
the function needs.  ``FUSIONS`` is the table, tried in order.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from perturbkit.graph.ir import Graph, Node


@dataclass(frozen=True)
class Index:
    """Lookups a pattern needs: producer of each value and the number of its consumers."""

    graph: Graph
    producer: dict[str, Node]
    n_consumers: dict[str, int]

    def single_use(self, value: str) -> bool:
        return self.n_consumers.get(value, 0) == 1 and value != self.graph.output_name


@dataclass(frozen=True)
class Fusion:
    """``replaced``: names of the nodes the pattern matched (the final one included);
    ``node``: the fused node, producing the final node's output."""

    replaced: frozenset[str]
    node: Node


Pattern = Callable[[Graph, Node, Index], Optional[Fusion]]

#: the fusion table (tried in order at every node, from the graph output backwards)
FUSIONS: list[Pattern] = []


def _index(graph: Graph) -> Index:
    count: dict[str, int] = {}
    for n in graph.nodes:
        for i in n.inputs:
            count[i] = count.get(i, 0) + 1
    return Index(graph, graph.producer(), count)


def fuse(graph: Graph) -> Graph:
    """The graph with every matched pattern replaced by its fused node."""
    if not FUSIONS:
        return graph
    idx = _index(graph)
    replaced: set[str] = set()
    fused: dict[str, Node] = {}  # name of the final node -> fused node
    for node in reversed(graph.nodes):
        if node.name in replaced:
            continue
        for pattern in FUSIONS:
            f = pattern(graph, node, idx)
            if f is not None and not (f.replaced & replaced):
                replaced |= f.replaced
                fused[node.name] = f.node
                break
    if not fused:
        return graph
    nodes = tuple(fused.get(n.name, n) for n in graph.nodes if n.name not in replaced or n.name in fused)
    used = {i for n in nodes for i in n.inputs}
    outs = {n.output for n in nodes}
    return Graph(nodes=nodes, input_name=graph.input_name, output_name=graph.output_name,
                 shapes={k: v for k, v in graph.shapes.items() if k in outs or k == graph.input_name},
                 constants={k: v for k, v in graph.constants.items() if k in used}, source=graph.source)
