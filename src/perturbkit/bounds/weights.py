"""Bounds under perturbations of the weights, jointly with the input ("beyond" inputs:
Xu et al. 2020, "Automatic perturbation analysis for scalable certified robustness and
beyond", Sec. 3.3: bounds with respect to model parameters).

The chosen parameters (constants of the graph: Gemm/MatMul/Conv weights, biases, any
constant operand) become runtime values: the network is rebuilt with one input vector
``[x, w_1, w_2, ...]`` (a Slice and a Reshape per block, each block taking over the name of
what it replaces, so no other node changes), and the input set becomes the product of the
input's set and the weights' sets (:class:`~perturbkit.sets.product.ProductSet`).  Lowering
then turns every operator whose weight is now perturbed into a product of two perturbed
tensors (a Gemm into a BilinearMatMul, a Mul by a perturbed scale into a BilinearMul), which
the McCormick relaxation bounds.  Perturbed biases stay affine.  With every weight set a
single point the bounds equal the input-only bounds up to floating-point rounding.

A weight set is shared by every sample of the batch: each sample's bound holds for every
weight in the set (and every input in that sample's set).
"""
from __future__ import annotations

import math
from typing import Mapping, Union

import torch

from perturbkit.errors import InputError
from perturbkit.graph.ir import Graph, Node, frozen_attrs
from perturbkit.graph.network import Network
from perturbkit.sets.base import PerturbationSet
from perturbkit.sets.box import Box
from perturbkit.sets.lp import LpBall
from perturbkit.sets.product import ProductSet

WeightSpec = Union[PerturbationSet, float]
JOINT_INPUT = "perturbkit::joint_input"


def parameter_names(net: Network) -> list[str]:
    """Floating-point constants of ``net`` that can be perturbed."""
    return sorted(k for k, v in net.imported_graph.constants.items() if v.is_floating_point() and v.numel() > 0)


def resolve(net: Network, key: str) -> str:
    """The constant a user's key names: a constant's own name (``fc1.weight``), a module
    prefix (``fc1`` -> ``fc1.weight``), or a node name (its weight operand, input 1)."""
    consts = net.imported_graph.constants
    if key in consts and consts[key].is_floating_point():
        return key
    if f"{key}.weight" in consts:
        return f"{key}.weight"
    for n in net.imported_graph.nodes:
        if n.name == key and len(n.inputs) > 1 and n.inputs[1] in consts:
            return n.inputs[1]
    names = parameter_names(net)
    shown = ", ".join(names[:20]) + (" ..." if len(names) > 20 else "")
    raise InputError(f"no parameter '{key}' in {net.source or 'the network'}; parameters: {shown}")


def _center_row(W: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return W.to(dtype=ref.dtype, device=ref.device).reshape(1, -1)


def _weight_block(key: str, spec: WeightSpec, W: torch.Tensor, ref: torch.Tensor, batch: int) -> PerturbationSet:
    """The set of parameter ``W`` as a flattened block ``(batch, W.numel())``."""
    n = W.numel()
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        if not math.isfinite(spec) or spec < 0:
            raise InputError(f"weight eps for '{key}' must be a finite number >= 0, got {spec}")
        spec = LpBall(W.to(ref.dtype), float(spec))
    if isinstance(spec, Box):
        lo, hi = spec.lower, spec.upper
        if lo.numel() != n:
            raise InputError(f"the set for '{key}' has {lo.numel()} elements; the parameter has shape {tuple(W.shape)}")
        block = Box(lo.reshape(1, -1).to(ref), hi.reshape(1, -1).to(ref))
    elif isinstance(spec, LpBall):
        if spec.center.numel() != n:
            raise InputError(f"the set for '{key}' has {spec.center.numel()} elements; "
                             f"the parameter has shape {tuple(W.shape)}")
        dom = None if spec.domain is None else tuple(d.reshape(1, -1).to(ref) for d in spec.domain)
        block = LpBall(spec.center.reshape(1, -1).to(ref), spec.eps.reshape(1, -1).to(ref), spec.norm, dom)
    else:
        raise InputError(f"the set for '{key}' must be a Box, an LpBall or a number (an Linf radius), "
                         f"got {type(spec).__name__}")
    return block.flatten(batch, n)


def with_weights(net: Network, input_set: PerturbationSet,
                 weights: Mapping[str, WeightSpec]) -> tuple[Network, ProductSet]:
    """The network with the chosen parameters as inputs, and the joint input set.

    Args:
        weights: key (see :func:`resolve`) -> a set of the parameter's shape (``Box``,
            ``LpBall``) or a number ``e``: the Linf ball of radius ``e`` around the value.
    """
    if not weights:
        raise InputError("weights: give at least one parameter")
    ref = input_set.reference
    batch = net.batch(ref) if ref.dim() > 0 else 1
    g = net.imported_graph  # the model's own constants (a fusion may have folded some: Conv+BatchNorm)
    chosen: dict[str, WeightSpec] = {}
    for key, spec in weights.items():
        name = resolve(net, key)
        if name in chosen:
            raise InputError(f"parameter '{name}' is given twice in weights")
        chosen[name] = spec
    blocks = [input_set.flatten(batch, net.n_inputs)]
    parts = [(g.input_name, g.input_shape)] + [(k, tuple(g.constants[k].shape)) for k in chosen]
    total = sum(math.prod(shape) for _, shape in parts)
    nodes: list[Node] = []
    shapes = dict(g.shapes)
    shapes[JOINT_INPUT] = (total,)
    off = 0
    for value, shape in parts:
        n = math.prod(shape)
        flat = f"{JOINT_INPUT}/{value}"
        nodes.append(Node(f"{flat}/slice", "Slice", (JOINT_INPUT,), flat,
                          frozen_attrs({"starts": [off], "ends": [off + n], "axes": [0]}), ((total,),), (n,)))
        nodes.append(Node(f"{flat}/reshape", "Reshape", (flat,), value,
                          frozen_attrs({"shape": torch.tensor(list(shape), dtype=torch.int64)}), ((n,),), shape))
        shapes[flat], shapes[value] = (n,), shape
        off += n
    for name, spec in chosen.items():
        blocks.append(_weight_block(name, spec, g.constants[name], ref, batch))
    graph = Graph(nodes=tuple(nodes) + g.nodes, input_name=JOINT_INPUT, output_name=g.output_name, shapes=shapes,
                  constants={k: v for k, v in g.constants.items() if k not in chosen},
                  source=g.source)
    return Network(graph), ProductSet(tuple(blocks))
