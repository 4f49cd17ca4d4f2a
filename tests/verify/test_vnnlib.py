"""VNN-LIB reader/writer: every benchmark file parses (fast, sizes matching its networks), the
print/parse round trip is exact, hand-checked semantics, errors that say FILE:LINE:COLUMN, and
the VNN-COMP counterexample files.  Fixtures in tests/data/vnnlib keep it running without
../shared/benchmarks."""
from __future__ import annotations

import csv
import functools
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from perturbkit.errors import InputError
from perturbkit.verify import (Case, Clause, InputBox, OutputSpec, Property, VnnlibError, check_sizes,
                               format_counterexample, format_vnnlib, parse_counterexample, parse_vnnlib)
from tests.conftest import DATA, SHARED

VNN = DATA / "vnnlib"
LOCAL_ONNX = DATA / "onnx"
ACAS = LOCAL_ONNX / "ACASXU_run2a_1_1_batch_2000.onnx"
#: local fixture -> the network (or the sizes) it belongs to
LOCAL_SIZES = {
    "prop_1": ACAS, "prop_2": ACAS, "prop_6": ACAS, "test_prop": ACAS,
    "test_nano": LOCAL_ONNX / "test_nano.onnx", "test_small": LOCAL_ONNX / "test_small.onnx",
    "dubinsrejoin_case_safe_10": (8, 8), "lunarlander_case_safe_37": (8, 4), "gcas_1": (14, 14),
}


def _shared(pattern: str) -> list[Path]:
    return sorted(SHARED.glob(pattern)) if SHARED.exists() else []


SHARED_VNNLIB = _shared("*/vnnlib/*.vnnlib")
ALL_VNNLIB = sorted(VNN.glob("*.vnnlib")) + SHARED_VNNLIB
ALL_CEX = sorted(VNN.glob("*.counterexample")) + _shared("*/counterexamples/*.counterexample")


@functools.lru_cache(maxsize=None)
def parsed(path: Path) -> tuple[Property, float]:
    t = time.perf_counter()
    prop = parse_vnnlib(path)
    return prop, time.perf_counter() - t


@functools.lru_cache(maxsize=None)
def onnx_sizes(path: Path) -> tuple[int, int]:
    """(inputs, outputs) of an ONNX network, batch dimensions counted as 1."""
    g = onnx.load(str(path)).graph
    inits = {t.name for t in g.initializer}

    def numel(v) -> int:
        return int(np.prod([d.dim_value if d.dim_value > 0 else 1 for d in v.type.tensor_type.shape.dim]))

    return numel([v for v in g.input if v.name not in inits][0]), numel(g.output[0])


@functools.lru_cache(maxsize=None)
def networks_of() -> dict[Path, set[Path]]:
    out: dict[Path, set[Path]] = {}
    for csv_path in _shared("*/instances.csv"):
        for row in csv.reader(csv_path.read_text().splitlines()):
            if len(row) >= 2:
                vnn = (csv_path.parent / row[1].strip()).resolve()
                out.setdefault(vnn, set()).add(csv_path.parent / row[0].strip())
    return out


def _id(p: Path) -> str:
    return f"{p.parent.parent.name}/{p.name}" if p.parent.name in ("vnnlib", "counterexamples") else p.name


def grouped(p: Property) -> Property:
    return Property(p.n_inputs, p.n_outputs, p.groups())


# ---- 1. every file parses, quickly, with the sizes of its networks ---------------------------

@pytest.mark.parametrize("path", ALL_VNNLIB, ids=_id)
def test_benchmark_file_parses_with_network_sizes(path):
    prop, seconds = parsed(path)
    assert seconds < 1.0, f"{path} took {seconds:.2f}s to parse"
    assert prop.source == str(path)
    if path.parent == VNN:
        want = LOCAL_SIZES[path.stem]
        nets = [want] if isinstance(want, Path) else []
        if not nets:
            check_sizes(prop, *want)
    else:
        nets = networks_of().get(path.resolve(), set())
        assert nets, f"{path} is in no instances.csv row"
    for net in sorted(nets):
        check_sizes(prop, *onnx_sizes(net))
    for case in prop.cases:  # parse output is grouped, boxes are bounded and nonempty
        assert np.isfinite(case.box.lower).all() and (case.box.lower <= case.box.upper).all()
    assert prop.groups() == prop.cases


def test_check_sizes_message():
    prop, _ = parsed(VNN / "prop_1.vnnlib")
    check_sizes(prop, 5, 5)
    with pytest.raises(InputError, match=r"prop_1.vnnlib.*5 inputs \(X_0\.\.X_4\) but the network has 784"):
        check_sizes(prop, 784, 5)
    with pytest.raises(InputError, match="5 outputs .* but the network has 10"):
        check_sizes(prop, 5, 10)


# ---- 2. round trips --------------------------------------------------------------------------

_floats = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)
_coeffs = st.one_of(st.sampled_from([0.0, 1.0, -1.0, 2.0, -0.5, 3.0]), _floats)


@st.composite
def properties(draw) -> Property:
    n, m = draw(st.integers(1, 4)), draw(st.integers(1, 4))

    def box() -> InputBox:
        a = np.array(draw(st.lists(_floats, min_size=n, max_size=n)))
        b = np.array(draw(st.lists(_floats, min_size=n, max_size=n)))
        return InputBox(np.minimum(a, b), np.maximum(a, b))

    def clause() -> Clause:
        k = draw(st.integers(0, 3))
        C = np.array(draw(st.lists(st.lists(_coeffs, min_size=m, max_size=m), min_size=k, max_size=k)),
                     dtype=np.float64).reshape(k, m)
        for r in range(k):  # an all-zero row is a constant comparison, evaluated away by the parser
            if not C[r].any():
                C[r, draw(st.integers(0, m - 1))] = draw(st.sampled_from([1.0, -1.0, 0.25]))
        return Clause(C, np.array(draw(st.lists(_floats, min_size=k, max_size=k)), dtype=np.float64))

    def output() -> OutputSpec:
        return OutputSpec(tuple(clause() for _ in range(draw(st.integers(1, 3)))))

    n_cases = draw(st.integers(1, 3))
    shared = output() if draw(st.booleans()) else None
    boxes = [box() for _ in range(n_cases)]
    if n_cases > 1 and draw(st.booleans()):
        boxes[-1] = boxes[0]  # equal boxes are merged by the parser
    return Property(n, m, tuple(Case(b, shared or output()) for b in boxes))


@settings(max_examples=150, deadline=None)
@given(properties())
def test_format_parse_round_trip(prop):
    back = parse_vnnlib(format_vnnlib(prop))
    assert back == grouped(prop)
    if len(set(c.box for c in prop.cases)) == len(prop.cases):
        assert back == prop


_BIG = {}
for _p in SHARED_VNNLIB:  # every small file, and the first two large ones of each benchmark
    if _p.stat().st_size > 50_000:
        _BIG.setdefault(_p.parent, []).append(_p)
ROUND_TRIP = [p for p in ALL_VNNLIB if p.stat().st_size <= 50_000] + [p for v in _BIG.values()
                                                                       for p in v[:2]]


@pytest.mark.parametrize("path", ROUND_TRIP, ids=_id)
def test_benchmark_round_trip(path):
    prop, _ = parsed(path)
    assert parse_vnnlib(format_vnnlib(prop)) == prop


# ---- 3. semantics --------------------------------------------------------------------------

def test_acasxu_prop_1():
    prop, _ = parsed(VNN / "prop_1.vnnlib")
    assert (prop.n_inputs, prop.n_outputs, len(prop.cases)) == (5, 5, 1)
    box, (clause,) = prop.cases[0].box, prop.cases[0].output.clauses
    np.testing.assert_array_equal(box.lower, [0.6, -0.5, -0.5, 0.45, -0.5])
    np.testing.assert_array_equal(box.upper, [0.679857769, 0.5, 0.5, 0.5, -0.45])
    np.testing.assert_array_equal(clause.C, [[-1.0, 0, 0, 0, 0]])  # Y_0 >= c  ->  -Y_0 <= -c
    np.testing.assert_array_equal(clause.d, [-3.991125645861615])


def test_acasxu_prop_6_two_boxes():
    prop, _ = parsed(VNN / "prop_6.vnnlib")
    assert len(prop.cases) == 2
    np.testing.assert_array_equal([c.box.upper[1] for c in prop.cases], [0.499999896, -0.11140846])
    for case in prop.cases:
        assert len(case.output.clauses) == 4
        for j, clause in enumerate(case.output.clauses, start=1):  # Y_j <= Y_0
            want = np.zeros((1, 5))
            want[0, j], want[0, 0] = 1.0, -1.0
            np.testing.assert_array_equal(clause.C, want)
            np.testing.assert_array_equal(clause.d, [0.0])


def test_disjunctive_output_and_mixed_disjunct():
    prop, _ = parsed(VNN / "dubinsrejoin_case_safe_10.vnnlib")
    assert len(prop.cases) == 1
    assert [c.C.shape for c in prop.cases[0].output.clauses] == [(6, 8)] * 15
    mixed, _ = parsed(VNN / "test_small.vnnlib")  # (or (and (>= X_0 -1) (<= X_0 1) (>= Y_0 100)))
    want = Case(InputBox([-1.0], [1.0]), OutputSpec((Clause([[-1.0]], [-100.0]),)))
    assert mixed == Property(1, 1, (want,))


def _decl(n: int, m: int) -> str:
    return "".join(f"(declare-const X_{i} Real)\n" for i in range(n)) + \
        "".join(f"(declare-const Y_{j} Real)\n" for j in range(m))


def test_constants_two_variable_rows_and_linear_terms():
    prop = parse_vnnlib(_decl(1, 2) + """
        (assert (>= X_0 (- 0.5)))  ; unary minus
        (assert (<= X_0 .5))
        (assert (<= Y_0 Y_1))
        (assert (>= Y_1 1e-3))
        (assert (< (+ Y_0 (* 2 Y_1)) (- 3 1)))   ; strict read as <=
        (assert (<= 0.5 X_0 1))                  ; a chain: both bounds tightened
    """)
    (case,) = prop.cases
    np.testing.assert_array_equal([case.box.lower, case.box.upper], [[0.5], [0.5]])
    (clause,) = case.output.clauses
    np.testing.assert_array_equal(clause.C, [[1.0, -1.0], [0.0, -1.0], [1.0, 2.0]])
    np.testing.assert_array_equal(clause.d, [0.0, -1e-3, 2.0])


def test_equalities_constants_and_grouping():
    prop = parse_vnnlib(_decl(1, 1) + """
        (assert (or (and (>= X_0 0) (<= X_0 1) (<= Y_0 0) (<= 0 1))
                    (and (= X_0 2.5) (>= Y_0 5))
                    (and (>= X_0 0) (<= X_0 1) (>= Y_0 7))
                    (and (>= X_0 0) (<= X_0 1) (<= 1 0) (>= Y_0 9))
                    (and (>= X_0 3) (<= X_0 2) (>= Y_0 9))))   ; false constant; empty box
    """, name="mixed.vnnlib")
    assert prop.source == "mixed.vnnlib"
    assert [(c.box.lower[0], c.box.upper[0]) for c in prop.cases] == [(0.0, 1.0), (2.5, 2.5)]
    assert [cl.d.tolist() for cl in prop.cases[0].output.clauses] == [[0.0], [-7.0]]
    assert prop.is_counterexample([0.5], [8.0]) and not prop.is_counterexample([0.5], [3.0])
    assert prop.is_counterexample([2.5], [5.0]) and not prop.is_counterexample([2.0], [9.0])


def test_groups_merges_equal_boxes():
    b = InputBox([0.0], [1.0])
    c1, c2 = Clause([[1.0]], [0.0]), Clause([[-1.0]], [-2.0])
    prop = Property(1, 1, (Case(b, OutputSpec((c1,))), Case(InputBox([0.0], [2.0]), OutputSpec((c1,))),
                           Case(InputBox([0.0], [1.0]), OutputSpec((c2,)))))
    assert prop.groups() == (Case(b, OutputSpec((c1, c2))), prop.cases[1])
    with pytest.raises(InputError, match="empty"):
        InputBox([1.0], [0.0])


# ---- 4. errors say FILE:LINE:COLUMN --------------------------------------------------------

_D = _decl(1, 1)  # two lines
ERRORS = [
    ("unclosed", _D + "(assert (<= X_0 1)\n", 3, 1, "never closed"),
    ("extra-close", _D + "(assert (<= X_0 1)))\n", 3, 20, "without a matching"),
    ("undeclared", _D + "(assert (<= X_1 1))", 3, 13, "undeclared variable 'X_1'"),
    ("unknown-var", _D + "(assert (<= Z 1))", 3, 13, "unknown variable 'Z'"),
    ("bad-number", _D + "(assert (>= X_0 0))\n(assert  (<= X_0 1.2.3))", 4, 18, "malformed number '1.2.3'"),
    ("bad-exponent", _D + "(assert (<= X_0 1e))", 3, 17, "malformed number"),
    ("no-lower", _D + "(assert (<= X_0 1))", 1, 16, "X_0 has no lower bound"),
    ("no-upper", _decl(2, 1) + "(assert (or (and (>= X_0 0) (<= X_0 1) (>= X_1 0) (<= X_1 1))\n"
     "                 (and (>= X_0 0) (<= X_0 1) (>= X_1 0))))",
     2, 16, "X_1 has no upper bound in disjunct 2 of 2"),
    ("unknown-op", _D + "(assert (>= X_0 0))\n  (assert (<== X_0 1))", 4, 12, "unknown operator '<=='"),
    ("unknown-term-op", _D + "(assert (<= (sin X_0) 1))", 3, 14, "unknown operator 'sin' in a term"),
    ("not-a-formula", _D + "(assert X_0)", 3, 9, "expected a formula"),
    ("assert-arity", _D + "(assert (<= X_0 1) (>= X_0 0))", 3, 1, "takes one formula"),
    ("unknown-command", _D + "(declare-fun X_1 () Real)", 3, 2, "unknown command 'declare-fun'"),
    ("mixed-xy", _D + "(assert (<= X_0 Y_0))", 3, 9, "mixes input (X) and output (Y)"),
    ("two-inputs", _decl(2, 1) + "(assert (<= X_0 X_1))", 4, 9, "several variables (X_0, X_1)"),
    ("gap", "(declare-const X_0 Real)\n(declare-const X_2 Real)\n(declare-const Y_0 Real)",
     2, 16, "X_1 is not"),
    ("twice", _D + "(declare-const X_0 Real)", 3, 16, "declared twice"),
    ("sort", "(declare-const X_0 Int)", 1, 20, "unsupported sort 'Int'"),
    ("nonlinear", _decl(1, 2) + "(assert (<= (* Y_0 Y_1) 1))", 4, 13, "nonlinear product"),
    ("overflow", _D + "(assert (<= (* 1e300 1e300 Y_0) 1))", 3, 9, "overflow"),
    ("no-outputs", "(declare-const X_0 Real)\n(assert (<= X_0 1))", 2, 20, "no output variables"),
    ("all-false", _D + "(assert (>= X_0 0))\n(assert (<= X_0 1))\n"
     "(assert (or (<= 1 0) (and (<= Y_0 1) false)))",
     3, 1, "the asserted formula is false"),
    ("stray-atom", _D + "assert", 3, 1, "expected a command"),
]


@pytest.mark.parametrize("text,line,col,what", [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_errors_say_where(text, line, col, what):
    with pytest.raises(VnnlibError) as info:
        parse_vnnlib(text, name="bad.vnnlib")
    err = info.value
    assert isinstance(err, InputError)
    assert (err.file, err.line, err.column) == ("bad.vnnlib", line, col), str(err)
    assert str(err).startswith(f"bad.vnnlib:{line}:{col}: ") and what in str(err), str(err)


def test_error_names_the_file(tmp_path):
    path = tmp_path / "broken.vnnlib"
    path.write_text(_D + "(assert (<= X_0 1)\n")
    with pytest.raises(VnnlibError, match=rf"^{path}:3:1: unbalanced parentheses"):
        parse_vnnlib(path)
    with pytest.raises(InputError, match="cannot read"):
        parse_vnnlib(tmp_path / "missing.vnnlib")


def test_deep_nesting_does_not_recurse():
    depth = 5000
    formula = "(and " * depth + "(>= X_0 0) (<= X_0 1) (<= Y_0 2)" + ")" * depth
    prop = parse_vnnlib(_D + f"(assert {formula})")
    assert prop.cases[0].output.clauses[0].d.tolist() == [2.0]


# ---- 5. counterexamples --------------------------------------------------------------------

def _property_of(cex: Path) -> Path:
    folder = VNN if cex.parent == VNN else cex.parent.parent / "vnnlib"
    return folder / (cex.name.split("__", 1)[1].removesuffix(".counterexample") + ".vnnlib")


@pytest.mark.parametrize("path", ALL_CEX, ids=_id)
def test_counterexample_files(path):
    x, y = parse_counterexample(path)
    prop, _ = parsed(_property_of(path))
    assert x.shape == (prop.n_inputs,) and y.shape == (prop.n_outputs,)
    assert prop.is_counterexample(x, y, tol=1e-5)  # witnesses are float32
    for text in (format_counterexample(x, y), format_counterexample(x, y, with_result=True)):
        x2, y2 = parse_counterexample(text)
        np.testing.assert_array_equal(x2, x)
        np.testing.assert_array_equal(y2, y)


def test_counterexample_format_and_errors():
    text = format_counterexample(np.array([[0.5, -1e-3]]), [-0.0])
    assert text == "((X_0 0.5)\n (X_1 -0.001)\n (Y_0 -0.0))\n"
    assert parse_counterexample("sat\n((X_0 (- 0.5))\n(Y_0 1))")[0].tolist() == [-0.5]
    for bad, line, col, what in [("unsat\n", 1, 1, "not sat"),
                                 ("((X_0 1)\n (X_2 1) (Y_0 1))", 2, 3, "X_1 is not"),
                                 ("((X_0 1) (X_0 2) (Y_0 1))", 1, 11, "assigned twice"),
                                 ("((X_0 a) (Y_0 1))", 1, 7, "expected a number"),
                                 ("\n ((X_0 1))", 2, 2, "no Y_i is assigned")]:
        with pytest.raises(VnnlibError) as info:
            parse_counterexample(bad, name="r.txt")
        err = info.value
        assert (err.line, err.column) == (line, col) and what in str(err), str(err)
