"""Conformance cases: at least one per operator in ``perturbkit.ops.registry.RULES``.

A :class:`Case` describes one node: its op type, attributes (in IR form: configuration
inputs already moved into ``attrs``), the declared shape of every input, the constant
inputs (by position; all other inputs are perturbed) and the input domain (centres are
drawn from ``[-scale, scale]``).  :func:`onnx_model` turns a case back into a one-node ONNX
model (configuration attributes become ONNX inputs again) for comparison with ONNX Runtime.

Adding an operator: append cases to ``CASES`` below (and an entry to ``ATTR_INPUTS`` if the
front ends move some of its ONNX inputs into ``attrs``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from perturbkit.graph.ir import Node, Shape, frozen_attrs
from perturbkit.ops.registry import RULES

F64 = torch.float64
OPSET = 17

#: ONNX inputs that the IR keeps in ``Node.attrs``, in ONNX input order (after the data inputs).
ATTR_INPUTS: Mapping[str, tuple[str, ...]] = {
    "Reshape": ("shape",),
    "Squeeze": ("axes",),
    "Unsqueeze": ("axes",),
    "Clip": ("min", "max"),
    "Pad": ("pads", "constant_value", "axes"),
    "Slice": ("starts", "ends", "axes", "steps"),
    "ReduceSum": ("axes",),
    "ReduceMax": ("axes",),
    "ReduceMin": ("axes",),
    "Gather": ("indices",),
    "Expand": ("shape",),
    "Tile": ("repeats",),
}
#: perturbkit op types that lowering makes out of ONNX ops: the ONNX op of their one-node model
ONNX_OP: Mapping[str, str] = {"BilinearMul": "Mul", "BilinearMatMul": "MatMul", "BilinearConv": "Conv",
                              "KnownRange": "Identity"}
#: their attributes that ONNX does not have (dropped from the one-node model)
INTERNAL_ATTRS: Mapping[str, tuple[str, ...]] = {"BilinearMatMul": ("stochastic_rows",),
                                                 "KnownRange": ("lower", "upper")}
#: attribute-inputs that carry the data type of the model (the others are int64).
FLOAT_ATTR_INPUTS = {("Clip", "min"), ("Clip", "max"), ("Pad", "constant_value")}
#: ops whose ONNX Runtime CPU kernels exist only for float32: compared at float32 tolerance.
ORT_FLOAT32_ONLY = {"Conv", "BilinearConv", "ConvTranspose", "Softplus", "AveragePool", "GlobalAveragePool",
                    "Erf", "Gelu", "Elu", "Selu", "HardSigmoid", "HardSwish", "Softsign"}

_gen = torch.Generator().manual_seed(20240601)


def rnd(*shape: int, positive: bool = False) -> torch.Tensor:
    """Pinned random constant (float64); ``positive``: in [0.5, 1.5)."""
    if positive:
        return torch.rand(*shape, generator=_gen, dtype=F64) + 0.5
    return torch.randn(*shape, generator=_gen, dtype=F64)


@dataclass(frozen=True)
class Case:
    id: str
    op_type: str
    in_shapes: tuple[Shape, ...]
    attrs: Mapping[str, Any] = field(default_factory=dict)
    consts: Mapping[int, torch.Tensor] = field(default_factory=dict)
    scale: float = 2.0
    opset: int = OPSET
    #: input 0's domain, for partial functions: "real", "nonnegative", "positive" or "nonzero".
    #: Box centres come from [0, scale] for the half-lines; rules are checked at points inside
    #: the domain where |f| is finite in the working precision (test_rules.in_domain)
    domain: str = "real"

    @property
    def rule(self):
        return RULES[self.op_type]

    @property
    def perturbed(self) -> list[int]:
        return [i for i in range(len(self.in_shapes)) if i not in self.consts]

    def node(self) -> Node:
        """The IR node, ``out_shape`` from ``rule.infer_shape``."""
        node = Node(name=self.id, op_type=self.op_type,
                    inputs=tuple(f"in{i}" for i in range(len(self.in_shapes))), output="y",
                    attrs=frozen_attrs(self.attrs), in_shapes=tuple(tuple(s) for s in self.in_shapes))
        xs = [self.consts[i] if i in self.consts else torch.zeros(s, dtype=F64)
              for i, s in enumerate(self.in_shapes)]
        return dataclasses.replace(node, out_shape=tuple(self.rule.infer_shape(node, *xs)))

    def args(self, perturbed: Mapping[int, Any], dtype=F64) -> list[Any]:
        """Arguments of a rule call: ``perturbed[i]`` for perturbed inputs, constants cast to ``dtype``."""
        return [perturbed[i] if i not in self.consts else self.consts[i].to(dtype)
                for i in range(len(self.in_shapes))]


def _c(id, op, in_shapes, attrs=None, consts=None, **kw) -> Case:
    return Case(id=id, op_type=op, in_shapes=tuple(tuple(s) for s in in_shapes), attrs=dict(attrs or {}),
                consts=dict(consts or {}), **kw)


def _ints(*v):
    return torch.tensor(v, dtype=torch.int64)


CASES: list[Case] = [
    # ---- Gemm / MatMul -----------------------------------------------------------------
    _c("gemm", "Gemm", [(2, 3), (3, 4), (4,)], consts={1: rnd(3, 4), 2: rnd(4)}),
    _c("gemm_transB_alpha_beta", "Gemm", [(2, 3), (4, 3), (2, 4)], {"transB": 1, "alpha": 0.5, "beta": 2.0},
       {1: rnd(4, 3), 2: rnd(2, 4)}),
    _c("gemm_transA_noC", "Gemm", [(3, 2), (3, 4)], {"transA": 1}, {1: rnd(3, 4)}),
    _c("gemm_C_row", "Gemm", [(2, 3), (3, 4), (1, 4)], consts={1: rnd(3, 4), 2: rnd(1, 4)}),
    _c("matmul_xW", "MatMul", [(2, 3), (3, 4)], consts={1: rnd(3, 4)}),
    _c("matmul_Wx", "MatMul", [(4, 2), (2, 3)], consts={0: rnd(4, 2)}),
    _c("matmul_vec_W", "MatMul", [(3,), (3, 4)], consts={1: rnd(3, 4)}),
    _c("matmul_W_vec", "MatMul", [(4, 3), (3,)], consts={0: rnd(4, 3)}),
    _c("matmul_dot", "MatMul", [(3,), (3,)], consts={1: rnd(3)}),
    _c("matmul_constvec_x", "MatMul", [(3,), (3, 4)], consts={0: rnd(3)}),
    _c("matmul_batched_x", "MatMul", [(2, 3, 4), (4, 5)], consts={1: rnd(4, 5)}),
    _c("matmul_batched_W", "MatMul", [(3, 4), (2, 4, 5)], consts={1: rnd(2, 4, 5)}),
    _c("matmul_batched_W_left", "MatMul", [(2, 5, 3), (3, 4)], consts={0: rnd(2, 5, 3)}),
    _c("matmul_vec_batched_W", "MatMul", [(4,), (2, 4, 3)], consts={1: rnd(2, 4, 3)}),
    # ---- Conv ----------------------------------------------------------------------------
    _c("conv1d_stride_pad", "Conv", [(1, 2, 7), (3, 2, 3), (3,)], {"strides": [2], "pads": [1, 1]},
       {1: rnd(3, 2, 3), 2: rnd(3)}),
    _c("conv2d_bias", "Conv", [(1, 2, 5, 5), (3, 2, 3, 3), (3,)], {}, {1: rnd(3, 2, 3, 3), 2: rnd(3)}),
    _c("conv2d_asym_pads", "Conv", [(1, 2, 5, 6), (2, 2, 2, 3)], {"pads": [0, 1, 1, 0], "strides": [2, 1]},
       {1: rnd(2, 2, 2, 3)}),
    _c("conv2d_dilation", "Conv", [(1, 1, 7, 7), (2, 1, 3, 3)], {"dilations": [2, 2], "pads": [2, 2, 2, 2]},
       {1: rnd(2, 1, 3, 3)}),
    _c("conv2d_groups", "Conv", [(2, 4, 5, 5), (4, 2, 3, 3), (4,)],
       {"group": 2, "strides": [2, 2], "pads": [1, 1, 1, 1]}, {1: rnd(4, 2, 3, 3), 2: rnd(4)}),
    _c("conv2d_same_upper", "Conv", [(1, 2, 5, 5), (2, 2, 2, 2)], {"auto_pad": "SAME_UPPER", "strides": [2, 2]},
       {1: rnd(2, 2, 2, 2)}),
    _c("conv2d_same_lower", "Conv", [(1, 2, 6, 5), (2, 2, 3, 2)], {"auto_pad": "SAME_LOWER", "strides": [2, 1]},
       {1: rnd(2, 2, 3, 2)}),
    _c("conv1d_valid", "Conv", [(2, 2, 6), (2, 2, 3)], {"auto_pad": "VALID"}, {1: rnd(2, 2, 3)}),
    # ---- elementwise arithmetic ----------------------------------------------------------
    _c("add_two", "Add", [(2, 3), (2, 3)]),
    _c("add_two_bcast", "Add", [(2, 3), (3,)]),
    _c("add_const", "Add", [(2, 3), (3,)], consts={1: rnd(3)}),
    _c("add_const_higher_rank", "Add", [(2, 3), (4, 1, 1)], consts={1: rnd(4, 1, 1)}),
    _c("add_const_left", "Add", [(1, 3), (2, 3)], consts={0: rnd(1, 3)}),
    _c("sub_two", "Sub", [(2, 3), (2, 3)]),
    _c("sub_const_left", "Sub", [(3,), (2, 3)], consts={0: rnd(3)}),
    _c("sub_const_right", "Sub", [(2, 3), (2, 1)], consts={1: rnd(2, 1)}),
    _c("mul_const", "Mul", [(2, 3), (2, 1)], consts={1: rnd(2, 1)}),
    _c("mul_const_left", "Mul", [(3,), (2, 3)], consts={0: rnd(3)}),
    _c("mul_scalar", "Mul", [(2, 3), ()], consts={1: torch.tensor(-1.5, dtype=F64)}),
    _c("div_const", "Div", [(2, 3), (3,)], consts={1: rnd(3, positive=True) * torch.tensor([1.0, -1.0, 2.0], dtype=F64)}),
    _c("neg", "Neg", [(2, 3)]),
    # ---- piecewise-linear activations ----------------------------------------------------
    _c("relu", "Relu", [(2, 3, 4)]),
    _c("leakyrelu_default", "LeakyRelu", [(2, 3)]),
    _c("leakyrelu_0.125", "LeakyRelu", [(2, 3)], {"alpha": 0.125}),
    _c("leakyrelu_neg", "LeakyRelu", [(2, 3)], {"alpha": -0.5}),
    _c("leakyrelu_2", "LeakyRelu", [(2, 3)], {"alpha": 2.0}),
    _c("abs", "Abs", [(2, 3, 4)]),
    _c("clip_both", "Clip", [(2, 3, 4)], {"min": -1.0, "max": 1.0}),
    _c("clip_relu6", "Clip", [(2, 3, 4)], {"min": 0.0, "max": 6.0}, scale=8.0),
    _c("clip_min_only", "Clip", [(2, 3)], {"min": 0.5}),
    _c("clip_max_only", "Clip", [(2, 3)], {"max": -0.25}),
    _c("clip_none", "Clip", [(2, 3)]),
    _c("clip_min_gt_max", "Clip", [(2, 3)], {"min": 1.0, "max": -1.0}),
    _c("clip_narrow", "Clip", [(2, 3)], {"min": 0.25, "max": 0.5}),
    # ---- smooth activations ----------------------------------------------------------------
    _c("sigmoid", "Sigmoid", [(2, 3, 4)], scale=6.0),
    _c("tanh", "Tanh", [(2, 3, 4)], scale=4.0),
    _c("softplus", "Softplus", [(2, 3, 4)], scale=6.0),
    # ---- shape-only ------------------------------------------------------------------------
    _c("reshape_0_-1", "Reshape", [(2, 3, 4)], {"shape": _ints(0, -1)}),
    _c("reshape_-1", "Reshape", [(2, 3, 4)], {"shape": _ints(-1)}),
    _c("reshape_4_0_2", "Reshape", [(2, 3, 4)], {"shape": _ints(4, 0, 2)}),
    _c("flatten", "Flatten", [(2, 3, 4)]),
    _c("flatten_0", "Flatten", [(2, 3, 4)], {"axis": 0}),
    _c("flatten_-1", "Flatten", [(2, 3, 4)], {"axis": -1}),
    _c("squeeze_axes", "Squeeze", [(2, 1, 3, 1)], {"axes": _ints(1)}),
    _c("squeeze_all", "Squeeze", [(2, 1, 3, 1)]),
    _c("squeeze_neg", "Squeeze", [(2, 1, 3, 1)], {"axes": _ints(-1)}),
    _c("unsqueeze", "Unsqueeze", [(2, 3)], {"axes": _ints(0, 3)}),
    _c("unsqueeze_neg", "Unsqueeze", [(2, 3)], {"axes": _ints(-1)}),
    _c("identity", "Identity", [(2, 3)]),
    _c("dropout", "Dropout", [(2, 3)]),
    # ---- normalisation, transposed convolution, pooling -------------------------------------
    _c("batchnorm_2d", "BatchNormalization", [(2, 3, 4, 4), (3,), (3,), (3,), (3,)], {"epsilon": 1e-3},
       {1: rnd(3), 2: rnd(3), 3: rnd(3), 4: rnd(3, positive=True)}),
    _c("batchnorm_fc", "BatchNormalization", [(2, 3), (3,), (3,), (3,), (3,)], {},
       {1: rnd(3), 2: rnd(3), 3: rnd(3), 4: rnd(3, positive=True)}),
    _c("batchnorm_1d", "BatchNormalization", [(1, 2, 5), (2,), (2,), (2,), (2,)], {"epsilon": 0.1},
       {1: rnd(2), 2: rnd(2), 3: rnd(2), 4: rnd(2, positive=True)}),
    _c("convT1d_stride", "ConvTranspose", [(1, 2, 4), (2, 3, 3)], {"strides": [2]}, {1: rnd(2, 3, 3)}),
    _c("convT2d_pads_outpad", "ConvTranspose", [(1, 2, 3, 3), (2, 3, 3, 3), (3,)],
       {"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]}, {1: rnd(2, 3, 3, 3), 2: rnd(3)}),
    _c("convT2d_dil_groups", "ConvTranspose", [(2, 4, 3, 3), (4, 1, 2, 2), (2,)],
       {"group": 2, "dilations": [2, 2]}, {1: rnd(4, 1, 2, 2), 2: rnd(2)}),
    _c("convT2d_output_shape", "ConvTranspose", [(1, 2, 3, 3), (2, 2, 3, 3)],
       {"strides": [2, 2], "output_shape": [6, 5]}, {1: rnd(2, 2, 3, 3)}),
    _c("convT2d_same_upper", "ConvTranspose", [(1, 1, 3, 3), (1, 2, 3, 3)],
       {"strides": [2, 2], "auto_pad": "SAME_UPPER"}, {1: rnd(1, 2, 3, 3)}),
    _c("convT2d_same_lower", "ConvTranspose", [(1, 1, 3, 3), (1, 2, 3, 3)],
       {"strides": [2, 2], "auto_pad": "SAME_LOWER"}, {1: rnd(1, 2, 3, 3)}),
    _c("convT2d_asym_pads", "ConvTranspose", [(1, 2, 3, 4), (2, 2, 2, 3)],
       {"strides": [1, 2], "pads": [0, 1, 1, 0]}, {1: rnd(2, 2, 2, 3)}),
    _c("convT2d_output_shape_nc", "ConvTranspose", [(1, 2, 3, 3), (2, 2, 3, 3), (2,)],
       {"strides": [2, 2], "output_shape": [7, 6], "output_padding": [0, 1]}, {1: rnd(2, 2, 3, 3), 2: rnd(2)}),
    _c("convT1d_outpad_dil", "ConvTranspose", [(2, 2, 4), (2, 2, 2)],
       {"strides": [3], "dilations": [2], "output_padding": [2], "pads": [1, 0]}, {1: rnd(2, 2, 2)}),
    _c("avgpool2d", "AveragePool", [(1, 2, 6, 6)], {"kernel_shape": [2, 2], "strides": [2, 2]}),
    _c("avgpool2d_pad_excl", "AveragePool", [(1, 2, 6, 6)],
       {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    _c("avgpool2d_pad_incl", "AveragePool", [(1, 2, 6, 6)],
       {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "count_include_pad": 1}),
    _c("avgpool2d_ceil", "AveragePool", [(1, 1, 5, 5)], {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1}),
    _c("avgpool2d_ceil_pad_incl", "AveragePool", [(1, 1, 6, 6)],
       {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1, "count_include_pad": 1}),
    _c("avgpool2d_asym", "AveragePool", [(1, 2, 5, 6)], {"kernel_shape": [2, 3], "pads": [0, 1, 1, 0]}),
    _c("avgpool1d", "AveragePool", [(2, 3, 7)], {"kernel_shape": [3], "strides": [2], "pads": [1, 1]}),
    _c("avgpool2d_same_upper", "AveragePool", [(1, 1, 5, 5)],
       {"kernel_shape": [2, 2], "strides": [2, 2], "auto_pad": "SAME_UPPER"}),
    _c("avgpool2d_ceil_drop", "AveragePool", [(1, 1, 5, 5)],
       {"kernel_shape": [2, 2], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1}),
    _c("avgpool2d_dil", "AveragePool", [(1, 2, 7, 6)],
       {"kernel_shape": [2, 2], "dilations": [2, 1], "pads": [1, 0, 1, 1], "count_include_pad": 1}, opset=19),
    _c("avgpool2d_tiles_rest", "AveragePool", [(1, 2, 5, 7)], {"kernel_shape": [2, 3], "strides": [2, 3]}),
    _c("avgpool1d_tiles", "AveragePool", [(2, 3, 8)], {"kernel_shape": [4], "strides": [4]}),
    _c("avgpool3d_tiles", "AveragePool", [(1, 2, 4, 4, 6)], {"kernel_shape": [2, 2, 3], "strides": [2, 2, 3]}),
    _c("gap2d", "GlobalAveragePool", [(1, 2, 3, 4)]),
    _c("gap1d", "GlobalAveragePool", [(2, 3, 5)]),
    _c("maxpool2d", "MaxPool", [(1, 2, 6, 6)], {"kernel_shape": [2, 2], "strides": [2, 2]}),
    _c("maxpool2d_pad", "MaxPool", [(1, 2, 6, 6)], {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    _c("maxpool2d_dil", "MaxPool", [(1, 1, 7, 7)], {"kernel_shape": [2, 2], "dilations": [2, 2]}),
    _c("maxpool2d_ceil", "MaxPool", [(1, 1, 5, 5)], {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1}),
    _c("maxpool2d_asym", "MaxPool", [(2, 1, 5, 6)], {"kernel_shape": [2, 3], "pads": [0, 1, 1, 0]}),
    _c("maxpool2d_ceil_drop", "MaxPool", [(1, 2, 5, 5)],
       {"kernel_shape": [2, 2], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1}),
    _c("maxpool2d_same_upper", "MaxPool", [(1, 1, 5, 6)],
       {"kernel_shape": [3, 2], "strides": [2, 2], "auto_pad": "SAME_UPPER"}),
    _c("maxpool1d", "MaxPool", [(2, 2, 7)], {"kernel_shape": [3], "strides": [2], "pads": [1, 1]}),
    # ---- reductions --------------------------------------------------------------------------
    _c("reducesum_axis1", "ReduceSum", [(2, 3, 4)], {"axes": _ints(1)}),
    _c("reducesum_last_nokeep", "ReduceSum", [(2, 3, 4)], {"axes": _ints(-1), "keepdims": 0}),
    _c("reducesum_all", "ReduceSum", [(2, 3, 4)]),
    _c("reducesum_all_nokeep", "ReduceSum", [(2, 3, 4)], {"keepdims": 0}),
    _c("reducesum_noop", "ReduceSum", [(2, 3, 4)], {"noop_with_empty_axes": 1}),
    _c("reducesum_0_2_nokeep", "ReduceSum", [(2, 3, 4)], {"axes": _ints(0, 2), "keepdims": 0}),
    _c("reducemean_0_2", "ReduceMean", [(2, 3, 4)], {"axes": [0, 2]}),
    _c("reducemean_all_nokeep", "ReduceMean", [(2, 3, 4)], {"keepdims": 0}),
    _c("reducemean_last", "ReduceMean", [(2, 3, 4)], {"axes": [-1]}),
    # ---- structural ----------------------------------------------------------------------------
    _c("transpose_102", "Transpose", [(2, 3, 4)], {"perm": [1, 0, 2]}),
    _c("transpose_default", "Transpose", [(2, 3, 4)]),
    _c("transpose_201", "Transpose", [(2, 3, 4)], {"perm": [2, 0, 1]}),
    _c("concat_two", "Concat", [(2, 3), (2, 2)], {"axis": 1}),
    _c("concat_const_right", "Concat", [(2, 3), (1, 3)], {"axis": 0}, {1: rnd(1, 3)}),
    _c("concat_const_left", "Concat", [(2, 2), (2, 3)], {"axis": -1}, {0: rnd(2, 2)}),
    _c("concat_three", "Concat", [(1, 2, 2), (1, 1, 2), (1, 3, 2)], {"axis": 1}, {1: rnd(1, 1, 2)}),
    _c("slice_basic", "Slice", [(4, 5, 6)], {"starts": _ints(1), "ends": _ints(3), "axes": _ints(0)}),
    _c("slice_negative", "Slice", [(4, 5, 6)], {"starts": _ints(-4), "ends": _ints(-1), "axes": _ints(2)}),
    _c("slice_neg_step", "Slice", [(4, 5, 6)],
       {"starts": _ints(-1), "ends": _ints(-(2 ** 63)), "axes": _ints(1), "steps": _ints(-2)}),
    _c("slice_neg_step_to_0", "Slice", [(4, 5, 6)],
       {"starts": _ints(3), "ends": _ints(0), "axes": _ints(0), "steps": _ints(-1)}),
    _c("slice_clamp_multi", "Slice", [(4, 5, 6)],
       {"starts": _ints(0, 2), "ends": _ints(100, 2 ** 62), "axes": _ints(0, -1), "steps": _ints(2, 1)}),
    _c("slice_no_axes", "Slice", [(4, 5, 6)], {"starts": _ints(1, -3), "ends": _ints(4, 5)}),
    _c("gather_axis0", "Gather", [(4, 3)], {"indices": _ints(0, 3, -1)}),
    _c("gather_axis1_2d", "Gather", [(2, 5, 3)], {"indices": torch.tensor([[1, 4], [0, -2]]), "axis": 1}),
    _c("gather_scalar_last", "Gather", [(2, 5, 3)], {"indices": torch.tensor(2), "axis": -1}),
    _c("gather_1d_data", "Gather", [(5,)], {"indices": torch.tensor([[4, 0], [-1, 2]])}),
    _c("gather_repeat", "Gather", [(4, 3)], {"indices": _ints(1, 1, 2), "axis": 0}),
    _c("pad_constant", "Pad", [(1, 2, 3, 4)], {"pads": _ints(0, 0, 1, 2, 0, 0, 2, 1), "constant_value": 1.5}),
    _c("pad_reflect", "Pad", [(1, 2, 3, 4)], {"pads": _ints(0, 0, 1, 2, 0, 0, 2, 1), "mode": "reflect"}),
    _c("pad_edge", "Pad", [(1, 2, 3, 4)], {"pads": _ints(0, 1, 1, 2, 0, 0, 2, 3), "mode": "edge"}),
    _c("pad_negative", "Pad", [(1, 2, 3, 4)], {"pads": _ints(0, 0, -1, 1, 0, 0, 1, -2), "constant_value": -2.0}),
    _c("pad_wrap", "Pad", [(2, 3, 4)], {"pads": _ints(0, 1, 2, 0, 2, 1), "mode": "wrap"}, opset=19),
    _c("pad_axes", "Pad", [(2, 3, 4)], {"pads": _ints(1, 2), "axes": _ints(-1)}, opset=18),
    _c("constant", "Constant", [], {"value": rnd(2, 3)}),
]

from .cases_bounds import BOUND_CASES  # noqa: E402  (built with the helpers above)

CASES += BOUND_CASES
from .cases_shape import SHAPE_CASES  # noqa: E402

CASES += SHAPE_CASES
from .cases_elementwise import ELEMENTWISE_CASES  # noqa: E402

CASES += ELEMENTWISE_CASES

CASE_BY_ID = {c.id: c for c in CASES}
assert len(CASE_BY_ID) == len(CASES), "duplicate case id"


# ---- ONNX model of a case --------------------------------------------------------------------
def _np(v, dtype) -> np.ndarray:
    if isinstance(v, torch.Tensor):
        v = v.detach().cpu().numpy()
    return np.asarray(v, dtype=dtype)


def onnx_model(case: Case, dtype: np.dtype) -> onnx.ModelProto:
    """One-node ONNX model of ``case``: perturbed inputs are graph inputs ``in{i}``,
    constants initializers; configuration attributes become inputs again per :data:`ATTR_INPUTS`."""
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    graph_inputs, inits = [], []
    names = []
    for i, s in enumerate(case.in_shapes):
        name = f"in{i}"
        names.append(name)
        if i in case.consts:
            c = case.consts[i]  # boolean constants (Where's condition) stay boolean
            inits.append(numpy_helper.from_array(_np(c, np.bool_ if c.dtype == torch.bool else dtype), name))
        else:
            graph_inputs.append(helper.make_tensor_value_info(name, elem, list(s)))
    attrs = {k: v for k, v in case.attrs.items() if k not in INTERNAL_ATTRS.get(case.op_type, ())}
    for key in ATTR_INPUTS.get(case.op_type, ()):
        v = attrs.pop(key, None)
        if v is None:
            names.append("")
            continue
        t = dtype if (case.op_type, key) in FLOAT_ATTR_INPUTS else np.int64
        inits.append(numpy_helper.from_array(_np(v, t), f"attr_{key}"))
        names.append(f"attr_{key}")
    while names and names[-1] == "":
        names.pop()
    if case.op_type == "Constant":
        attrs["value"] = numpy_helper.from_array(_np(attrs["value"], dtype), "value")
    node = helper.make_node(ONNX_OP.get(case.op_type, case.op_type), names, ["y"], **attrs)
    out = helper.make_tensor_value_info("y", elem, list(case.node().out_shape))
    graph = helper.make_graph([node], case.id, graph_inputs, [out], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", case.opset)])
    onnx.checker.check_model(model)
    return model
