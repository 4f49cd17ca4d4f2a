"""``Network``: a Graph plus the conventions for batching, dtype and device.

Batching: the declared input shape (e.g. ``(1, 3, 32, 32)`` from an ONNX file) is the shape
of ONE sample as the model sees it.  A user batch ``x`` of shape ``(B, *sample_shape)``
(``sample_shape`` = the declared shape without a leading 1) is run as ``(B, *declared)``:
the batch is an extra leading dimension, as described in :mod:`perturbkit.graph.ir`.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch

from perturbkit.errors import InputError, ModelError, PerturbkitError
from perturbkit.graph.ir import Graph, Shape
from perturbkit.ops.registry import rule_for


def _sample(declared: Shape) -> Shape:
    return tuple(declared[1:]) if len(declared) >= 1 and declared[0] == 1 else tuple(declared)


class Network:
    """A model in the IR.  Call it on a batch: ``net(x) -> (B, *output_sample_shape)``."""

    def __init__(self, graph: Graph):
        from perturbkit.graph.lower import lower_graph

        for node in graph.nodes:  # fail early on operators without a rule
            rule_for(node, graph.source)
        #: the graph as imported, before fusion and lowering (its constants keep the model's
        #: names: what weight perturbation, bounds/weights.py, chooses from)
        self.imported_graph = graph
        #: the graph as the bound algorithms see it: fused and lowered (graph/lower.py)
        self.graph = lower_graph(graph)
        self._const_cache: dict[tuple[torch.dtype, torch.device], dict[str, torch.Tensor]] = {}
        #: tensors derived from the constants only (e.g. local transpose matrices), by key
        self.derived: dict = {}

    # -- shapes ---------------------------------------------------------------
    @property
    def source(self) -> str:
        return self.graph.source

    @property
    def input_shape(self) -> Shape:
        """Declared input shape (one sample, as the model declares it)."""
        return self.graph.input_shape

    @property
    def sample_shape(self) -> Shape:
        """Shape of one sample in a user batch ``(B, *sample_shape)``."""
        return _sample(self.graph.input_shape)

    @property
    def output_sample_shape(self) -> Shape:
        return _sample(self.graph.output_shape)

    @property
    def n_inputs(self) -> int:
        return math.prod(self.graph.input_shape)

    @property
    def n_outputs(self) -> int:
        return math.prod(self.graph.output_shape)

    def batch(self, x: torch.Tensor) -> int:
        """Batch size of a user tensor ``x``; raises InputError if it does not fit the network."""
        n = self.n_inputs
        shape = tuple(x.shape)
        if shape in (tuple(self.graph.input_shape), tuple(self.sample_shape)):
            return 1
        if len(shape) >= 1 and shape[1:] == tuple(self.sample_shape):
            return shape[0]
        if len(shape) >= 1 and math.prod(shape[1:]) == n and len(shape) > 1:
            return shape[0]
        if math.prod(shape) == n:
            return 1
        raise InputError(
            f"input of shape {shape} does not fit {self._name()}: expected one sample of shape "
            f"{tuple(self.sample_shape)} or a batch (B, {', '.join(map(str, self.sample_shape))})"
        )

    def internal(self, x: torch.Tensor, batch: Optional[int] = None) -> torch.Tensor:
        """User tensor -> ``(B, *declared_input_shape)``."""
        b = self.batch(x) if batch is None else batch
        return x.reshape(b, *self.graph.input_shape)

    def _name(self) -> str:
        return f"network {self.source}" if self.source else "the network"

    # -- constants ------------------------------------------------------------
    def constants(self, dtype: torch.dtype, device: torch.device) -> dict[str, torch.Tensor]:
        """Graph constants cast to ``dtype`` (floating ones only) on ``device``; cached."""
        key = (dtype, torch.device(device))
        if key not in self._const_cache:
            self._const_cache[key] = {
                k: (v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device=device))
                for k, v in self.graph.constants.items()
            }
        return self._const_cache[key]

    # -- execution --------------------------------------------------------------
    def run(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Execute on an internal tensor ``(*lead, *declared)``; returns every value."""
        from perturbkit.graph.interpret import execute

        return execute(self, x)

    def __call__(self, x) -> torch.Tensor:
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(x)
        if not isinstance(x, torch.Tensor):
            raise InputError(f"expected a tensor or numpy array, got {type(x).__name__}")
        if not x.is_floating_point():
            x = x.float()
        b = self.batch(x)
        out = self.run(self.internal(x, b))[self.graph.output_name]
        return out.reshape(b, *self.output_sample_shape)

    def __repr__(self) -> str:
        return (f"Network(source={self.source!r}, input={tuple(self.input_shape)}, "
                f"output={tuple(self.graph.output_shape)}, nodes={len(self.graph.nodes)})")


__all__ = ["Network", "PerturbkitError", "ModelError"]
