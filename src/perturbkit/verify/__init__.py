"""Verification of VNN-LIB properties: the specification model, a pure VNN-LIB reader/writer,
and the verifier (:func:`perturbkit.verify.runner.verify`, also ``perturbkit.verify(...)``)."""
from perturbkit.verify.spec import Case, Clause, InputBox, OutputSpec, Property, check_sizes
from perturbkit.verify.vnnlib import (VnnlibError, format_counterexample, format_vnnlib,
                                      parse_counterexample, parse_vnnlib)

import sys as _sys
import types as _types

from perturbkit.verify.result import Result
from perturbkit.verify.runner import VerifyConfig, verify

__all__ = ["Case", "Result", "VerifyConfig", "verify", "Clause", "InputBox", "OutputSpec", "Property", "VnnlibError", "check_sizes",
           "format_counterexample", "format_vnnlib", "parse_counterexample", "parse_vnnlib"]


class _CallableModule(_types.ModuleType):
    """``perturbkit.verify(network, property, timeout=...)`` calls :func:`verify`, while
    ``perturbkit.verify`` stays this package (``import perturbkit.verify.campaign`` works)."""

    def __call__(self, *args, **kwargs) -> Result:
        return verify(*args, **kwargs)


_sys.modules[__name__].__class__ = _CallableModule
