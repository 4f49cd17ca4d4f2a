"""Converters for activations, clamps and identity-like calls (dropout, copies, dtype casts).

Each converter takes the :class:`~perturbkit.graph.torch_fx.builder.Builder` and the
:class:`~perturbkit.graph.torch_fx.builder.Call` and returns the IR value; module, function
and method variants of one operation share a helper.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from perturbkit.graph.torch_fx.builder import Builder, Call, Converter, Var, as_var, scalar, unsupported


# -- one op, fixed attributes ---------------------------------------------------------
def unary(op: str, **attrs: Any) -> Converter:
    def convert(b: Builder, c: Call) -> Var:
        return b.emit(op, [as_var(b, c.arg(0, "input"))], dict(attrs))
    return convert


# -- identity-like --------------------------------------------------------------------
def identity_node(b: Builder, c: Call) -> Var:
    return b.emit("Identity", [as_var(b, c.arg(0, "input"))])


def passthrough(b: Builder, c: Call) -> Var:
    x = as_var(b, c.args[0])
    if isinstance(c.value, torch.Tensor) and c.value.dtype != x.value.dtype and not c.value.is_floating_point():
        raise unsupported(b, f"conversion of a perturbed value to {c.value.dtype} is not supported")
    return x


def dropout_fn(b: Builder, c: Call) -> Var:
    training = c.arg(2, "training", c.node.target is not F.alpha_dropout)
    if training and float(c.arg(1, "p", 0.5)) > 0:
        raise unsupported(b, "dropout with training=True is random; put the module in eval mode")
    return identity_node(b, c)


# -- activations ---------------------------------------------------------------------
def leaky_module(b: Builder, c: Call) -> Var:
    return b.emit("LeakyRelu", [as_var(b, c.args[0])], {"alpha": float(c.module.negative_slope)})


def leaky_fn(b: Builder, c: Call) -> Var:
    return b.emit("LeakyRelu", [as_var(b, c.arg(0, "input"))], {"alpha": float(c.arg(1, "negative_slope", 0.01))})


def _softplus(b: Builder, x: Any, beta: float) -> Var:
    if float(beta) != 1.0:
        raise unsupported(b, f"Softplus with beta={beta} is not supported; only beta=1")
    return b.emit("Softplus", [as_var(b, x)])


def softplus_module(b: Builder, c: Call) -> Var:
    return _softplus(b, c.args[0], c.module.beta)


def softplus_fn(b: Builder, c: Call) -> Var:
    return _softplus(b, c.arg(0, "input"), c.arg(1, "beta", 1.0))


def _clip(b: Builder, x: Any, lo: Any, hi: Any) -> Var:
    attrs: dict[str, Any] = {}
    lo, hi = scalar(b, lo, "clamp bound"), scalar(b, hi, "clamp bound")
    if lo is not None:
        attrs["min"] = lo
    if hi is not None:
        attrs["max"] = hi
    return b.emit("Clip", [as_var(b, x)], attrs)


def hardtanh_module(b: Builder, c: Call) -> Var:
    return _clip(b, c.args[0], c.module.min_val, c.module.max_val)


def hardtanh_fn(b: Builder, c: Call) -> Var:
    return _clip(b, c.arg(0, "input"), c.arg(1, "min_val", -1.0), c.arg(2, "max_val", 1.0))


def relu6_fn(b: Builder, c: Call) -> Var:
    return _clip(b, c.arg(0, "input"), 0.0, 6.0)


def clamp(b: Builder, c: Call) -> Var:
    return _clip(b, c.arg(0, "input"), c.arg(1, "min"), c.arg(2, "max"))


def clamp_min(b: Builder, c: Call) -> Var:
    return _clip(b, c.arg(0, "input"), c.arg(1, "min"), None)


def clamp_max(b: Builder, c: Call) -> Var:
    return _clip(b, c.arg(0, "input"), None, c.arg(1, "max"))


# -- smooth activations (ONNX names and attributes) ----------------------------------
def _gelu(b: Builder, x: Any, approximate: Any) -> Var:
    approximate = str(approximate)
    if approximate not in ("none", "tanh"):
        raise unsupported(b, f"GELU with approximate='{approximate}' is not supported; supported: none, tanh")
    return b.emit("Gelu", [as_var(b, x)], {"approximate": approximate})


def gelu_module(b: Builder, c: Call) -> Var:
    return _gelu(b, c.args[0], c.module.approximate)


def gelu_fn(b: Builder, c: Call) -> Var:
    return _gelu(b, c.arg(0, "input"), c.arg(1, "approximate", "none"))


def elu_module(b: Builder, c: Call) -> Var:
    return b.emit("Elu", [as_var(b, c.args[0])], {"alpha": float(c.module.alpha)})


def elu_fn(b: Builder, c: Call) -> Var:
    return b.emit("Elu", [as_var(b, c.arg(0, "input"))], {"alpha": float(c.arg(1, "alpha", 1.0))})


# -- softmax ------------------------------------------------------------------------
def _softmax(op: str, b: Builder, x: Any, dim: Any, dtype: Any) -> Var:
    x = as_var(b, x)
    if dtype is not None and not dtype.is_floating_point:
        raise unsupported(b, f"{op} with dtype={dtype} is not supported")
    if dim is None:  # PyTorch's implicit (deprecated) choice, _get_softmax_dim
        dim = 0 if x.rank in (0, 1, 3) else 1
    dim = int(dim)
    if not -max(x.rank, 1) <= dim < max(x.rank, 1):
        raise unsupported(b, f"{op} over dimension {dim} of a value of rank {x.rank}")
    return b.emit(op, [x], {"axis": dim})


def softmax_like(op: str) -> Converter:
    """``F.softmax(x, dim, dtype=)``, ``torch.softmax``, ``x.softmax(dim)`` (and the log variants)."""
    def convert(b: Builder, c: Call) -> Var:
        dtype = next((a for a in c.args[2:] if isinstance(a, torch.dtype)), c.kwargs.get("dtype"))
        return _softmax(op, b, c.arg(0, "input"), c.arg(1, "dim"), dtype)
    return convert


def softmax_module(op: str) -> Converter:
    def convert(b: Builder, c: Call) -> Var:
        return _softmax(op, b, c.args[0], c.module.dim, None)
    return convert
