"""The McCormick relaxation of products of two perturbed tensors (bounds/bilinear.py).

For random boxes (hypothesis: arbitrary centres and widths, zero widths, boxes straddling
zero), random coefficients ``A`` and random plane weights ``t`` in [0, 1]: at the boxes'
corners and at uniform samples, ``<A, f(x, y)> >= <cx, x> + <cy, y> + bias`` (float64,
tolerance 1e-9 relative), for elementwise products with broadcasting and for matrix
products (heads, broadcast batch, 1-D operands).  ``t = 1`` is CROWN's choice (``t=None``)
exactly.  Tiny hand-computed cases document the planes.
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from perturbkit.bounds.bilinear import bilinear_backward
from perturbkit.graph.ir import Node
from perturbkit.ops.base import Interval
from perturbkit.ops.bilinear import BilinearMatMul, BilinearMul

F64 = torch.float64

SHAPES = [
    (BilinearMul(), (2, 3), (2, 3)),
    (BilinearMul(), (2, 3), (3,)),
    (BilinearMul(), (2, 1), (1, 4)),
    (BilinearMatMul(), (3, 4), (4, 2)),
    (BilinearMatMul(), (2, 3, 4), (2, 4, 3)),
    (BilinearMatMul(), (2, 3, 4), (4, 2)),
    (BilinearMatMul(), (4,), (4, 3)),
    (BilinearMatMul(), (3, 4), (4,)),
    (BilinearMatMul(), (4,), (4,)),
]


def _node(rule, sa, sb) -> Node:
    node = Node("p", rule.op_type, ("a", "b"), "z", in_shapes=(sa, sb))
    out = tuple(rule.forward(node, torch.zeros(sa, dtype=F64), torch.zeros(sb, dtype=F64)).shape)
    return Node("p", rule.op_type, ("a", "b"), "z", in_shapes=(sa, sb), out_shape=out)


def _check(rule, node, alo, ahi, blo, bhi, g, S=4, with_t=True):
    B = alo.shape[0]
    A = torch.randn(B, S, *node.out_shape, generator=g, dtype=F64)
    t = torch.rand(B, S, *node.out_shape, generator=g, dtype=F64) if with_t else None
    ca, cb, bias = bilinear_backward(rule, node, A, Interval(alo, ahi), Interval(blo, bhi), t)
    assert ca.shape == (B, S, *node.in_shapes[0]) and cb.shape == (B, S, *node.in_shapes[1])
    k = 16
    pa = torch.cat([torch.where(torch.rand(k, *alo.shape, generator=g) < 0.5, alo, ahi),
                    alo + (ahi - alo) * torch.rand(k, *alo.shape, generator=g, dtype=F64)])
    pb = torch.cat([torch.where(torch.rand(k, *blo.shape, generator=g) < 0.5, blo, bhi),
                    blo + (bhi - blo) * torch.rand(k, *blo.shape, generator=g, dtype=F64)])
    z = rule.forward(node, pa, pb)  # (2k, B, *out)

    def total(t):  # (2k, B, S, *shape) -> (2k, B, S)
        return t.reshape(*t.shape[:3], -1).sum(-1)

    lhs = total(A.unsqueeze(0) * z.unsqueeze(2))
    rhs = total(ca.unsqueeze(0) * pa.unsqueeze(2)) + total(cb.unsqueeze(0) * pb.unsqueeze(2)) + bias.unsqueeze(0)
    scale = 1 + total(A.abs().unsqueeze(0) * z.abs().unsqueeze(2))
    assert (lhs >= rhs - 1e-9 * scale).all(), float((rhs - lhs).max())
    # interval: sound for the same samples
    box = rule.interval(node, Interval(alo, ahi), Interval(blo, bhi))
    assert (z >= box.lo - 1e-12 * (1 + z.abs())).all() and (z <= box.hi + 1e-12 * (1 + z.abs())).all()


@pytest.mark.parametrize("rule,sa,sb", SHAPES, ids=[f"{r.op_type}-{a}-{b}" for r, a, b in SHAPES])
@settings(max_examples=40, deadline=None, derandomize=True)
@given(ca=st.floats(-5, 5), cb=st.floats(-5, 5), wa=st.sampled_from([0.0, 1e-6, 0.3, 2.0, 10.0]),
       wb=st.sampled_from([0.0, 1e-6, 0.3, 2.0, 10.0]), seed=st.integers(0, 2 ** 31 - 1))
def test_planes_sound(rule, sa, sb, ca, cb, wa, wb, seed):
    g = torch.Generator().manual_seed(seed)
    node = _node(rule, sa, sb)
    B = 2
    ra = wa * torch.rand(B, *sa, generator=g, dtype=F64)
    rb = wb * torch.rand(B, *sb, generator=g, dtype=F64)
    ma = ca + torch.randn(B, *sa, generator=g, dtype=F64)
    mb = cb + torch.randn(B, *sb, generator=g, dtype=F64)
    _check(rule, node, ma - ra, ma + ra, mb - rb, mb + rb, g, with_t=bool(seed % 2))


@pytest.mark.parametrize("rule,sa,sb", SHAPES[:4], ids=[f"{r.op_type}-{a}-{b}" for r, a, b in SHAPES[:4]])
def test_t_one_is_crown(rule, sa, sb):
    g = torch.Generator().manual_seed(3)
    node = _node(rule, sa, sb)
    alo = torch.randn(2, *sa, generator=g, dtype=F64)
    blo = torch.randn(2, *sb, generator=g, dtype=F64)
    a, b = Interval(alo, alo + 1), Interval(blo, blo + 0.5)
    A = torch.randn(2, 3, *node.out_shape, generator=g, dtype=F64)
    r0 = bilinear_backward(rule, node, A, a, b, None)
    r1 = bilinear_backward(rule, node, A, a, b, torch.ones_like(A))
    for u, v in zip(r0, r1):
        torch.testing.assert_close(u, v, rtol=1e-12, atol=1e-12)


def test_hand_planes():
    """x in [1, 2], y in [-1, 3]: lower L1 = ly x + lx y - lx ly = -x + y + 1; upper U1 = uy x + lx y - lx uy = 3x + y - 3."""
    rule = BilinearMul()
    node = _node(rule, (1,), (1,))
    x, y = Interval(torch.tensor([[1.0]], dtype=F64), torch.tensor([[2.0]], dtype=F64)), \
        Interval(torch.tensor([[-1.0]], dtype=F64), torch.tensor([[3.0]], dtype=F64))
    A = torch.tensor([[[1.0], [-1.0]]], dtype=F64)  # rows: lower bound of z, lower bound of -z
    cx, cy, bias = bilinear_backward(rule, node, A, x, y)
    assert cx.flatten().tolist() == [-1.0, -3.0] and cy.flatten().tolist() == [1.0, -1.0]
    assert bias.flatten().tolist() == [1.0, 3.0]
    box = rule.interval(node, x, y)
    assert box.lo.item() == -2.0 and box.hi.item() == 6.0


def test_matmul_interval_exact():
    """Each output is a sum of products of distinct pairs: the interval is the exact range."""
    rule = BilinearMatMul()
    node = _node(rule, (2, 3), (3, 2))
    g = torch.Generator().manual_seed(0)
    alo, blo = torch.randn(1, 2, 3, generator=g, dtype=F64), torch.randn(1, 3, 2, generator=g, dtype=F64)
    ahi, bhi = alo + torch.rand(1, 2, 3, generator=g, dtype=F64), blo + torch.rand(1, 3, 2, generator=g, dtype=F64)
    box = rule.interval(node, Interval(alo, ahi), Interval(blo, bhi))
    # the exact minimum of z_00 = sum_k a_0k b_k0: each term independently at a corner
    terms = torch.stack([alo[0, 0] * blo[0, :, 0], alo[0, 0] * bhi[0, :, 0], ahi[0, 0] * blo[0, :, 0],
                         ahi[0, 0] * bhi[0, :, 0]])
    torch.testing.assert_close(box.lo[0, 0, 0], terms.min(0).values.sum())
    torch.testing.assert_close(box.hi[0, 0, 0], terms.max(0).values.sum())


def test_stochastic_rows_interval():
    """Attention weights (softmax rows) times values: the interval also lies within the
    range of the value rows' convex combinations, and contains every sampled product."""
    rule = BilinearMatMul()
    base = _node(rule, (3, 4), (4, 2))
    node = Node("p", "BilinearMatMul", ("a", "b"), "z", {"stochastic_rows": 1}, base.in_shapes, base.out_shape)
    g = torch.Generator().manual_seed(5)
    s = torch.randn(1, 3, 4, generator=g, dtype=F64)
    slo, shi = s - 0.5, s + 0.5
    # softmax bounds of each weight from the score box: a_k in [e^lo_k / (e^lo_k + sum_j e^hi_j), ...]
    e_lo, e_hi = slo.exp(), shi.exp()
    alo = e_lo / (e_lo + (e_hi.sum(-1, keepdim=True) - e_hi))
    ahi = e_hi / (e_hi + (e_lo.sum(-1, keepdim=True) - e_lo))
    blo = torch.randn(1, 4, 2, generator=g, dtype=F64)
    bhi = blo + torch.rand(1, 4, 2, generator=g, dtype=F64)
    plain = rule.interval(base, Interval(alo, ahi), Interval(blo, bhi))
    box = rule.interval(node, Interval(alo, ahi), Interval(blo, bhi))
    assert (box.lo >= plain.lo).all() and (box.hi <= plain.hi).all()
    assert (box.lo >= blo.amin(-2, keepdim=True)).all() and (box.hi <= bhi.amax(-2, keepdim=True)).all()
    for _ in range(200):
        a = torch.softmax(slo + (shi - slo) * torch.rand(s.shape, generator=g, dtype=F64), -1)
        b = blo + (bhi - blo) * torch.rand(blo.shape, generator=g, dtype=F64)
        z = a @ b
        assert (z >= box.lo - 1e-12).all() and (z <= box.hi + 1e-12).all()
