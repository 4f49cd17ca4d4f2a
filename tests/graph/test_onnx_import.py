"""Acceptance 3: every ONNX network in ../shared/benchmarks imports, and the IR's output
matches ONNX Runtime within 1e-5 on random inputs inside the VNN-LIB input box.
A few small networks are copied into tests/data/onnx so this also runs without ../shared."""
import csv
import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

import perturbkit as pk
from tests.conftest import DATA, SHARED
from perturbkit.errors import ModelError, UnsupportedOperatorError

_BOUND = re.compile(r"\(\s*(<=|>=)\s+X_(\d+)\s+([-+0-9.eE]+)\s*\)")


def input_box(vnnlib: Path, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Hull of all input constraints ``X_i <= c`` / ``X_i >= c`` in a VNN-LIB file (test helper)."""
    lo = np.full(n, np.inf)
    hi = np.full(n, -np.inf)
    for op, i, c in _BOUND.findall(vnnlib.read_text()):
        i, c = int(i), float(c)
        if op == ">=":
            lo[i] = min(lo[i], c)
        else:
            hi[i] = max(hi[i], c)
    assert np.isfinite(lo).all() and np.isfinite(hi).all(), f"unbounded input in {vnnlib}"
    return lo, hi


def _instances():
    seen = {}
    for csv_path in sorted(SHARED.glob("*/instances.csv")):
        for row in csv.reader(csv_path.read_text().splitlines()):
            if len(row) < 2:
                continue
            onnx_path = csv_path.parent / row[0].strip()
            seen.setdefault(onnx_path, csv_path.parent / row[1].strip())
    for d in (SHARED / "lirpa_refs",):
        for p in sorted(d.glob("*.onnx")) if d.exists() else []:
            seen.setdefault(p, None)
    local = [(p, DATA / "onnx" / (p.stem + ".vnnlib") if (DATA / "onnx" / (p.stem + ".vnnlib")).exists()
              else (DATA / "onnx" / "prop_1.vnnlib" if p.stem.startswith("ACAS") else None))
             for p in sorted((DATA / "onnx").glob("*.onnx"))]
    return sorted(seen.items()) + local


def _ort(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
    return sess.run(None, {inp.name: x.reshape(shape).astype(np.float32)})[0]


@pytest.mark.parametrize("onnx_path,vnnlib", _instances(), ids=lambda p: p.name if isinstance(p, Path) else "")
def test_network_matches_onnxruntime(onnx_path, vnnlib):
    net = pk.load(onnx_path)
    n = net.n_inputs
    rng = np.random.default_rng(0)
    if vnnlib is not None:
        lo, hi = input_box(vnnlib, n)
    else:
        lo, hi = np.zeros(n), np.ones(n)
    for _ in range(5):
        x = (lo + rng.random(n) * (hi - lo)).astype(np.float32)
        ref = _ort(onnx_path, x)
        out = net(torch.from_numpy(x).reshape(1, *net.sample_shape)).numpy()
        np.testing.assert_allclose(out.reshape(-1), ref.reshape(-1), rtol=0, atol=1e-5)
    # a batch runs as the same per-sample computation
    xb = (lo + rng.random((4, n)) * (hi - lo)).astype(np.float32)
    outb = net(torch.from_numpy(xb).reshape(4, *net.sample_shape)).numpy().reshape(4, -1)
    for k in range(4):
        np.testing.assert_allclose(outb[k], _ort(onnx_path, xb[k]).reshape(-1), rtol=0, atol=1e-5)


def test_shared_benchmarks_present_or_skipped():
    if not SHARED.exists():
        pytest.skip("../shared not available")
    assert len([p for p, _ in _instances()]) >= 20


# -- bad models ------------------------------------------------------------------------

def _model(nodes, inits=(), in_shape=(1, 3), out_shape=(1, 3), opset=13):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape))], list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def test_unknown_operator_names_op_node_and_supported(tmp_path):
    m = _model([helper.make_node("Hardmax", ["x"], ["y"], name="hardmax_17")])
    p = tmp_path / "m.onnx"
    onnx.save(m, p)
    with pytest.raises(UnsupportedOperatorError) as e:
        pk.load(p)
    msg = str(e.value)
    assert "'Hardmax'" in msg and "hardmax_17" in msg and str(p) in msg and "supported:" in msg and "Gemm" in msg
    assert "\n" not in msg and "BilinearMul" not in msg  # internal op types are not offered


def test_unreadable_and_invalid_files(tmp_path):
    with pytest.raises(ModelError, match="no such file"):
        pk.load(tmp_path / "missing.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not onnx at all \x00\x01\x02")
    with pytest.raises(ModelError, match="bad.onnx"):
        pk.load(bad)
    # a structurally invalid graph: a node reads a value nobody produces
    m = _model([helper.make_node("Relu", ["nowhere"], ["y"], name="r")])
    p = tmp_path / "dangling.onnx"
    onnx.save(m, p)
    with pytest.raises(ModelError):
        pk.load(p)


def test_constant_subgraph_folded():
    """Shape -> Gather -> Unsqueeze -> Concat -> Reshape (as torch exports x.view(x.size(0), -1))."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Constant", [], ["i0"], value=helper.make_tensor("v", TensorProto.INT64, [], [0])),
        helper.make_node("Gather", ["s", "i0"], ["b"], axis=0),
        helper.make_node("Constant", [], ["ax"], value=helper.make_tensor("a", TensorProto.INT64, [1], [0])),
        helper.make_node("Unsqueeze", ["b", "ax"], ["b1"]),
        helper.make_node("Constant", [], ["m1"], value=helper.make_tensor("m", TensorProto.INT64, [1], [-1])),
        helper.make_node("Concat", ["b1", "m1"], ["shape"], axis=0),
        helper.make_node("Reshape", ["x", "shape"], ["y"]),
    ]
    m = _model(nodes, in_shape=(1, 2, 3), out_shape=(1, 6))
    net = pk.load(m)
    assert [n.op_type for n in net.graph.nodes] == ["Reshape"]
    x = torch.arange(12.0).reshape(2, 2, 3)
    assert torch.equal(net(x), x.reshape(2, 6))
