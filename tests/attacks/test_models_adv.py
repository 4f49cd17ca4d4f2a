"""The bundled adversarially trained digits CNN (digits-cnn-adv): it loads, it is accurate,
it agrees with onnxruntime, and PGD at Linf eps 0.2 (the training radius) leaves it far more
robust accuracy than the plainly trained digits-cnn.  Numbers in src/perturbkit/models/README.md."""
import numpy as np
import pytest
import torch

import perturbkit
from perturbkit.attacks import PGD, ThreatModel
from perturbkit.models import BUNDLED, bundled_names, bundled_path, load_digits_test

CLEAN_FLOOR = 0.88       # measured 0.9111 (410/450)
ROBUST_FLOOR = 0.25      # PGD-10 at eps 0.2: measured 0.36 (digits-cnn: 0.007)
ROBUST_GAP = 0.20        # robust accuracy of digits-cnn-adv minus that of digits-cnn


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits_test()
    return torch.from_numpy(x), torch.from_numpy(y)


@pytest.fixture(scope="module")
def adv_net():
    return perturbkit.load(str(bundled_path("digits-cnn-adv")))


def test_registered_and_shipped():
    assert "digits-cnn-adv" in bundled_names()
    assert BUNDLED["digits-cnn-adv"] == "digits_cnn_adv.onnx"
    assert bundled_path("digits-cnn-adv").is_file()


def test_loads_with_the_architecture_of_digits_cnn(adv_net):
    plain = perturbkit.load(str(bundled_path("digits-cnn")))
    assert tuple(adv_net.input_shape) == (1, 1, 8, 8)
    assert tuple(adv_net.graph.output_shape) == (1, 10)
    assert adv_net.graph.op_types() == plain.graph.op_types()
    shapes = lambda g: sorted(tuple(t.shape) for t in g.constants.values())  # noqa: E731
    assert shapes(adv_net.graph) == shapes(plain.graph)


def test_clean_accuracy_and_onnxruntime_agree(adv_net, digits):
    ort = pytest.importorskip("onnxruntime")
    x, y = digits
    with torch.no_grad():
        z = adv_net(x).numpy()
    assert (z.argmax(1) == y.numpy()).mean() >= CLEAN_FLOOR
    sess = ort.InferenceSession(str(bundled_path("digits-cnn-adv")), providers=["CPUExecutionProvider"])
    xn = x.numpy()
    ref = np.concatenate([sess.run(None, {"input": xn[i:i + 1]})[0] for i in range(0, len(xn), 15)])
    np.testing.assert_allclose(z[::15], ref, atol=1e-4, rtol=1e-4)


def test_much_more_robust_to_pgd_than_digits_cnn(adv_net, digits):
    x, y = digits
    threat = ThreatModel(eps=0.2, norm="inf", domain=(0.0, 1.0))
    robust = {}
    for name, net in (("digits-cnn-adv", adv_net), ("digits-cnn", perturbkit.load(str(bundled_path("digits-cnn"))))):
        r = PGD(threat, steps=10, seed=0)(net, x, y)
        assert bool(threat.contains(x, r.x_adv, tol=1e-5).all())
        assert not r.raised(), r.flags
        robust[name] = r.robust.float().mean().item()
    assert robust["digits-cnn-adv"] >= ROBUST_FLOOR, robust
    assert robust["digits-cnn-adv"] - robust["digits-cnn"] >= ROBUST_GAP, robust
