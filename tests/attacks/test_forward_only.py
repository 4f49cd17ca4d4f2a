"""Models with operators perturbkit can run but not bound (Floor, Ceil): attacks work on
them, bounds and verification refuse them with one line naming the operator.  A final
Softmax, once run-only, is now bounded (through its decomposition): attacks still flag it."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

import perturbkit as pk
from perturbkit.attacks import PGD, ThreatModel
from perturbkit.cli.main import main
from perturbkit.errors import UnsupportedOperatorError
from perturbkit.models import bundled_path, load_digits_test
from perturbkit.sets import LpBall


def _softmax_digits(tmp_path, op="Softmax", **attrs):
    """The bundled digits MLP with ``op`` appended to its logits."""
    m = onnx.load(str(bundled_path("digits-mlp")))
    out = m.graph.output[0]
    m.graph.node.append(helper.make_node(op, [out.name], ["probs"], name=f"final_{op.lower()}", **attrs))
    m.graph.output.remove(out)
    m.graph.output.append(helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 10]))
    p = tmp_path / f"{op.lower()}.onnx"
    onnx.save(m, p)
    return p


@pytest.mark.parametrize("op,attrs", [("Floor", {}), ("Ceil", {})])
def test_forward_only_load_matches_onnxruntime(tmp_path, op, attrs):
    p = _softmax_digits(tmp_path, op, **attrs)
    with pytest.raises(UnsupportedOperatorError, match=op):
        pk.load(p)  # strict by default: bounds need a rule for every operator
    net = pk.load(p, forward_only=True)
    x, _ = load_digits_test()
    sess = ort.InferenceSession(str(p))
    ref = np.concatenate([sess.run(None, {sess.get_inputs()[0].name: x[i:i + 1]})[0] for i in range(16)])
    assert np.allclose(net(torch.from_numpy(x[:16])).detach().numpy(), ref, atol=1e-5)


@pytest.mark.parametrize("op,attrs", [("Softmax", {"axis": 1}), ("Softmax", {}), ("LogSoftmax", {"axis": -1}),
                                      ("Erf", {}), ("Exp", {})])
def test_once_run_only_ops_now_load_and_bound(tmp_path, op, attrs):
    p = _softmax_digits(tmp_path, op, **attrs)
    net = pk.load(p)
    x, _ = load_digits_test()
    sess = ort.InferenceSession(str(p))
    ref = np.concatenate([sess.run(None, {sess.get_inputs()[0].name: x[i:i + 1]})[0] for i in range(16)])
    assert np.allclose(net(torch.from_numpy(x[:16])).detach().numpy(), ref, atol=1e-5)
    b = pk.bounds(net, LpBall(torch.from_numpy(x[:4]), 0.01, domain=(0, 1)), method="crown")
    y = torch.from_numpy(ref[:4])
    assert (b.lower <= y + 1e-5).all() and (y <= b.upper + 1e-5).all()


def test_attacks_run_and_flag_softmax_bounds_refuse_floor(tmp_path):
    p = _softmax_digits(tmp_path)
    net = pk.load(p, forward_only=True)
    x, y = load_digits_test()
    x, y = torch.from_numpy(x[:64]), torch.from_numpy(y[:64])
    r = PGD(ThreatModel(eps=0.2), steps=10)(net, x, y)
    assert r.flags["softmax_outputs"] == 64
    assert float(r.success.float().mean()) > 0.3
    fnet = pk.load(_softmax_digits(tmp_path, "Floor"), forward_only=True)
    with pytest.raises(UnsupportedOperatorError, match="final_floor"):
        pk.bounds(fnet, LpBall(x[:2], 0.01, domain=(0, 1)), method="crown")
    from perturbkit.verify.spec import Case, Clause, InputBox, OutputSpec, Property

    box = InputBox(np.zeros(64), np.full(64, 0.1))
    prop = Property(64, 10, (Case(box, OutputSpec((Clause(np.eye(10)[:1], np.zeros(1)),))),))
    with pytest.raises(UnsupportedOperatorError, match="Floor"):
        pk.verify(fnet, prop, timeout=5)


def test_cli_attack_runs_bounds_refuses(tmp_path, capsys):
    p = _softmax_digits(tmp_path)
    code = main(["attack", str(p), "--data", "digits", "--attack", "pgd", "--eps", "0.1", "--steps", "5", "--n", "32",
                 "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "softmax_outputs" in out
    x, _ = load_digits_test()
    np.save(tmp_path / "x.npy", x[0])
    code = main(["bounds", str(_softmax_digits(tmp_path, "Floor")), "--input", str(tmp_path / "x.npy"), "--eps", "0.01"])
    out, err = capsys.readouterr()
    assert code == 2 and "Floor" in err and len(err.strip().splitlines()) == 1
