"""Values, the graph builder and the helpers every converter uses.

A :class:`Var` is a runtime value (it depends on the network input): its IR name and its
example value, whose shape is the declared shape (no leading dimensions).  Anything else a
converter sees (Python numbers, tensors that do not depend on the input) is a constant.

The :class:`Builder` accumulates IR nodes and constants and knows which fx node is being
converted, so that every error can say where.  A :class:`Call` is one fx node with its
arguments resolved to values; a :data:`Converter` takes the builder and the call and returns
the IR value(s).
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Optional

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from perturbkit.errors import ModelError, PerturbkitError, UnsupportedOperatorError
from perturbkit.graph.ir import Node, Shape, frozen_attrs
from perturbkit.ops.registry import rule_for


# --------------------------------------------------------------------------------------
# values
# --------------------------------------------------------------------------------------
@dataclass
class Var:
    """A runtime value (depends on the input): its IR name and its example value."""

    name: str
    value: torch.Tensor  # shape == declared shape (no leading dimensions)

    @property
    def shape(self) -> Shape:
        return tuple(self.value.shape)

    @property
    def rank(self) -> int:
        return self.value.dim()


def describe_error(e: BaseException) -> str:
    """``Type: first line of the message`` (error messages stay on one line)."""
    msg = str(e).strip()
    return f"{type(e).__name__}: {msg.splitlines()[0]}" if msg else type(e).__name__


def _tol(ref: torch.Tensor) -> float:
    eps = torch.finfo(ref.dtype).eps if ref.is_floating_point() else 0.0
    finite = ref[torch.isfinite(ref)] if ref.is_floating_point() else ref
    scale = float(finite.abs().max()) if finite.numel() else 0.0
    return math.sqrt(eps) * (1.0 + scale)


def differ(got: torch.Tensor, ref: torch.Tensor) -> Optional[str]:
    """Why ``got`` does not match ``ref`` (None when it does)."""
    if tuple(got.shape) != tuple(ref.shape):
        return f"shape {tuple(got.shape)} instead of {tuple(ref.shape)}"
    if ref.numel() == 0:
        return None
    got = got.to(ref.dtype)
    if not torch.equal(torch.isnan(got), torch.isnan(ref)):
        return "NaN where PyTorch has a number (or the reverse)"
    same = (got == ref) | torch.isnan(ref)  # equal infinities (masks) and NaNs where PyTorch has them
    d = float(torch.where(same, torch.zeros_like(ref), (got - ref).abs()).max())
    if not d <= _tol(ref):
        return f"values differ by up to {d:.3g}"
    return None


def target_name(target: Any) -> str:
    """``torch.relu``, ``F.pad``, ``operator.add``, a method name, ...: as a user would write it."""
    if isinstance(target, str):
        return target
    name = getattr(target, "__name__", None)
    if name is None:
        return repr(target)
    for prefix, ns in (("F.", F), ("torch.", torch), ("operator.", operator)):
        if getattr(ns, name, None) is target:
            return prefix + name
    mod = getattr(target, "__module__", None)
    return f"{mod}.{name}" if mod and mod != "builtins" else name


# --------------------------------------------------------------------------------------
# the graph builder
# --------------------------------------------------------------------------------------
@dataclass
class Builder:
    """Accumulates IR nodes and constants; knows the fx node being converted."""

    source: str
    param_names: dict[int, str]
    folded: dict[int, tuple[torch.Tensor, str]] = field(default_factory=dict)  # id -> (tensor, fx name)
    nodes: list[Node] = field(default_factory=list)
    constants: dict[str, torch.Tensor] = field(default_factory=dict)
    shapes: dict[str, Shape] = field(default_factory=dict)
    used: set[str] = field(default_factory=set)
    _const_ids: dict[int, tuple[torch.Tensor, str]] = field(default_factory=dict)
    fx_node: Optional[fx.Node] = None

    # -- names --------------------------------------------------------------
    def fresh(self, base: str) -> str:
        name, k = base, 0
        while name in self.used:
            k += 1
            name = f"{base}_{k}"
        self.used.add(name)
        return name

    def where(self) -> str:
        n = self.fx_node
        if n is None:
            return f"module {self.source}"
        return f"fx node '{n.name}' ({n.op} {target_name(n.target)}) in {self.source}"

    # -- constants ----------------------------------------------------------
    def const(self, t: Any, like: Optional[torch.Tensor] = None) -> str:
        """Register a constant operand; returns its name (parameters keep their qualified name)."""
        if not isinstance(t, torch.Tensor):  # a Python scalar: a 0-d tensor, like an ONNX export's
            dtype = like.dtype if like is not None and like.is_floating_point() else torch.float32
            t = torch.tensor(float(t), dtype=dtype)
        hit = self._const_ids.get(id(t))
        if hit is not None and hit[0] is t:
            return hit[1]
        fold = self.folded.get(id(t))
        base = (self.param_names.get(id(t)) or (fold[1] if fold is not None and fold[0] is t else None)
                or f"{self.fx_node.name if self.fx_node else 'const'}_const")
        name = self.fresh(base)
        self.constants[name] = t.detach().clone()
        self._const_ids[id(t)] = (t, name)
        return name

    # -- nodes --------------------------------------------------------------
    def emit(self, op: str, inputs: list[Any], attrs: Optional[dict[str, Any]] = None,
             out_shape: Optional[Shape] = None) -> Var:
        """Append one IR node; its example value is computed with the op's rule."""
        names: list[str] = []
        in_shapes: list[Shape] = []
        xs: list[torch.Tensor] = []
        like = next((x.value for x in inputs if isinstance(x, Var)), None)
        for x in inputs:
            if isinstance(x, Var):
                names.append(x.name)
                in_shapes.append(x.shape)
                xs.append(x.value)
            else:
                cname = self.const(x, like)
                t = self.constants[cname]
                names.append(cname)
                in_shapes.append(tuple(t.shape))
                if like is not None and t.is_floating_point() and like.is_floating_point():
                    t = t.to(like.dtype)
                xs.append(t)
        name = self.fresh(self.fx_node.name if self.fx_node is not None else op)
        node = Node(name=name, op_type=op, inputs=tuple(names), output=name,
                    attrs=frozen_attrs(attrs or {}), in_shapes=tuple(in_shapes), out_shape=())
        rule = rule_for(node, self.source)
        try:
            if out_shape is None:
                out_shape = rule.infer_shape(node, *xs)
            node = replace(node, out_shape=tuple(int(d) for d in out_shape))
            value = rule.forward(node, *xs)
        except PerturbkitError:
            raise
        except Exception as e:  # noqa: BLE001 - re-raised with the location
            raise ModelError(f"while converting {self.where()} to {op}: {describe_error(e)}") from None
        self.nodes.append(node)
        self.shapes[name] = node.out_shape
        return Var(name, value)


# --------------------------------------------------------------------------------------
# one call (an fx node with its arguments resolved)
# --------------------------------------------------------------------------------------
@dataclass
class Call:
    """One fx node with its arguments resolved to values (``Var`` for runtime values)."""

    node: fx.Node
    args: tuple
    kwargs: dict
    value: Any  # what PyTorch computed on the example values
    module: Optional[nn.Module] = None

    def arg(self, i: int, name: str, default: Any = None) -> Any:
        if i is not None and i < len(self.args):
            return self.args[i]
        return self.kwargs.get(name, default)


Converter = Callable[[Builder, Call], Any]


# --------------------------------------------------------------------------------------
# argument helpers
# --------------------------------------------------------------------------------------
def unsupported(b: Builder, what: str) -> UnsupportedOperatorError:
    return UnsupportedOperatorError(f"{what} at {b.where()}")


def as_var(b: Builder, x: Any, what: str = "input") -> Var:
    if not isinstance(x, Var):
        raise unsupported(b, f"the {what} must depend on the network input")
    return x


def as_const(b: Builder, x: Any, what: str) -> torch.Tensor:
    if isinstance(x, Var):
        raise unsupported(b, f"a {what} that depends on the network input is not supported; it must be constant")
    return x


def ints(v: Any, n: int) -> list[int]:
    if isinstance(v, int):
        return [int(v)] * n
    v = [int(a) for a in v]
    return v * n if len(v) == 1 and n > 1 else v


def norm_axis(b: Builder, d: int, rank: int) -> int:
    a = d + rank if d < 0 else d
    if not 0 <= a < max(rank, 1):
        raise unsupported(b, f"dimension {d} out of range for rank {rank}")
    return a


def scalar(b: Builder, v: Any, what: str) -> Optional[float]:
    if v is None:
        return None
    if isinstance(v, Var):
        raise unsupported(b, f"a {what} that depends on the network input is not supported")
    if isinstance(v, torch.Tensor):
        if v.numel() != 1:
            raise unsupported(b, f"a tensor {what} (shape {tuple(v.shape)}) is not supported; use a scalar")
        return float(v.reshape(-1)[0])
    return float(v)


def operand(x: Any) -> Any:
    """A constant arithmetic operand as a float tensor (runtime values pass through)."""
    if isinstance(x, Var):
        return x
    if isinstance(x, torch.Tensor):
        return x if x.is_floating_point() else x.to(torch.get_default_dtype())
    return torch.tensor(float(x))
