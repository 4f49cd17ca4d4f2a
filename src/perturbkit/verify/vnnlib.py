"""A pure VNN-LIB reader and writer (no network, no torch): text <-> :class:`Property`.

VNN-LIB (https://www.vnnlib.org) is a subset of SMT-LIB 2: ``;`` comments,
``(declare-const X_i Real)`` for the inputs and ``(declare-const Y_j Real)`` for the outputs,
and ``(assert F)`` commands whose conjunction describes a *violation* of the network's safety
property.  Supported formulas ``F``:

* comparisons ``(<= a b)``, ``(>= a b)``, ``(< a b)``, ``(> a b)``, ``(= a b)`` (also chained,
  ``(<= a b c)`` meaning ``a <= b`` and ``b <= c``).  Strict ``<`` / ``>`` are read as
  ``<=`` / ``>=``: the set they describe is replaced by its closure, an over-approximation, so
  "unsat" stays sound (a "sat" witness should be re-checked against the network anyway).
  ``=`` is the conjunction of ``<=`` and ``>=``;
* ``(and F ...)``, ``(or F ...)`` nested arbitrarily, and the constants ``true`` / ``false``.

Terms ``a``, ``b`` are linear: variables, numbers (``1``, ``-0.5``, ``.5``, ``1e-3``),
``(- t)``, ``(- t1 t2 ...)``, ``(+ t ...)``, ``(* c t)`` and ``(/ t c)`` with constant ``c``.
The asserted formula is put in disjunctive normal form; every conjunction is then split into its
input part (a box: each constraint must bound a single ``X_i``; several bounds on one variable
are intersected) and its output part (rows ``C y <= d``).  ``y >= c`` becomes ``-y <= -c`` and
``y_i <= y_j`` becomes ``y_i - y_j <= 0``.  A comparison between constants is evaluated: true
drops it, false drops its conjunction, as does a conjunction whose box is empty.  Conjunctions
with equal boxes are merged into one :class:`Case` whose output is the disjunction of their
clauses (first-appearance order), so :func:`parse_vnnlib` returns grouped properties.
``set-logic``, ``set-info``, ``set-option``, ``check-sat``, ``get-model`` and ``exit`` commands
are ignored.

Every error is a :class:`VnnlibError` reading ``FILE:LINE:COLUMN: what is wrong``.
"""
from __future__ import annotations

import math

import numpy as np

from perturbkit.verify.smtlib import (VARIABLE, Atom, SList, Source, VnnlibError, add_terms, head,
                                      linear_term, postorder)
from perturbkit.verify.spec import Case, Clause, InputBox, OutputSpec, Property

__all__ = ["VnnlibError", "parse_vnnlib", "format_vnnlib", "format_counterexample",
           "parse_counterexample"]

#: the most conjunctions the disjunctive normal form may have before we refuse
MAX_DISJUNCTS = 100_000
_IGNORED_COMMANDS = frozenset({"set-logic", "set-info", "set-option", "check-sat", "get-model", "exit"})
#: comparison -> senses: +1 reads ``a - b <= 0``, -1 reads ``b - a <= 0``
_COMPARISONS = {"<=": (1,), "<": (1,), ">=": (-1,), ">": (-1,), "=": (1, -1)}


# ---- the interpreter -------------------------------------------------------------------------

class _Reader:
    """Declarations, then atoms (bounds and output rows) and the DNF of the asserts."""

    LOWER, UPPER, ROW = 0, 1, 2

    def __init__(self, src: Source):
        self.src = src
        self.declared: dict[tuple[str, int], int] = {}  # (kind, index) -> position
        self.kind: list[int] = []   # per atom: LOWER / UPPER / ROW
        self.var: list[int] = []    # X index (bounds)
        self.val: list[float] = []  # bound value or row right-hand side
        self.rows: dict[int, dict[int, float]] = {}  # atom -> {Y index: coefficient}
        self.dnfs: list[list[list[int]]] = []
        self.first_assert: int | None = None

    # commands
    def declare(self, node: SList) -> None:
        items = node.items
        if len(items) != 3 or not all(isinstance(a, Atom) for a in items[1:]):
            raise self.src.error(node.pos, "expected (declare-const NAME Real)")
        name, sort = items[1], items[2]
        m = VARIABLE.match(name.text)
        if not m:
            raise self.src.error(name.pos, f"unknown variable name {name.text!r}: VNN-LIB variables "
                                 "are X_i (inputs) and Y_j (outputs), i, j = 0, 1, ...")
        if sort.text != "Real":
            raise self.src.error(sort.pos, f"unsupported sort {sort.text!r} for {name.text}; expected Real")
        key = (m.group(1), int(m.group(2)))
        if key in self.declared:
            raise self.src.error(name.pos, f"{name.text} is declared twice")
        self.declared[key] = name.pos

    def assert_(self, node: SList) -> None:
        if len(node.items) != 2:
            raise self.src.error(node.pos, f"(assert F) takes one formula, got {len(node.items) - 1}")
        if self.first_assert is None:
            self.first_assert = node.pos
        dnf = self.formula(node.items[1])
        if len(dnf) == 1 and self.dnfs and len(self.dnfs[-1]) == 1:
            self.dnfs[-1][0].extend(dnf[0])  # runs of plain conjunctions stay one list
        else:
            self.dnfs.append(dnf)

    def command(self, node) -> None:
        if not isinstance(node, SList):
            raise self.src.error(node.pos, f"expected a command such as (declare-const ...) or "
                                 f"(assert ...), got {node.text!r}")
        op = head(self.src, node, "a command")
        if op in _IGNORED_COMMANDS:
            return
        handler = {"declare-const": self.declare, "assert": self.assert_}.get(op)
        if handler is None:
            raise self.src.error(node.items[0].pos, f"unknown command {op!r}; supported: declare-const, "
                                 "assert (and, ignored: " + ", ".join(sorted(_IGNORED_COMMANDS)) + ")")
        handler(node)

    # formulas -> DNF: a list of conjunctions, each a list of atom indices
    def formula(self, node) -> list[list[int]]:
        def children(n):
            if isinstance(n, SList) and n.items and isinstance(n.items[0], Atom) \
                    and n.items[0].text in ("and", "or"):
                return n.items[1:]
            return None

        def combine(n, dnfs):
            if n.items[0].text == "and":
                return self.conjunction(n.pos, dnfs)
            return [c for d in dnfs for c in d]

        if children(node) is None:  # a lone comparison, the common case
            return self.comparison(node)
        return postorder(node, children, self.comparison, combine)

    def conjunction(self, pos: int, dnfs) -> list[list[int]]:
        """The DNF of ``AND dnfs`` (order kept; runs of single-disjunct parts appended at once)."""
        result: list[list[int]] = [[]]
        pending: list[int] = []
        for d in dnfs:
            if len(d) == 1:
                pending.extend(d[0])
                continue
            if not d:
                return []
            if len(result) * len(d) > MAX_DISJUNCTS:
                raise self.src.error(pos, f"the formula has more than {MAX_DISJUNCTS} disjuncts in "
                                     "disjunctive normal form; split the property into several files")
            result = [c + pending + e for c in result for e in d]
            pending = []
        return [c + pending for c in result] if pending else result

    def variable(self, atom: Atom) -> tuple[str, int]:
        m = VARIABLE.match(atom.text)
        if m:
            key = (m.group(1), int(m.group(2)))
            if key in self.declared:
                return key
            raise self.src.error(atom.pos, f"undeclared variable {atom.text!r}: "
                                 f"add (declare-const {atom.text} Real) before its first use")
        raise self.src.error(atom.pos, f"unknown variable {atom.text!r}: VNN-LIB variables are X_i and Y_j")

    def comparison(self, node) -> list[list[int]]:
        src = self.src
        if isinstance(node, Atom):
            if node.text in ("true", "false"):
                return [[]] if node.text == "true" else []
            raise src.error(node.pos, f"expected a formula (a comparison <=, >=, <, >, =, or and / or), "
                            f"got {node.text!r}")
        op = head(src, node, "a formula")
        senses = _COMPARISONS.get(op)
        if senses is None:
            raise src.error(node.items[0].pos, f"unknown operator {op!r} in a formula; supported: "
                            "<=, >=, <, >, =, and, or")
        if len(node.items) < 3:
            raise src.error(node.pos, f"'{op}' needs at least two terms")
        fast = self.plain_bound(node, senses)
        if fast is not None:
            return [fast]
        terms = [linear_term(src, t, self.variable) for t in node.items[1:]]
        atoms: list[int] = []
        for a, b in zip(terms, terms[1:]):
            diff = add_terms(a, b, -1.0)
            for s in senses:  # s * (a - b) <= 0  <=>  s * coeffs . v <= -s * const
                coeffs = {k: s * v for k, v in diff[0].items() if v != 0.0}
                rhs = -s * diff[1]
                if not coeffs:
                    if 0.0 <= rhs:
                        continue
                    return []
                atoms.append(self.atom(node, coeffs, rhs))
        return [atoms]

    def plain_bound(self, node: SList, senses) -> list[int] | None:
        """``(op X_i c)`` or ``(op c X_i)`` (nearly every assert in practice), else None."""
        items = node.items
        if len(items) != 3 or not isinstance(items[1], Atom) or not isinstance(items[2], Atom):
            return None
        va, vb = self.src.number(items[1]), self.src.number(items[2])
        if (va is None) == (vb is None):
            return None
        var, c, flip = (items[1], vb, 1) if va is None else (items[2], va, -1)
        key = self.variable(var)
        if key[0] != "X":
            return None
        return [self.bound(key[1], s * flip > 0, c) for s in senses]

    def bound(self, i: int, upper: bool, value: float) -> int:
        self.kind.append(self.UPPER if upper else self.LOWER)
        self.var.append(i)
        self.val.append(value)
        return len(self.val) - 1

    def atom(self, node: SList, coeffs: dict, rhs: float) -> int:
        if not (math.isfinite(rhs) and all(math.isfinite(v) for v in coeffs.values())):
            raise self.src.error(node.pos, "the constraint's coefficients overflow float64")
        kinds = {k[0] for k in coeffs}
        if len(kinds) > 1:
            raise self.src.error(node.pos, "a constraint mixes input (X) and output (Y) variables; "
                                 "supported: bounds on one X_i, linear constraints on the Y_j")
        if kinds == {"X"}:
            if len(coeffs) > 1:
                names = ", ".join(f"X_{k[1]}" for k in coeffs)
                raise self.src.error(node.pos, f"an input constraint on several variables ({names}) is not "
                                     "a box; supported: bounds on one X_i")
            (key, a), = coeffs.items()
            if not math.isfinite(rhs / a):
                raise self.src.error(node.pos, "the bound overflows float64")
            return self.bound(key[1], a > 0, rhs / a)
        self.val.append(rhs)
        self.kind.append(self.ROW)
        self.var.append(-1)
        self.rows[len(self.val) - 1] = {k[1]: v for k, v in coeffs.items()}
        return len(self.val) - 1

    # assembling the property
    def size(self, kind: str) -> int:
        idx = sorted(i for k, i in self.declared if k == kind)
        for want, got in enumerate(idx):
            if want != got:
                raise self.src.error(self.declared[(kind, got)], f"{kind}_{got} is declared but "
                                     f"{kind}_{want} is not: variables must be {kind}_0 .. {kind}_(n-1)")
        if not idx:
            what = "input variables (X_0 ...)" if kind == "X" else "output variables (Y_0 ...)"
            raise self.src.error(len(self.src.text), f"no {what} are declared")
        return len(idx)

    def property(self) -> Property:
        n, m = self.size("X"), self.size("Y")
        dnf = self.conjunction(self.first_assert or 0, self.dnfs)
        kind = np.asarray(self.kind, dtype=np.int8)
        var = np.asarray(self.var, dtype=np.intp)
        val = np.asarray(self.val, dtype=np.float64)
        boxes: dict[bytes, InputBox | None] = {}
        groups: dict[InputBox, list[Clause]] = {}
        for k, conj in enumerate(dnf):
            idx = np.asarray(conj, dtype=np.intp)
            xs, ys = idx[kind[idx] != self.ROW], idx[kind[idx] == self.ROW]
            key = xs.tobytes()
            if key not in boxes:
                boxes[key] = self.box(xs, kind, var, val, n, k, len(dnf))
            box = boxes[key]
            if box is None:
                continue
            C = np.zeros((len(ys), m))
            for r, a in enumerate(ys.tolist()):
                for j, c in self.rows[a].items():
                    C[r, j] = c
            groups.setdefault(box, []).append(Clause(C, val[ys]))
        if not groups:
            raise self.src.error(self.first_assert or 0, "the asserted formula is false: every disjunct "
                                 "has a false constant comparison or an empty input box; nothing to verify")
        cases = tuple(Case(b, OutputSpec(tuple(cl))) for b, cl in groups.items())
        return Property(n, m, cases, source=self.src.name)

    def box(self, xs, kind, var, val, n: int, k: int, total: int) -> InputBox | None:
        lower, upper = np.full(n, -np.inf), np.full(n, np.inf)
        lo, hi = xs[kind[xs] == self.LOWER], xs[kind[xs] == self.UPPER]
        np.maximum.at(lower, var[lo], val[lo])
        np.minimum.at(upper, var[hi], val[hi])
        for side, arr in (("lower", lower), ("upper", upper)):
            free = np.flatnonzero(np.isinf(arr))
            if free.size:
                i = int(free[0])
                where = f" in disjunct {k + 1} of {total} of the asserted formula" if total > 1 else ""
                raise self.src.error(self.declared[("X", i)], f"input X_{i} has no {side} bound{where}; "
                                     "every input must be bounded on both sides")
        return None if (lower > upper).any() else InputBox(lower, upper)


def parse_vnnlib(path_or_text, *, name: str | None = None) -> Property:
    """Read a VNN-LIB property from a file path or from its text.

    Args:
        path_or_text: a path (``str`` without ``(`` or newline, or ``os.PathLike``) or the text.
        name: the name used in errors and ``Property.source`` (default: the path, or ``<string>``).
    Returns:
        the grouped :class:`Property` (one case per distinct input box).
    Raises:
        VnnlibError: malformed text, with ``FILE:LINE:COLUMN``.
    """
    src = Source(path_or_text, name)
    reader = _Reader(src)
    for node in src.read():
        reader.command(node)
    return reader.property()


# ---- writing ---------------------------------------------------------------------------------

def _row(c: np.ndarray, d: float) -> str:
    nz = np.flatnonzero(c)
    if len(nz) == 1 and c[nz[0]] in (1.0, -1.0):
        j = nz[0]
        return f"(<= Y_{j} {float(d)!r})" if c[j] == 1.0 else f"(>= Y_{j} {-float(d)!r})"
    if len(nz) == 2 and d == 0.0 and sorted(c[nz].tolist()) == [-1.0, 1.0]:
        i, j = nz if c[nz[0]] == 1.0 else nz[::-1]
        return f"(<= Y_{i} Y_{j})"
    terms = [f"(* {float(c[j])!r} Y_{j})" for j in nz]
    lhs = "0.0" if not terms else terms[0] if len(terms) == 1 else f"(+ {' '.join(terms)})"
    return f"(<= {lhs} {float(d)!r})"


def _rows(clause: Clause) -> list[str]:
    return [_row(c, d) for c, d in zip(clause.C, clause.d)]


def _bounds(box: InputBox) -> list[str]:
    out = []
    for i, (lo, hi) in enumerate(zip(box.lower.tolist(), box.upper.tolist())):
        out += [f"(<= X_{i} {hi!r})", f"(>= X_{i} {lo!r})"]
    return out


def _or_of_ands(conjunctions: list[list[str]]) -> str:
    body = "\n".join(f"    (and {' '.join(c)})" if c else "    (and)" for c in conjunctions)
    return f"(assert (or\n{body}\n))"


def format_vnnlib(prop: Property) -> str:
    """VNN-LIB text for ``prop``; ``parse_vnnlib(format_vnnlib(p)) == p`` for grouped ``p``.

    Floats are written with ``repr`` (exact round trip).  One case: one assert per bound, then
    the output (one assert per row, or an ``or`` of ``and`` s for several clauses).  Several
    cases sharing one output: an ``or`` of boxes, then the output.  Otherwise one ``or`` of
    ``(and box clause)`` for every case and clause.  An always-true clause is written ``(and)``;
    an all-zero row as a constant comparison (which the parser evaluates away).
    """
    lines = [f"; {' '.join(prop.source.split())} (written by perturbkit)"]
    lines += [f"(declare-const X_{i} Real)" for i in range(prop.n_inputs)]
    lines += [f"(declare-const Y_{j} Real)" for j in range(prop.n_outputs)]
    cases = prop.cases

    def output(spec: OutputSpec) -> list[str]:
        if len(spec.clauses) == 1:
            return [f"(assert {r})" for r in _rows(spec.clauses[0])]
        return [_or_of_ands([_rows(c) for c in spec.clauses])]

    if len(cases) == 1:
        lines += [f"(assert {b})" for b in _bounds(cases[0].box)] + output(cases[0].output)
    elif all(c.output == cases[0].output for c in cases):
        lines += [_or_of_ands([_bounds(c.box) for c in cases])] + output(cases[0].output)
    else:
        lines.append(_or_of_ands([_bounds(c.box) + _rows(cl) for c in cases for cl in c.output.clauses]))
    return "\n".join(lines) + "\n"


# ---- counterexamples (VNN-COMP result files) -------------------------------------------------

def format_counterexample(x, y, *, with_result: bool = False) -> str:
    """``((X_0 v)\\n (X_1 v)\\n ... (Y_0 v)\\n ...)`` as in VNN-COMP ``sat`` result files.

    ``with_result=True`` puts the ``sat`` line of a result file first.  Values use ``repr``.
    """
    xs = np.asarray(x, dtype=np.float64).reshape(-1).tolist()
    ys = np.asarray(y, dtype=np.float64).reshape(-1).tolist()
    pairs = [f"(X_{i} {v!r})" for i, v in enumerate(xs)] + [f"(Y_{j} {v!r})" for j, v in enumerate(ys)]
    return ("sat\n" if with_result else "") + "(" + "\n ".join(pairs) + ")\n"


def parse_counterexample(path_or_text, *, name: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` (float64, shapes ``(n_inputs,)`` and ``(n_outputs,)``) from a counterexample.

    Accepts the bare assignment ``((X_0 v) ... (Y_0 v) ...)`` and a result file starting
    with ``sat``.  Indices must be contiguous from 0.
    """
    src = Source(path_or_text, name)
    nodes = list(src.read())
    if nodes and isinstance(nodes[0], Atom):
        if nodes[0].text.lower() != "sat":
            raise src.error(nodes[0].pos, f"the result is {nodes[0].text!r}, not sat: "
                            "there is no counterexample")
        nodes = nodes[1:]
    if len(nodes) != 1 or not isinstance(nodes[0], SList):
        raise src.error(nodes[1].pos if len(nodes) > 1 else 0,
                        "expected one list of assignments ((X_0 value) ... (Y_0 value) ...)")

    def not_a_number(atom: Atom):
        raise src.error(atom.pos, f"expected a number, got {atom.text!r}")

    values: dict[tuple[str, int], float] = {}
    first: dict[tuple[str, int], int] = {}
    for item in nodes[0].items:
        if not (isinstance(item, SList) and len(item.items) == 2 and isinstance(item.items[0], Atom)):
            raise src.error(item.pos, "expected an assignment (X_i value) or (Y_j value)")
        var = item.items[0]
        m = VARIABLE.match(var.text)
        if not m:
            raise src.error(var.pos, f"unknown variable {var.text!r}: expected X_i or Y_j")
        key = (m.group(1), int(m.group(2)))
        if key in values:
            raise src.error(var.pos, f"{var.text} is assigned twice")
        values[key] = linear_term(src, item.items[1], not_a_number)[1]
        if not math.isfinite(values[key]):
            raise src.error(item.items[1].pos, "the value overflows float64")
        first[key] = var.pos
    out = []
    for kind in ("X", "Y"):
        idx = sorted(i for k, i in values if k == kind)
        if not idx:
            raise src.error(nodes[0].pos, f"no {kind}_i is assigned: a counterexample gives every "
                            "input X_i and output Y_j")
        for want, got in enumerate(idx):
            if want != got:
                raise src.error(first[(kind, got)], f"{kind}_{got} is assigned but {kind}_{want} is not")
        out.append(np.array([values[(kind, i)] for i in idx], dtype=np.float64))
    return out[0], out[1]
