"""The public API: ``load``, ``bounds``, ``Bounds``."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Union

import torch

from perturbkit.bounds.alpha_crown import AlphaConfig, alpha_crown
from perturbkit.bounds.crown import crown
from perturbkit.bounds.engine import Context, make_context
from perturbkit.bounds.ibp import ibp, interval_spec
from perturbkit.bounds.weights import with_weights
from perturbkit.errors import InputError, ModelError
from perturbkit.graph.network import Network
from perturbkit.sets.base import PerturbationSet


def load(model: Union[str, os.PathLike, torch.nn.Module, Network], example_input: Optional[torch.Tensor] = None,
         *, forward_only: bool = False) -> Network:
    """A :class:`Network` from an ONNX file path or a ``torch.nn.Module``.

    Args:
        model: path to an ``.onnx`` file, an ``onnx.ModelProto``, an ``nn.Module``, or a Network
            (returned as is).
        example_input: for a module, one input batch ``(1, *sample_shape)`` used to trace it.
        forward_only: (ONNX) also accept operators perturbkit can execute but not bound (e.g.
            a Floor or Ceil; see :mod:`perturbkit.ops.forward_only`): enough for attacks;
            bounds and verification on such a network raise an error naming the operator.
    """
    if isinstance(model, Network):
        return model
    if isinstance(model, torch.nn.Module):
        if example_input is None:
            raise InputError("load(module) needs example_input, e.g. torch.zeros(1, 3, 32, 32)")
        from perturbkit.graph.from_torch import graph_from_module

        return Network(graph_from_module(model, example_input))
    import onnx

    if isinstance(model, (str, os.PathLike, onnx.ModelProto)):
        from perturbkit.graph.from_onnx import graph_from_onnx

        return Network(graph_from_onnx(model, forward_only=forward_only))
    raise ModelError(f"cannot load a model from a {type(model).__name__}; give an .onnx path or an nn.Module")


@dataclass(frozen=True)
class Bounds:
    """``lower <= C f(x) <= upper`` for every x in the input set; tensors ``(B, S)``."""

    lower: torch.Tensor
    upper: torch.Tensor


def _ibp(ctx: Context, C):
    return interval_spec(ibp(ctx), C, ctx.batch)


METHODS: dict[str, Callable[..., tuple[torch.Tensor, torch.Tensor]]] = {
    "ibp": lambda ctx, C, alpha: _ibp(ctx, C),
    "crown": lambda ctx, C, alpha: crown(ctx, C, intermediate="crown"),
    "crown-ibp": lambda ctx, C, alpha: crown(ctx, C, intermediate="ibp"),
    "alpha-crown": lambda ctx, C, alpha: alpha_crown(ctx, C, alpha)[:2],
}


def bounds(network: Network, input_set: PerturbationSet, method: str = "crown", C: Optional[torch.Tensor] = None,
           *, weights: Optional[Mapping[str, Union[PerturbationSet, float]]] = None,
           alpha: AlphaConfig = AlphaConfig(),
           device: Union[str, torch.device, None] = None, dtype: Optional[torch.dtype] = None) -> Bounds:
    """Provable bounds on the outputs (or on ``C @ outputs``) of ``network`` over ``input_set``.

    Args:
        network: a :class:`Network` (see :func:`load`).
        input_set: :class:`perturbkit.sets.Box` or :class:`perturbkit.sets.LpBall`, batched.
        method: ``"ibp"``, ``"crown"``, ``"crown-ibp"`` or ``"alpha-crown"`` (settings in
            ``alpha``; use ``alpha_crown`` directly for warm starts).
        C: optional specification ``(B, S, n_outputs)`` (or ``(S, n_outputs)`` for all samples).
        weights: perturb parameters too, jointly with the input: parameter (``"fc1.weight"``),
            module (``"fc1"``: its weight) or node name -> a set of the parameter's shape
            (``Box``, ``LpBall``) or a number ``e`` (the Linf ball of radius ``e`` around the
            parameter's value); see :mod:`perturbkit.bounds.weights`.
        alpha: alpha-CROWN's settings (:class:`perturbkit.bounds.alpha_crown.AlphaConfig`),
            e.g. ``AlphaConfig(optimize_intermediate=False)`` to optimise only the output's
            relaxations (much faster on Transformers).
        device, dtype: where and in what precision to compute (default: those of the set).
    Returns:
        :class:`Bounds` with ``lower``/``upper`` of shape ``(B, S)`` (``S = n_outputs`` without C).
    """
    if method not in METHODS:
        raise InputError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if not isinstance(network, Network):
        network = load(network)
    if not isinstance(input_set, PerturbationSet):
        raise InputError(f"input_set must be a perturbkit.sets set (Box, LpBall), got {type(input_set).__name__}")
    if device is not None or dtype is not None:
        input_set = _moved(input_set, device, dtype)
    if weights:
        if device is not None or dtype is not None:
            weights = {k: (_moved(v, device, dtype) if isinstance(v, PerturbationSet) else v) for k, v in weights.items()}
        network, input_set = with_weights(network, input_set, weights)
    ctx = make_context(network, input_set)
    if C is not None:
        C = torch.as_tensor(C).to(dtype=ctx.dtype, device=ctx.device)
        if C.dim() == 2:
            C = C.unsqueeze(0).expand(ctx.batch, *C.shape)
        if C.dim() != 3 or C.shape[0] != ctx.batch or C.shape[2] != network.n_outputs:
            raise InputError(f"C must have shape (batch={ctx.batch}, specs, outputs={network.n_outputs}), "
                             f"got {tuple(C.shape)}")
        if not torch.isfinite(C).all():
            raise InputError("C contains NaN or inf")
    with torch.no_grad():
        lower, upper = METHODS[method](ctx, C, alpha)
    # a NaN (e.g. 0 * inf where an input set or intermediate bound is unbounded) says
    # nothing: the sound answer is the trivial bound
    lower = torch.where(torch.isnan(lower), torch.full_like(lower, -torch.inf), lower)
    upper = torch.where(torch.isnan(upper), torch.full_like(upper, torch.inf), upper)
    return Bounds(lower=lower, upper=upper)


def _moved(s: PerturbationSet, device, dtype) -> PerturbationSet:
    import dataclasses

    if device is not None and torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' requested but CUDA is not available")
    kw = {}
    for f in dataclasses.fields(s):
        v = getattr(s, f.name)
        if isinstance(v, torch.Tensor):
            v = v.to(device=device, dtype=dtype or v.dtype)
        elif isinstance(v, tuple) and v and isinstance(v[0], torch.Tensor):
            v = tuple(t.to(device=device, dtype=dtype or t.dtype) for t in v)
        kw[f.name] = v
    return type(s)(**kw)
