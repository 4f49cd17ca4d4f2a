"""Verification properties: input boxes and linear output constraints (what a VNN-LIB file says).

A :class:`Property` describes a *violation*: it is SATISFIED (a counterexample exists) iff for
some :class:`Case` there is an input ``x`` in ``case.box`` whose output ``y = f(x)`` satisfies
``case.output``.  An :class:`OutputSpec` is a disjunction of :class:`Clause` s and a clause is a
conjunction of linear inequalities ``C y <= d``.  So a property is the disjunctive normal form

    OR_case ( x in box_case  AND  OR_clause ( C_clause y <= d_clause ) )

which is exactly what a verifier consumes: bound ``C f(x)`` over each box once, for every clause
of that box.  All containers are frozen; the arrays are float64 read-only copies.

Shapes:
    InputBox.lower, InputBox.upper: ``(n_inputs,)``
    Clause.C: ``(k, n_outputs)``, Clause.d: ``(k,)`` (``k = 0``: the clause always holds)
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from perturbkit.errors import InputError


def _frozen_array(a, *, name: str, ndim: int) -> np.ndarray:
    """A read-only float64 copy of ``a`` with ``ndim`` dimensions and finite entries."""
    try:
        out = np.array(a, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise InputError(f"{name} must be an array of numbers ({e})") from e
    if out.ndim != ndim:
        raise InputError(f"{name} must have {ndim} dimension(s), got shape {out.shape}")
    if not np.isfinite(out).all():
        raise InputError(f"{name} contains NaN or inf")
    out.setflags(write=False)
    return out


def _key(a: np.ndarray) -> bytes:
    """Bytes that are equal iff the arrays are equal (``-0.0`` and ``0.0`` fold together)."""
    return (a + 0.0).tobytes()


@dataclass(frozen=True, eq=False)
class InputBox:
    """The axis-aligned box ``lower <= x <= upper`` (every input bounded on both sides).

    Shapes: lower, upper: ``(n_inputs,)``.
    """

    lower: np.ndarray
    upper: np.ndarray

    def __post_init__(self) -> None:
        lo = _frozen_array(self.lower, name="InputBox.lower", ndim=1)
        hi = _frozen_array(self.upper, name="InputBox.upper", ndim=1)
        if lo.shape != hi.shape:
            raise InputError(f"InputBox bounds differ in shape: lower {lo.shape}, upper {hi.shape}")
        bad = np.flatnonzero(lo > hi)
        if bad.size:
            i = int(bad[0])
            raise InputError(f"InputBox is empty: X_{i} has lower {lo[i]!r} > upper {hi[i]!r}")
        object.__setattr__(self, "lower", lo)
        object.__setattr__(self, "upper", hi)

    @property
    def n(self) -> int:
        return int(self.lower.shape[0])

    def contains(self, x, *, tol: float = 0.0) -> bool:
        """``lower - tol <= x <= upper + tol`` for the flattened ``x``."""
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        return x.shape == self.lower.shape and bool(
            np.all(x >= self.lower - tol) and np.all(x <= self.upper + tol))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, InputBox):
            return NotImplemented
        return np.array_equal(self.lower, other.lower) and np.array_equal(self.upper, other.upper)

    def __hash__(self) -> int:
        return hash((_key(self.lower), _key(self.upper)))

    def __repr__(self) -> str:
        return f"InputBox(lower={self.lower!r}, upper={self.upper!r})"


@dataclass(frozen=True, eq=False)
class Clause:
    """The conjunction of linear constraints ``C y <= d`` on the outputs.

    Shapes: C: ``(k, n_outputs)``, d: ``(k,)``; ``k = 0`` is the always-true clause.
    """

    C: np.ndarray
    d: np.ndarray

    def __post_init__(self) -> None:
        C = _frozen_array(self.C, name="Clause.C", ndim=2)
        d = _frozen_array(self.d, name="Clause.d", ndim=1)
        if C.shape[0] != d.shape[0]:
            raise InputError(f"Clause has {C.shape[0]} rows in C but {d.shape[0]} entries in d")
        object.__setattr__(self, "C", C)
        object.__setattr__(self, "d", d)

    @property
    def n_outputs(self) -> int:
        return int(self.C.shape[1])

    def satisfied(self, y, *, tol: float = 0.0) -> bool:
        """``C y <= d + tol`` (every row)."""
        y = np.asarray(y, dtype=np.float64).reshape(-1)
        return bool(np.all(self.C @ y <= self.d + tol))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Clause):
            return NotImplemented
        return (self.C.shape == other.C.shape and np.array_equal(self.C, other.C)
                and np.array_equal(self.d, other.d))

    def __hash__(self) -> int:
        return hash((self.C.shape, _key(self.C), _key(self.d)))

    def __repr__(self) -> str:
        return f"Clause(C={self.C!r}, d={self.d!r})"


@dataclass(frozen=True)
class OutputSpec:
    """A disjunction of :class:`Clause` s (at least one): satisfied iff some clause is."""

    clauses: tuple[Clause, ...]

    def __post_init__(self) -> None:
        clauses = tuple(self.clauses)
        if not clauses:
            raise InputError("OutputSpec needs at least one clause (an empty disjunction is false)")
        if not all(isinstance(c, Clause) for c in clauses):
            raise InputError("OutputSpec.clauses must be Clause objects")
        widths = {c.n_outputs for c in clauses}
        if len(widths) > 1:
            raise InputError(f"OutputSpec clauses constrain different numbers of outputs: {sorted(widths)}")
        object.__setattr__(self, "clauses", clauses)

    @property
    def n_outputs(self) -> int:
        return self.clauses[0].n_outputs

    def satisfied(self, y, *, tol: float = 0.0) -> bool:
        return any(c.satisfied(y, tol=tol) for c in self.clauses)


@dataclass(frozen=True)
class Case:
    """``x in box`` and ``output`` holds at ``y = f(x)``."""

    box: InputBox
    output: OutputSpec


@dataclass(frozen=True)
class Property:
    """A VNN-LIB property: satisfied (a counterexample exists) iff some case is.

    ``source`` names where it came from (a file path, ``<string>``); it is not compared.
    """

    n_inputs: int
    n_outputs: int
    cases: tuple[Case, ...]
    source: str = field(default="<memory>", compare=False)

    def __post_init__(self) -> None:
        cases = tuple(self.cases)
        if not cases:
            raise InputError(f"{self.source}: a property needs at least one case")
        for k, case in enumerate(cases):
            if case.box.n != self.n_inputs:
                raise InputError(f"{self.source}: case {k} has a box over {case.box.n} inputs, "
                                 f"the property declares {self.n_inputs}")
            if case.output.n_outputs != self.n_outputs:
                raise InputError(f"{self.source}: case {k} constrains {case.output.n_outputs} outputs, "
                                 f"the property declares {self.n_outputs}")
        object.__setattr__(self, "cases", cases)

    def groups(self) -> tuple[Case, ...]:
        """The cases with identical boxes merged (first-appearance order, clauses concatenated).

        A verifier handles each returned box once, with all of its output clauses.  Properties
        from :func:`~perturbkit.verify.vnnlib.parse_vnnlib` are already grouped.
        """
        merged: dict[InputBox, list[Clause]] = {}
        for case in self.cases:
            merged.setdefault(case.box, []).extend(case.output.clauses)
        return tuple(Case(box, OutputSpec(tuple(cl))) for box, cl in merged.items())

    def is_counterexample(self, x, y, *, tol: float = 0.0) -> bool:
        """Whether ``(x, y)`` lies in some case: ``x`` in its box and ``y`` satisfies its output.

        ``tol`` loosens both the box and the output constraints (witnesses are often float32).
        """
        return any(c.box.contains(x, tol=tol) and c.output.satisfied(y, tol=tol) for c in self.cases)


def check_sizes(prop: Property, n_inputs: int, n_outputs: int) -> None:
    """Raise :class:`InputError` unless ``prop`` has ``n_inputs`` inputs and ``n_outputs`` outputs."""
    problems = []
    for what, name, have, want in (("inputs", "X", prop.n_inputs, n_inputs),
                                   ("outputs", "Y", prop.n_outputs, n_outputs)):
        if have != want:
            problems.append(f"{have} {what} ({name}_0..{name}_{have - 1}) but the network has {want}")
    if problems:
        raise InputError(f"property {prop.source} does not fit the network: it declares "
                         + "; and ".join(problems))
