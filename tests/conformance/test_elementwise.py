"""The elementwise relaxations (ops/curvature.py, ops/convex.py and the rules built on them).

* tiny hand-computed cases: Exp's chord and midpoint tangent, Pow 2, Sqrt, GELU split at its
  inflection points, HardSigmoid's kink chords, and the domain / pole conventions (Log,
  Sqrt, Reciprocal: +-finfo.max constants, never NaN, never inf in a line);
* Pow 2 sampled densely (boxes around 0 and point boxes, float32 and float64): the bound
  auto_LiRPA gets wrong on torch 2.13;
* hypothesis, for every piecewise curve: sound lines on a dense grid (breakpoints included),
  CROWN's lines touch the function and are the least-area lines (the brute-force optimum of
  the line's value at the midpoint, grid tolerance 1e-4), every alpha sound;
* intervals are the exact range (dense sampling with the extrema), and no NaN reaches a
  gradient through lines or intervals on edge-case boxes (alpha-CROWN differentiates them);
* unstable() marks only elements whose lines depend on the bounds; errors name the node.
"""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from perturbkit.errors import UnsupportedOperatorError
from perturbkit.graph.ir import Node
from perturbkit.ops.base import Interval
from perturbkit.ops.curvature import Curve
from perturbkit.ops.elu import elu_curve
from perturbkit.ops.exp_log import EXP, LOG
from perturbkit.ops.gelu import ERF, GELU, GELU_TANH
from perturbkit.ops.hard import HARD_SWISH, hard_sigmoid_curve
from perturbkit.ops.power import RECIPROCAL, SQRT, power_curve
from perturbkit.ops.registry import RULES
from perturbkit.ops.softsign import SOFTSIGN
from perturbkit.ops.swish import swish_curve
from perturbkit.ops.trig import SIN

from .cases import CASES  # noqa: F401  (cases before cases_elementwise: import order)
from .cases_elementwise import ELEMENTWISE_CASES

F64 = torch.float64
EXACT = dict(rtol=0, atol=1e-12)


def t(*v, dtype=F64):
    return torch.tensor(v, dtype=dtype)


def node(op: str, n: int, attrs=None, extra_inputs=()) -> Node:
    return Node("n", op, ("x", *extra_inputs), "y", attrs or {}, ((n,), *(() for _ in extra_inputs)), (n,))


# ---- hand-computed cases ------------------------------------------------------------------
def test_exp_chord_and_midpoint_tangent():
    R = EXP.relax(t(0.0, -1.0), t(1.0, 1.0))
    e = math.e
    torch.testing.assert_close(R.upper.slope, t(e - 1, (e - 1 / e) / 2), **EXACT)
    torch.testing.assert_close(R.upper.intercept, t(1.0, (e + 1 / e) / 2), **EXACT)
    torch.testing.assert_close(R.lower.slope, t(math.exp(0.5), 1.0), **EXACT)
    torch.testing.assert_close(R.lower.intercept, t(0.5 * math.exp(0.5), 1.0), **EXACT)
    # alpha moves the tangent point over the box: alpha 0 is the tangent at l, 1 at u
    Ra = EXP.relax(t(0.0), t(1.0), alpha=t(0.0, 1.0).view(2, 1))
    torch.testing.assert_close(Ra.lower.slope.view(-1), t(1.0, e), **EXACT)
    torch.testing.assert_close(Ra.lower.intercept.view(-1), t(1.0, 0.0), **EXACT)


def test_pow2_and_sqrt_hand_cases():
    R = power_curve(2.0).relax(t(-1.0), t(2.0))  # chord (-1, 1)-(2, 4), tangent at 1/2
    torch.testing.assert_close(R.upper.slope, t(1.0), **EXACT)
    torch.testing.assert_close(R.upper.intercept, t(2.0), **EXACT)
    torch.testing.assert_close(R.lower.slope, t(1.0), **EXACT)
    torch.testing.assert_close(R.lower.intercept, t(-0.25), **EXACT)
    R = SQRT.relax(t(1.0, 0.0), t(4.0, 4.0))
    torch.testing.assert_close(R.lower.slope, t(1 / 3, 0.5), **EXACT)  # chords
    torch.testing.assert_close(R.lower.intercept, t(2 / 3, 0.0), **EXACT)
    tm = (4 / 256 + 4) / 2  # [0, 4]: the tangent range avoids the infinite slope at 0
    torch.testing.assert_close(R.upper.slope, t(0.5 / math.sqrt(2.5), 0.5 / math.sqrt(tm)), **EXACT)
    torch.testing.assert_close(R.upper.intercept, t(math.sqrt(2.5) / 2, math.sqrt(tm) / 2), **EXACT)


def test_gelu_split_at_inflection_points():
    pts, signs = GELU.pieces(t(-3.0, -4.0, -4.0), t(3.0, 0.0, -1.0))
    torch.testing.assert_close(torch.stack(pts[1:3]).T, t(-math.sqrt(2), math.sqrt(2), -math.sqrt(2), 0.0,
                                                          -math.sqrt(2), -1.0).view(3, 2), **EXACT)
    assert signs == [-1, 1, -1]
    R = GELU.relax(t(-3.0, -4.0, -4.0), t(3.0, 0.0, -1.0))
    # [-3, 3]: x / 2 (the tangent at 0) is below x Phi(x) everywhere and touches at the midpoint
    torch.testing.assert_close(R.lower.slope[0], t(0.5)[0], **EXACT)
    torch.testing.assert_close(R.lower.intercept[0], t(0.0)[0], **EXACT)
    # [-4, 0]: concave then convex; the lower line runs from (l, f(l)) to a tangent point in the
    # convex piece (-sqrt 2, 0), near -0.894
    x = torch.linspace(-4.0, 0.0, 40001, dtype=F64)
    gap = GELU.f(x) - (R.lower.slope[1] * x + R.lower.intercept[1])
    assert float(gap[0]) < 1e-12 and float(gap.min()) >= 0
    touch = float(x[1:][gap[1:].argmin()])
    assert abs(touch + 0.894) < 1e-3 and float(gap[1:].min()) < 1e-9
    # [-4, -1]: the convex piece is too short to be touched: the lower line is the chord
    f_l, f_u = GELU.f(t(-4.0, -1.0))
    torch.testing.assert_close(R.lower.slope[2], (f_u - f_l) / 3, **EXACT)


def test_hardsigmoid_kink_chords():
    c = hard_sigmoid_curve(0.2, 0.5)  # kinks at -2.5 and 2.5
    R = c.relax(t(-3.0, -5.0, -1.0), t(3.0, 0.0, 1.0))
    # [-3, 3]: lower through the kink (-2.5, 0) and (3, 1), upper through (-3, 0) and the kink (2.5, 1)
    torch.testing.assert_close(R.lower.slope[0] * 11, t(2.0)[0], **EXACT)
    torch.testing.assert_close(R.lower.intercept[0] * 11, t(5.0)[0], **EXACT)
    torch.testing.assert_close(R.upper.slope[0] * 11, t(2.0)[0], **EXACT)
    torch.testing.assert_close(R.upper.intercept[0] * 11, t(6.0)[0], **EXACT)
    torch.testing.assert_close(R.lower.slope[2], t(0.2)[0], **EXACT)  # inside the linear middle: exact
    torch.testing.assert_close(R.upper.intercept[2], t(0.5)[0], **EXACT)
    assert c.unstable(t(-3.0, -5.0, -1.0, 3.0), t(3.0, -3.0, 1.0, 5.0)).tolist() == [True, False, False, False]


def test_unstable_only_where_the_lines_depend_on_the_bounds():
    lo, hi = t(-2.0, 0.0, 1.0, 4.0, -5.0), t(1.0, 2.0, 3.0, 5.0, -4.0)
    assert elu_curve(1.0, 1.0).unstable(lo, hi).tolist() == [True, False, False, False, True]
    assert HARD_SWISH.unstable(lo, hi).tolist() == [True, True, True, False, False]
    assert GELU.unstable(lo, hi).all()
    assert not power_curve(1.0).unstable(lo, hi).any() and not power_curve(0.0).unstable(lo, hi).any()


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_poles_and_domains(dtype):
    big = torch.finfo(dtype).max
    lo, hi = t(-1.0, 0.0, -2.0, -2.0, 0.0, 1e-3, dtype=dtype), t(1.0, 2.0, 0.0, -1.0, 0.0, 1.0, dtype=dtype)
    R = RECIPROCAL.relax(lo, hi)
    lines = torch.stack([R.lower.slope, R.lower.intercept, R.upper.slope, R.upper.intercept])
    assert torch.isfinite(lines).all()
    # around the pole: both unbounded; [0, 2]: upper unbounded, lower a tangent; [-2, 0]: mirrored
    assert R.lower.intercept[0] == -big and R.upper.intercept[0] == big
    assert R.upper.intercept[1] == big and R.lower.slope[1] < 0 and R.lower.intercept[1] < big
    assert R.lower.intercept[2] == -big and R.upper.slope[2] < 0
    box = RECIPROCAL.interval(lo, hi)
    assert box.lo[0] == -big and box.hi[0] == big and box.hi[1] == big and box.lo[2] == -big
    # coefficients 0 times the unbounded intercepts (the engine's A+ / A- split) stay finite
    assert torch.isfinite(torch.zeros_like(lines) * lines).all()
    # Log: the lower line at the pole is -max; a box with no positive point is the constant -max
    R = LOG.relax(lo, hi)
    assert R.lower.intercept[0] == -big and R.lower.slope[0] == 0 and 0 < R.upper.slope[0] < big
    assert R.lower.intercept[3] == -big and R.upper.intercept[3] == -big
    box = LOG.interval(lo, hi)
    assert box.lo[3] == -big and box.hi[3] == -big and box.lo[1] == -big and box.hi[1] > math.log(2)
    # Sqrt of a negative box is the constant 0; Pow 0.5 agrees; Pow -0.5 has a pole at 0
    for curve in (SQRT, power_curve(0.5)):
        box = curve.interval(lo, hi)
        assert box.lo[3] == 0 and box.hi[3] == 0 and box.lo[2] <= 0 and box.hi[2] >= 0
    R = power_curve(-0.5).relax(lo, hi)
    assert R.upper.intercept[1] == big and torch.isfinite(R.lower.intercept).all()


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_pow2_dense_sampling(dtype):
    """auto_LiRPA's pow(x, 2) CROWN bound is unsound on torch 2.13; ours, sampled densely."""
    g = torch.Generator().manual_seed(2)
    c = (torch.randn(2000, generator=g, dtype=F64) * 3)
    w = torch.rand(2000, generator=g, dtype=F64) * torch.tensor([0.0, 1e-6, 0.5, 4.0, 40.0], dtype=F64).repeat(400)
    lo, hi = (c - w).to(dtype), (c + w).to(dtype)
    lo[:100], hi[:100] = -hi[:100].abs(), hi[:100].abs()  # around 0
    lo[100:200] = hi[100:200]  # point boxes
    rule, p = RULES["Pow"], torch.tensor(2.0, dtype=dtype)
    nd = node("Pow", 2000, extra_inputs=("p",))
    R = rule.relax(nd, lo, hi, p)
    x = lo.double() + torch.linspace(0, 1, 1001, dtype=F64).view(-1, 1) * (hi.double() - lo.double())
    x = torch.cat([x, torch.zeros(1, 2000, dtype=F64).clamp(lo.double(), hi.double())])
    y = x * x
    assert (R.lower.slope.double() * x + R.lower.intercept.double() <= y).all()
    assert (R.upper.slope.double() * x + R.upper.intercept.double() >= y).all()
    for a in (0.0, 0.3, 1.0):
        Ra = rule.relax_alpha(nd, lo.view(1, 1, -1), hi.view(1, 1, -1), torch.full((1, 2, 2000), a, dtype=dtype), p)
        assert (Ra.lower.slope.double() * x[:, None, None] + Ra.lower.intercept.double() <= y[:, None, None]).all()


# ---- the generic machinery on random boxes ----------------------------------------------------
CURVES = {"erf": ERF, "gelu": GELU, "gelu_tanh": GELU_TANH, "swish": swish_curve(1.0), "swish_neg": swish_curve(-0.75),
          "softsign": SOFTSIGN, "elu_2": elu_curve(2.0, 1.0), "elu_half": elu_curve(0.5, 1.0),
          "selu": elu_curve(1.6732632423543772, 1.0507009873554805), "hardswish": HARD_SWISH,
          "hardsigmoid": hard_sigmoid_curve(0.2, 0.5), "pow3": power_curve(3.0), "sin": SIN}


def grid(curve: Curve, l: float, u: float, n: int = 4001) -> torch.Tensor:
    """Points of [l, u]: a uniform grid plus the breakpoints inside."""
    lt, ut = t(l), t(u)
    pts, _ = curve.pieces(lt, ut)
    return torch.cat([torch.linspace(l, u, n, dtype=F64), *(p.view(1) for p in pts)]).sort().values


def best_value_at_midpoint(gx: torch.Tensor, x: torch.Tensor, m: float) -> float:
    """``max_s min_x (g(x) - s x) + s m`` on the grid: concave in ``s``, found by golden-section search."""
    dx = torch.diff(x)
    if not bool((dx > 0).any()):  # a point box: the value itself
        return float(gx[0])
    slopes = torch.diff(gx)[dx > 0] / dx[dx > 0]
    a, b = float(slopes.min()), float(slopes.max())

    def value(s):
        return float((gx - s * x).min()) + s * m

    r = (math.sqrt(5) - 1) / 2
    for _ in range(90):
        c, d = b - r * (b - a), a + r * (b - a)
        if value(c) >= value(d):
            b = d
        else:
            a = c
    return value((a + b) / 2)


_BOX = st.tuples(st.floats(-8.0, 8.0), st.floats(0.0, 12.0))


@pytest.mark.parametrize("name", list(CURVES))
@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(box=_BOX, alpha=st.floats(0.0, 1.0))
def test_curve_lines_sound_tight_and_least_area(name, box, alpha):
    curve = CURVES[name]
    c, w = box
    l, u = c - w / 2, c + w / 2
    x = grid(curve, l, u)
    y = curve.f(x)
    R = curve.relax(t(l), t(u))
    low, up = R.lower.slope * x + R.lower.intercept, R.upper.slope * x + R.upper.intercept
    assert (low <= y).all() and (y <= up).all()
    scale = 1 + float(y.abs().max())
    # CROWN's lines touch the function (up to rounding and the grid's spacing)
    assert float((y - low).min()) <= 1e-6 * scale and float((up - y).min()) <= 1e-6 * scale
    # ... and are the least-area lines (sin: bitangents of two valleys are no candidates)
    if name != "sin":
        m = (l + u) / 2
        assert float(R.lower.slope * m + R.lower.intercept) >= best_value_at_midpoint(y, x, m) - 1e-4 * scale
        assert -float(R.upper.slope * m + R.upper.intercept) >= best_value_at_midpoint(-y, x, m) - 1e-4 * scale
    Ra = curve.relax(t(l), t(u), alpha=t(alpha))
    assert (Ra.lower.slope * x + Ra.lower.intercept <= y).all() and (y <= Ra.upper.slope * x + Ra.upper.intercept).all()
    half = curve.relax(t(l), t(u), alpha=t(0.5))
    torch.testing.assert_close(half.lower.intercept, R.lower.intercept, rtol=1e-12, atol=1e-12 * scale)
    torch.testing.assert_close(half.upper.slope, R.upper.slope, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", list(CURVES))
@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_curve_lines_sound_in_both_precisions(name, dtype):
    """Many boxes at once (every regime), lines in ``dtype`` against the float64 function."""
    curve = CURVES[name]
    g = torch.Generator().manual_seed(5)
    c = (torch.rand(600, generator=g, dtype=F64) * 16 - 8)
    w = torch.rand(600, generator=g, dtype=F64) * torch.tensor([1e-6, 0.1, 1.0, 5.0, 20.0, 0.0], dtype=F64).repeat(100)
    lo, hi = (c - w).to(dtype), (c + w).to(dtype)
    R = curve.relax(lo, hi, alpha=torch.rand(3, 600, generator=g, dtype=F64).to(dtype))
    x = (lo.double() + torch.linspace(0, 1, 301, dtype=F64).view(-1, 1, 1) * (hi.double() - lo.double()))
    x = torch.minimum(torch.maximum(x, lo.double()), hi.double())
    y = curve.f(x)
    assert (R.lower.slope.double() * x + R.lower.intercept.double() <= y).all()
    assert (R.upper.slope.double() * x + R.upper.intercept.double() >= y).all()


@pytest.mark.parametrize("case", ELEMENTWISE_CASES, ids=[c.id for c in ELEMENTWISE_CASES])
def test_interval_is_the_exact_range(case):
    rule, nd = case.rule, case.node()
    consts = [case.consts[i] for i in sorted(case.consts)]
    g = torch.Generator().manual_seed(7)
    lo_c = 0.0 if case.domain in ("nonnegative", "positive") else -case.scale
    c = lo_c + (case.scale - lo_c) * torch.rand(200, generator=g, dtype=F64)
    w = torch.rand(200, generator=g, dtype=F64) * case.scale
    lo, hi = c - w, c + w
    if case.domain in ("nonnegative", "positive"):
        lo = lo.clamp(min=1e-3)
    if case.domain == "nonzero":
        lo, hi = torch.where(c > 0, lo.clamp(min=1e-3), lo), torch.where(c > 0, hi, hi.clamp(max=-1e-3))
    nd = dataclasses.replace(nd, in_shapes=((200,), *nd.in_shapes[1:]), out_shape=(200,))
    box = rule.interval(nd, Interval(lo, hi), *consts)
    x = torch.minimum(lo + torch.linspace(0, 1, 20001, dtype=F64).view(-1, 1) * (hi - lo), hi)
    curve = rule.curve(nd, *consts)
    if isinstance(curve, Curve) and curve.critical(lo, hi):  # the extrema themselves
        x = torch.cat([x, torch.stack(curve.critical(lo, hi)).view(-1, 200)])
    y = rule.forward(nd, x, *consts)
    scale = 1 + y.abs().amax(0)
    assert (box.lo <= y.amin(0)).all() and (box.hi >= y.amax(0)).all()
    # tight: the sampled range up to the grid's resolution (sin/cos: extrema between grid points)
    assert ((y.amin(0) - box.lo) <= 1e-6 * scale).all() and ((box.hi - y.amax(0)) <= 1e-6 * scale).all()


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_no_nan_reaches_a_gradient(dtype):
    """alpha-CROWN differentiates lines and intervals by bounds and alphas: edge-case boxes
    (huge, tiny, at a pole, outside the domain) must give finite lines and NaN-free gradients."""
    vals = torch.tensor([-1e30, -5.0, -1.0, -0.3, 0.0, 1e-30, 0.3, 1.0, 5.0, 40.0, 1e30], dtype=F64)
    lo = vals.view(-1, 1).expand(11, 11).reshape(-1)
    hi = vals.view(1, -1).expand(11, 11).reshape(-1)
    keep = lo <= hi
    for case in ELEMENTWISE_CASES:
        l = lo[keep].to(dtype).requires_grad_(True)
        h = hi[keep].to(dtype).requires_grad_(True)
        n = l.numel()
        nd = dataclasses.replace(case.node(), in_shapes=((n,), *case.node().in_shapes[1:]), out_shape=(n,))
        consts = [case.consts[i].to(dtype) for i in sorted(case.consts)]
        alpha = torch.rand(1, 3, n, generator=torch.Generator().manual_seed(0), dtype=F64).to(dtype).requires_grad_(True)
        R = case.rule.relax_alpha(nd, l.view(1, 1, n), h.view(1, 1, n), alpha, *consts)
        box = case.rule.interval(nd, Interval(l, h), *consts)
        parts = [R.lower.slope, R.lower.intercept, R.upper.slope, R.upper.intercept]
        assert all(not torch.isnan(p).any() for p in parts), case.id
        A = torch.randn(1, 3, n, generator=torch.Generator().manual_seed(1), dtype=F64).to(dtype)
        loss = ((A.clamp(min=0) * (R.lower.slope + R.lower.intercept)).sum()
                + (A.clamp(max=0) * (R.upper.slope + R.upper.intercept)).sum()
                + torch.where(torch.isfinite(box.lo), box.lo, 0).sum() + torch.where(torch.isfinite(box.hi), box.hi, 0).sum())
        if not loss.requires_grad:
            continue
        grads = torch.autograd.grad(loss, [l, h, alpha], allow_unused=True)
        assert all(gr is None or not torch.isnan(gr).any() for gr in grads), case.id


def test_errors_name_the_node():
    pow_rule, nd = RULES["Pow"], node("Pow", 3, extra_inputs=("p",))
    with pytest.raises(UnsupportedOperatorError, match="node 'n'"):
        pow_rule.relax(nd, t(0.0, 0.0, 0.0), t(1.0, 1.0, 1.0), t(1.0, 2.0, 3.0))
    with pytest.raises(UnsupportedOperatorError, match="perturbed exponent"):
        pow_rule.relax(nd, t(0.0), t(1.0), None)
    with pytest.raises(UnsupportedOperatorError, match="approximate='erf'.*supported: none, tanh"):
        RULES["Gelu"].relax(node("Gelu", 1, {"approximate": "erf"}), t(0.0), t(1.0))
