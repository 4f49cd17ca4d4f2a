"""PyTorch front end: an ``nn.Module`` traced by ``torch.fx`` -> :class:`Graph`.

What it does, in order:

1. puts the module in eval mode and traces it with ``torch.fx.symbolic_trace`` (the
   training flags of all submodules are restored afterwards, also on errors);
2. walks the fx graph with concrete *example values*: every fx node is evaluated by
   PyTorch on the example input, so Python values that only depend on shapes
   (``x.size(0)``, ``x.shape[1]``, ``x.view(x.size(0), -1)``) become constants, and every
   tensor that does not depend on the input is folded into ``Graph.constants``;
3. emits IR nodes in the ONNX vocabulary with the attributes the ONNX importer would give
   (configuration inputs in ``attrs`` under their ONNX names, see :mod:`perturbkit.graph.ir`);
   declared shapes are the shapes of the example values, so the example input's shape is
   the declared input shape (give one sample with its batch dimension, e.g. ``(1, 3, 32, 32)``);
4. checks every converted fx node against PyTorch on the example (the IR rules' ``forward``
   must reproduce the module's value), drops nodes the output does not depend on, and
   finally checks the whole graph against ``module(example_input)``.

Dispatch is by tables (module class, function object, method name), one converter per
entry; a converter receives the builder and the call and returns the IR value(s).

Shapes: the example input ``(*declared_input_shape)``; every example value carried through
the conversion has its declared shape (no leading dimensions).  ``Network(graph)`` then runs
a batch ``(B, *sample)`` as leading dimensions, so ``x.view(x.size(0), -1)`` (converted to
``Reshape`` with ``shape=[1, n]``) still keeps the samples apart.

Modules:

- :mod:`~perturbkit.graph.torch_fx.builder`: runtime values, the graph builder, the resolved
  call and the argument helpers every converter uses;
- :mod:`~perturbkit.graph.torch_fx.trace`: fx tracing, the walk, error handling and the final
  checks (:func:`graph_from_module`);
- :mod:`~perturbkit.graph.torch_fx.tables`: the dispatch tables (:func:`supported_torch`);
- converters by family: :mod:`~perturbkit.graph.torch_fx.activations`,
  :mod:`~perturbkit.graph.torch_fx.layers`, :mod:`~perturbkit.graph.torch_fx.shapes`,
  :mod:`~perturbkit.graph.torch_fx.arithmetic`.
"""
from __future__ import annotations

from perturbkit.graph.torch_fx.tables import supported_torch
from perturbkit.graph.torch_fx.trace import graph_from_module

__all__ = ["graph_from_module", "supported_torch"]
