"""The SMT-LIB layer under the VNN-LIB reader: source text with ``FILE:LINE:COLUMN`` errors,
S-expressions (one regex scan, an explicit stack), numbers and linear terms.

Nothing here knows about boxes or outputs; :mod:`perturbkit.verify.vnnlib` gives the
S-expressions their VNN-LIB meaning.
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path

from perturbkit.errors import InputError

#: one token: a comment (skipped), "(", ")", or an atom (symbol or number)
_TOKEN = re.compile(r";[^\n]*|(\()|(\))|([^\s();]+)")
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?\Z")
_NUMERIC_START = re.compile(r"[-+]?\.?\d")
#: a VNN-LIB variable name: X_i (input i) or Y_j (output j)
VARIABLE = re.compile(r"([XY])_(0|[1-9]\d*)\Z")


class VnnlibError(InputError):
    """A malformed VNN-LIB (or counterexample) text; the message is ``FILE:LINE:COLUMN: what``."""

    def __init__(self, file: str, line: int, column: int, what: str):
        super().__init__(f"{file}:{line}:{column}: {what}")
        self.file, self.line, self.column, self.what = file, line, column, what

    def __reduce__(self):
        return type(self), (self.file, self.line, self.column, self.what)


class SList:
    """``( items... )`` starting at offset ``pos``."""

    __slots__ = ("items", "pos")

    def __init__(self, pos: int):
        self.items: list = []
        self.pos = pos


class Atom:
    """A symbol or number ``text`` at offset ``pos``."""

    __slots__ = ("text", "pos")

    def __init__(self, text: str, pos: int):
        self.text, self.pos = text, pos


class Source:
    """The text and its name; turns offsets into ``FILE:LINE:COLUMN`` errors."""

    def __init__(self, path_or_text, name: str | None):
        if isinstance(path_or_text, os.PathLike) or (
                isinstance(path_or_text, str) and path_or_text.strip()
                and "(" not in path_or_text and "\n" not in path_or_text):
            path = Path(path_or_text)
            try:
                self.text = path.read_text()
            except OSError as e:
                raise InputError(f"cannot read {path}: {e.strerror or e}") from e
            self.name = name or str(path)
        elif isinstance(path_or_text, str):
            self.text, self.name = path_or_text, name or "<string>"
        else:
            raise InputError(f"expected a path or VNN-LIB text, got {type(path_or_text).__name__}")

    def error(self, pos: int, what: str) -> VnnlibError:
        line = self.text.count("\n", 0, pos) + 1
        return VnnlibError(self.name, line, pos - self.text.rfind("\n", 0, pos), what)

    def read(self):
        """Yield the top-level S-expressions as each one closes (one regex scan, an explicit
        stack: no recursion; finished commands can be interpreted and dropped at once)."""
        cur: list = []
        stack: list = []
        for m in _TOKEN.finditer(self.text):
            kind = m.lastindex
            if kind == 3:
                if stack:
                    cur.append(Atom(m.group(3), m.start()))
                else:
                    yield Atom(m.group(3), m.start())
            elif kind == 1:
                node = SList(m.start())
                cur.append(node)
                stack.append((cur, node))
                cur = node.items
            elif kind == 2:
                if not stack:
                    raise self.error(m.start(), "unbalanced parentheses: ')' without a matching '('")
                cur, node = stack.pop()
                if not stack:
                    cur.clear()
                    yield node
        if stack:
            raise self.error(stack[0][1].pos, "unbalanced parentheses: this '(' is never closed")

    def number(self, atom: Atom) -> float | None:
        """The value of a numeric atom, None when the atom is not numeric."""
        if not _NUMERIC_START.match(atom.text):
            return None
        if not _NUMBER.match(atom.text):
            raise self.error(atom.pos, f"malformed number {atom.text!r} (expected e.g. 1, -0.5, .5, 1e-3)")
        v = float(atom.text)
        if not math.isfinite(v):
            raise self.error(atom.pos, f"number {atom.text!r} is out of the float64 range")
        return v


def postorder(root, children_of, leaf, combine):
    """Evaluate a tree bottom-up with an explicit stack (deep nesting cannot overflow)."""
    out: list = []
    stack = [(root, None)]
    while stack:
        node, kids = stack.pop()
        if kids is None:
            kids = children_of(node)
            if kids is None:
                out.append(leaf(node))
                continue
            stack.append((node, kids))
            stack.extend((k, None) for k in reversed(kids))
        else:
            cut = len(out) - len(kids)
            values = out[cut:]
            del out[cut:]
            out.append(combine(node, values))
    return out[0]


def head(src: Source, node: SList, what: str) -> str:
    if not node.items:
        raise src.error(node.pos, f"empty list '()' where {what} was expected")
    head = node.items[0]
    if not isinstance(head, Atom):
        raise src.error(head.pos, f"expected an operator name, got a list, in {what}")
    return head.text


# ---- linear terms: (coefficients {variable: c}, constant) -------------------------------------

def add_terms(a, b, sign: float):
    """``a + sign * b`` for linear terms ``(coefficients, constant)``."""
    coeffs = dict(a[0])
    for k, v in b[0].items():
        coeffs[k] = coeffs.get(k, 0.0) + sign * v
    return coeffs, a[1] + sign * b[1]


def _scale(a, c: float):
    return {k: c * v for k, v in a[0].items()}, c * a[1]


def _minus(src, node, args):
    if len(args) == 1:
        return _scale(args[0], -1.0)
    acc = args[0]
    for b in args[1:]:
        acc = add_terms(acc, b, -1.0)
    return acc


def _plus(src, node, args):
    acc = ({}, 0.0)
    for b in args:
        acc = add_terms(acc, b, 1.0)
    return acc


def _times(src, node, args):
    var = [a for a in args if a[0]]
    if len(var) > 1:
        raise src.error(node.pos, "nonlinear product: '*' may multiply at most one non-constant term")
    c = 1.0
    for a in args:
        if not a[0]:
            c *= a[1]
    return _scale(var[0], c) if var else ({}, c)


def _divide(src, node, args):
    if len(args) != 2 or args[1][0] or args[1][1] == 0.0:
        raise src.error(node.pos, "'/' needs a term and a nonzero constant divisor: (/ t c)")
    return {k: v / args[1][1] for k, v in args[0][0].items()}, args[0][1] / args[1][1]


_TERM_OPS = {"-": _minus, "+": _plus, "*": _times, "/": _divide}


def linear_term(src: Source, node, variable):
    """A linear term as ``(coefficients {key: c}, constant)``; ``variable(atom)`` resolves a
    symbol to a key (or raises).  Sums and negations of floats are exact for the terms
    :func:`~perturbkit.verify.vnnlib.format_vnnlib` writes."""

    def children(n):
        if isinstance(n, Atom):
            return None
        op = head(src, n, "a term")
        if op not in _TERM_OPS:
            raise src.error(n.items[0].pos, f"unknown operator {op!r} in a term; supported: "
                            + ", ".join(_TERM_OPS))
        if len(n.items) < 2:
            raise src.error(n.pos, f"'{op}' needs at least one argument")
        return n.items[1:]

    def leaf(a: Atom):
        v = src.number(a)
        return ({}, v) if v is not None else ({variable(a): 1.0}, 0.0)

    if isinstance(node, Atom):  # the common case, without the traversal machinery
        return leaf(node)
    return postorder(node, children, leaf,
                      lambda n, args: _TERM_OPS[n.items[0].text](src, n, args))
