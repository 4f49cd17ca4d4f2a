"""Table lookups by perturbed indices (ops/embedding.py): nn.Embedding and ONNX Gather(table, ids).

The interval of an index box is exact (the rows it can reach, min and max per column), and
every method's bounds contain the outputs of every integer index vector in the box
(enumerated).  Fixed indices give exact outputs; a perturbed table is sound by sampling.
"""
from __future__ import annotations

import itertools

import pytest
import torch

import perturbkit as pk
from perturbkit.graph.ir import Node
from perturbkit.ops.base import Interval
from perturbkit.ops.embedding import TableLookup


class Tagger(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(7, 4)
        self.fc = torch.nn.Linear(12, 3)

    def forward(self, ids):
        return self.fc(torch.tanh(self.embed(ids)).flatten(1))


@pytest.fixture(scope="module")
def tagger():
    torch.manual_seed(0)
    m = Tagger().double().eval()
    ids = torch.tensor([[1, 5, 3]])
    return m, pk.load(m, example_input=ids)


def test_lookup_interval_exact():
    table = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    node = Node("t", "TableLookup", ("i", "w"), "y", {"axis": 0}, ((2,), (6, 3)), (2, 3))
    lo = torch.tensor([[0.2, 2.6]], dtype=torch.float64)
    hi = torch.tensor([[2.4, 2.9]], dtype=torch.float64)
    box = TableLookup().interval(node, Interval(lo, hi), table)
    torch.testing.assert_close(box.lo[0, 0], table[0:3].min(0).values)
    torch.testing.assert_close(box.hi[0, 0], table[0:3].max(0).values)
    torch.testing.assert_close(box.lo[0, 1], table[3])  # 2.6 .. 2.9 reach row 3 only
    torch.testing.assert_close(box.hi[0, 1], table[3])


@pytest.mark.parametrize("method", ["ibp", "crown", "crown-ibp", "alpha-crown"])
def test_bounds_contain_every_index_vector(tagger, method):
    m, net = tagger
    ids = torch.tensor([[1, 5, 3]], dtype=torch.float64)
    b = pk.bounds(net, pk.sets.Box(ids - 1, ids + 1), method=method)
    with torch.no_grad():
        ys = torch.cat([m(torch.tensor([list(v)])) for v in itertools.product((0, 1, 2), (4, 5, 6), (2, 3, 4))])
    assert (ys >= b.lower - 1e-9).all() and (ys <= b.upper + 1e-9).all()
    exact = pk.bounds(net, pk.sets.Box(ids, ids), method=method)
    with torch.no_grad():
        torch.testing.assert_close(exact.lower, m(ids.long()), rtol=1e-9, atol=1e-9)


def test_perturbed_table_sound(tagger):
    m, net = tagger
    ids = torch.tensor([[1, 5, 3]], dtype=torch.float64)
    b = pk.bounds(net, pk.sets.Box(ids, ids), method="crown", weights={"embed.weight": 0.05})
    g = torch.Generator().manual_seed(0)
    W = m.embed.weight.detach().clone()
    for _ in range(200):
        with torch.no_grad():
            m.embed.weight.copy_(W + 0.05 * (2 * torch.rand(W.shape, generator=g, dtype=W.dtype) - 1))
            y = m(ids.long())
        assert (y >= b.lower - 1e-9).all() and (y <= b.upper + 1e-9).all()
    with torch.no_grad():
        m.embed.weight.copy_(W)


def test_onnx_gather_by_runtime_ids(tagger, tmp_path):
    m, net = tagger
    path = tmp_path / "tagger.onnx"
    torch.onnx.export(Tagger().eval(), (torch.tensor([[1, 5, 3]]),), path, dynamo=False, input_names=["ids"])
    onet = pk.load(path)
    assert any(n.op_type == "TableLookup" for n in onet.graph.nodes)
    ids = torch.tensor([[1.0, 5.0, 3.0]])
    b = pk.bounds(onet, pk.sets.Box(ids - 1, ids + 1), method="crown")
    assert (b.lower <= onet(ids)).all() and (onet(ids) <= b.upper).all()
