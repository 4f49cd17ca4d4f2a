"""Conformance cases of the elementwise nonlinearities (Exp, Log, Sqrt, Reciprocal, Pow, Erf,
Gelu, Swish, Elu, Selu, HardSigmoid, HardSwish, Softsign, Sin, Cos).

Partial functions declare their input domain (``Case.domain``); box centres are then drawn
from ``[0, scale]`` (nonnegative / positive domains) and boxes reach outside it, which the
rules must survive (no NaN), while soundness is checked at the points inside.
"""
from __future__ import annotations

import torch

from .cases import F64, Case, _c


def _pow(p: float, **kw) -> Case:
    if p == int(p):
        domain = "real" if p >= 0 else "nonzero"
    else:
        domain = "nonnegative" if p > 0 else "positive"
    return _c(f"pow_{p:g}", "Pow", [(2, 3), ()], consts={1: torch.tensor(p, dtype=F64)}, domain=domain, **kw)


ELEMENTWISE_CASES: list[Case] = [
    # ---- exponential and logarithm ---------------------------------------------------------
    _c("exp", "Exp", [(2, 3, 4)], scale=4.0),
    _c("exp_far", "Exp", [(2, 3)], scale=30.0),
    _c("log", "Log", [(2, 3, 4)], scale=4.0, domain="positive"),
    _c("log_near_0", "Log", [(2, 3)], scale=0.05, domain="positive"),
    # ---- powers -----------------------------------------------------------------------------
    _c("sqrt", "Sqrt", [(2, 3, 4)], scale=4.0, domain="nonnegative"),
    _c("sqrt_near_0", "Sqrt", [(2, 3)], scale=0.01, domain="nonnegative"),
    _c("reciprocal", "Reciprocal", [(2, 3, 4)], scale=3.0, domain="nonzero"),
    _c("reciprocal_far", "Reciprocal", [(2, 3)], scale=50.0, domain="nonzero"),
    *(_pow(p, scale=2.5) for p in (2.0, 3.0, 4.0, 5.0, -1.0, -2.0, -3.0, 0.5, -0.5, 1.5, 0.3, 0.0, 1.0)),
    # ---- Gaussian error function family ------------------------------------------------------
    _c("erf", "Erf", [(2, 3, 4)], scale=3.0),
    _c("gelu", "Gelu", [(2, 3, 4)], scale=4.0, opset=20),
    _c("gelu_tanh", "Gelu", [(2, 3, 4)], {"approximate": "tanh"}, scale=4.0, opset=20),
    _c("swish", "Swish", [(2, 3, 4)], scale=5.0, opset=24),
    _c("swish_alpha_2", "Swish", [(2, 3)], {"alpha": 2.0}, scale=3.0, opset=24),
    _c("swish_alpha_neg", "Swish", [(2, 3)], {"alpha": -0.75}, scale=5.0, opset=24),
    # ---- exponential linear units ----------------------------------------------------------------
    _c("elu", "Elu", [(2, 3, 4)], scale=3.0),
    _c("elu_alpha_2", "Elu", [(2, 3)], {"alpha": 2.0}, scale=3.0),
    _c("elu_alpha_0.5", "Elu", [(2, 3)], {"alpha": 0.5}, scale=3.0),
    _c("elu_alpha_neg", "Elu", [(2, 3)], {"alpha": -0.5}, scale=3.0),
    _c("selu", "Selu", [(2, 3, 4)], scale=3.0),
    _c("selu_attrs", "Selu", [(2, 3)], {"alpha": 0.5, "gamma": 2.0}, scale=3.0),
    # ---- piecewise and rational ----------------------------------------------------------------
    _c("hardsigmoid", "HardSigmoid", [(2, 3, 4)], scale=4.0),
    _c("hardsigmoid_neg", "HardSigmoid", [(2, 3)], {"alpha": -0.3, "beta": 0.6}, scale=4.0),
    _c("hardswish", "HardSwish", [(2, 3, 4)], scale=5.0, opset=14),
    _c("softsign", "Softsign", [(2, 3, 4)], scale=3.0),
    # ---- periodic --------------------------------------------------------------------------------
    _c("sin", "Sin", [(2, 3, 4)], scale=4.0),
    _c("sin_far", "Sin", [(2, 3)], scale=50.0),
    _c("cos", "Cos", [(2, 3, 4)], scale=4.0),
]
