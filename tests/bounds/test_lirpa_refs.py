"""Acceptance 2: auto_LiRPA's reference bounds (tests/data/lirpa, copied from
../shared/benchmarks/lirpa_refs) are reproduced to rtol 1e-4 / atol 1e-5."""
import numpy as np
import pytest
import torch

import perturbkit as pk
from conftest import DATA

RTOL, ATOL = 1e-4, 1e-5
REF = DATA / "lirpa"


def _load(name):
    return pk.load(REF / f"{name}.onnx"), np.load(REF / f"{name}.npz")


@pytest.mark.parametrize("name", ["probe_mlp", "probe_cnn"])
@pytest.mark.parametrize("method,key", [("ibp", "IBP"), ("crown", "CROWN")])
def test_probe_nets(name, method, key):
    net, d = _load(name)
    x = torch.from_numpy(d["x"])
    np.testing.assert_allclose(net(x).numpy(), d["clean_logits"], rtol=1e-5, atol=1e-5)
    b = pk.bounds(net, pk.sets.LpBall(x, float(d["eps"])), method=method)
    np.testing.assert_allclose(b.lower.numpy(), d[f"{key}_lower"], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(b.upper.numpy(), d[f"{key}_upper"], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("name", ["vision_cnn_bn_residual", "vision_cnn_hardtanh"])
@pytest.mark.parametrize("norm,nkey", [("inf", "l_inf"), (2, "l_2")])
@pytest.mark.parametrize("method,key", [("ibp", "IBP"), ("crown", "CROWN"), ("crown-ibp", "CROWN-IBP")])
def test_vision_nets(name, norm, nkey, method, key):
    net, d = _load(name)
    x = torch.from_numpy(d["x"])
    np.testing.assert_allclose(net(x).numpy(), d["clean_logits"], rtol=1e-4, atol=1e-5)
    b = pk.bounds(net, pk.sets.LpBall(x, float(d["eps"]), norm=norm), method=method)
    np.testing.assert_allclose(b.lower.numpy(), d[f"{nkey}_{key}_lb"], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(b.upper.numpy(), d[f"{nkey}_{key}_ub"], rtol=RTOL, atol=ATOL)
