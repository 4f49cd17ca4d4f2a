"""Devices and dtypes: float32 and float64 agree; CUDA (when present) agrees with the CPU;
batched computation equals per-sample computation."""
import numpy as np
import pytest
import torch

import perturbkit as pk
from nets import network
from tests.conftest import DATA

METHODS = ["ibp", "crown", "crown-ibp"]


@pytest.mark.parametrize("method", METHODS)
def test_float32_and_float64_agree(method):
    net = pk.load(DATA / "lirpa" / "probe_cnn.onnx")
    d = np.load(DATA / "lirpa" / "probe_cnn.npz")
    x = torch.from_numpy(d["x"])
    b32 = pk.bounds(net, pk.sets.LpBall(x, float(d["eps"])), method=method)
    b64 = pk.bounds(net, pk.sets.LpBall(x.double(), float(d["eps"])), method=method)
    assert b32.lower.dtype == torch.float32 and b64.lower.dtype == torch.float64
    torch.testing.assert_close(b32.lower.double(), b64.lower, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(b32.upper.double(), b64.upper, rtol=1e-4, atol=1e-5)
    # the dtype= option converts the set
    b = pk.bounds(net, pk.sets.LpBall(x, float(d["eps"])), method=method, dtype=torch.float64)
    torch.testing.assert_close(b.lower, b64.lower)


@pytest.mark.parametrize("kind", ["mlp", "cnn", "residual"])
def test_batch_equals_single_samples(kind):
    net, module, shape = network(kind)
    x = torch.rand(4, *shape[1:], dtype=torch.float64)
    C = pk.margin_spec(torch.tensor([0, 1, 2, 0]), net.n_outputs, dtype=torch.float64)
    for method in METHODS:
        whole = pk.bounds(net, pk.sets.LpBall(x, 0.1), method=method, C=C)
        for i in range(4):
            one = pk.bounds(net, pk.sets.LpBall(x[i:i + 1], 0.1), method=method, C=C[i:i + 1])
            torch.testing.assert_close(whole.lower[i:i + 1], one.lower, rtol=1e-10, atol=1e-10)
            torch.testing.assert_close(whole.upper[i:i + 1], one.upper, rtol=1e-10, atol=1e-10)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", ["probe_mlp", "probe_cnn", "vision_cnn_bn_residual"])
def test_cuda_matches_cpu(name, method):
    net = pk.load(DATA / "lirpa" / f"{name}.onnx")
    d = np.load(DATA / "lirpa" / f"{name}.npz")
    x = torch.from_numpy(d["x"]).double()
    cpu = pk.bounds(net, pk.sets.LpBall(x, float(d["eps"])), method=method)
    gpu = pk.bounds(net, pk.sets.LpBall(x, float(d["eps"])), method=method, device="cuda")
    assert gpu.lower.device.type == "cuda"
    torch.testing.assert_close(gpu.lower.cpu(), cpu.lower, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(gpu.upper.cpu(), cpu.upper, rtol=1e-9, atol=1e-9)
