"""Errors raised by perturbkit. Every message says *what* went wrong and *where*.

The CLI turns any :class:`PerturbkitError` into one line on stderr and exit code 2.
"""
from __future__ import annotations


class PerturbkitError(ValueError):
    """Base class of every user-facing error (bad model, bad input, bad option)."""


class ModelError(PerturbkitError):
    """The model file or module cannot be read, imported or executed."""


class UnsupportedOperatorError(ModelError):
    """An operator (or an operator configuration) has no rule in the registry."""


class InputError(PerturbkitError):
    """An input tensor, perturbation set or specification is invalid."""
