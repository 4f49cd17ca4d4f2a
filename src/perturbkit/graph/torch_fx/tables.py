"""The dispatch tables: module class, function object or tensor method name -> converter.

The walk (:mod:`perturbkit.graph.torch_fx.trace`) knows no operation; it looks the fx node's
target up here.  Adding a conversion = one converter in its family module
(:mod:`~perturbkit.graph.torch_fx.activations`, :mod:`~perturbkit.graph.torch_fx.layers`,
:mod:`~perturbkit.graph.torch_fx.shapes`, :mod:`~perturbkit.graph.torch_fx.arithmetic`,
:mod:`~perturbkit.graph.torch_fx.attention`) and one entry per spelling below.  Modules in
``MODULES`` are fx leaves: fx does not trace into them (:mod:`~perturbkit.graph.torch_fx.trace`).
"""
from __future__ import annotations

import operator
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from perturbkit.graph.torch_fx.activations import (clamp, clamp_max, clamp_min, dropout_fn, elu_fn, elu_module,
                                                   gelu_fn, gelu_module, hardtanh_fn, hardtanh_module, identity_node,
                                                   leaky_fn, leaky_module, passthrough, relu6_fn, softmax_like,
                                                   softmax_module, softplus_fn, softplus_module, unary)
from perturbkit.graph.torch_fx.arithmetic import binary, extremum, matmul, power, reduce, rsqrt, rsub
from perturbkit.graph.torch_fx.attention import (embedding_fn, embedding_module, encoder_layer_module,
                                                 encoder_module, layer_norm_fn, layer_norm_module, mha_module,
                                                 sdpa_fn)
from perturbkit.graph.torch_fx.builder import Converter, target_name
from perturbkit.graph.torch_fx.layers import (CONSTANT_PADS, REFLECTION_PADS, REPLICATION_PADS, adaptive_fn,
                                              adaptive_module, avg_pool_fn, avg_pool_module, batch_norm_fn,
                                              batch_norm_module, conv_fn, conv_module, conv_transpose_fn,
                                              conv_transpose_module, linear_fn, linear_module, max_pool_fn,
                                              max_pool_module, pad_fn, pad_module)
from perturbkit.graph.torch_fx.recurrent import recurrent_module
from perturbkit.graph.torch_fx.shapes import (cat, expand, flatten_fn, flatten_method, flatten_module, getitem,
                                              index_select, masked_fill, permute, repeat, reshape, result_attr,
                                              split, squeeze, stack, t, tile, transpose, unbind, unsqueeze, where,
                                              where_method)


MODULES: dict[type, Converter] = {
    nn.Linear: linear_module,
    nn.Conv1d: conv_module, nn.Conv2d: conv_module, nn.Conv3d: conv_module,
    nn.ConvTranspose1d: conv_transpose_module, nn.ConvTranspose2d: conv_transpose_module,
    nn.ConvTranspose3d: conv_transpose_module,
    nn.BatchNorm1d: batch_norm_module, nn.BatchNorm2d: batch_norm_module, nn.BatchNorm3d: batch_norm_module,
    nn.ReLU: unary("Relu"),
    nn.LeakyReLU: leaky_module,
    nn.Sigmoid: unary("Sigmoid"),
    nn.Tanh: unary("Tanh"),
    nn.Softplus: softplus_module,
    nn.GELU: gelu_module, nn.SiLU: unary("Swish", alpha=1.0), nn.ELU: elu_module, nn.SELU: unary("Selu"),
    nn.Hardsigmoid: unary("HardSigmoid", alpha=1.0 / 6, beta=0.5), nn.Hardswish: unary("HardSwish"),
    nn.Softsign: unary("Softsign"),
    nn.Softmax: softmax_module("Softmax"), nn.LogSoftmax: softmax_module("LogSoftmax"),
    nn.LayerNorm: layer_norm_module, nn.Embedding: embedding_module,
    nn.MultiheadAttention: mha_module, nn.TransformerEncoderLayer: encoder_layer_module,
    nn.TransformerEncoder: encoder_module,
    nn.Hardtanh: hardtanh_module,  # ReLU6 is a Hardtanh
    nn.Flatten: flatten_module, nn.Unflatten: reshape,
    nn.Identity: identity_node,
    nn.Dropout: identity_node, nn.Dropout1d: identity_node, nn.Dropout2d: identity_node,
    nn.Dropout3d: identity_node, nn.AlphaDropout: identity_node,
    nn.AvgPool1d: avg_pool_module(1), nn.AvgPool2d: avg_pool_module(2), nn.AvgPool3d: avg_pool_module(3),
    nn.MaxPool1d: max_pool_module(1), nn.MaxPool2d: max_pool_module(2), nn.MaxPool3d: max_pool_module(3),
    nn.AdaptiveAvgPool1d: adaptive_module(1), nn.AdaptiveAvgPool2d: adaptive_module(2),
    nn.AdaptiveAvgPool3d: adaptive_module(3),
    **{cls: pad_module for cls in CONSTANT_PADS + REFLECTION_PADS + REPLICATION_PADS},
    nn.LSTM: recurrent_module, nn.GRU: recurrent_module, nn.RNN: recurrent_module,
}

FUNCTIONS: dict[Any, Converter] = {
    # activations
    F.relu: unary("Relu"), torch.relu: unary("Relu"), torch.relu_: unary("Relu"), F.relu_: unary("Relu"),
    F.leaky_relu: leaky_fn,
    torch.sigmoid: unary("Sigmoid"), F.sigmoid: unary("Sigmoid"),
    torch.tanh: unary("Tanh"), F.tanh: unary("Tanh"),
    F.softplus: softplus_fn,
    F.hardtanh: hardtanh_fn, F.relu6: relu6_fn,
    torch.clamp: clamp, torch.clip: clamp, torch.clamp_min: clamp_min, torch.clamp_max: clamp_max,
    torch.abs: unary("Abs"), operator.abs: unary("Abs"), abs: unary("Abs"),
    F.gelu: gelu_fn, F.silu: unary("Swish", alpha=1.0), F.elu: elu_fn, F.selu: unary("Selu"),
    torch.selu: unary("Selu"), F.hardsigmoid: unary("HardSigmoid", alpha=1.0 / 6, beta=0.5),
    F.hardswish: unary("HardSwish"), F.softsign: unary("Softsign"),
    F.softmax: softmax_like("Softmax"), torch.softmax: softmax_like("Softmax"),
    F.log_softmax: softmax_like("LogSoftmax"), torch.log_softmax: softmax_like("LogSoftmax"),
    # elementwise functions and powers
    torch.exp: unary("Exp"), torch.log: unary("Log"), torch.sqrt: unary("Sqrt"), torch.rsqrt: rsqrt,
    torch.reciprocal: unary("Reciprocal"), torch.erf: unary("Erf"),
    torch.sin: unary("Sin"), torch.cos: unary("Cos"),
    torch.pow: power, operator.pow: power,
    torch.maximum: binary("Max"), torch.minimum: binary("Min"), torch.max: extremum("Max"),
    torch.min: extremum("Min"), torch.amax: reduce("ReduceMax"), torch.amin: reduce("ReduceMin"),
    # layers
    F.linear: linear_fn,
    F.layer_norm: layer_norm_fn, F.embedding: embedding_fn,
    F.scaled_dot_product_attention: sdpa_fn,
    F.conv1d: conv_fn, F.conv2d: conv_fn, F.conv3d: conv_fn,
    F.conv_transpose1d: conv_transpose_fn, F.conv_transpose2d: conv_transpose_fn,
    F.conv_transpose3d: conv_transpose_fn,
    F.batch_norm: batch_norm_fn,
    F.avg_pool1d: avg_pool_fn(1), F.avg_pool2d: avg_pool_fn(2), F.avg_pool3d: avg_pool_fn(3),
    F.max_pool1d: max_pool_fn(1), F.max_pool2d: max_pool_fn(2), F.max_pool3d: max_pool_fn(3),
    F.adaptive_avg_pool1d: adaptive_fn(1), F.adaptive_avg_pool2d: adaptive_fn(2),
    F.adaptive_avg_pool3d: adaptive_fn(3),
    F.pad: pad_fn,
    F.dropout: dropout_fn, F.dropout1d: dropout_fn, F.dropout2d: dropout_fn, F.dropout3d: dropout_fn,
    F.alpha_dropout: dropout_fn,
    # arithmetic
    operator.add: binary("Add"), torch.add: binary("Add"),
    operator.sub: binary("Sub"), torch.sub: binary("Sub"), torch.subtract: binary("Sub"),
    operator.mul: binary("Mul"), torch.mul: binary("Mul"), torch.multiply: binary("Mul"),
    operator.truediv: binary("Div"), torch.div: binary("Div"), torch.divide: binary("Div"),
    torch.true_divide: binary("Div"),
    torch.rsub: rsub,
    operator.neg: unary("Neg"), torch.neg: unary("Neg"), torch.negative: unary("Neg"),
    operator.pos: passthrough,
    operator.matmul: matmul, torch.matmul: matmul, torch.mm: matmul,
    # shapes
    torch.flatten: flatten_fn, torch.reshape: reshape, torch.unflatten: reshape,
    torch.permute: permute, torch.transpose: transpose, torch.swapaxes: transpose, torch.t: t,
    torch.squeeze: squeeze, torch.unsqueeze: unsqueeze,
    torch.cat: cat, torch.concat: cat, torch.concatenate: cat, torch.stack: stack,
    operator.getitem: getitem, getattr: result_attr,
    torch.index_select: index_select,
    torch.where: where, torch.tile: tile,
    torch.split: split, torch.chunk: split, torch.unbind: unbind,
    torch.mean: reduce("ReduceMean"), torch.sum: reduce("ReduceSum"),
}

METHODS: dict[str, Converter] = {
    "relu": unary("Relu"), "relu_": unary("Relu"),
    "sigmoid": unary("Sigmoid"), "tanh": unary("Tanh"), "abs": unary("Abs"), "neg": unary("Neg"),
    "clamp": clamp, "clip": clamp, "clamp_min": clamp_min, "clamp_max": clamp_max,
    "add": binary("Add"), "sub": binary("Sub"), "mul": binary("Mul"), "div": binary("Div"),
    "matmul": matmul, "mm": matmul,
    "view": reshape, "reshape": reshape, "view_as": reshape, "reshape_as": reshape, "unflatten": reshape,
    "flatten": flatten_method,
    "permute": permute, "transpose": transpose, "swapaxes": transpose, "t": t,
    "squeeze": squeeze, "unsqueeze": unsqueeze,
    "split": split, "chunk": split, "unbind": unbind,
    "index_select": index_select,
    "mean": reduce("ReduceMean"), "sum": reduce("ReduceSum"),
    "softmax": softmax_like("Softmax"), "log_softmax": softmax_like("LogSoftmax"),
    "exp": unary("Exp"), "log": unary("Log"), "sqrt": unary("Sqrt"), "rsqrt": rsqrt,
    "reciprocal": unary("Reciprocal"), "erf": unary("Erf"), "sin": unary("Sin"), "cos": unary("Cos"),
    "pow": power,
    "maximum": binary("Max"), "minimum": binary("Min"), "max": extremum("Max"), "min": extremum("Min"),
    "amax": reduce("ReduceMax"), "amin": reduce("ReduceMin"),
    "expand": expand, "expand_as": expand, "repeat": repeat, "tile": tile,
    "where": where_method, "masked_fill": masked_fill,
    "contiguous": passthrough, "clone": passthrough, "detach": passthrough, "float": passthrough,
    "double": passthrough, "to": passthrough, "type_as": passthrough,
}

# Values that only read the *shape* of a runtime value: they become constants.
SHAPE_METHODS = {"size", "dim", "ndimension", "numel", "nelement", "is_floating_point", "is_contiguous",
                 "get_device", "element_size"}
SHAPE_ATTRS = {"shape", "ndim", "dtype", "device", "is_cuda", "requires_grad", "layout"}
# Functions / methods whose result does not depend on the *values* of their input.
VALUE_FREE_FUNCTIONS = {torch.zeros_like, torch.ones_like, torch.full_like, torch.numel}
VALUE_FREE_METHODS = {"new_zeros", "new_ones", "new_full", "new_tensor", "new_empty"}


def supported_torch() -> dict[str, list[str]]:
    """What the PyTorch front end converts: module classes, functions and tensor methods."""
    return {"modules": sorted({cls.__name__ for cls in MODULES} | {"ReLU6"}),
            "functions": sorted({target_name(f) for f in FUNCTIONS}),
            "methods": sorted(METHODS)}
