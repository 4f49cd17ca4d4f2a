"""PyTorch front end: an ``nn.Module`` traced by ``torch.fx`` -> :class:`~perturbkit.graph.ir.Graph`.

The implementation lives in the package :mod:`perturbkit.graph.torch_fx` (see its docstring
for what the conversion does and how the modules are split); this module keeps the public
import path ``from perturbkit.graph.from_torch import graph_from_module``.
"""
from __future__ import annotations

from perturbkit.graph.torch_fx import graph_from_module, supported_torch

__all__ = ["graph_from_module", "supported_torch"]
