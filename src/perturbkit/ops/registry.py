"""The one table of operator rules: ONNX op type -> rule object.

Adding an operator: write its module in ``ops/``, add one line here, and add a case to
``tests/conformance/cases.py`` (the conformance test fails for any op without a case).
"""
from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

from perturbkit.errors import UnsupportedOperatorError
from perturbkit.graph.ir import Node
from perturbkit.ops import abs as abs_
from perturbkit.ops import (arith, batchnorm, clip, conv, convtranspose, indexing, linear, pool, reduce, relu,
                            reshape, shape_ops, sigmoid, softplus)
from perturbkit.ops import bilinear, bilinear_conv, embedding, layernorm, minmax, softmax
from perturbkit.ops import broadcast
from perturbkit.ops import elu, exp_log, gelu, hard, power, softsign, swish, trig
from perturbkit.ops.base import OpRule

_RULES: dict[str, OpRule] = {
    "Gemm": linear.Gemm(),
    "MatMul": linear.MatMul(),
    "Conv": conv.Conv(),
    "Add": arith.Add(),
    "Sub": arith.Sub(),
    "Mul": arith.Mul(),
    "Div": arith.Div(),
    "Neg": arith.Neg(),
    "Relu": relu.Relu(),
    "LeakyRelu": relu.LeakyRelu(),
    "Reshape": reshape.Reshape(),
    "Flatten": reshape.Flatten(),
    "Squeeze": reshape.Squeeze(),
    "Unsqueeze": reshape.Unsqueeze(),
    "Identity": reshape.Identity(),
    "KnownRange": reshape.KnownRange(),
    "Dropout": reshape.Dropout(),
    "Sigmoid": sigmoid.Sigmoid(),
    "Tanh": sigmoid.Tanh(),
    "Softplus": softplus.Softplus(),
    "Exp": exp_log.Exp(),
    "Log": exp_log.Log(),
    "Sqrt": power.Sqrt(),
    "Reciprocal": power.Reciprocal(),
    "Pow": power.Pow(),
    "Erf": gelu.Erf(),
    "Gelu": gelu.Gelu(),
    "Swish": swish.Swish(),
    "Elu": elu.Elu(),
    "Selu": elu.Selu(),
    "HardSigmoid": hard.HardSigmoid(),
    "HardSwish": hard.HardSwish(),
    "Softsign": softsign.Softsign(),
    "Sin": trig.Sin(),
    "Cos": trig.Cos(),
    "Abs": abs_.Abs(),
    "Clip": clip.Clip(),
    "BatchNormalization": batchnorm.BatchNormalization(),
    "ConvTranspose": convtranspose.ConvTranspose(),
    "AveragePool": pool.AveragePool(),
    "GlobalAveragePool": pool.GlobalAveragePool(),
    "MaxPool": pool.MaxPool(),
    "ReduceSum": reduce.ReduceSum(),
    "ReduceMean": reduce.ReduceMean(),
    "ReduceMax": reduce.ReduceMax(),
    "ReduceMin": reduce.ReduceMin(),
    "BilinearMul": bilinear.BilinearMul(),
    "BilinearMatMul": bilinear.BilinearMatMul(),
    "BilinearConv": bilinear_conv.BilinearConv(),
    "Softmax": softmax.Softmax(),
    "LogSoftmax": softmax.LogSoftmax(),
    "MaskedSoftmax": softmax.MaskedSoftmax(),
    "LayerNormalization": layernorm.LayerNormalization(),
    "Max": minmax.Max(),
    "TableLookup": embedding.TableLookup(),
    "Min": minmax.Min(),
    "Transpose": shape_ops.Transpose(),
    "Concat": shape_ops.Concat(),
    "Constant": shape_ops.Constant(),
    "Slice": indexing.Slice(),
    "Gather": indexing.Gather(),
    "Pad": indexing.Pad(),
    "Expand": broadcast.Expand(),
    "Tile": broadcast.Tile(),
    "Where": broadcast.Where(),
}

RULES: Mapping[str, OpRule] = MappingProxyType(_RULES)


#: op types that only lowering creates (graph/lower.py): not part of the supported vocabulary
INTERNAL = frozenset({"BilinearMul", "BilinearMatMul", "BilinearConv", "TableLookup", "MaskedSoftmax", "KnownRange"})


def supported() -> list[str]:
    """The ONNX operators perturbkit bounds (rules and decompositions; internal ops left out)."""
    return sorted(set(RULES) - INTERNAL)


def rule_for(node: Node, source: str = "") -> OpRule:
    """The rule for ``node``, or an error naming the op, the node and what is supported.

    Operators that can only be executed (:mod:`perturbkit.ops.forward_only`) resolve too; the
    ONNX importer admits them only when asked to (``forward_only=True``)."""
    rule = RULES.get(node.op_type)
    if rule is not None:
        return rule
    from perturbkit.ops.forward_only import FORWARD_ONLY

    try:
        return FORWARD_ONLY[node.op_type]
    except KeyError:
        raise UnsupportedOperatorError(
            f"no rule for '{node.op_type}' at {node.where(source)}; supported: {', '.join(supported())}"
        ) from None
