"""No CROWN bound looser than before the patch-mode speed work (issue 14).

``tests/data/no_looser/reference.npz`` holds the CROWN bounds the build before that work
(commit 9fcbf51) computed on the auto_LiRPA reference networks (Linf and L2) and on shared
VNN-COMP networks (verivital MaxPool/AveragePool CNNs, oval21 base and deep, mnist_fc 256x2,
ACAS Xu), with the input sets; ``make_reference.py`` beside it regenerates the file from any
checkout.  Every lower bound of the current build must be at least, and every upper bound at
most, the reference's (up to float32 rounding: both builds compute in the models' float32).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import perturbkit as pk

REF_DIR = Path(__file__).resolve().parents[1] / "data" / "no_looser"
sys.path.insert(0, str(REF_DIR))
import make_reference  # noqa: E402  (the case list and input sets, shared with the generator)

REF = np.load(REF_DIR / "reference.npz")
NAMES = sorted({k.split("/")[0] for k in REF.files})
#: float32 rounding of two evaluation orders, relative to the bound's magnitude
RTOL = 2e-5


def test_reference_covers_every_case():
    assert NAMES == sorted(make_reference.networks())


@pytest.mark.parametrize("name", NAMES)
def test_crown_no_looser_than_before(name):
    onnx = make_reference.networks()[name]
    arrays = {k.split("/", 1)[1]: REF[k] for k in REF.files if k.startswith(name + "/")}
    net = pk.load(onnx)
    b = pk.bounds(net, make_reference.input_set(net, arrays), method="crown")
    lo, hi = b.lower.detach().numpy(), b.upper.detach().numpy()
    ref_lo, ref_hi = arrays["lower"], arrays["upper"]
    tol_lo = RTOL * np.maximum(1.0, np.abs(ref_lo))
    tol_hi = RTOL * np.maximum(1.0, np.abs(ref_hi))
    worse_lo = lo < ref_lo - tol_lo
    worse_hi = hi > ref_hi + tol_hi
    assert not worse_lo.any(), f"{name}: lower bounds looser at {np.argwhere(worse_lo)[:5].tolist()}: " \
                               f"{lo[worse_lo][:5]} < {ref_lo[worse_lo][:5]}"
    assert not worse_hi.any(), f"{name}: upper bounds looser at {np.argwhere(worse_hi)[:5].tolist()}: " \
                               f"{hi[worse_hi][:5]} > {ref_hi[worse_hi][:5]}"
    with torch.no_grad():  # and still sound at the set's centre
        if "x" in arrays:
            y = net(torch.from_numpy(arrays["x"])).numpy()
        else:
            c = torch.from_numpy((arrays["lo"] + arrays["hi"]) / 2).reshape(1, *net.sample_shape)
            y = net(c).numpy()
    assert (lo <= y + 1e-4).all() and (y <= hi + 1e-4).all()
