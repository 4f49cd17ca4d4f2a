"""Converters for layers: linear, convolution, transposed convolution, batch norm, pooling, padding.

Each layer has a helper taking plain arguments, used by both the ``nn.Module`` converter
(which reads the module's attributes) and the ``torch.nn.functional`` converter (which reads
the call's arguments).  Weights must be constants; the emitted attributes are those an ONNX
export of the same layer has.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn as nn

from perturbkit.graph.torch_fx.builder import (Builder, Call, Converter, Var, as_const, as_var, ints,
                                               unsupported)


# -- linear layers ---------------------------------------------------------------------
def _linear(b: Builder, x: Any, W: Any, bias: Any) -> Var:
    x = as_var(b, x)
    W = as_const(b, W, "weight")
    bias = None if bias is None else as_const(b, bias, "bias")
    if x.rank == 2:
        ins = [x, W] + ([bias] if bias is not None else [])
        return b.emit("Gemm", ins, {"alpha": 1.0, "beta": 1.0, "transB": 1})
    y = b.emit("MatMul", [x, W.detach().t()])
    return y if bias is None else b.emit("Add", [y, bias])


def linear_module(b: Builder, c: Call) -> Var:
    return _linear(b, c.args[0], c.module.weight, c.module.bias)


def linear_fn(b: Builder, c: Call) -> Var:
    return _linear(b, c.arg(0, "input"), c.arg(1, "weight"), c.arg(2, "bias"))


# -- convolution and batch norm --------------------------------------------------------
def _check_rank(b: Builder, x: Var, nd: int, what: str) -> None:
    if x.rank != nd + 2:
        raise unsupported(b, f"{what} on an input of rank {x.rank} (shape {x.shape}) is not supported; "
                             f"expected (N, C, {'spatial, ' * nd}...) of rank {nd + 2} with a batch dimension")


def _conv(b: Builder, x: Any, W: Any, bias: Any, stride: Any, padding: Any, dilation: Any,
          groups: int, padding_mode: str = "zeros") -> Var:
    x = as_var(b, x)
    W = as_const(b, W, "convolution weight")
    bias = None if bias is None else as_const(b, bias, "bias")
    nd = W.dim() - 2
    _check_rank(b, x, nd, f"Conv{nd}d")
    kernel = [int(k) for k in W.shape[2:]]
    strides, dil = ints(stride, nd), ints(dilation, nd)
    if isinstance(padding, str):
        if padding == "valid":
            pads = [0] * (2 * nd)
        elif padding == "same":
            total = [d * (k - 1) for d, k in zip(dil, kernel)]
            pads = [t // 2 for t in total] + [t - t // 2 for t in total]
        else:
            raise unsupported(b, f"padding='{padding}' is not supported")
    else:
        p = ints(padding, nd)
        pads = p + p
    if padding_mode != "zeros" and any(pads):
        x = _pad(b, x, [0, 0] + pads[:nd] + [0, 0] + pads[nd:], padding_mode)
        pads = [0] * (2 * nd)
    attrs = {"dilations": dil, "group": int(groups), "kernel_shape": kernel, "pads": pads, "strides": strides}
    return b.emit("Conv", [x, W] + ([bias] if bias is not None else []), attrs)


def conv_module(b: Builder, c: Call) -> Var:
    m = c.module
    return _conv(b, c.args[0], m.weight, m.bias, m.stride, m.padding, m.dilation, m.groups, m.padding_mode)


def conv_fn(b: Builder, c: Call) -> Var:
    return _conv(b, c.arg(0, "input"), c.arg(1, "weight"), c.arg(2, "bias"), c.arg(3, "stride", 1),
                 c.arg(4, "padding", 0), c.arg(5, "dilation", 1), c.arg(6, "groups", 1))


def _conv_transpose(b: Builder, x: Any, W: Any, bias: Any, stride: Any, padding: Any,
                    output_padding: Any, groups: int, dilation: Any) -> Var:
    x = as_var(b, x)
    W = as_const(b, W, "convolution weight")
    bias = None if bias is None else as_const(b, bias, "bias")
    nd = W.dim() - 2
    _check_rank(b, x, nd, f"ConvTranspose{nd}d")
    p = ints(padding, nd)
    attrs = {"dilations": ints(dilation, nd), "group": int(groups), "kernel_shape": [int(k) for k in W.shape[2:]],
             "output_padding": ints(output_padding, nd), "pads": p + p, "strides": ints(stride, nd)}
    return b.emit("ConvTranspose", [x, W] + ([bias] if bias is not None else []), attrs)


def conv_transpose_module(b: Builder, c: Call) -> Var:
    m = c.module
    if len(c.args) > 1 or c.kwargs.get("output_size") is not None:
        raise unsupported(b, "ConvTranspose called with output_size is not supported; set output_padding")
    if m.padding_mode != "zeros":
        raise unsupported(b, f"ConvTranspose with padding_mode='{m.padding_mode}' is not supported")
    return _conv_transpose(b, c.args[0], m.weight, m.bias, m.stride, m.padding, m.output_padding,
                           m.groups, m.dilation)


def conv_transpose_fn(b: Builder, c: Call) -> Var:
    return _conv_transpose(b, c.arg(0, "input"), c.arg(1, "weight"), c.arg(2, "bias"), c.arg(3, "stride", 1),
                           c.arg(4, "padding", 0), c.arg(5, "output_padding", 0), c.arg(6, "groups", 1),
                           c.arg(7, "dilation", 1))


def _batch_norm(b: Builder, x: Any, mean: Any, var: Any, weight: Any, bias: Any, eps: float,
                momentum: Optional[float]) -> Var:
    x = as_var(b, x)
    if mean is None or var is None:
        raise unsupported(b, "BatchNorm without running statistics (track_running_stats=False) normalises "
                             "with batch statistics; it is not supported")
    mean = as_const(b, mean, "running mean")
    var = as_const(b, var, "running variance")
    if x.rank < 2:
        raise unsupported(b, f"BatchNorm on an input of rank {x.rank} is not supported")
    C = x.shape[1]
    scale = torch.ones(C, dtype=mean.dtype) if weight is None else as_const(b, weight, "weight")
    shift = torch.zeros(C, dtype=mean.dtype) if bias is None else as_const(b, bias, "bias")
    attrs = {"epsilon": float(eps), "momentum": 1.0 - float(0.1 if momentum is None else momentum)}
    return b.emit("BatchNormalization", [x, scale, shift, mean, var], attrs)


def batch_norm_module(b: Builder, c: Call) -> Var:
    m = c.module
    return _batch_norm(b, c.args[0], m.running_mean, m.running_var, m.weight, m.bias, m.eps, m.momentum)


def batch_norm_fn(b: Builder, c: Call) -> Var:
    if c.arg(5, "training", False):
        raise unsupported(b, "batch_norm with training=True normalises with batch statistics; it is not supported")
    return _batch_norm(b, c.arg(0, "input"), c.arg(1, "running_mean"), c.arg(2, "running_var"),
                       c.arg(3, "weight"), c.arg(4, "bias"), c.arg(7, "eps", 1e-5), c.arg(6, "momentum", 0.1))


# -- pooling -------------------------------------------------------------------------
def _avg_pool(b: Builder, nd: int, x: Any, kernel: Any, stride: Any, padding: Any, ceil_mode: bool,
              count_include_pad: bool, divisor_override: Any = None) -> Var:
    x = as_var(b, x)
    _check_rank(b, x, nd, f"AvgPool{nd}d")
    if divisor_override is not None:
        raise unsupported(b, "AvgPool with divisor_override is not supported")
    k = ints(kernel, nd)
    s = k if stride is None or (not isinstance(stride, int) and len(stride) == 0) else ints(stride, nd)
    p = ints(padding, nd)
    attrs = {"ceil_mode": int(bool(ceil_mode)), "count_include_pad": int(bool(count_include_pad)),
             "kernel_shape": k, "pads": p + p, "strides": s}
    return b.emit("AveragePool", [x], attrs)


def avg_pool_module(nd: int) -> Converter:
    def convert(b: Builder, c: Call) -> Var:
        m = c.module
        return _avg_pool(b, nd, c.args[0], m.kernel_size, m.stride, m.padding, m.ceil_mode,
                         m.count_include_pad, getattr(m, "divisor_override", None))
    return convert


def avg_pool_fn(nd: int) -> Converter:
    def convert(b: Builder, c: Call) -> Var:
        return _avg_pool(b, nd, c.arg(0, "input"), c.arg(1, "kernel_size"), c.arg(2, "stride"),
                         c.arg(3, "padding", 0), c.arg(4, "ceil_mode", False), c.arg(5, "count_include_pad", True),
                         c.arg(6, "divisor_override"))
    return convert


def _max_pool(b: Builder, nd: int, x: Any, kernel: Any, stride: Any, padding: Any, dilation: Any,
              ceil_mode: bool, return_indices: bool) -> Var:
    x = as_var(b, x)
    _check_rank(b, x, nd, f"MaxPool{nd}d")
    if return_indices:
        raise unsupported(b, "MaxPool with return_indices=True is not supported")
    k = ints(kernel, nd)
    s = k if stride is None or (not isinstance(stride, int) and len(stride) == 0) else ints(stride, nd)
    p = ints(padding, nd)
    attrs = {"ceil_mode": int(bool(ceil_mode)), "dilations": ints(dilation, nd), "kernel_shape": k,
             "pads": p + p, "strides": s}
    return b.emit("MaxPool", [x], attrs)


def max_pool_module(nd: int) -> Converter:
    def convert(b: Builder, c: Call) -> Var:
        m = c.module
        return _max_pool(b, nd, c.args[0], m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode,
                         m.return_indices)
    return convert


def max_pool_fn(nd: int) -> Converter:
    def convert(b: Builder, c: Call) -> Var:
        return _max_pool(b, nd, c.arg(0, "input"), c.arg(1, "kernel_size"), c.arg(2, "stride"),
                         c.arg(3, "padding", 0), c.arg(4, "dilation", 1), c.arg(5, "ceil_mode", False),
                         c.arg(6, "return_indices", False))
    return convert


def _adaptive_avg(b: Builder, nd: int, x: Any, output_size: Any) -> Var:
    x = as_var(b, x)
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
    raise unsupported(b, f"AdaptiveAvgPool from {tuple(spatial)} to {tuple(out)} (not a divisor) is not supported")


def _ints_or_none(v: Any, n: int) -> list[Optional[int]]:
    if v is None or isinstance(v, int):
        return [v] * n
    v = list(v)
    return v * n if len(v) == 1 and n > 1 else v


def adaptive_module(nd: int) -> Converter:
    def convert(b: Builder, c: Call) -> Var:
        return _adaptive_avg(b, nd, c.args[0], c.module.output_size)
    return convert


def adaptive_fn(nd: int) -> Converter:
    def convert(b: Builder, c: Call) -> Var:
        return _adaptive_avg(b, nd, c.arg(0, "input"), c.arg(1, "output_size"))
    return convert


# -- padding -------------------------------------------------------------------------
def _available(mod: Any, *names: str) -> list[Any]:
    return [getattr(mod, n) for n in names if hasattr(mod, n)]


CONSTANT_PADS = tuple(_available(nn, "ConstantPad1d", "ConstantPad2d", "ConstantPad3d",
                                 "ZeroPad1d", "ZeroPad2d", "ZeroPad3d"))
REFLECTION_PADS = tuple(_available(nn, "ReflectionPad1d", "ReflectionPad2d", "ReflectionPad3d"))
REPLICATION_PADS = tuple(_available(nn, "ReplicationPad1d", "ReplicationPad2d", "ReplicationPad3d"))


def _pad_mode(b: Builder, mode: str) -> str:
    modes = {"constant": "constant", "zeros": "constant", "reflect": "reflect", "replicate": "edge"}
    if mode not in modes:
        raise unsupported(b, f"padding mode '{mode}' is not supported; supported: constant, reflect, replicate")
    return modes[mode]


def _onnx_pads_from_torch(pad: list[int], rank: int) -> list[int]:
    """torch ``F.pad`` order (last dim first, (begin, end) pairs) -> ONNX ``[b_0..b_r-1, e_0..e_r-1]``."""
    begins, ends = [0] * rank, [0] * rank
    for i in range(len(pad) // 2):
        d = rank - 1 - i
        begins[d], ends[d] = int(pad[2 * i]), int(pad[2 * i + 1])
    return begins + ends


def _pad(b: Builder, x: Var, pads: list[int], mode: str, value: float = 0.0) -> Var:
    return b.emit("Pad", [x], {"pads": list(pads), "mode": _pad_mode(b, mode), "constant_value": float(value)})


def pad_fn(b: Builder, c: Call) -> Var:
    x = as_var(b, c.arg(0, "input"))
    pad = [int(p) for p in c.arg(1, "pad")]
    mode = c.arg(2, "mode", "constant")
    value = c.arg(3, "value", None)
    return _pad(b, x, _onnx_pads_from_torch(pad, x.rank), mode, 0.0 if value is None else float(value))


def pad_module(b: Builder, c: Call) -> Var:
    m = c.module
    x = as_var(b, c.args[0])
    if isinstance(m, CONSTANT_PADS):
        mode, value = "constant", float(m.value)
    elif isinstance(m, REFLECTION_PADS):
        mode, value = "reflect", 0.0
    elif isinstance(m, REPLICATION_PADS):
        mode, value = "replicate", 0.0
    else:
        raise unsupported(b, f"{type(m).__name__} is not supported; supported padding: constant, reflect, replicate")
    return _pad(b, x, _onnx_pads_from_torch(list(m.padding), x.rank), mode, value)
