"""What an operator rule is.

Every operator has one rule object in :mod:`perturbkit.ops.registry`.  A rule is one of

* :class:`AffineRule`: the output is an affine function of the perturbed inputs
  (Gemm, Conv, Add, Reshape, ...).  It gives ``forward`` (exact), ``interval`` (IBP) and
  ``backward`` (the transpose of its linear part).  The constant part is found by the
  engine as ``forward`` at zero, so no rule writes bias algebra.
* :class:`ActivationRule`: an elementwise function of one perturbed input.  It gives
  ``forward``, ``interval`` and ``relax(lo, hi) -> Relaxation``: two lines per element.
  The engine turns the lines into IBP, backward (CROWN) algebra once, in ``bounds/``.
* :class:`SelectionRule`: each output element is bounded by lines in *one chosen* input
  element (MaxPool).  ``relax`` returns a :class:`Relaxation` whose lines carry an
  ``index`` into the flattened per-sample input.
* :class:`BilinearRule`: a product of two perturbed tensors that is linear in each one
  (elementwise Mul, MatMul).  The rule gives ``forward``, ``interval`` and the transposes
  of the product with one side held fixed; the engine builds the McCormick planes from
  them (:mod:`perturbkit.bounds.bilinear`).
* :class:`IntervalRule`: an operator bounded by its interval alone (the constant lines
  ``lo <= f <= hi``; nothing is propagated to its inputs), e.g. a table lookup by perturbed
  indices (embeddings).
* :class:`CompositeRule`: an operator bounded through its decomposition into the operators
  above (Softmax, LayerNormalization, ...).  It gives ``forward`` (executed as one torch
  call) and ``lower``; :mod:`perturbkit.graph.lower` replaces it by its decomposition when
  a :class:`~perturbkit.graph.network.Network` is built, so bound algorithms never see it.

Any rule may also rewrite a node into other nodes through :meth:`OpRule.lower` (e.g. a
Mul of two perturbed tensors becomes a BilinearMul); the lowering pass applies it until
no rule asks for more.

Calling conventions (see :mod:`perturbkit.graph.ir` for shapes): rule methods receive
``node`` and one argument per node input.  A constant input is passed as its tensor
(already cast to the working dtype and device); a perturbed input is passed as a tensor
(``forward``), an :class:`Interval` (``interval``) or ``None`` (``backward``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Optional, Sequence

import torch

from perturbkit.graph.ir import Node

if TYPE_CHECKING:  # pragma: no cover - typing only
    from perturbkit.graph.lower import Emitter

Tensor = torch.Tensor


@dataclass(frozen=True)
class Interval:
    """Elementwise bounds ``lo <= x <= hi``; both tensors of shape ``(*lead, *declared)``."""

    lo: Tensor
    hi: Tensor

    @property
    def mid(self) -> Tensor:
        return self.hi / 2 + self.lo / 2  # (halved first: no overflow at +-finfo.max)

    @property
    def rad(self) -> Tensor:
        return self.hi / 2 - self.lo / 2


@dataclass(frozen=True)
class Line:
    """``slope * x + intercept``, elementwise; tensors broadcast against the pre-activation.

    ``index`` (SelectionRule only): int64 tensor ``(*lead, n_out)`` giving, for every output
    element, the flat per-sample index of the input element the line reads.
    """

    slope: Tensor
    intercept: Tensor
    index: Optional[Tensor] = None


@dataclass(frozen=True)
class Relaxation:
    """``lower(x) <= f(x) <= upper(x)`` for every x in the box the relaxation was made for."""

    lower: Line
    upper: Line


class OpRule:
    """Base of all rules. ``op_type`` is the ONNX operator name."""

    op_type: ClassVar[str] = ""
    kind: ClassVar[str] = ""

    def forward(self, node: Node, *xs: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def infer_shape(self, node: Node, *xs: Tensor) -> tuple[int, ...]:
        """Declared output shape, used by the front ends before ``node.out_shape`` is known.

        ``xs``: the constant tensors, and zeros of the declared shape for runtime inputs
        (no leading dimensions).  The default runs ``forward``; rules whose ``forward``
        reads ``node.out_shape`` override it.
        """
        return tuple(self.forward(node, *xs).shape)

    def interval(self, node: Node, *xs) -> Interval:  # pragma: no cover - abstract
        raise NotImplementedError

    def lower(self, node: Node, runtime: tuple[bool, ...], emit: "Emitter") -> bool:
        """Rewrite ``node`` into other nodes, or leave it (return False, the default).

        ``runtime[i]`` says whether input ``i`` is a runtime value (else a constant).  A rule
        that rewrites calls ``emit.node(...)`` / ``emit.const(...)`` (the last node it emits
        must produce ``node.output``) and returns True.  See :mod:`perturbkit.graph.lower`.
        """
        return False


class AffineRule(OpRule):
    """An operator affine in its perturbed inputs (jointly)."""

    kind = "affine"
    #: output coordinates are affine functions of single input coordinates (reshapes,
    #: elementwise scaling/shifts): intervals stay exact through it
    coordinatewise: ClassVar[bool] = False

    def is_coordinatewise(self, node: Node, runtime: int) -> bool:
        """Whether ``node``, with input ``runtime`` its only runtime value, maps each input
        coordinate to at most one output (as a scaled and shifted copy).  Then interval
        arithmetic stays exact through it and through one mixing map after it.  A map that
        copies a coordinate to several outputs (broadcasting, repeated gathers) is not: the
        copies' intervals forget they are equal.  Default: ``coordinatewise`` and no more
        outputs than inputs (rules that add constant outputs, e.g. Pad, override it)."""
        return self.coordinatewise and math.prod(node.out_shape) <= math.prod(node.in_shapes[runtime])

    def backward(self, node: Node, A: Tensor, *xs: Optional[Tensor]) -> list[Optional[Tensor]]:
        """Transpose of the linear part.

        Args:
            A: coefficients on the output, shape ``(*lead, *node.out_shape)``.
            xs: per input, the constant tensor, or ``None`` for a perturbed input.
        Returns:
            per input, coefficients ``(*lead, *node.in_shapes[i])`` (``None`` for constants),
            such that ``sum(A * f_lin(x)) == sum_i sum(A_i * x_i)``.
        """
        raise NotImplementedError  # pragma: no cover - abstract


class ActivationRule(OpRule):
    """An elementwise function of input 0 (other inputs are constants)."""

    kind = "activation"
    #: the lines come from evaluating the function (not exact piecewise-linear algebra): for
    #: float32 bounds the engine computes them in float64 and rounds them outward once
    #: (:mod:`perturbkit.bounds.precision`), far tighter than float32 rounding margins
    lines_in_float64: ClassVar[bool] = False
    #: monotone on its whole domain (increasing or decreasing on each connected piece), with
    #: relaxation lines of the same monotonicity: CROWN then cannot tighten the output of a
    #: well-bounded input (``bounds/crown.py``, ``_crown_adds_nothing``)
    monotone: ClassVar[bool] = False
    #: constant for every input <= 0, with exact constant lines wherever the upper bound is
    #: <= 0, whatever the lower bound (ReLU): an input element whose upper bound is <= 0
    #: needs no lower bound (``bounds/crown.py`` computes upper bounds first)
    constant_below_zero: ClassVar[bool] = False

    def interval(self, node: Node, x: Interval, *consts) -> Interval:
        """Default for monotone non-decreasing functions."""
        return Interval(self.forward(node, x.lo, *consts), self.forward(node, x.hi, *consts))

    def relax(self, node: Node, lo: Tensor, hi: Tensor, *consts) -> Relaxation:
        raise NotImplementedError  # pragma: no cover - abstract

    def unstable(self, node: Node, lo: Tensor, hi: Tensor, *consts) -> Tensor:
        """Elements whose relaxation depends on the exact bounds (they get CROWN bounds)."""
        return torch.ones_like(lo, dtype=torch.bool)

    # -- optional: a free parameter per element, optimised by alpha-CROWN -------------------
    def alpha_range(self, node: Node) -> Optional[tuple[float, float]]:
        """``(min, max)`` of the relaxation's free parameter, or None when it has none."""
        return None

    def alpha_init(self, node: Node, lo: Tensor, hi: Tensor, *consts) -> Tensor:
        """The parameter value that gives :meth:`relax` (CROWN's choice)."""
        raise NotImplementedError  # pragma: no cover - only called when alpha_range is set

    def relax_alpha(self, node: Node, lo: Tensor, hi: Tensor, alpha: Tensor, *consts) -> Relaxation:
        """Sound lines for every ``alpha`` in :meth:`alpha_range` (broadcast with lo/hi)."""
        raise NotImplementedError  # pragma: no cover - only called when alpha_range is set


class SelectionRule(OpRule):
    """Each output element is related to one chosen input element (MaxPool)."""

    kind = "selection"

    def relax(self, node: Node, lo: Tensor, hi: Tensor) -> Relaxation:
        raise NotImplementedError  # pragma: no cover - abstract

    def unstable(self, node: Node, lo: Tensor, hi: Tensor) -> Tensor:
        """Input elements whose bounds the relaxation can depend on: tighter bounds of the
        others would give the same relaxation (every element unless the rule knows better)."""
        return torch.ones_like(lo, dtype=torch.bool)


class BilinearRule(OpRule):
    """``z = f(a, b)`` with both inputs perturbed and ``f`` linear in each (Mul, MatMul).

    The engine relaxes ``f`` by McCormick planes (:mod:`perturbkit.bounds.bilinear`) built
    from the two transposes below, so the rule writes no relaxation algebra.  "Fixed"
    operands there carry the batch dimension: shape ``(B, *node.in_shapes[i])``, while the
    coefficients ``A`` are ``(B, S, *node.out_shape)``.
    """

    kind = "bilinear"

    def transpose(self, node: Node, A: Tensor, fixed: Tensor, side: int) -> Tensor:
        """Coefficients on input ``side`` of ``<A, f(a, b)>`` with the other input fixed.

        Args:
            A: ``(B, S, *out_shape)``.
            fixed: the other input, ``(B, *node.in_shapes[1 - side])``.
        Returns:
            ``(B, S, *node.in_shapes[side])`` such that ``<A, f(a, b)> = <result, input side>``.
        """
        raise NotImplementedError  # pragma: no cover - abstract

    # alpha-CROWN: per output element and bound row, the weight ``t`` in [0, 1] of the first
    # McCormick plane against the second one (1: the planes of Shi et al. 2020)
    def alpha_range(self, node: Node) -> Optional[tuple[float, float]]:
        return (0.0, 1.0)


class IntervalRule(OpRule):
    """An operator bounded by its interval alone: CROWN relaxes it by the constant lines
    ``lo <= f(x) <= hi`` of its output interval, which depends on the inputs' intervals
    (so those get CROWN bounds first); no coefficient reaches the inputs."""

    kind = "interval"


class CompositeRule(OpRule):
    """An operator bounded through its decomposition (see :meth:`OpRule.lower`).

    Networks are lowered when they are built, so ``interval`` is never reached by the
    bound algorithms; it raises to make a misuse loud."""

    kind = "composite"

    def interval(self, node: Node, *xs) -> Interval:
        raise TypeError(f"{node.where()} is a composite operator: lower the graph first "
                        "(perturbkit.graph.lower.lower_graph)")

    def lower(self, node: Node, runtime: tuple[bool, ...], emit: "Emitter") -> bool:  # pragma: no cover
        raise NotImplementedError


def perturbed(xs: Sequence[object]) -> list[int]:
    """Indices of the perturbed arguments in a ``backward`` call (those passed as ``None``)."""
    return [i for i, x in enumerate(xs) if x is None]
