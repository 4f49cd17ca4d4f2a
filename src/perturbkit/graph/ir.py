"""The graph IR: a topologically sorted list of ONNX-vocabulary nodes.

Conventions (read these before writing an operator rule):

* Every value in the graph has a *declared shape* (``Graph.shapes[name]``): the shape the
  ONNX file (or the traced module) gives it, dynamic dimensions replaced by 1.
* At run time each non-constant value carries extra *leading* dimensions in front of its
  declared shape: the batch dimension when executing, ``(batch, specs)`` when a rule is
  applied to linear coefficients.  Operator rules therefore work on tensors of shape
  ``(*lead, *declared_shape)`` for any number of leading dimensions (zero included), and
  find the number of leading dimensions as ``x.dim() - len(node.in_shapes[i])``.
* Constant operands (weights, biases) live in ``Graph.constants`` and never carry leading
  dimensions.  Inputs that only configure an operator (Reshape's shape, Clip's min/max,
  Pad's pads, Slice's starts/ends/axes/steps, Squeeze/Unsqueeze axes, Reduce axes, Gather
  indices) are moved into ``Node.attrs`` by the front ends, under their ONNX names.
* A node has exactly one output.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

import torch

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Node:
    """One operator application.

    Attributes:
        name: unique node name (the ONNX node name, or a generated one).
        op_type: ONNX operator type, e.g. ``"Gemm"``.
        inputs: value names; each is either a runtime value or a key of ``Graph.constants``.
        output: the value name this node produces.
        attrs: ONNX attributes plus absorbed configuration inputs (python values or tensors).
        in_shapes: declared shape of each input (constants included).
        out_shape: declared shape of the output.
    """

    name: str
    op_type: str
    inputs: tuple[str, ...]
    output: str
    attrs: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    in_shapes: tuple[Shape, ...] = ()
    out_shape: Shape = ()

    def where(self, source: str = "") -> str:
        """Human-readable location used in error messages: ``node 'conv1' (Conv) in model.onnx``."""
        loc = f"node '{self.name}' ({self.op_type})"
        return f"{loc} in {source}" if source else loc


@dataclass(frozen=True)
class Graph:
    """A computational graph with one (perturbed) input and one output.

    Attributes:
        nodes: topologically sorted nodes; constant subgraphs already folded away.
        input_name: name of the graph input.
        output_name: name of the graph output.
        shapes: declared shape of every runtime value (input, node outputs).
        constants: name -> tensor for initializers and folded constants.
        source: where the graph came from (file path or module class), for error messages.
    """

    nodes: tuple[Node, ...]
    input_name: str
    output_name: str
    shapes: Mapping[str, Shape]
    constants: Mapping[str, torch.Tensor]
    source: str = ""

    @property
    def input_shape(self) -> Shape:
        return self.shapes[self.input_name]

    @property
    def output_shape(self) -> Shape:
        return self.shapes[self.output_name]

    def is_const(self, name: str) -> bool:
        return name in self.constants

    def producer(self) -> dict[str, Node]:
        """value name -> node that produces it."""
        return {n.output: n for n in self.nodes}

    def consumers(self) -> dict[str, list[Node]]:
        """value name -> nodes that read it."""
        out: dict[str, list[Node]] = {}
        for n in self.nodes:
            for i in n.inputs:
                out.setdefault(i, []).append(n)
        return out

    def op_types(self) -> list[str]:
        return sorted({n.op_type for n in self.nodes})


def lead_dims(x: torch.Tensor, declared: Shape) -> int:
    """Number of leading (batch/spec) dimensions of ``x`` in front of its declared shape."""
    n = x.dim() - len(declared)
    if n < 0:
        raise ValueError(f"tensor of shape {tuple(x.shape)} has fewer dims than declared {declared}")
    return n


def frozen_attrs(d: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(d))
