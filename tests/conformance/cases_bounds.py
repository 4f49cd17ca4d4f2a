"""Conformance cases of the products, reductions and composites (the lead's rules).

Appended to :data:`tests.conformance.cases.CASES`.  Composite cases (Softmax,
LayerNormalization, Max, Min, ReduceMin) are checked through their lowering, as one-node
networks (``tests/conformance/test_networks.py``); the others also by the rule-level tests.
"""
from __future__ import annotations

import torch

from .cases import _c, _ints, rnd

BOUND_CASES = [
    # ---- products of two perturbed tensors --------------------------------------------------
    _c("bmul_same", "BilinearMul", [(2, 3), (2, 3)]),
    _c("bmul_bcast", "BilinearMul", [(2, 3), (3,)]),
    _c("bmul_bcast_left", "BilinearMul", [(2, 1), (2, 4)], scale=1.0),
    _c("bmatmul", "BilinearMatMul", [(3, 4), (4, 2)]),
    _c("bmatmul_heads", "BilinearMatMul", [(2, 3, 4), (2, 4, 3)]),
    _c("bmatmul_bcast_batch", "BilinearMatMul", [(2, 3, 4), (4, 2)]),
    _c("bmatmul_vec_mat", "BilinearMatMul", [(4,), (4, 3)]),
    _c("bmatmul_mat_vec", "BilinearMatMul", [(3, 4), (4,)]),
    _c("bmatmul_dot", "BilinearMatMul", [(4,), (4,)]),
    _c("bconv2d", "BilinearConv", [(1, 2, 5, 5), (3, 2, 3, 3)], {"strides": [2, 2], "pads": [1, 0, 1, 1]}, scale=1.0),
    _c("bconv2d_dil", "BilinearConv", [(1, 1, 6, 6), (2, 1, 2, 2)], {"dilations": [2, 2]}, scale=1.0),
    _c("bconv1d", "BilinearConv", [(1, 2, 7), (2, 2, 3)], {"pads": [2, 1], "dilations": [2]}, scale=1.0),
    # ---- max / min ------------------------------------------------------------------------------
    _c("reducemax_last", "ReduceMax", [(2, 3, 4)], {"axes": _ints(-1)}, opset=18),
    _c("reducemax_0_2_nokeep", "ReduceMax", [(2, 3, 4)], {"axes": _ints(0, 2), "keepdims": 0}, opset=18),
    _c("reducemax_all", "ReduceMax", [(2, 3)], {}, opset=18),
    _c("reducemin_axis1", "ReduceMin", [(2, 3, 4)], {"axes": _ints(1)}, opset=18),
    _c("max_two", "Max", [(2, 3), (2, 3)]),
    _c("max_bcast_const", "Max", [(2, 3), (3,)], consts={1: rnd(3)}),
    _c("max_three", "Max", [(2, 3), (3,), (2, 1)]),
    _c("min_two", "Min", [(2, 3), (2, 3)]),
    _c("min_const_left", "Min", [(3,), (2, 3)], consts={0: rnd(3)}),
    _c("known_range", "KnownRange", [(2, 3)], {"lower": -100.0, "upper": 100.0}),
    # ---- composites -----------------------------------------------------------------------------
    _c("softmax_last", "Softmax", [(2, 4)], scale=3.0),
    _c("softmax_axis0", "Softmax", [(3, 2)], {"axis": 0}, scale=3.0),
    _c("softmax_3d_mid", "Softmax", [(2, 3, 2)], {"axis": 1}),
    _c("logsoftmax_last", "LogSoftmax", [(2, 4)], scale=3.0),
    _c("layernorm_last", "LayerNormalization", [(3, 4), (4,), (4,)], {"epsilon": 1e-5},
       {1: rnd(4), 2: rnd(4)}),
    _c("layernorm_two_axes", "LayerNormalization", [(2, 3, 2), (3, 2), (3, 2)], {"axis": 1, "epsilon": 1e-3},
       {1: rnd(3, 2), 2: rnd(3, 2)}),
    _c("layernorm_no_bias", "LayerNormalization", [(2, 5), (5,)], {"axis": -1}, {1: rnd(5)}),
    _c("layernorm_runtime_scale", "LayerNormalization", [(2, 3), (3,), (3,)], {}, {2: rnd(3)}, scale=1.5),
]
