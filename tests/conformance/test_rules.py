"""Conformance of every operator rule in ``perturbkit.ops.registry.RULES``.

Checks (float64 unless stated; tolerances below):

* every registered op has a case;
* ``forward`` agrees with ONNX Runtime on a one-node model, with 0, 1 and 2 leading dims
  (each leading slice is run through ONNX Runtime separately).  ``|ours - ort| <= TOL_F64 *
  (1 + |ort|)``; ops whose ONNX Runtime kernels are float32-only (``ORT_FLOAT32_ONLY``) are
  compared on float32-rounded inputs with ``TOL_F32``;
* IBP soundness: random boxes at several scales, points inside (endpoints, random corners,
  uniform samples) land in ``interval``, up to ``TOL_F64 * (1 + |f(x)|)``;
* partial functions (``Case.domain``: Log, Sqrt, Reciprocal, Pow) are checked at the points
  of their domain where ``|f|`` is finite in the working precision (:func:`in_domain`); their
  boxes reach outside the domain, and every rule must still return NaN-free results;
* activations and MaxPool: ``lower(x) <= f(x) <= upper(x)`` for the same points, and for
  activations on a grid of edge-case boxes (``lo == hi``, ``lo = 0``, huge and tiny widths)
  in float64 and float32 (the float32 lines evaluated exactly against the float64 function);
  hypothesis checks soundness on arbitrary boxes and inclusion-monotonicity of ``interval``;
* affine rules: ``sum(A * f(x)) == sum_i sum(A_i * x_i) + sum(A * f(0))`` for random ``A``
  with 1 and 2 leading dims (``f(0)`` is the constant part), and the interval of a point box
  is the point.
"""
from __future__ import annotations

import dataclasses
import math
import zlib

import numpy as np
import onnxruntime as ort
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from perturbkit.ops.base import (ActivationRule, AffineRule, BilinearRule, CompositeRule, Interval, IntervalRule,
                                 SelectionRule)
from perturbkit.ops.registry import RULES

from .cases import CASES, ORT_FLOAT32_ONLY, Case, onnx_model
from .cases_elementwise import ELEMENTWISE_CASES

F64 = torch.float64
TOL_F64 = 1e-9
TOL_F32 = 2e-5
LEADS = [(), (2,), (2, 3)]
BOX_SCALES = [0.0, 1e-3, 0.3, 3.0]

#: activations whose lines carry a rounding margin: checked with no tolerance at all, in
#: float32 and float64.  The others (Relu, LeakyRelu) get an ulp-sized tolerance.
STRICT_FLOAT = {"Sigmoid", "Tanh", "Softplus", "Abs", "Clip",
                "Exp", "Log", "Sqrt", "Reciprocal", "Pow", "Erf", "Gelu", "Swish", "Elu", "Selu",
                "HardSigmoid", "HardSwish", "Softsign", "Sin", "Cos"}

ACTIVATION_CASES = [c for c in CASES if isinstance(c.rule, ActivationRule)]
SELECTION_CASES = [c for c in CASES if isinstance(c.rule, SelectionRule)]
AFFINE_CASES = [c for c in CASES if isinstance(c.rule, AffineRule)]
#: composites have no interval of their own: tests/conformance/test_networks.py bounds their lowering
RULE_CASES = [c for c in CASES if not isinstance(c.rule, CompositeRule)]


def ids(cases):
    return [c.id for c in cases]


def gen_for(case: Case, salt: str = "") -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32((case.id + salt).encode()))


def uniform(g, shape, lo, hi):
    return lo + (hi - lo) * torch.rand(tuple(shape), generator=g, dtype=F64)


#: input domains of partial functions (Case.domain)
DOMAINS = {"nonnegative": lambda x: x >= 0, "positive": lambda x: x > 0, "nonzero": lambda x: x != 0}


def centre_range(case: Case) -> tuple[float, float]:
    """Where box centres and forward samples are drawn: ``[-scale, scale]``, or ``[0, scale]`` on a half-line domain."""
    return (0.0, case.scale) if case.domain in ("nonnegative", "positive") else (-case.scale, case.scale)


def consts_of(case: Case, dtype=F64, exact: bool = False) -> list:
    """The constant inputs of an activation case (Pow's exponent), in input order, cast to
    ``dtype``; ``exact``: back in float64 (the function the rule relaxed in ``dtype``)."""
    return [case.consts[i].to(dtype).to(F64 if exact else dtype) for i in sorted(case.consts)]


def in_domain(case: Case, x, y, dtype=F64):
    """Points where a rule of ``case`` must hold: all (total functions), or inside the domain of
    input 0 where ``|f(x)|`` is finite in ``dtype`` (next to a pole the network's own value is inf)."""
    if case.domain == "real":
        return torch.ones_like(y, dtype=torch.bool)
    return DOMAINS[case.domain](x) & (y.abs() <= torch.finfo(dtype).max)


# ---------------------------------------------------------------------------------------------
#: ops whose conformance lives in a test module of its own (the generic boxes do not fit them)
COVERED_ELSEWHERE = {"TableLookup": "tests/bounds/test_embedding.py",  # indices: integer rows of a table
                     "MaskedSoftmax": "tests/bounds/test_masked_softmax.py"}  # made by fusion from Add + Softmax


def test_every_op_has_a_case():
    from pathlib import Path

    covered = {c.op_type for c in CASES}
    for op, path in COVERED_ELSEWHERE.items():
        assert (Path(__file__).resolve().parents[2] / path).exists(), path
        covered.add(op)
    missing = sorted(set(RULES) - covered)
    assert not missing, f"ops without a conformance case: {missing}"
    unknown = sorted(covered - set(RULES))
    assert not unknown, f"cases for unregistered ops: {unknown}"


def test_every_rule_has_a_kind():
    for op, rule in RULES.items():
        assert isinstance(rule, (AffineRule, ActivationRule, SelectionRule, BilinearRule, CompositeRule,
                                 IntervalRule)), op
        assert rule.op_type == op


# ---- ONNX Runtime ----------------------------------------------------------------------------
_SESSIONS: dict[str, tuple[ort.InferenceSession, np.dtype]] = {}


def session(case: Case):
    if case.id not in _SESSIONS:
        dtype = np.float32 if case.op_type in ORT_FLOAT32_ONLY else np.float64
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        s = ort.InferenceSession(onnx_model(case, dtype).SerializeToString(), opts,
                                 providers=["CPUExecutionProvider"])
        _SESSIONS[case.id] = (s, dtype)
    return _SESSIONS[case.id]


# a Constant has no input to carry leading dims: it is checked without them only
FORWARD_CASES = [pytest.param(c, lead, id=f"{cid}-lead{len(lead) if lead else 0}")
                 for c, cid in zip(CASES, ids(CASES)) for lead in LEADS
                 if not (c.op_type == "Constant" and lead)]


@pytest.mark.parametrize("case,lead", FORWARD_CASES)
def test_forward_matches_onnxruntime(case: Case, lead):
    sess, dtype = session(case)
    node = case.node()
    tdtype = torch.float32 if dtype == np.float32 else F64
    g = gen_for(case, "fwd")
    xs = {i: uniform(g, (*lead, *case.in_shapes[i]), *centre_range(case)).to(tdtype).to(F64)
          for i in case.perturbed}
    consts = {i: c.to(tdtype).to(F64) for i, c in case.consts.items()}
    args = [xs[i] if i in xs else consts[i] for i in range(len(case.in_shapes))]
    y = case.rule.forward(node, *args)
    assert tuple(y.shape) == (*lead, *node.out_shape), (tuple(y.shape), lead, node.out_shape)
    tol = TOL_F32 if dtype == np.float32 else TOL_F64
    for idx in np.ndindex(*lead):
        feed = {f"in{i}": xs[i][idx].numpy().astype(dtype) for i in case.perturbed}
        (ref,) = sess.run(None, feed)
        ours = y[idx].double().numpy()
        assert ours.shape == ref.shape
        err = np.abs(ours - ref) / (1 + np.abs(ref))
        assert err.max(initial=0.0) <= tol, f"{case.id} slice {idx}: max rel err {err.max()}"


# ---- boxes and points ---------------------------------------------------------------------
def boxes(case: Case, n: int = 3):
    """Yield ``(lo, hi)`` per perturbed input, shape ``(n, *shape)``, at each of BOX_SCALES."""
    g = gen_for(case, "box")
    for s in BOX_SCALES:
        los, his = {}, {}
        for i in case.perturbed:
            shape = (n, *case.in_shapes[i])
            c = uniform(g, shape, *centre_range(case))
            r = uniform(g, shape, 0.0, s)
            los[i], his[i] = c - r, c + r
        yield los, his


def points(g, lo, hi, n_random=12):
    """``(2 + 2 * n_random, *lo.shape)`` points: lo, hi, random corners, uniform samples."""
    corners = torch.where(torch.rand(n_random, *lo.shape, generator=g) < 0.5, lo, hi)
    inside = lo + (hi - lo) * torch.rand(n_random, *lo.shape, generator=g, dtype=F64)
    return torch.cat([lo[None], hi[None], corners, inside])


def sample_all(case: Case, g, los, his):
    return {i: points(g, los[i], his[i]) for i in case.perturbed}


def close_le(a, b, scale, tol=TOL_F64, where=None):
    """``a <= b`` up to ``tol * (1 + |scale|)`` (only ``where`` given); returns the worst violation (0 if none)."""
    v = (a - b) - tol * (1 + scale.abs())
    v = torch.where(a == b, torch.zeros_like(v), v)  # equal is never a violation (inf == inf: an overflowed f)
    if where is not None:
        v = torch.where(where, v, torch.zeros_like(v))
    return float(v.max()) if v.numel() else 0.0


@pytest.mark.parametrize("case", RULE_CASES, ids=ids(RULE_CASES))
def test_ibp_sound(case: Case):
    node = case.node()
    g = gen_for(case, "ibp")
    for los, his in boxes(case):
        box = case.rule.interval(node, *case.args({i: Interval(los[i], his[i]) for i in case.perturbed}))
        assert box.lo.shape == box.hi.shape
        pts = sample_all(case, g, los, his)
        y = case.rule.forward(node, *case.args(pts))
        inside = in_domain(case, pts[0], y) if case.domain != "real" else None
        assert close_le(box.lo, y, y, where=inside) <= 0, f"{case.id}: sample below the interval"
        assert close_le(y, box.hi, y, where=inside) <= 0, f"{case.id}: sample above the interval"


# ---- relaxations --------------------------------------------------------------------------
def check_activation_lines(case: Case, node, lo, hi, x, strict: bool, dtype=F64):
    """Relaxation for ``[lo, hi]`` (computed in ``dtype``) checked at points ``x`` (float64)."""
    R = case.rule.relax(node, lo.to(dtype), hi.to(dtype), *consts_of(case, dtype))
    y = case.rule.forward(node, x, *consts_of(case, dtype, exact=True))
    low = R.lower.slope.double() * x + R.lower.intercept.double()
    up = R.upper.slope.double() * x + R.upper.intercept.double()
    for t in (R.lower.slope, R.lower.intercept, R.upper.slope, R.upper.intercept):
        assert t.dtype == dtype and t.shape == lo.shape
        assert not torch.isnan(t).any(), f"{case.id}: NaN in a line"
    inside = in_domain(case, x, y, dtype)
    if strict:
        bad_l = (low > y) & ~(torch.isinf(low) & torch.isinf(y)) & inside
        bad_u = (y > up) & ~(torch.isinf(up) & torch.isinf(y)) & inside
        assert not bad_l.any(), f"{case.id}: lower line above f at lo={lo[bad_l.any(0)][:3]}"
        assert not bad_u.any(), f"{case.id}: upper line below f at lo={lo[bad_u.any(0)][:3]} hi={hi[bad_u.any(0)][:3]}"
    else:
        eps = torch.finfo(dtype).eps
        scale = (R.lower.slope.double() * x).abs() + R.lower.intercept.double().abs() + y.abs()
        assert close_le(low, y, scale, tol=TOL_F64 + 8 * eps, where=inside) <= 0, f"{case.id}: lower line above f"
        scale = (R.upper.slope.double() * x).abs() + R.upper.intercept.double().abs() + y.abs()
        assert close_le(y, up, scale, tol=TOL_F64 + 8 * eps, where=inside) <= 0, f"{case.id}: upper line below f"
    unstable = case.rule.unstable(node, lo.to(dtype), hi.to(dtype), *consts_of(case, dtype))
    assert unstable.dtype == torch.bool and unstable.shape == lo.shape


@pytest.mark.parametrize("case", ACTIVATION_CASES, ids=ids(ACTIVATION_CASES))
def test_activation_relaxation_sound(case: Case):
    node = case.node()
    g = gen_for(case, "relax")
    for los, his in boxes(case):
        x = points(g, los[0], his[0])
        check_activation_lines(case, node, los[0], his[0], x, case.op_type in STRICT_FLOAT)


SPECIAL = [-1e30, -1e15, -1e6, -300.0, -40.0, -17.0, -5.0, -1.0, -0.3, -1e-3, -1e-9, -1e-30, 0.0,
           1e-30, 1e-9, 1e-3, 0.3, 1.0, 5.0, 17.0, 40.0, 300.0, 1e6, 1e15, 1e30]


def edge_boxes(case: Case):
    vals = list(SPECIAL)
    for key in ("min", "max"):
        v = case.attrs.get(key)
        if v is not None:
            vals += [v, math.nextafter(v, -math.inf), math.nextafter(v, math.inf), v - 1e-7, v + 1e-7]
    vals = sorted(set(vals))
    pairs = [(a, b) for a in vals for b in vals if a <= b]
    lo = torch.tensor([p[0] for p in pairs], dtype=F64)
    hi = torch.tensor([p[1] for p in pairs], dtype=F64)
    return lo, hi


def edge_points(lo, hi, dtype):
    """Points of ``[lo, hi]`` representable in ``dtype``: endpoints, near-endpoints, a grid."""
    t = torch.linspace(0, 1, 33, dtype=F64).reshape(-1, 1)
    x = (lo + t * (hi - lo)).to(dtype)
    x = torch.minimum(torch.maximum(x, lo.to(dtype)), hi.to(dtype))
    near = torch.stack([torch.nextafter(lo.to(dtype), hi.to(dtype)), torch.nextafter(hi.to(dtype), lo.to(dtype))])
    return torch.cat([x, near]).to(F64)


@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", ACTIVATION_CASES, ids=ids(ACTIVATION_CASES))
def test_activation_relaxation_edge_cases(case: Case, dtype):
    node = case.node()
    lo, hi = edge_boxes(case)
    lo, hi = lo.to(dtype), hi.to(dtype)
    keep = lo <= hi  # float32 rounding may merge neighbours; never reorders
    lo, hi = lo[keep], hi[keep]
    x = edge_points(lo.double(), hi.double(), dtype)
    check_activation_lines(case, node, lo.double(), hi.double(), x, case.op_type in STRICT_FLOAT, dtype)
    # the interval of the box contains f on it, too
    box = case.rule.interval(node, Interval(lo, hi), *consts_of(case, dtype))
    assert not (torch.isnan(box.lo).any() or torch.isnan(box.hi).any()), f"{case.id}: NaN in the interval"
    y = case.rule.forward(node, x, *consts_of(case, dtype, exact=True))
    inside = in_domain(case, x, y, dtype)
    assert close_le(box.lo.double(), y, y, tol=TOL_F64 + 8 * torch.finfo(dtype).eps, where=inside) <= 0
    assert close_le(y, box.hi.double(), y, tol=TOL_F64 + 8 * torch.finfo(dtype).eps, where=inside) <= 0


STRICT_CASES = [c for c in ACTIVATION_CASES if c.op_type in STRICT_FLOAT]


@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", STRICT_CASES, ids=ids(STRICT_CASES))
def test_activation_relaxation_infinite_bounds(case: Case, dtype):
    """Unbounded or overflowing boxes: no NaN, and the lines stay sound at finite points."""
    big = float(torch.finfo(dtype).max)
    vals = [-math.inf, -big, -big ** 0.5 * 2, -big ** 0.5 / 2, -1e6, -1.0, 0.0, 1.0, 1e6, big ** 0.5 / 2,
            big ** 0.5 * 2, big, math.inf]
    pairs = [(a, b) for a in vals for b in vals if a <= b and not (a == b and math.isinf(a))]
    lo = torch.tensor([p[0] for p in pairs], dtype=dtype)
    hi = torch.tensor([p[1] for p in pairs], dtype=dtype)
    node = case.node()
    R = case.rule.relax(node, lo, hi, *consts_of(case, dtype))
    for t in (R.lower.slope, R.lower.intercept, R.upper.slope, R.upper.intercept):
        assert not torch.isnan(t).any(), f"{case.id}: NaN in a line"
    t = torch.linspace(0, 1, 17, dtype=F64).reshape(-1, 1)
    L, H = lo.double(), hi.double()
    x = L.clamp(-1e300, 1e300) * (1 - t) + H.clamp(-1e300, 1e300) * t
    x = torch.where((x >= L) & (x <= H), x, torch.where(torch.isfinite(L), L, H))
    y = case.rule.forward(node, x, *consts_of(case, dtype, exact=True))
    low = R.lower.slope.double() * x + R.lower.intercept.double()
    up = R.upper.slope.double() * x + R.upper.intercept.double()
    inside = in_domain(case, x, y, dtype)
    assert not ((low > y) & inside).any() and not ((y > up) & inside).any(), case.id


@pytest.mark.parametrize("case_id", ["sigmoid", "tanh", "softplus", "abs", "clip_both"])
def test_smooth_relaxation_is_tight(case_id):
    """Each line touches (up to its rounding margin) the function somewhere on the box."""
    from .cases import CASE_BY_ID
    case = CASE_BY_ID[case_id]
    node = case.node()
    lo = torch.tensor([-4.0, -1.0, 0.5, -3.0, -0.5, -20.0, 2.0], dtype=F64)
    hi = torch.tensor([-1.0, 3.0, 4.0, 0.5, 6.0, 20.0, 2.0], dtype=F64)
    R = case.rule.relax(node, lo, hi)
    x = lo + torch.linspace(0, 1, 4001, dtype=F64).reshape(-1, 1) * (hi - lo)
    y = case.rule.forward(node, x)
    gap_u = (R.upper.slope * x + R.upper.intercept - y).amin(0)
    gap_l = (y - R.lower.slope * x - R.lower.intercept).amin(0)
    assert (gap_u >= 0).all() and (gap_u < 1e-6).all(), gap_u
    assert (gap_l >= 0).all() and (gap_l < 1e-6).all(), gap_l


_FLOATS = st.floats(min_value=-50.0, max_value=50.0, allow_nan=False) | st.sampled_from(SPECIAL)


@pytest.mark.parametrize("case", ACTIVATION_CASES, ids=ids(ACTIVATION_CASES))
@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(a=_FLOATS, b=_FLOATS, t=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=5))
def test_activation_relaxation_hypothesis(case: Case, a, b, t):
    """Soundness of the lines on arbitrary boxes, scalar inputs broadcast to the declared shape."""
    node = case.node()
    shape = case.in_shapes[0]
    lo = torch.full(shape, min(a, b), dtype=F64)
    hi = torch.full(shape, max(a, b), dtype=F64)
    tt = torch.tensor([0.0, 1.0, *t], dtype=F64).reshape(-1, *([1] * len(shape)))
    x = torch.minimum(torch.maximum(lo + tt * (hi - lo), lo), hi)
    check_activation_lines(case, node, lo, hi, x, case.op_type in STRICT_FLOAT)


@pytest.mark.parametrize("case", ACTIVATION_CASES + SELECTION_CASES, ids=ids(ACTIVATION_CASES + SELECTION_CASES))
@settings(max_examples=30, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_interval_inclusion_monotone(case: Case, data):
    """Interval law: ``[a, b] within [l, u]`` implies ``I([a, b]) within I([l, u])``."""
    node = case.node()
    shape = case.in_shapes[0]
    seed = data.draw(st.integers(0, 2 ** 31 - 1))
    width = data.draw(st.sampled_from([0.0, 1e-6, 0.5, 5.0, 100.0]))
    g = torch.Generator().manual_seed(seed)
    c = uniform(g, shape, *centre_range(case))
    r = uniform(g, shape, 0.0, width)
    lo, hi = c - r, c + r
    a = lo + (hi - lo) * torch.rand(shape, generator=g, dtype=F64)
    b = a + (hi - a) * torch.rand(shape, generator=g, dtype=F64)
    outer = case.rule.interval(node, Interval(lo, hi), *consts_of(case))
    inner = case.rule.interval(node, Interval(a, b), *consts_of(case))
    assert close_le(outer.lo, inner.lo, inner.lo) <= 0
    assert close_le(inner.hi, outer.hi, inner.hi) <= 0
    assert close_le(inner.lo, inner.hi, inner.hi) <= 0


def check_selection_lines(case: Case, node, lo, hi, x):
    R = case.rule.relax(node, lo, hi)
    k = lo.dim() - len(case.in_shapes[0])
    n_out = math.prod(node.out_shape)
    for line in (R.lower, R.upper):
        assert line.index is not None and line.index.dtype == torch.int64
        assert line.slope.shape == line.intercept.shape == line.index.shape == (*lo.shape[:k], n_out)
    y = case.rule.forward(node, x).reshape(*x.shape[:k + 1], n_out)
    xf = x.reshape(*x.shape[:k + 1], -1)
    for line, sign in ((R.lower, 1.0), (R.upper, -1.0)):
        xi = xf.gather(-1, line.index.expand(x.shape[0], *line.index.shape))
        v = line.slope * xi + line.intercept
        assert close_le(sign * v, sign * y, y) <= 0, f"{case.id}: {'lower' if sign > 0 else 'upper'} line violated"
    unstable = case.rule.unstable(node, lo, hi)
    assert unstable.dtype == torch.bool and unstable.shape == lo.shape


@pytest.mark.parametrize("case", SELECTION_CASES, ids=ids(SELECTION_CASES))
def test_selection_relaxation_sound(case: Case):
    node = case.node()
    g = gen_for(case, "sel")
    for los, his in boxes(case):
        check_selection_lines(case, node, los[0], his[0], points(g, los[0], his[0]))
    # edge cases: point boxes, one dominant element (exact), huge boxes, ties
    shape = case.in_shapes[0]
    lo = uniform(g, (2, *shape), -1.0, 1.0)
    for hi in (lo.clone(), lo + 1e-12, lo + 1e6):
        check_selection_lines(case, node, lo, hi, points(g, lo, hi))
    check_selection_lines(case, node, lo[0], lo[0] + 0.5, points(g, lo[0], lo[0] + 0.5))  # no leading dims
    lo2 = uniform(g, (2, 3, *shape), -1.0, 1.0)
    check_selection_lines(case, node, lo2, lo2 + 0.5, points(g, lo2, lo2 + 0.5))  # two leading dims
    zero = torch.zeros((2, *shape), dtype=F64)
    check_selection_lines(case, node, zero, zero, points(g, zero, zero))
    check_selection_lines(case, node, zero, zero + 1, points(g, zero, zero + 1))
    # well separated inputs: every window's max is known, the relaxation must be exact
    vals = torch.randperm(math.prod(shape), generator=g).to(F64).reshape(shape) * 10
    R = case.rule.relax(node, vals - 1, vals + 1)
    assert bool((R.upper.slope == 1).all()) and bool((R.upper.intercept == 0).all())
    assert torch.equal(R.lower.index, R.upper.index)


@pytest.mark.parametrize("case", SELECTION_CASES, ids=ids(SELECTION_CASES))
def test_selection_unstable_mask_suffices(case: Case):
    """Bounds outside ``rule.unstable`` do not matter: tightening them (to a sub-interval, or
    to the point at their upper bound) leaves the relaxation unchanged (slopes, intercepts and
    chosen elements).  CROWN keeps the interval bounds there (``crown._read_through``).  On a
    coarse grid of values, so that upper bounds often tie with a window's largest lower bound."""
    node = case.node()
    g = gen_for(case, "unstable")
    shape = case.in_shapes[0]
    left_out = 0
    for trial in range(24):
        c = uniform(g, (2, *shape), -1.0, 1.0)
        r = uniform(g, (2, *shape), 0.0, 0.6 if trial % 2 else 0.1)
        lo, hi = c - r, c + r
        if trial % 3 == 2:  # ties
            lo, hi = torch.floor(lo * 4) / 4, torch.ceil(hi * 4) / 4
        m = case.rule.unstable(node, lo, hi)
        assert m.dtype == torch.bool and m.shape == lo.shape
        out = ~m
        left_out += int(out.sum())
        t = torch.rand(lo.shape, generator=g, dtype=F64)
        u = torch.rand(lo.shape, generator=g, dtype=F64)
        a, b = lo + (hi - lo) * torch.minimum(t, u), lo + (hi - lo) * torch.maximum(t, u)
        R = case.rule.relax(node, lo, hi)
        for lo2, hi2 in ((torch.where(out, a, lo), torch.where(out, b, hi)), (torch.where(out, hi, lo), hi)):
            R2 = case.rule.relax(node, lo2, hi2)
            for l1, l2 in ((R.lower, R2.lower), (R.upper, R2.upper)):
                assert torch.equal(l1.index, l2.index), f"{case.id}: another element chosen"
                assert torch.equal(l1.slope, l2.slope) and torch.equal(l1.intercept, l2.intercept), case.id
    if case.op_type == "MaxPool":
        assert left_out > 0, f"{case.id}: the mask never leaves an element out"


# ---- affine rules --------------------------------------------------------------------------
@pytest.mark.parametrize("case", AFFINE_CASES, ids=ids(AFFINE_CASES))
@pytest.mark.parametrize("lead", LEADS, ids=["lead0", "lead1", "lead2"])
def test_affine_transpose_consistent(case: Case, lead):
    node = case.node()
    g = gen_for(case, f"T{lead}")
    xs = {i: uniform(g, (*lead, *case.in_shapes[i]), -case.scale, case.scale) for i in case.perturbed}
    zeros = {i: torch.zeros((*lead, *case.in_shapes[i]), dtype=F64) for i in case.perturbed}
    y = case.rule.forward(node, *case.args(xs))
    y0 = case.rule.forward(node, *case.args(zeros))
    out_shape = node.out_shape
    y = y.expand((*lead, *out_shape))
    y0 = y0.expand((*lead, *out_shape))
    A = torch.randn((*lead, *out_shape), generator=g, dtype=F64)
    back = case.rule.backward(node, A, *[case.consts.get(i) for i in range(len(case.in_shapes))])
    assert len(back) == len(case.in_shapes)
    dims_out = tuple(range(len(lead), len(lead) + len(out_shape)))
    lhs = (A * y).sum(dim=dims_out) if dims_out else A * y
    rhs = (A * y0).sum(dim=dims_out) if dims_out else A * y0
    scale = (A.abs() * (y.abs() + y0.abs())).sum(dim=dims_out) if dims_out else A.abs() * (y.abs() + y0.abs())
    for i, Ai in enumerate(back):
        if i not in case.perturbed:
            assert Ai is None, f"{case.id}: coefficient returned for constant input {i}"
            continue
        assert tuple(Ai.shape) == (*lead, *case.in_shapes[i]), (tuple(Ai.shape), lead, case.in_shapes[i])
        d_in = tuple(range(len(lead), len(lead) + len(case.in_shapes[i])))
        term = Ai * xs[i]
        rhs = rhs + (term.sum(dim=d_in) if d_in else term)
        scale = scale + (term.abs().sum(dim=d_in) if d_in else term.abs())
    assert ((lhs - rhs).abs() <= TOL_F64 * (1 + scale)).all(), f"{case.id}: {lhs} vs {rhs}"


@pytest.mark.parametrize("case", AFFINE_CASES, ids=ids(AFFINE_CASES))
def test_affine_point_interval_is_the_point(case: Case):
    node = case.node()
    g = gen_for(case, "pt")
    xs = {i: uniform(g, (2, *case.in_shapes[i]), -case.scale, case.scale) for i in case.perturbed}
    y = case.rule.forward(node, *case.args(xs))
    box = case.rule.interval(node, *case.args({i: Interval(x, x) for i, x in xs.items()}))
    assert torch.allclose(box.lo, y, rtol=TOL_F64, atol=TOL_F64)
    assert torch.allclose(box.hi, y, rtol=TOL_F64, atol=TOL_F64)


# ---- tiny hand-computed cases (documentation of the piecewise-linear choices) ----------------
def test_clip_hand_cases():
    from .cases import CASE_BY_ID
    case = CASE_BY_ID["clip_both"]  # min -1, max 1
    node = case.node()
    lo = torch.tensor([-3.0, -0.5, -2.0, -3.0, 0.5], dtype=F64)
    hi = torch.tensor([-2.0, 0.5, 0.5, 2.0, 3.0], dtype=F64)
    R = case.rule.relax(node, lo, hi)
    approx = dict(rtol=0, atol=1e-12)
    # below the range: -1; inside: x; only -1 inside: chord (-2,-1)-(0.5,0.5) and x (u - a > a - l);
    # both inside: line (-3,-1)-(1,1) above and (-1,-1)-(2,1) below; only 1 inside: y = 1 above, chord below
    torch.testing.assert_close(R.upper.slope, torch.tensor([0, 1, 0.6, 0.5, 0], dtype=F64), **approx)
    torch.testing.assert_close(R.upper.intercept, torch.tensor([-1, 0, 0.2, 0.5, 1], dtype=F64), **approx)
    torch.testing.assert_close(R.lower.slope, torch.tensor([0, 1, 1, 2 / 3, 0.2], dtype=F64), **approx)
    torch.testing.assert_close(R.lower.intercept, torch.tensor([-1, 0, 0, -1 / 3, 0.4], dtype=F64), **approx)
    assert case.rule.unstable(node, lo, hi).tolist() == [False, False, True, True, True]


def test_abs_hand_cases():
    from .cases import CASE_BY_ID
    case = CASE_BY_ID["abs"]
    node = case.node()
    lo = torch.tensor([-3.0, 1.0, -1.0, -3.0], dtype=F64)
    hi = torch.tensor([-1.0, 2.0, 3.0, 1.0], dtype=F64)
    node = dataclasses.replace(node, in_shapes=((4,),), out_shape=(4,))
    R = case.rule.relax(node, lo, hi)
    approx = dict(rtol=0, atol=1e-12)
    torch.testing.assert_close(R.upper.slope, torch.tensor([-1, 1, 0.5, -0.5], dtype=F64), **approx)
    torch.testing.assert_close(R.upper.intercept, torch.tensor([0, 0, 1.5, 1.5], dtype=F64), **approx)
    torch.testing.assert_close(R.lower.slope, torch.tensor([-1, 1, 1, -1], dtype=F64), **approx)
    assert case.rule.interval(node, Interval(lo, hi)).lo.tolist() == [1.0, 1.0, 0.0, 0.0]


#: the rules with alpha-CROWN parameters: the four original cases and every elementwise case
ALPHA_CASES = [c for c in ACTIVATION_CASES
               if c.id in ("sigmoid", "tanh", "relu", "leakyrelu_0.125") or c in ELEMENTWISE_CASES]
assert all(c.rule.alpha_range(c.node()) is not None for c in ALPHA_CASES)


def alpha_boxes(case: Case, dtype, n: int = 64):
    """Boxes in every regime (convex, concave, crossing, stable, unstable), shape ``(n,)``, and the node."""
    node = dataclasses.replace(case.node(), in_shapes=((n,), *case.in_shapes[1:]), out_shape=(n,))
    g = torch.Generator().manual_seed(0)
    c = torch.rand(n, generator=g, dtype=torch.float64) * 12
    c = c if case.domain in ("nonnegative", "positive") else c - 6
    w = torch.rand(n, generator=g, dtype=torch.float64) * 6
    return node, (c - w).to(dtype), (c + w).to(dtype), g


@pytest.mark.parametrize("case", ALPHA_CASES, ids=ids(ALPHA_CASES))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_alpha_relaxations_sound_for_every_alpha(case: Case, dtype):
    """alpha-CROWN's parameterised lines (rule.relax_alpha) are sound for every alpha in
    rule.alpha_range, on boxes in every regime (convex, concave, crossing, stable, unstable)."""
    rule = case.rule
    node, lo, hi, g = alpha_boxes(case, dtype)
    consts = [c.to(dtype) for _, c in sorted(case.consts.items())]
    amin, amax = rule.alpha_range(node)
    for a in (amin, amax, (amin + amax) / 2):
        alpha = torch.full((3, 64), a, dtype=dtype)
        alpha[1] = amin + (amax - amin) * torch.rand(64, generator=g, dtype=torch.float64).to(dtype)
        rel = rule.relax_alpha(node, lo.unsqueeze(0), hi.unsqueeze(0), alpha, *consts)
        t = torch.linspace(0, 1, 201, dtype=dtype).view(-1, 1, 1)
        x = torch.minimum(torch.maximum(lo + t * (hi - lo), lo), hi)  # (201, 1, 64) points of every box
        y = rule.forward(node, x, *consts)
        lower = rel.lower.slope * x + rel.lower.intercept
        upper = rel.upper.slope * x + rel.upper.intercept
        tol = 0 if case.op_type in STRICT_FLOAT else 8 * torch.finfo(dtype).eps * (1 + y.abs())
        inside = in_domain(case, x, y, dtype)
        assert not torch.isnan(torch.stack(torch.broadcast_tensors(lower, upper))).any()
        assert ((lower <= y + tol) | ~inside).all() and ((y <= upper + tol) | ~inside).all()


#: Sigmoid and Tanh are left out: their relax_alpha at 1/2 puts the tangent point of a box
#: around 0 half-way between CROWN's point d and u, not at d
INIT_CASES = [c for c in ALPHA_CASES if c.op_type not in ("Sigmoid", "Tanh")]


@pytest.mark.parametrize("case", INIT_CASES, ids=ids(INIT_CASES))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_alpha_init_gives_crown(case: Case, dtype):
    """relax_alpha at alpha_init is relax (CROWN's lines), with the engine's shapes
    (bounds ``(B, 1, n)``, parameters ``(B, S, n)``); up to 4 ulps of the line's size."""
    rule = case.rule
    node, lo, hi, _ = alpha_boxes(case, dtype)
    consts = [c.to(dtype) for _, c in sorted(case.consts.items())]
    lo, hi = lo.view(2, 32), hi.view(2, 32)
    rel = rule.relax(node, lo, hi, *consts)
    a0 = rule.alpha_init(node, lo, hi, *consts)
    ra = rule.relax_alpha(node, lo.unsqueeze(1), hi.unsqueeze(1), a0.unsqueeze(1).expand(2, 3, 32), *consts)
    m = torch.maximum(lo.abs(), hi.abs()).unsqueeze(1)
    for a, b in ((rel.lower, ra.lower), (rel.upper, ra.upper)):
        size = (a.slope.abs().unsqueeze(1) * m + a.intercept.abs().unsqueeze(1)).double()
        tol = 4 * torch.finfo(dtype).eps * size
        assert ((a.slope.unsqueeze(1) - b.slope).abs().double() * m <= tol).all(), case.id
        assert ((a.intercept.unsqueeze(1) - b.intercept).abs().double() <= tol).all(), case.id
