"""Verification of VNN-LIB properties: the specification model and a pure VNN-LIB reader/writer."""
from perturbkit.verify.spec import Case, Clause, InputBox, OutputSpec, Property, check_sizes
from perturbkit.verify.vnnlib import (VnnlibError, format_counterexample, format_vnnlib,
                                      parse_counterexample, parse_vnnlib)

__all__ = ["Case", "Clause", "InputBox", "OutputSpec", "Property", "VnnlibError", "check_sizes",
           "format_counterexample", "format_vnnlib", "parse_counterexample", "parse_vnnlib"]
