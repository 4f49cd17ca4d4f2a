"""The verifier (perturbkit.verify): verdicts known by enumeration on tiny networks, the
VNN-COMP test and ACAS Xu instances with known answers, counterexamples checked with ONNX
Runtime, timeouts, bad input."""
import io
import time
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn

import perturbkit as pk
from perturbkit.errors import InputError
from perturbkit.verify.spec import Case, Clause, InputBox, OutputSpec, Property
from perturbkit.verify.vnnlib import parse_vnnlib
from tests.conftest import DATA

CAMPAIGN = DATA / "campaign"


def _ort_outputs(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
    return sess.run(None, {inp.name: np.asarray(x, dtype=np.float32).reshape(shape)})[0].reshape(-1)


def _check_counterexample(path, prop, r):
    x, y = r.counterexample
    assert any(c.box.contains(x) for c in prop.cases), "counterexample outside every input box"
    y_ort = _ort_outputs(path, x)
    np.testing.assert_allclose(y, y_ort, rtol=0, atol=1e-6)
    assert prop.is_counterexample(x, y_ort)


@pytest.mark.parametrize("onnx_name,vnnlib_name,answer", [
    ("test_nano", "test_nano", "unsat"), ("test_tiny", "test_tiny", "unsat"),
    ("test_small", "test_small", "unsat"), ("test_sat", "test_prop", "sat"),
    ("test_unsat", "test_prop", "unsat"),
    ("ACASXU_run2a_1_1_batch_2000", "prop_1", "unsat"),
    ("ACASXU_run2a_1_2_batch_2000", "prop_2", "sat"),
    # a counterexample on a face of the box (X_0, X_1 at their lower bounds): falsify.py's face samples
    ("ACASXU_run2a_1_9_batch_2000", "prop_7", "sat"),
    # prop_1 pins X_3, X_4 to 1/20 of X_1, X_2's range: split widths in the network's units
    ("ACASXU_run2a_2_9_batch_2000", "prop_1", "unsat"),
])
def test_known_answers(onnx_name, vnnlib_name, answer):
    path = CAMPAIGN / "onnx" / f"{onnx_name}.onnx"
    prop = parse_vnnlib(CAMPAIGN / "vnnlib" / f"{vnnlib_name}.vnnlib")
    r = pk.verify(pk.load(path), prop, timeout=60)
    assert r.verdict == answer
    if answer == "sat":
        _check_counterexample(path, prop, r)


def _tiny_net(seed: int):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (torch.zeros(1, 2),), buf, dynamo=False, opset_version=13)
    return m, pk.load(onnx.load_from_string(buf.getvalue()))


_CONFIGS = {
    "default": None,
    # ReLU splits first (every open sub-problem, until its 6 cut slots are used), then inputs
    "relu-splits": dict(relu_split=1000, max_cuts=6),
    "no-relu-splits": dict(relu_split=0),
}


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("mode", list(_CONFIGS))
def test_verdicts_match_enumeration(seed, mode):
    """Property "y0 - y1 >= c on [-1, 1]^2": the true maximum is found by a dense grid (plus a
    Lipschitz bound on the grid error); c above it is unsat, below it sat."""
    from perturbkit.verify.bab import BabConfig
    from perturbkit.verify.runner import VerifyConfig

    config = VerifyConfig() if _CONFIGS[mode] is None else VerifyConfig(bab=BabConfig(**_CONFIGS[mode]))
    m, net = _tiny_net(seed)
    g = torch.linspace(-1, 1, 401, dtype=torch.float64)
    xs = torch.cartesian_prod(g, g)
    with torch.no_grad():
        y = m.double()(xs)
    v = (y[:, 0] - y[:, 1])
    top = float(v.max())
    W = [p.detach().double() for n, p in m.named_parameters() if n.endswith("weight")]
    lip = float(torch.linalg.matrix_norm(W[2][0:1] - W[2][1:2], 1)) * float(
        torch.linalg.matrix_norm(W[1], 1)) * float(torch.linalg.matrix_norm(W[0], 1))
    slack = lip * (2 / 400) + 1e-3  # the true maximum is within this of the grid's
    box = InputBox(np.array([-1.0, -1.0]), np.array([1.0, 1.0]))
    for c, expected in ((top + slack, "unsat"), (top - 1e-3, "sat")):
        # violation: y1 - y0 <= -c  (i.e. y0 - y1 >= c)
        prop = Property(2, 2, (Case(box, OutputSpec((Clause(np.array([[-1.0, 1.0]]), np.array([-c])),))),))
        r = pk.verify(net, prop, timeout=30, config=config)
        assert r.verdict == expected, (c, top, r)
        if expected == "sat":
            x, yy = r.counterexample
            assert yy[0] - yy[1] >= c - 1e-9


def test_timeout_is_honoured():
    """A tiny timeout on an instance that needs thousands of sub-boxes returns in time."""
    net = pk.load(CAMPAIGN / "onnx" / "ACASXU_run2a_1_1_batch_2000.onnx")
    prop = parse_vnnlib(CAMPAIGN / "vnnlib" / "prop_2.vnnlib")
    t = time.monotonic()
    r = pk.verify(net, prop, timeout=0.3)
    assert time.monotonic() - t < 0.3 + 2.0
    assert r.verdict in ("timeout", "unsat")


def test_bad_input():
    net = pk.load(CAMPAIGN / "onnx" / "test_nano.onnx")
    prop = parse_vnnlib(CAMPAIGN / "vnnlib" / "test_nano.vnnlib")
    for t in (0, -1, float("nan")):
        with pytest.raises(InputError, match="timeout"):
            pk.verify(net, prop, timeout=t)
    acas = parse_vnnlib(CAMPAIGN / "vnnlib" / "prop_1.vnnlib")
    with pytest.raises(InputError, match="inputs"):
        pk.verify(net, acas, timeout=5)


def test_result_invariants():
    with pytest.raises(ValueError):
        pk.Result("maybe")
    with pytest.raises(ValueError):
        pk.Result("sat")  # a sat result must carry its counterexample
    with pytest.raises(ValueError):
        pk.Result("unsat", (np.zeros(1), np.zeros(1)))


def test_branch_and_bound_with_alpha_crown_on_open_boxes():
    from perturbkit.verify.bab import BabConfig
    from perturbkit.verify.runner import VerifyConfig

    cfg = VerifyConfig(bab=BabConfig(alpha_iterations=3))
    for onnx_name, vnnlib_name, answer in (("ACASXU_run2a_1_1_batch_2000", "prop_1", "unsat"),
                                           ("ACASXU_run2a_1_2_batch_2000", "prop_2", "sat")):
        path = CAMPAIGN / "onnx" / f"{onnx_name}.onnx"
        prop = parse_vnnlib(CAMPAIGN / "vnnlib" / f"{vnnlib_name}.vnnlib")
        r = pk.verify(pk.load(path), prop, timeout=60, config=cfg)
        assert r.verdict == answer
        if answer == "sat":
            _check_counterexample(path, prop, r)


def test_violations_from_one_evaluation_equal_the_two_objectives():
    """The falsifier's PGD reads both objectives from one network evaluation."""
    from perturbkit.verify.falsify import violation, violations

    torch.manual_seed(0)
    net = pk.load(nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 4)), torch.zeros(1, 3))
    x = torch.randn(20, 3)
    C = torch.randn(5, 4)
    d = torch.randn(5)
    owner = torch.tensor([0, 0, 1, 2, 2])
    v, h = violations(net, x, C, d, owner, 3, hinge=0.1)
    assert torch.equal(v, violation(net, x, C, d, owner, 3))
    assert torch.equal(h, violation(net, x, C, d, owner, 3, hinge=0.1))
    assert v.shape == h.shape == (20, 3)
