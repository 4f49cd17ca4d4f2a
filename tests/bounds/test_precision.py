"""Float32 lines computed in float64 and rounded outward (bounds/precision.py).

For every activation rule that asks for it (``lines_in_float64``) and every conformance case
of it: on random and edge-case float32 boxes the rounded float32 lines hold, with no
tolerance, against the float64 function at float32 points of the box (ends included); they
are float32 tensors; and they are at least as tight at the box's ends as the rule's own
float32 lines, summed over the boxes.
"""
from __future__ import annotations

import pytest
import torch

from perturbkit.bounds.precision import relax
from perturbkit.ops.base import ActivationRule
from tests.conformance.cases import CASES
from tests.conformance.test_rules import SPECIAL, in_domain

F64, F32 = torch.float64, torch.float32
CASES64 = [c for c in CASES if isinstance(c.rule, ActivationRule) and c.rule.lines_in_float64]


def _boxes(case, g):
    lo = (torch.rand(400, generator=g, dtype=F64) * 2 - 1) * case.scale
    w = torch.rand(400, generator=g, dtype=F64) * torch.tensor([0.0, 1e-4, 0.1, 1.0, 5.0], dtype=F64).repeat(80)
    if case.domain in ("nonnegative", "positive"):
        lo = lo.abs() + (1e-3 if case.domain == "positive" else 0.0)
    vals = torch.tensor([v for v in SPECIAL if abs(v) <= 50], dtype=F64)
    pairs = torch.cartesian_prod(vals, vals)
    pairs = pairs[pairs[:, 0] <= pairs[:, 1]]
    lo = torch.cat([lo, pairs[:, 0]])
    hi = torch.cat([lo[:400] + w, pairs[:, 1]])
    return lo.to(F32), hi.to(F32)


@pytest.mark.parametrize("case", CASES64, ids=[c.id for c in CASES64])
def test_rounded_lines_sound_and_tight(case):
    g = torch.Generator().manual_seed(3)
    node = case.node()
    node = type(node)(node.name, node.op_type, node.inputs, node.output, node.attrs, ((1,),) + node.in_shapes[1:],
                      (1,))
    consts = [case.consts[i].to(F32) for i in sorted(case.consts)]
    lo, hi = _boxes(case, g)
    keep = lo <= hi
    lo, hi = lo[keep], hi[keep]
    rel = relax(case.rule, node, lo, hi, consts)
    for t in (rel.lower.slope, rel.lower.intercept, rel.upper.slope, rel.upper.intercept):
        assert t.dtype == F32 and not torch.isnan(t).any()
    t = torch.linspace(0, 1, 65, dtype=F64).reshape(-1, 1)
    x = (lo.double() + t * (hi.double() - lo.double())).to(F32).double()
    x = torch.minimum(torch.maximum(x, lo.double()), hi.double())
    y = case.rule.forward(node, x, *[c.double() for c in consts])
    ok = in_domain(case, x, y)
    low = rel.lower.slope.double() * x + rel.lower.intercept.double()
    up = rel.upper.slope.double() * x + rel.upper.intercept.double()
    assert not ((low > y) & ok).any(), f"{case.id}: lower line above f"
    assert not ((up < y) & ok).any(), f"{case.id}: upper line below f"
    own = case.rule.relax(node, lo, hi, *consts)
    ends = torch.stack([lo.double(), hi.double()])
    finite = torch.isfinite(own.lower.intercept) & torch.isfinite(own.upper.intercept)
    gap_new = ((rel.upper.slope.double() - rel.lower.slope.double()) * ends
               + (rel.upper.intercept.double() - rel.lower.intercept.double()))[:, finite]
    gap_own = ((own.upper.slope.double() - own.lower.slope.double()) * ends
               + (own.upper.intercept.double() - own.lower.intercept.double()))[:, finite]
    assert float(gap_new.sum()) <= float(gap_own.sum()) * (1 + 1e-6) + 1e-30
