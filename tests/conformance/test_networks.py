"""Every conformance case as a one-node network, bounded by the whole engine.

Where ``test_rules.py`` checks each rule's pieces (interval, lines, transposes), this checks
what the bound algorithms make of them: the case's node is wrapped into a network whose one
input is the concatenation of the case's perturbed inputs (Slice + Reshape per input), the
network is lowered as every network is (composites become their decompositions, products
of two perturbed values BilinearMul/BilinearMatMul), and for random boxes at several widths

* IBP, CROWN, CROWN-IBP and alpha-CROWN bounds contain the function at the box's corners
  and at uniform samples (float64, tolerance ``1e-9 * (1 + |f(x)|)``);
* the backward pass with RANDOM alpha-CROWN parameters (every optimisable node, values
  uniform in its range) is sound too: alpha-CROWN's bounds are sound for every iterate;
* CROWN is never looser than IBP and alpha-CROWN never looser than CROWN (by construction:
  each is intersected with the one before; this checks that construction holds).
"""
from __future__ import annotations

import math
import zlib

import pytest
import torch

import perturbkit as pk
from perturbkit.bounds.alpha_crown import AlphaConfig, alpha_crown
from perturbkit.bounds.crown import intermediate_bounds, spec_rows
from perturbkit.bounds.engine import backward, make_context
from perturbkit.graph.ir import Graph, Node, frozen_attrs
from perturbkit.graph.network import Network
from perturbkit.ops.registry import rule_for

from .cases import CASES, Case

F64 = torch.float64
TOL = 1e-9
NET_CASES = [c for c in CASES if c.op_type != "Constant" and c.perturbed]
WIDTHS = [0.0, 0.05, 0.5, 2.0]


def case_network(case: Case) -> Network:
    """The case's node fed from one flat input ``x`` holding every perturbed input."""
    nodes, consts, shapes = [], {}, {}
    off = 0
    for i, s in enumerate(case.in_shapes):
        name = f"in{i}"
        if i in case.consts:
            consts[name] = case.consts[i]
            continue
        n = math.prod(s)
        nodes.append(Node(f"slice{i}", "Slice", ("x",), f"flat{i}",
                          frozen_attrs({"starts": [off], "ends": [off + n], "axes": [0]}), (None,), (n,)))
        nodes.append(Node(f"reshape{i}", "Reshape", (f"flat{i}",), name,
                          frozen_attrs({"shape": torch.tensor(list(s) or [1])[: len(s)] if s else torch.zeros(0, dtype=torch.int64)}),
                          ((n,),), tuple(s)))
        shapes[f"flat{i}"], shapes[name] = (n,), tuple(s)
        off += n
    total = off
    nodes = [Node(nd.name, nd.op_type, nd.inputs, nd.output, nd.attrs, ((total,),) if nd.op_type == "Slice" else nd.in_shapes,
                  nd.out_shape) for nd in nodes]
    main = case.node()
    nodes.append(main)
    shapes["x"] = (total,)
    shapes["y"] = main.out_shape
    return Network(Graph(nodes=tuple(nodes), input_name="x", output_name="y", shapes=shapes, constants=consts,
                         source=f"case {case.id}"))


def _gen(case: Case, salt: str) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32((case.id + salt).encode()))


def _boxes(case: Case, net: Network, width: float, g: torch.Generator, B: int = 3):
    """Random boxes of the flat input; input 0's block stays inside the case's domain (the
    network's value is NaN or infinite outside it)."""
    n = net.n_inputs
    c = (2 * torch.rand(B, n, generator=g, dtype=F64) - 1) * case.scale
    r = width * torch.rand(B, n, generator=g, dtype=F64)
    lo, hi = c - r, c + r
    if case.domain != "real" and 0 in case.perturbed:
        k = math.prod(case.in_shapes[0])
        m, rr = c[:, :k].abs(), r[:, :k]
        if case.domain == "nonzero":  # a box on one side of 0
            m = m.clamp(min=0.2 * case.scale)
            rr = torch.minimum(rr, 0.9 * m)
            sign = torch.where(c[:, :k] < 0, -1.0, 1.0).to(F64)
            lo[:, :k], hi[:, :k] = torch.minimum(sign * (m - rr), sign * (m + rr)), torch.maximum(sign * (m - rr), sign * (m + rr))
        else:
            floor = 0.0 if case.domain == "nonnegative" else 1e-3 * case.scale
            lo[:, :k] = (m - rr).clamp(min=floor)
            hi[:, :k] = (m + rr).clamp(min=floor)
    return lo, hi


def _points(lo: torch.Tensor, hi: torch.Tensor, g: torch.Generator, k: int = 24) -> torch.Tensor:
    """(k, B, n): both end points, random corners, uniform samples."""
    corners = torch.where(torch.rand(k // 2, *lo.shape, generator=g) < 0.5, lo, hi)
    inside = lo + (hi - lo) * torch.rand(k - k // 2 - 2, *lo.shape, generator=g, dtype=F64)
    return torch.cat([lo[None], hi[None], corners, inside])


def _assert_contains(lower, upper, y, what):
    tol = TOL * (1 + y.abs())
    assert not torch.isnan(lower).any() and not torch.isnan(upper).any(), f"{what}: NaN bound"
    assert (y >= lower - tol).all(), f"{what}: sample below the lower bound by {float((lower - y).max()):.3g}"
    assert (y <= upper + tol).all(), f"{what}: sample above the upper bound by {float((y - upper).max()):.3g}"


@pytest.mark.parametrize("case", NET_CASES, ids=[c.id for c in NET_CASES])
def test_network_bounds_sound(case: Case):
    net = case_network(case)
    g = _gen(case, "net")
    for width in WIDTHS:
        lo, hi = _boxes(case, net, width, g)
        box = pk.sets.Box(lo, hi)
        pts = _points(lo, hi, g)
        y = net(pts.reshape(-1, net.n_inputs)).reshape(pts.shape[0], lo.shape[0], -1)
        widths = {}
        for method in ("ibp", "crown", "crown-ibp"):
            b = pk.bounds(net, box, method=method)
            _assert_contains(b.lower, b.upper, y, f"{case.id} {method} width {width}")
            widths[method] = (b.upper - b.lower)
        ctx = make_context(net, box)
        a_lo, a_hi, _ = alpha_crown(ctx, None, AlphaConfig(iterations=6))
        _assert_contains(a_lo, a_hi, y, f"{case.id} alpha-crown width {width}")
        finite = torch.isfinite(widths["ibp"])
        slack = 1e-9 * (1 + widths["ibp"].abs())
        assert (widths["crown"][finite] <= widths["ibp"][finite] + slack[finite]).all(), f"{case.id}: CROWN looser than IBP"
        wa = (a_hi - a_lo)
        assert (wa[finite] <= widths["crown"][finite] + slack[finite]).all(), f"{case.id}: alpha-CROWN looser than CROWN"


def _random_alphas(ctx, rows: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    out = {}
    for node in ctx.graph.nodes:
        rule = rule_for(node, ctx.graph.source)
        if rule.kind not in ("activation", "bilinear") or rule.alpha_range(node) is None:
            continue
        a, b = rule.alpha_range(node)
        shape = node.out_shape if rule.kind == "bilinear" else node.in_shapes[0]
        out[node.name] = a + (b - a) * torch.rand(ctx.batch, rows, *shape, generator=g, dtype=F64)
    return out


ALPHA_CASES = [c for c in NET_CASES
               if any(rule_for(n, "").kind in ("activation", "bilinear") and rule_for(n, "").alpha_range(n) is not None
                      for n in case_network(c).graph.nodes)]


@pytest.mark.parametrize("case", ALPHA_CASES, ids=[c.id for c in ALPHA_CASES])
def test_random_alpha_parameters_sound(case: Case):
    net = case_network(case)
    g = _gen(case, "alpha")
    for width in WIDTHS[1:]:
        lo, hi = _boxes(case, net, width, g)
        ctx = make_context(net, pk.sets.Box(lo, hi))
        intermediate_bounds(ctx, mode="crown")
        A = spec_rows(ctx, None)
        S = A.shape[1] // 2
        pts = _points(lo, hi, g)
        y = net(pts.reshape(-1, net.n_inputs)).reshape(pts.shape[0], lo.shape[0], -1)
        for _ in range(3):
            r = backward(ctx, net.graph.output_name, A, alphas=_random_alphas(ctx, 2 * S, g))
            _assert_contains(r[:, :S], -r[:, S:], y, f"{case.id} random alphas width {width}")
