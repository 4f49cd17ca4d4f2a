"""A graph value as a polynomial in its atoms, for the pattern fusions of :mod:`perturbkit.graph.fuse`.

Exporters spell one function in many orders and groupings (``x * 0.5 * (1 + erf(x / s))``,
``(x * 0.5) * (1 + erf(x * (1 / s)))``, ``0.5 * x + 0.5 * x * erf(...)``, ``x * x * x`` or
``Pow(x, 3)``, ...).  Expanded into a polynomial they are all the same, so a pattern checks
one polynomial instead of enumerating spellings.

:meth:`Expansion.expand` walks back from a value through Add, Sub, Mul, Neg, Div by a
scalar constant and Pow by a small positive integer constant, entering a producer only when
its value is read once (the root excepted), and stops at *atoms*: values made by any other
operator, read more than once, or the graph input.  Scalar constants become coefficients; a
tensor constant makes the expansion fail (``None``), as does growing past
:data:`MAX_TERMS` terms, degree :data:`MAX_DEGREE` or :data:`MAX_NODES` nodes.

A polynomial is a dict ``monomial -> coefficient`` (float64), a monomial a sorted tuple of
``(atom name, power)`` pairs (``()`` for the constant term); zero terms are dropped.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from perturbkit.graph.ir import Node

if TYPE_CHECKING:  # pragma: no cover - typing only
    from perturbkit.graph.fuse import Index

Monomial = tuple[tuple[str, int], ...]
Poly = dict[Monomial, float]
MAX_TERMS, MAX_DEGREE, MAX_NODES = 8, 4, 24


def mul(p: Poly, q: Poly) -> Optional[Poly]:
    out: Poly = {}
    for m1, c1 in p.items():
        for m2, c2 in q.items():
            powers = dict(m1)
            for a, k in m2:
                powers[a] = powers.get(a, 0) + k
            if sum(powers.values()) > MAX_DEGREE:
                return None
            m = tuple(sorted(powers.items()))
            out[m] = out.get(m, 0.0) + c1 * c2
    return _trim(out)


def add(p: Poly, q: Poly, sign: float = 1.0) -> Optional[Poly]:
    out = dict(p)
    for m, c in q.items():
        out[m] = out.get(m, 0.0) + sign * c
    return _trim(out)


def _trim(p: Poly) -> Optional[Poly]:
    p = {m: c for m, c in p.items() if c != 0.0}
    return p if len(p) <= MAX_TERMS else None


def scalar(idx: "Index", value: str) -> Optional[float]:
    """The value of a one-element constant, else None."""
    t = idx.graph.constants.get(value)
    return float(t.reshape(-1)[0]) if t is not None and t.numel() == 1 else None


def atoms(p: Poly) -> set[str]:
    return {a for m in p for a, _ in m}


class Expansion:
    """Expands values of ``idx.graph``; ``nodes`` lists the nodes it went through."""

    def __init__(self, idx: "Index"):
        self.idx = idx
        self.nodes: list[Node] = []

    def _power(self, node: Node) -> Optional[int]:
        e = scalar(self.idx, node.inputs[1])
        return int(e) if e is not None and e == int(e) and 1 <= e <= MAX_DEGREE else None

    def _expandable(self, node: Node) -> bool:
        op = node.op_type
        if op in ("Add", "Sub", "Mul"):
            return len(node.inputs) == 2
        if op == "Div":
            return bool(scalar(self.idx, node.inputs[1]))
        if op == "Pow":
            return self._power(node) is not None
        return op == "Neg"

    def expand(self, value: str, root: bool = False) -> Optional[Poly]:
        c = scalar(self.idx, value)
        if c is not None:
            return {(): c} if c != 0.0 else {}
        if value in self.idx.graph.constants:
            return None
        node = self.idx.producer.get(value)
        if node is None or not self._expandable(node) or not (root or self.idx.single_use(value)):
            return {((value, 1),): 1.0}
        if len(self.nodes) >= MAX_NODES:
            return None
        self.nodes.append(node)
        a = self.expand(node.inputs[0])
        if a is None:
            return None
        if node.op_type == "Neg":
            return {m: -c for m, c in a.items()}
        if node.op_type == "Div":
            d = scalar(self.idx, node.inputs[1])
            return {m: c / d for m, c in a.items()}
        if node.op_type == "Pow":
            out: Optional[Poly] = {(): 1.0}
            for _ in range(self._power(node)):
                out = mul(out, a) if out is not None else None
            return out
        b = self.expand(node.inputs[1])
        if b is None:
            return None
        return mul(a, b) if node.op_type == "Mul" else add(a, b, 1.0 if node.op_type == "Add" else -1.0)
