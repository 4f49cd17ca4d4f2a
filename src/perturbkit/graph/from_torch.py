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
from perturbkit.graph.ir import Graph, Node, Shape, frozen_attrs
from perturbkit.ops.registry import rule_for

__all__ = ["graph_from_module"]


# --------------------------------------------------------------------------------------
# values and the graph builder
# --------------------------------------------------------------------------------------
@dataclass
class _Var:
    """A runtime value (depends on the input): its IR name and its example value."""

    name: str
    value: torch.Tensor  # shape == declared shape (no leading dimensions)

    @property
    def shape(self) -> Shape:
        return tuple(self.value.shape)

    @property
    def rank(self) -> int:
        return self.value.dim()


def _why(e: BaseException) -> str:
    """``Type: first line of the message`` (error messages stay on one line)."""
    msg = str(e).strip()
    return f"{type(e).__name__}: {msg.splitlines()[0]}" if msg else type(e).__name__


def _tol(ref: torch.Tensor) -> float:
    eps = torch.finfo(ref.dtype).eps if ref.is_floating_point() else 0.0
    scale = float(ref.abs().max()) if ref.numel() else 0.0
    return math.sqrt(eps) * (1.0 + scale)


def _differ(got: torch.Tensor, ref: torch.Tensor) -> Optional[str]:
    """Why ``got`` does not match ``ref`` (None when it does)."""
    if tuple(got.shape) != tuple(ref.shape):
        return f"shape {tuple(got.shape)} instead of {tuple(ref.shape)}"
    if ref.numel() == 0:
        return None
    d = float((got.to(ref.dtype) - ref).abs().max())
    if not d <= _tol(ref):
        return f"values differ by up to {d:.3g}"
    return None


@dataclass
class _Builder:
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
        return f"fx node '{n.name}' ({n.op} {_target_name(n.target)}) in {self.source}"

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
             out_shape: Optional[Shape] = None) -> _Var:
        """Append one IR node; its example value is computed with the op's rule."""
        names: list[str] = []
        in_shapes: list[Shape] = []
        xs: list[torch.Tensor] = []
        like = next((x.value for x in inputs if isinstance(x, _Var)), None)
        for x in inputs:
            if isinstance(x, _Var):
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
            raise ModelError(f"while converting {self.where()} to {op}: {_why(e)}") from None
        self.nodes.append(node)
        self.shapes[name] = node.out_shape
        return _Var(name, value)


# --------------------------------------------------------------------------------------
# one call (an fx node with its arguments resolved)
# --------------------------------------------------------------------------------------
@dataclass
class _Call:
    node: fx.Node
    args: tuple
    kwargs: dict
    value: Any  # what PyTorch computed on the example values
    module: Optional[nn.Module] = None

    def arg(self, i: int, name: str, default: Any = None) -> Any:
        if i is not None and i < len(self.args):
            return self.args[i]
        return self.kwargs.get(name, default)


def _unsupported(b: _Builder, what: str) -> UnsupportedOperatorError:
    return UnsupportedOperatorError(f"{what} at {b.where()}")


def _var(b: _Builder, x: Any, what: str = "input") -> _Var:
    if not isinstance(x, _Var):
        raise _unsupported(b, f"the {what} must depend on the network input")
    return x


def _const_tensor(b: _Builder, x: Any, what: str) -> torch.Tensor:
    if isinstance(x, _Var):
        raise _unsupported(b, f"a {what} that depends on the network input is not supported; it must be constant")
    return x


def _ints(v: Any, n: int) -> list[int]:
    if isinstance(v, int):
        return [int(v)] * n
    v = [int(a) for a in v]
    return v * n if len(v) == 1 and n > 1 else v


def _axis(b: _Builder, d: int, rank: int) -> int:
    a = d + rank if d < 0 else d
    if not 0 <= a < max(rank, 1):
        raise _unsupported(b, f"dimension {d} out of range for rank {rank}")
    return a


def _scalar(b: _Builder, v: Any, what: str) -> Optional[float]:
    if v is None:
        return None
    if isinstance(v, _Var):
        raise _unsupported(b, f"a {what} that depends on the network input is not supported")
    if isinstance(v, torch.Tensor):
        if v.numel() != 1:
            raise _unsupported(b, f"a tensor {what} (shape {tuple(v.shape)}) is not supported; use a scalar")
        return float(v.reshape(-1)[0])
    return float(v)


def _operand(x: Any) -> Any:
    """A constant arithmetic operand as a float tensor (runtime values pass through)."""
    if isinstance(x, _Var):
        return x
    if isinstance(x, torch.Tensor):
        return x if x.is_floating_point() else x.to(torch.get_default_dtype())
    return torch.tensor(float(x))


# --------------------------------------------------------------------------------------
# converters
# --------------------------------------------------------------------------------------
Converter = Callable[[_Builder, _Call], Any]


def _unary(op: str, **attrs: Any) -> Converter:
    def convert(b: _Builder, c: _Call) -> _Var:
        return b.emit(op, [_var(b, c.arg(0, "input"))], dict(attrs))
    return convert


def _identity_node(b: _Builder, c: _Call) -> _Var:
    return b.emit("Identity", [_var(b, c.arg(0, "input"))])


def _passthrough(b: _Builder, c: _Call) -> _Var:
    x = _var(b, c.args[0])
    if isinstance(c.value, torch.Tensor) and c.value.dtype != x.value.dtype and not c.value.is_floating_point():
        raise _unsupported(b, f"conversion of a perturbed value to {c.value.dtype} is not supported")
    return x


def _dropout_fn(b: _Builder, c: _Call) -> _Var:
    training = c.arg(2, "training", c.node.target is not F.alpha_dropout)
    if training and float(c.arg(1, "p", 0.5)) > 0:
        raise _unsupported(b, "dropout with training=True is random; put the module in eval mode")
    return _identity_node(b, c)


# -- activations ---------------------------------------------------------------------
def _leaky_module(b: _Builder, c: _Call) -> _Var:
    return b.emit("LeakyRelu", [_var(b, c.args[0])], {"alpha": float(c.module.negative_slope)})


def _leaky_fn(b: _Builder, c: _Call) -> _Var:
    return b.emit("LeakyRelu", [_var(b, c.arg(0, "input"))], {"alpha": float(c.arg(1, "negative_slope", 0.01))})


def _softplus(b: _Builder, x: Any, beta: float) -> _Var:
    if float(beta) != 1.0:
        raise _unsupported(b, f"Softplus with beta={beta} is not supported; only beta=1")
    return b.emit("Softplus", [_var(b, x)])


def _softplus_module(b: _Builder, c: _Call) -> _Var:
    return _softplus(b, c.args[0], c.module.beta)


def _softplus_fn(b: _Builder, c: _Call) -> _Var:
    return _softplus(b, c.arg(0, "input"), c.arg(1, "beta", 1.0))


def _clip(b: _Builder, x: Any, lo: Any, hi: Any) -> _Var:
    attrs: dict[str, Any] = {}
    lo, hi = _scalar(b, lo, "clamp bound"), _scalar(b, hi, "clamp bound")
    if lo is not None:
        attrs["min"] = lo
    if hi is not None:
        attrs["max"] = hi
    return b.emit("Clip", [_var(b, x)], attrs)


def _hardtanh_module(b: _Builder, c: _Call) -> _Var:
    return _clip(b, c.args[0], c.module.min_val, c.module.max_val)


def _hardtanh_fn(b: _Builder, c: _Call) -> _Var:
    return _clip(b, c.arg(0, "input"), c.arg(1, "min_val", -1.0), c.arg(2, "max_val", 1.0))


def _relu6_fn(b: _Builder, c: _Call) -> _Var:
    return _clip(b, c.arg(0, "input"), 0.0, 6.0)


def _clamp(b: _Builder, c: _Call) -> _Var:
    return _clip(b, c.arg(0, "input"), c.arg(1, "min"), c.arg(2, "max"))


def _clamp_min(b: _Builder, c: _Call) -> _Var:
    return _clip(b, c.arg(0, "input"), c.arg(1, "min"), None)


def _clamp_max(b: _Builder, c: _Call) -> _Var:
    return _clip(b, c.arg(0, "input"), None, c.arg(1, "max"))


# -- linear layers ---------------------------------------------------------------------
def _linear(b: _Builder, x: Any, W: Any, bias: Any) -> _Var:
    x = _var(b, x)
    W = _const_tensor(b, W, "weight")
    bias = None if bias is None else _const_tensor(b, bias, "bias")
    if x.rank == 2:
        ins = [x, W] + ([bias] if bias is not None else [])
        return b.emit("Gemm", ins, {"alpha": 1.0, "beta": 1.0, "transB": 1})
    y = b.emit("MatMul", [x, W.detach().t()])
    return y if bias is None else b.emit("Add", [y, bias])


def _linear_module(b: _Builder, c: _Call) -> _Var:
    return _linear(b, c.args[0], c.module.weight, c.module.bias)


def _linear_fn(b: _Builder, c: _Call) -> _Var:
    return _linear(b, c.arg(0, "input"), c.arg(1, "weight"), c.arg(2, "bias"))


def _pad_mode(b: _Builder, mode: str) -> str:
    modes = {"constant": "constant", "zeros": "constant", "reflect": "reflect", "replicate": "edge"}
    if mode not in modes:
        raise _unsupported(b, f"padding mode '{mode}' is not supported; supported: constant, reflect, replicate")
    return modes[mode]


def _onnx_pads_from_torch(pad: list[int], rank: int) -> list[int]:
    """torch ``F.pad`` order (last dim first, (begin, end) pairs) -> ONNX ``[b_0..b_r-1, e_0..e_r-1]``."""
    begins, ends = [0] * rank, [0] * rank
    for i in range(len(pad) // 2):
        d = rank - 1 - i
        begins[d], ends[d] = int(pad[2 * i]), int(pad[2 * i + 1])
    return begins + ends


def _pad(b: _Builder, x: _Var, pads: list[int], mode: str, value: float = 0.0) -> _Var:
    return b.emit("Pad", [x], {"pads": list(pads), "mode": _pad_mode(b, mode), "constant_value": float(value)})


def _check_rank(b: _Builder, x: _Var, nd: int, what: str) -> None:
    if x.rank != nd + 2:
        raise _unsupported(b, f"{what} on an input of rank {x.rank} (shape {x.shape}) is not supported; "
                              f"expected (N, C, {'spatial, ' * nd}...) of rank {nd + 2} with a batch dimension")


def _conv(b: _Builder, x: Any, W: Any, bias: Any, stride: Any, padding: Any, dilation: Any,
          groups: int, padding_mode: str = "zeros") -> _Var:
    x = _var(b, x)
    W = _const_tensor(b, W, "convolution weight")
    bias = None if bias is None else _const_tensor(b, bias, "bias")
    nd = W.dim() - 2
    _check_rank(b, x, nd, f"Conv{nd}d")
    kernel = [int(k) for k in W.shape[2:]]
    strides, dil = _ints(stride, nd), _ints(dilation, nd)
    if isinstance(padding, str):
        if padding == "valid":
            pads = [0] * (2 * nd)
        elif padding == "same":
            total = [d * (k - 1) for d, k in zip(dil, kernel)]
            pads = [t // 2 for t in total] + [t - t // 2 for t in total]
        else:
            raise _unsupported(b, f"padding='{padding}' is not supported")
    else:
        p = _ints(padding, nd)
        pads = p + p
    if padding_mode != "zeros" and any(pads):
        x = _pad(b, x, [0, 0] + pads[:nd] + [0, 0] + pads[nd:], padding_mode)
        pads = [0] * (2 * nd)
    attrs = {"dilations": dil, "group": int(groups), "kernel_shape": kernel, "pads": pads, "strides": strides}
    return b.emit("Conv", [x, W] + ([bias] if bias is not None else []), attrs)


def _conv_module(b: _Builder, c: _Call) -> _Var:
    m = c.module
    return _conv(b, c.args[0], m.weight, m.bias, m.stride, m.padding, m.dilation, m.groups, m.padding_mode)


def _conv_fn(b: _Builder, c: _Call) -> _Var:
    return _conv(b, c.arg(0, "input"), c.arg(1, "weight"), c.arg(2, "bias"), c.arg(3, "stride", 1),
                 c.arg(4, "padding", 0), c.arg(5, "dilation", 1), c.arg(6, "groups", 1))


def _conv_transpose(b: _Builder, x: Any, W: Any, bias: Any, stride: Any, padding: Any,
                    output_padding: Any, groups: int, dilation: Any) -> _Var:
    x = _var(b, x)
    W = _const_tensor(b, W, "convolution weight")
    bias = None if bias is None else _const_tensor(b, bias, "bias")
    nd = W.dim() - 2
    _check_rank(b, x, nd, f"ConvTranspose{nd}d")
    p = _ints(padding, nd)
    attrs = {"dilations": _ints(dilation, nd), "group": int(groups), "kernel_shape": [int(k) for k in W.shape[2:]],
             "output_padding": _ints(output_padding, nd), "pads": p + p, "strides": _ints(stride, nd)}
    return b.emit("ConvTranspose", [x, W] + ([bias] if bias is not None else []), attrs)


def _conv_transpose_module(b: _Builder, c: _Call) -> _Var:
    m = c.module
    if len(c.args) > 1 or c.kwargs.get("output_size") is not None:
        raise _unsupported(b, "ConvTranspose called with output_size is not supported; set output_padding")
    if m.padding_mode != "zeros":
        raise _unsupported(b, f"ConvTranspose with padding_mode='{m.padding_mode}' is not supported")
    return _conv_transpose(b, c.args[0], m.weight, m.bias, m.stride, m.padding, m.output_padding,
                           m.groups, m.dilation)


def _conv_transpose_fn(b: _Builder, c: _Call) -> _Var:
    return _conv_transpose(b, c.arg(0, "input"), c.arg(1, "weight"), c.arg(2, "bias"), c.arg(3, "stride", 1),
                           c.arg(4, "padding", 0), c.arg(5, "output_padding", 0), c.arg(6, "groups", 1),
                           c.arg(7, "dilation", 1))


def _batch_norm(b: _Builder, x: Any, mean: Any, var: Any, weight: Any, bias: Any, eps: float,
                momentum: Optional[float]) -> _Var:
    x = _var(b, x)
    if mean is None or var is None:
        raise _unsupported(b, "BatchNorm without running statistics (track_running_stats=False) normalises "
                              "with batch statistics; it is not supported")
    mean = _const_tensor(b, mean, "running mean")
    var = _const_tensor(b, var, "running variance")
    if x.rank < 2:
        raise _unsupported(b, f"BatchNorm on an input of rank {x.rank} is not supported")
    C = x.shape[1]
    scale = torch.ones(C, dtype=mean.dtype) if weight is None else _const_tensor(b, weight, "weight")
    shift = torch.zeros(C, dtype=mean.dtype) if bias is None else _const_tensor(b, bias, "bias")
    attrs = {"epsilon": float(eps), "momentum": 1.0 - float(0.1 if momentum is None else momentum)}
    return b.emit("BatchNormalization", [x, scale, shift, mean, var], attrs)


def _batch_norm_module(b: _Builder, c: _Call) -> _Var:
    m = c.module
    return _batch_norm(b, c.args[0], m.running_mean, m.running_var, m.weight, m.bias, m.eps, m.momentum)


def _batch_norm_fn(b: _Builder, c: _Call) -> _Var:
    if c.arg(5, "training", False):
        raise _unsupported(b, "batch_norm with training=True normalises with batch statistics; it is not supported")
    return _batch_norm(b, c.arg(0, "input"), c.arg(1, "running_mean"), c.arg(2, "running_var"),
                       c.arg(3, "weight"), c.arg(4, "bias"), c.arg(7, "eps", 1e-5), c.arg(6, "momentum", 0.1))


# -- pooling -------------------------------------------------------------------------
def _avg_pool(b: _Builder, nd: int, x: Any, kernel: Any, stride: Any, padding: Any, ceil_mode: bool,
              count_include_pad: bool, divisor_override: Any = None) -> _Var:
    x = _var(b, x)
    _check_rank(b, x, nd, f"AvgPool{nd}d")
    if divisor_override is not None:
        raise _unsupported(b, "AvgPool with divisor_override is not supported")
    k = _ints(kernel, nd)
    s = k if stride is None or (not isinstance(stride, int) and len(stride) == 0) else _ints(stride, nd)
    p = _ints(padding, nd)
    attrs = {"ceil_mode": int(bool(ceil_mode)), "count_include_pad": int(bool(count_include_pad)),
             "kernel_shape": k, "pads": p + p, "strides": s}
    return b.emit("AveragePool", [x], attrs)


def _avg_pool_module(nd: int) -> Converter:
    def convert(b: _Builder, c: _Call) -> _Var:
        m = c.module
        return _avg_pool(b, nd, c.args[0], m.kernel_size, m.stride, m.padding, m.ceil_mode,
                         m.count_include_pad, getattr(m, "divisor_override", None))
    return convert


def _avg_pool_fn(nd: int) -> Converter:
    def convert(b: _Builder, c: _Call) -> _Var:
        return _avg_pool(b, nd, c.arg(0, "input"), c.arg(1, "kernel_size"), c.arg(2, "stride"),
                         c.arg(3, "padding", 0), c.arg(4, "ceil_mode", False), c.arg(5, "count_include_pad", True),
                         c.arg(6, "divisor_override"))
    return convert


def _max_pool(b: _Builder, nd: int, x: Any, kernel: Any, stride: Any, padding: Any, dilation: Any,
              ceil_mode: bool, return_indices: bool) -> _Var:
    x = _var(b, x)
    _check_rank(b, x, nd, f"MaxPool{nd}d")
    if return_indices:
        raise _unsupported(b, "MaxPool with return_indices=True is not supported")
    k = _ints(kernel, nd)
    s = k if stride is None or (not isinstance(stride, int) and len(stride) == 0) else _ints(stride, nd)
    p = _ints(padding, nd)
    attrs = {"ceil_mode": int(bool(ceil_mode)), "dilations": _ints(dilation, nd), "kernel_shape": k,
             "pads": p + p, "strides": s}
    return b.emit("MaxPool", [x], attrs)


def _max_pool_module(nd: int) -> Converter:
    def convert(b: _Builder, c: _Call) -> _Var:
        m = c.module
        return _max_pool(b, nd, c.args[0], m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode,
                         m.return_indices)
    return convert


def _max_pool_fn(nd: int) -> Converter:
    def convert(b: _Builder, c: _Call) -> _Var:
        return _max_pool(b, nd, c.arg(0, "input"), c.arg(1, "kernel_size"), c.arg(2, "stride"),
                         c.arg(3, "padding", 0), c.arg(4, "dilation", 1), c.arg(5, "ceil_mode", False),
                         c.arg(6, "return_indices", False))
    return convert


def _adaptive_avg(b: _Builder, nd: int, x: Any, output_size: Any) -> _Var:
    x = _var(b, x)
    _check_rank(b, x, nd, f"AdaptiveAvgPool{nd}d")
    spatial = x.shape[2:]
    out = [spatial[i] if o is None else int(o) for i, o in enumerate(_ints_or_none(output_size, nd))]
    if all(o == 1 for o in out):
        return b.emit("GlobalAveragePool", [x])
    if list(out) == list(spatial):
        return b.emit("Identity", [x])
    if all(i % o == 0 for i, o in zip(spatial, out)):
        k = [i // o for i, o in zip(spatial, out)]
        return b.emit("AveragePool", [x], {"ceil_mode": 0, "count_include_pad": 0, "kernel_shape": k,
                                            "pads": [0] * (2 * nd), "strides": k})
    raise _unsupported(b, f"AdaptiveAvgPool from {tuple(spatial)} to {tuple(out)} (not a divisor) is not supported")


def _ints_or_none(v: Any, n: int) -> list[Optional[int]]:
    if v is None or isinstance(v, int):
        return [v] * n
    v = list(v)
    return v * n if len(v) == 1 and n > 1 else v


def _adaptive_module(nd: int) -> Converter:
    def convert(b: _Builder, c: _Call) -> _Var:
        return _adaptive_avg(b, nd, c.args[0], c.module.output_size)
    return convert


def _adaptive_fn(nd: int) -> Converter:
    def convert(b: _Builder, c: _Call) -> _Var:
        return _adaptive_avg(b, nd, c.arg(0, "input"), c.arg(1, "output_size"))
    return convert


# -- padding -------------------------------------------------------------------------
def _pad_fn(b: _Builder, c: _Call) -> _Var:
    x = _var(b, c.arg(0, "input"))
    pad = [int(p) for p in c.arg(1, "pad")]
    mode = c.arg(2, "mode", "constant")
    value = c.arg(3, "value", None)
    return _pad(b, x, _onnx_pads_from_torch(pad, x.rank), mode, 0.0 if value is None else float(value))


def _pad_module(b: _Builder, c: _Call) -> _Var:
    m = c.module
    x = _var(b, c.args[0])
    if isinstance(m, _CONSTANT_PADS):
        mode, value = "constant", float(m.value)
    elif isinstance(m, _REFLECTION_PADS):
        mode, value = "reflect", 0.0
    elif isinstance(m, _REPLICATION_PADS):
        mode, value = "replicate", 0.0
    else:
        raise _unsupported(b, f"{type(m).__name__} is not supported; supported padding: constant, reflect, replicate")
    return _pad(b, x, _onnx_pads_from_torch(list(m.padding), x.rank), mode, value)


# -- shapes --------------------------------------------------------------------------
def _reshape_to(b: _Builder, x: _Var, shape: Shape) -> _Var:
    return b.emit("Reshape", [x], {"shape": [int(d) for d in shape]}, out_shape=tuple(shape))


def _reshape(b: _Builder, c: _Call) -> _Var:
    return _reshape_to(b, _var(b, c.args[0]), tuple(c.value.shape))


def _flatten(b: _Builder, x: Any, start: int, end: int, value: torch.Tensor) -> _Var:
    x = _var(b, x)
    r = x.rank
    if r == 0:
        return _reshape_to(b, x, tuple(value.shape))
    s, e = _axis(b, start, r), _axis(b, end, r)
    if s == 1 and e == r - 1:
        return b.emit("Flatten", [x], {"axis": 1})
    return _reshape_to(b, x, tuple(value.shape))


def _flatten_fn(b: _Builder, c: _Call) -> _Var:
    return _flatten(b, c.arg(0, "input"), int(c.arg(1, "start_dim", 0)), int(c.arg(2, "end_dim", -1)), c.value)


def _flatten_module(b: _Builder, c: _Call) -> _Var:
    return _flatten(b, c.args[0], c.module.start_dim, c.module.end_dim, c.value)


def _transpose_perm(b: _Builder, x: _Var, perm: list[int]) -> _Var:
    return b.emit("Transpose", [x], {"perm": [int(p) for p in perm]})


def _permute(b: _Builder, c: _Call) -> _Var:
    x = _var(b, c.args[0])
    dims = c.args[1:] if len(c.args) > 1 else c.kwargs.get("dims")
    if len(dims) == 1 and not isinstance(dims[0], int):
        dims = dims[0]
    return _transpose_perm(b, x, [_axis(b, int(d), x.rank) for d in dims])


def _transpose(b: _Builder, c: _Call) -> _Var:
    x = _var(b, c.arg(0, "input"))
    d0, d1 = _axis(b, int(c.arg(1, "dim0")), x.rank), _axis(b, int(c.arg(2, "dim1")), x.rank)
    perm = list(range(x.rank))
    perm[d0], perm[d1] = perm[d1], perm[d0]
    return _transpose_perm(b, x, perm)


def _t(b: _Builder, c: _Call) -> _Var:
    x = _var(b, c.args[0])
    if x.rank < 2:
        return x
    return _transpose_perm(b, x, list(range(x.rank))[::-1])


def _squeeze(b: _Builder, c: _Call) -> _Var:
    x = _var(b, c.arg(0, "input"))
    dim = c.arg(1, "dim")
    if dim is None:
        axes = [i for i, d in enumerate(x.shape) if d == 1]
    else:
        dims = [dim] if isinstance(dim, int) else list(dim)
        axes = sorted({_axis(b, int(d), x.rank) for d in dims if x.shape[_axis(b, int(d), x.rank)] == 1})
    if not axes:
        return b.emit("Identity", [x])
    return b.emit("Squeeze", [x], {"axes": axes})


def _unsqueeze(b: _Builder, c: _Call) -> _Var:
    x = _var(b, c.arg(0, "input"))
    d = int(c.arg(1, "dim"))
    return b.emit("Unsqueeze", [x], {"axes": [_axis(b, d, x.rank + 1)]})


def _unsqueeze_any(b: _Builder, x: Any, axis: int) -> Any:
    if isinstance(x, _Var):
        return b.emit("Unsqueeze", [x], {"axes": [axis]})
    return _operand(x).unsqueeze(axis)


def _concat(b: _Builder, xs: list[Any], dim: int, rank: int) -> _Var:
    xs = [x for x in xs if isinstance(x, _Var) or _operand(x).numel() > 0]  # torch.cat skips empty tensors
    if len(xs) == 1:
        return b.emit("Identity", [_var(b, xs[0])])
    return b.emit("Concat", [_operand(x) for x in xs], {"axis": _axis(b, dim, rank)})


def _cat(b: _Builder, c: _Call) -> _Var:
    xs = list(c.arg(0, "tensors"))
    return _concat(b, xs, int(c.arg(1, "dim", 0)), c.value.dim())


def _stack(b: _Builder, c: _Call) -> _Var:
    xs = list(c.arg(0, "tensors"))
    r = c.value.dim()
    axis = _axis(b, int(c.arg(1, "dim", 0)), r)
    return _concat(b, [_unsqueeze_any(b, x, axis) for x in xs], axis, r)


def _slice(b: _Builder, x: _Var, starts: list[int], ends: list[int], axes: list[int], steps: list[int],
           out_shape: Optional[Shape] = None) -> _Var:
    return b.emit("Slice", [x], {"starts": starts, "ends": ends, "axes": axes, "steps": steps}, out_shape=out_shape)


def _getitem(b: _Builder, c: _Call) -> Any:
    obj, idx = c.args[0], c.args[1]
    if not isinstance(obj, _Var):  # indexing a tuple of runtime values (split, chunk, ...)
        return obj[idx]
    x = obj
    idx = idx if isinstance(idx, tuple) else (idx,)
    tensors = [i for i, it in enumerate(idx) if isinstance(it, (torch.Tensor, list))]
    if tensors:
        return _gather_index(b, x, idx, tensors, c.value)
    consumed = sum(1 for it in idx if it is not None and it is not Ellipsis)
    if consumed > x.rank:
        raise _unsupported(b, f"too many indices for a value of rank {x.rank}")
    full: list[Any] = []
    for it in idx:
        if it is Ellipsis:
            full += [slice(None)] * (x.rank - consumed)
        else:
            full.append(it)
    if Ellipsis not in idx:
        full += [slice(None)] * (x.rank - consumed)
    starts, ends, axes, steps, drop = [], [], [], [], []
    d = 0
    has_none = False
    for it in full:
        if it is None:
            has_none = True
            continue
        n = x.shape[d]
        if isinstance(it, bool) or not isinstance(it, (int, slice)):
            raise _unsupported(b, f"indexing with {type(it).__name__} is not supported")
        if isinstance(it, int):
            i = it + n if it < 0 else it
            if not 0 <= i < n:
                raise _unsupported(b, f"index {it} out of range for dimension {d} of size {n}")
            starts.append(i)
            ends.append(i + 1)
            axes.append(d)
            steps.append(1)
            drop.append(d)
        else:
            s, e, st = it.indices(n)
            if st <= 0:
                raise _unsupported(b, "slicing with a non-positive step is not supported")
            if (s, e, st) != (0, n, 1):
                starts.append(s)
                ends.append(max(e, s))
                axes.append(d)
                steps.append(st)
        d += 1
    y = _slice(b, x, starts, ends, axes, steps) if axes else x
    target = tuple(c.value.shape)
    if y.shape == target:
        return y if y is not x else b.emit("Identity", [x])
    if drop and not has_none:
        return b.emit("Squeeze", [y], {"axes": drop})
    return _reshape_to(b, y, target)


def _gather_index(b: _Builder, x: _Var, idx: tuple, tensors: list[int], value: torch.Tensor) -> _Var:
    if len(tensors) != 1 or any(it is None for it in idx):
        raise _unsupported(b, "advanced indexing is supported with one index tensor and full slices only")
    pos = tensors[0]
    if Ellipsis in idx:
        e = idx.index(Ellipsis)
        if e < pos:
            pos = x.rank - (len(idx) - 1 - pos)
    others = [it for i, it in enumerate(idx) if i != tensors[0]]
    if any(not (it is Ellipsis or (isinstance(it, slice) and it == slice(None))) for it in others):
        raise _unsupported(b, "advanced indexing is supported with one index tensor and full slices only")
    return _gather(b, x, idx[tensors[0]], pos, value)


def _gather(b: _Builder, x: _Var, index: Any, axis: int, value: torch.Tensor) -> _Var:
    index = _const_tensor(b, index, "index")
    index = torch.as_tensor(index)
    if index.dtype == torch.bool:
        if index.dim() != 1:
            raise _unsupported(b, "boolean masks of more than one dimension are not supported")
        index = index.nonzero().reshape(-1)
    n = x.shape[axis]
    index = torch.where(index < 0, index + n, index).to(torch.int64)
    return b.emit("Gather", [x], {"indices": index, "axis": int(axis)}, out_shape=tuple(value.shape))


def _index_select(b: _Builder, c: _Call) -> _Var:
    x = _var(b, c.arg(0, "input"))
    return _gather(b, x, c.arg(2, "index"), _axis(b, int(c.arg(1, "dim")), x.rank), c.value)


def _split_like(b: _Builder, c: _Call, dim: int) -> tuple:
    x = _var(b, c.args[0])
    axis = _axis(b, dim, x.rank)
    out, start = [], 0
    for piece in c.value:
        n = int(piece.shape[axis])
        out.append(_slice(b, x, [start], [start + n], [axis], [1]))
        start += n
    return tuple(out)


def _split(b: _Builder, c: _Call) -> tuple:
    return _split_like(b, c, int(c.arg(2, "dim", 0)))


def _unbind(b: _Builder, c: _Call) -> tuple:
    x = _var(b, c.arg(0, "input"))
    axis = _axis(b, int(c.arg(1, "dim", 0)), x.rank)
    return tuple(b.emit("Squeeze", [_slice(b, x, [i], [i + 1], [axis], [1])], {"axes": [axis]})
                 for i in range(x.shape[axis]))


def _reduce(op: str) -> Converter:
    def convert(b: _Builder, c: _Call) -> _Var:
        x = _var(b, c.arg(0, "input"))
        dim = c.arg(1, "dim")
        keep = bool(c.arg(2, "keepdim", False))
        if dim is None or (isinstance(dim, (tuple, list)) and len(dim) == 0):
            axes = list(range(x.rank))
        else:
            dims = [dim] if isinstance(dim, int) else list(dim)
            axes = sorted({_axis(b, int(d), x.rank) for d in dims})
        return b.emit(op, [x], {"axes": axes, "keepdims": int(keep)})
    return convert


# -- arithmetic ----------------------------------------------------------------------
def _scaled(b: _Builder, y: Any, alpha: Any) -> Any:
    if alpha is None or alpha == 1:
        return y
    if isinstance(y, _Var):
        return b.emit("Mul", [y, _operand(alpha)])
    return _operand(y) * alpha


def _binary(op: str) -> Converter:
    def convert(b: _Builder, c: _Call) -> _Var:
        a, y = c.arg(0, "input"), c.arg(1, "other")
        if op == "Div" and c.kwargs.get("rounding_mode") is not None:
            raise _unsupported(b, f"division with rounding_mode='{c.kwargs['rounding_mode']}' is not supported")
        y = _scaled(b, y, c.kwargs.get("alpha"))
        return b.emit(op, [_operand(a), _operand(y)])
    return convert


def _rsub(b: _Builder, c: _Call) -> _Var:
    a, y = c.arg(0, "input"), c.arg(1, "other")
    return b.emit("Sub", [_operand(y), _operand(_scaled(b, a, c.kwargs.get("alpha")))])


def _matmul(b: _Builder, c: _Call) -> _Var:
    return b.emit("MatMul", [_operand(c.arg(0, "input")), _operand(c.arg(1, "other"))])


def _getattr(b: _Builder, c: _Call) -> Any:
    x, attr = c.args[0], c.args[1]
    if attr in ("T", "mT") and isinstance(x, _Var):
        perm = list(range(x.rank))
        perm = perm[::-1] if attr == "T" else perm[:-2] + perm[-2:][::-1]
        return _transpose_perm(b, x, perm) if x.rank >= 2 else x
    if attr == "data" and isinstance(x, _Var):
        return x
    raise _unsupported(b, f"reading the attribute '{attr}' of a perturbed value is not supported")


# --------------------------------------------------------------------------------------
# the tables
# --------------------------------------------------------------------------------------
def _available(mod: Any, *names: str) -> list[Any]:
    return [getattr(mod, n) for n in names if hasattr(mod, n)]


_CONSTANT_PADS = tuple(_available(nn, "ConstantPad1d", "ConstantPad2d", "ConstantPad3d",
                                  "ZeroPad1d", "ZeroPad2d", "ZeroPad3d"))
_REFLECTION_PADS = tuple(_available(nn, "ReflectionPad1d", "ReflectionPad2d", "ReflectionPad3d"))
_REPLICATION_PADS = tuple(_available(nn, "ReplicationPad1d", "ReplicationPad2d", "ReplicationPad3d"))

_MODULES: dict[type, Converter] = {
    nn.Linear: _linear_module,
    nn.Conv1d: _conv_module, nn.Conv2d: _conv_module, nn.Conv3d: _conv_module,
    nn.ConvTranspose1d: _conv_transpose_module, nn.ConvTranspose2d: _conv_transpose_module,
    nn.ConvTranspose3d: _conv_transpose_module,
    nn.BatchNorm1d: _batch_norm_module, nn.BatchNorm2d: _batch_norm_module, nn.BatchNorm3d: _batch_norm_module,
    nn.ReLU: _unary("Relu"),
    nn.LeakyReLU: _leaky_module,
    nn.Sigmoid: _unary("Sigmoid"),
    nn.Tanh: _unary("Tanh"),
    nn.Softplus: _softplus_module,
    nn.Hardtanh: _hardtanh_module,  # ReLU6 is a Hardtanh
    nn.Flatten: _flatten_module, nn.Unflatten: _reshape,
    nn.Identity: _identity_node,
    nn.Dropout: _identity_node, nn.Dropout1d: _identity_node, nn.Dropout2d: _identity_node,
    nn.Dropout3d: _identity_node, nn.AlphaDropout: _identity_node,
    nn.AvgPool1d: _avg_pool_module(1), nn.AvgPool2d: _avg_pool_module(2), nn.AvgPool3d: _avg_pool_module(3),
    nn.MaxPool1d: _max_pool_module(1), nn.MaxPool2d: _max_pool_module(2), nn.MaxPool3d: _max_pool_module(3),
    nn.AdaptiveAvgPool1d: _adaptive_module(1), nn.AdaptiveAvgPool2d: _adaptive_module(2),
    nn.AdaptiveAvgPool3d: _adaptive_module(3),
    **{cls: _pad_module for cls in _CONSTANT_PADS + _REFLECTION_PADS + _REPLICATION_PADS},
}

_FUNCTIONS: dict[Any, Converter] = {
    # activations
    F.relu: _unary("Relu"), torch.relu: _unary("Relu"), torch.relu_: _unary("Relu"), F.relu_: _unary("Relu"),
    F.leaky_relu: _leaky_fn,
    torch.sigmoid: _unary("Sigmoid"), F.sigmoid: _unary("Sigmoid"),
    torch.tanh: _unary("Tanh"), F.tanh: _unary("Tanh"),
    F.softplus: _softplus_fn,
    F.hardtanh: _hardtanh_fn, F.relu6: _relu6_fn,
    torch.clamp: _clamp, torch.clip: _clamp, torch.clamp_min: _clamp_min, torch.clamp_max: _clamp_max,
    torch.abs: _unary("Abs"), operator.abs: _unary("Abs"), abs: _unary("Abs"),
    # layers
    F.linear: _linear_fn,
    F.conv1d: _conv_fn, F.conv2d: _conv_fn, F.conv3d: _conv_fn,
    F.conv_transpose1d: _conv_transpose_fn, F.conv_transpose2d: _conv_transpose_fn,
    F.conv_transpose3d: _conv_transpose_fn,
    F.batch_norm: _batch_norm_fn,
    F.avg_pool1d: _avg_pool_fn(1), F.avg_pool2d: _avg_pool_fn(2), F.avg_pool3d: _avg_pool_fn(3),
    F.max_pool1d: _max_pool_fn(1), F.max_pool2d: _max_pool_fn(2), F.max_pool3d: _max_pool_fn(3),
    F.adaptive_avg_pool1d: _adaptive_fn(1), F.adaptive_avg_pool2d: _adaptive_fn(2),
    F.adaptive_avg_pool3d: _adaptive_fn(3),
    F.pad: _pad_fn,
    F.dropout: _dropout_fn, F.dropout1d: _dropout_fn, F.dropout2d: _dropout_fn, F.dropout3d: _dropout_fn,
    F.alpha_dropout: _dropout_fn,
    # arithmetic
    operator.add: _binary("Add"), torch.add: _binary("Add"),
    operator.sub: _binary("Sub"), torch.sub: _binary("Sub"), torch.subtract: _binary("Sub"),
    operator.mul: _binary("Mul"), torch.mul: _binary("Mul"), torch.multiply: _binary("Mul"),
    operator.truediv: _binary("Div"), torch.div: _binary("Div"), torch.divide: _binary("Div"),
    torch.true_divide: _binary("Div"),
    torch.rsub: _rsub,
    operator.neg: _unary("Neg"), torch.neg: _unary("Neg"), torch.negative: _unary("Neg"),
    operator.pos: _passthrough,
    operator.matmul: _matmul, torch.matmul: _matmul, torch.mm: _matmul,
    # shapes
    torch.flatten: _flatten_fn, torch.reshape: _reshape, torch.unflatten: _reshape,
    torch.permute: _permute, torch.transpose: _transpose, torch.swapaxes: _transpose, torch.t: _t,
    torch.squeeze: _squeeze, torch.unsqueeze: _unsqueeze,
    torch.cat: _cat, torch.concat: _cat, torch.concatenate: _cat, torch.stack: _stack,
    operator.getitem: _getitem, getattr: _getattr,
    torch.index_select: _index_select,
    torch.split: _split, torch.unbind: _unbind,
    torch.mean: _reduce("ReduceMean"), torch.sum: _reduce("ReduceSum"),
}

_METHODS: dict[str, Converter] = {
    "relu": _unary("Relu"), "relu_": _unary("Relu"),
    "sigmoid": _unary("Sigmoid"), "tanh": _unary("Tanh"), "abs": _unary("Abs"), "neg": _unary("Neg"),
    "clamp": _clamp, "clip": _clamp, "clamp_min": _clamp_min, "clamp_max": _clamp_max,
    "add": _binary("Add"), "sub": _binary("Sub"), "mul": _binary("Mul"), "div": _binary("Div"),
    "matmul": _matmul, "mm": _matmul,
    "view": _reshape, "reshape": _reshape, "view_as": _reshape, "reshape_as": _reshape, "unflatten": _reshape,
    "flatten": lambda b, c: _flatten(b, c.args[0], int(c.arg(1, "start_dim", 0)), int(c.arg(2, "end_dim", -1)),
                                     c.value),
    "permute": _permute, "transpose": _transpose, "swapaxes": _transpose, "t": _t,
    "squeeze": _squeeze, "unsqueeze": _unsqueeze,
    "split": _split, "chunk": lambda b, c: _split_like(b, c, int(c.arg(2, "dim", 0))), "unbind": _unbind,
    "index_select": _index_select,
    "mean": _reduce("ReduceMean"), "sum": _reduce("ReduceSum"),
    "contiguous": _passthrough, "clone": _passthrough, "detach": _passthrough, "float": _passthrough,
    "double": _passthrough, "to": _passthrough, "type_as": _passthrough,
}
_FUNCTIONS[torch.chunk] = lambda b, c: _split_like(b, c, int(c.arg(2, "dim", 0)))

# Values that only read the *shape* of a runtime value: they become constants.
_SHAPE_METHODS = {"size", "dim", "ndimension", "numel", "nelement", "is_floating_point", "is_contiguous",
                  "get_device", "element_size"}
_SHAPE_ATTRS = {"shape", "ndim", "dtype", "device", "is_cuda", "requires_grad", "layout"}
# Functions / methods whose result does not depend on the *values* of their input.
_VALUE_FREE_FUNCTIONS = {torch.zeros_like, torch.ones_like, torch.full_like, torch.numel}
_VALUE_FREE_METHODS = {"new_zeros", "new_ones", "new_full", "new_tensor", "new_empty"}


def _target_name(target: Any) -> str:
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


def supported_torch() -> dict[str, list[str]]:
    """What the PyTorch front end converts: module classes, functions and tensor methods."""
    return {"modules": sorted({cls.__name__ for cls in _MODULES} | {"ReLU6"}),
            "functions": sorted({_target_name(f) for f in _FUNCTIONS}),
            "methods": sorted(_METHODS)}


# --------------------------------------------------------------------------------------
# the walk
# --------------------------------------------------------------------------------------
def _map(a: Any, fn: Callable[[Any], Any]) -> Any:
    if isinstance(a, tuple) and not hasattr(a, "_fields"):
        return tuple(_map(x, fn) for x in a)
    if isinstance(a, list):
        return [_map(x, fn) for x in a]
    if isinstance(a, dict):
        return {k: _map(v, fn) for k, v in a.items()}
    if isinstance(a, slice):
        return slice(_map(a.start, fn), _map(a.stop, fn), _map(a.step, fn))
    return fn(a)


def _has_var(a: Any) -> bool:
    found = []
    _map(a, lambda v: found.append(v) if isinstance(v, _Var) else None)
    return bool(found)


def _unsupported_call(b: _Builder, n: fx.Node, mod: Optional[nn.Module]) -> UnsupportedOperatorError:
    s = supported_torch()
    if n.op == "call_module":
        what, kind = f"module {type(mod).__name__} ('{n.target}')", "modules"
    elif n.op == "call_method":
        what, kind = f"tensor method '.{n.target}()'", "methods"
    else:
        what, kind = f"function {_target_name(n.target)}", "functions"
    return UnsupportedOperatorError(
        f"cannot convert {what} at fx node '{n.name}' in {b.source}: not supported on perturbed values; "
        f"supported {kind}: {', '.join(s[kind])}")


def _convert_call(b: _Builder, gm: fx.GraphModule, n: fx.Node, env: dict[fx.Node, Any]) -> Any:
    args = _map(n.args, lambda a: env[a] if isinstance(a, fx.Node) else a)
    kwargs = _map(dict(n.kwargs), lambda a: env[a] if isinstance(a, fx.Node) else a)
    mod = gm.get_submodule(n.target) if n.op == "call_module" else None
    concrete = lambda v: v.value.clone() if isinstance(v, _Var) else v  # noqa: E731 - in-place ops must not touch examples
    cargs, ckwargs = _map(args, concrete), _map(kwargs, concrete)
    try:
        if n.op == "call_function":
            value = n.target(*cargs, **ckwargs)
        elif n.op == "call_method":
            value = getattr(cargs[0], n.target)(*cargs[1:], **ckwargs)
        else:
            value = mod(*cargs, **ckwargs)
    except Exception as e:  # noqa: BLE001 - re-raised with the location
        raise ModelError(f"while running {b.where()} on the example input: {_why(e)}") from None

    if not (_has_var(args) or _has_var(kwargs)):  # does not depend on the input: fold
        if isinstance(value, torch.Tensor):
            value = value.detach()
            b.folded[id(value)] = (value, n.name)
        return value
    if n.op == "call_method" and n.target in _SHAPE_METHODS or \
            n.op == "call_function" and n.target is getattr and args[1] in _SHAPE_ATTRS or \
            n.op == "call_function" and n.target in _VALUE_FREE_FUNCTIONS or \
            n.op == "call_method" and n.target in _VALUE_FREE_METHODS:
        return value.detach() if isinstance(value, torch.Tensor) else value

    if n.op == "call_module":
        conv = next((_MODULES[c] for c in type(mod).__mro__ if c in _MODULES), None)
    elif n.op == "call_method":
        conv = _METHODS.get(n.target)
    else:
        conv = _FUNCTIONS.get(n.target) if _hashable(n.target) else None
    if conv is None:
        raise _unsupported_call(b, n, mod)
    try:
        result = conv(b, _Call(n, tuple(args), kwargs, value, mod))
    except PerturbkitError:
        raise
    except Exception as e:  # noqa: BLE001 - an argument combination the converter does not handle
        raise UnsupportedOperatorError(f"cannot convert {b.where()}: {_why(e)}") from None
    result = _checked(b, result, value)
    if _in_place(n, mod, args, kwargs) and isinstance(n.args[0], fx.Node) and isinstance(result, _Var):
        env[n.args[0]] = result  # later readers of the mutated tensor see the new value
    return result


# positional index of the ``inplace`` flag of functional activations
_INPLACE_ARG = {F.relu: 1, F.relu6: 1, F.leaky_relu: 2, F.hardtanh: 3, F.dropout: 3, F.dropout1d: 3,
                F.dropout2d: 3, F.dropout3d: 3, F.alpha_dropout: 3}


def _in_place(n: fx.Node, mod: Optional[nn.Module], args: tuple, kwargs: dict) -> bool:
    """Whether the call overwrites its first argument (``relu_``, ``inplace=True``, ...)."""
    if n.op == "call_module":
        return bool(getattr(mod, "inplace", False))
    if n.op == "call_method":
        return n.target.endswith("_") and not n.target.endswith("__")
    if getattr(n.target, "__name__", "").endswith("_") and not n.target.__name__.endswith("__"):
        return True
    if kwargs.get("inplace"):
        return True
    i = _INPLACE_ARG.get(n.target) if _hashable(n.target) else None
    return i is not None and len(args) > i and bool(args[i])


def _hashable(x: Any) -> bool:
    try:
        hash(x)
    except TypeError:
        return False
    return True


def _checked(b: _Builder, result: Any, value: Any) -> Any:
    """Compare the converted value(s) with PyTorch's; keep PyTorch's as the example."""
    if isinstance(result, _Var):
        if not isinstance(value, torch.Tensor):
            raise ModelError(f"internal error converting {b.where()}: expected a tensor result")
        why = _differ(result.value, value)
        if why is not None:
            raise ModelError(f"converting {b.where()} gives a graph that disagrees with PyTorch ({why}); "
                             "please report this with the module")
        return _Var(result.name, value.detach())
    if isinstance(result, (tuple, list)) and isinstance(value, (tuple, list)) and len(result) == len(value):
        return type(result)(_checked(b, r, v) for r, v in zip(result, value))
    return result


def _trace(module: nn.Module, source: str) -> fx.GraphModule:
    if any(c in _MODULES for c in type(module).__mro__):
        module = nn.Sequential(module)  # a bare layer: trace it as a leaf of a container
    try:
        return fx.symbolic_trace(module)
    except Exception as e:  # noqa: BLE001 - any tracing failure becomes one clear line
        raise ModelError(f"cannot trace {source} with torch.fx ({_why(e)}); "
                         "export it with torch.onnx.export and load the .onnx file instead") from None


def _check_signature(gm: fx.GraphModule, source: str) -> None:
    required = [n.target for n in gm.graph.nodes if n.op == "placeholder" and not n.args]
    if not any(n.op == "placeholder" for n in gm.graph.nodes):
        raise ModelError(f"{source}.forward takes no input")
    if len(required) > 1:
        raise ModelError(f"{source}.forward takes {len(required)} tensor arguments ({', '.join(map(str, required))}); "
                         "perturbkit supports exactly one input")


def _live(nodes: list[Node], out: str) -> list[Node]:
    need, keep = {out}, []
    for n in reversed(nodes):
        if n.output in need:
            keep.append(n)
            need.update(n.inputs)
    return keep[::-1]


def _convert(module: nn.Module, gm: fx.GraphModule, x: torch.Tensor, source: str) -> Graph:
    names: dict[int, str] = {}
    for qual, t in list(module.named_parameters()) + list(module.named_buffers()):
        names.setdefault(id(t), qual)
    b = _Builder(source=source, param_names=names)
    env: dict[fx.Node, Any] = {}
    input_var: Optional[_Var] = None
    output: Any = None
    for n in gm.graph.nodes:
        b.fx_node = n
        if n.op == "placeholder":
            if input_var is None:
                input_var = _Var(b.fresh(n.name), x)
                b.shapes[input_var.name] = input_var.shape
                env[n] = input_var
            else:
                env[n] = n.args[0]  # an optional argument: its default (see _check_signature)
        elif n.op == "get_attr":
            obj: Any = gm
            for part in str(n.target).split("."):
                obj = getattr(obj, part)
            env[n] = obj  # kept as is: parameters are recognised (and detached) when registered
        elif n.op == "output":
            output = _map(n.args[0], lambda a: env[a] if isinstance(a, fx.Node) else a)
        else:
            env[n] = _convert_call(b, gm, n, env)
    b.fx_node = None
    if isinstance(output, (tuple, list)) and len(output) == 1:
        output = output[0]
    if not isinstance(output, _Var):
        if isinstance(output, (tuple, list, dict)):
            raise ModelError(f"{source} returns {type(output).__name__} of several values; "
                             "perturbkit supports exactly one output tensor")
        raise ModelError(f"the output of {source} does not depend on its input")
    if output is input_var or output.name == input_var.name:
        output = b.emit("Identity", [output])
    nodes = _live(b.nodes, output.name)
    live = {i for nd in nodes for i in nd.inputs}
    shapes = {input_var.name: input_var.shape, **{nd.output: nd.out_shape for nd in nodes}}
    return Graph(nodes=tuple(nodes), input_name=input_var.name, output_name=output.name, shapes=shapes,
                 constants={k: v for k, v in b.constants.items() if k in live}, source=source)


def _check_graph(graph: Graph, x: torch.Tensor, ref: torch.Tensor) -> None:
    from perturbkit.graph.network import Network

    got = Network(graph).run(x)[graph.output_name]
    why = _differ(got, ref)
    if why is not None:
        raise ModelError(f"the graph converted from {graph.source} disagrees with the module on the example "
                         f"input ({why}); please report this with the module")


def graph_from_module(module: nn.Module, example_input: torch.Tensor, *, source: Optional[str] = None) -> Graph:
    """Trace ``module`` with torch.fx and convert it to the IR.

    Args:
        module: the network; put in eval mode while converting, its training flags restored after.
        example_input: one input as the module sees it, batch dimension included, e.g.
            ``(1, 3, 32, 32)``; its shape is the graph's declared input shape.
        source: name used in error messages (default: the module's class name).

    Returns:
        a :class:`Graph` whose nodes use ONNX op types and the attributes an ONNX import of
        the same network gives; parameters and buffers are constants (detached copies).

    Raises:
        ModelError: fx cannot trace the module, or the module cannot run on ``example_input``.
        UnsupportedOperatorError: a module, function or method that has no conversion
            (the message names the fx node, its target and what is supported).
    """
    if not isinstance(module, nn.Module):
        raise ModelError(f"expected a torch.nn.Module, got {type(module).__name__}")
    if not isinstance(example_input, torch.Tensor):
        raise ModelError(f"expected the example input as a torch.Tensor, got {type(example_input).__name__}")
    if not example_input.is_floating_point():
        raise ModelError(f"the example input must be a floating-point tensor, got {example_input.dtype}")
    source = source or type(module).__name__
    modes = {m: m.training for m in module.modules()}
    x = example_input.detach().clone()
    try:
        module.eval()
        with torch.no_grad():
            gm = _trace(module, source)
            _check_signature(gm, source)
            try:
                ref = module(x.clone())
            except Exception as e:  # noqa: BLE001
                raise ModelError(f"{source} fails on the example input of shape {tuple(x.shape)}: {_why(e)}") from None
            graph = _convert(module, gm, x, source)
            if isinstance(ref, torch.Tensor):
                _check_graph(graph, x, ref)
    finally:
        for m, mode in modes.items():
            m.training = mode
    return graph
