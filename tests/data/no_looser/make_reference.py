"""Reference CROWN bounds for tests/bounds/test_no_looser.py, computed by a chosen build.

The test checks that no bound of the current build is looser than those of the build that
wrote ``reference.npz`` (the one before issue 14's CROWN speed work, commit 9fcbf51).
Regenerate (from the repository root; ``OLD`` a checkout of that commit, e.g.
``git worktree add /tmp/old 9fcbf51``):

    PYTHONPATH=/tmp/old/src python tests/data/no_looser/make_reference.py

The cases: the four auto_LiRPA reference networks (tests/data/lirpa, their inputs and eps,
Linf and L2) and shared VNN-COMP networks (tests/data/no_looser, tests/data/mnist_fc,
tests/data/onnx) on the input box of one of their VNN-LIB properties; the boxes are stored
with the bounds, so the test needs no VNN-LIB file and no ../shared.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
DATA = HERE.parent
SHARED = HERE.parents[3] / "shared" / "benchmarks"

#: (case name, ONNX file, VNN-LIB property in ../shared) for the VNN-COMP networks
VNNCOMP = [
    ("verivital_maxpool", HERE / "Convnet_maxpool.onnx", SHARED / "verivital_2021/vnnlib/prop_0_0.004.vnnlib"),
    ("verivital_avgpool", HERE / "Convnet_avgpool.onnx", SHARED / "verivital_2021/vnnlib/prop_0_0.02.vnnlib"),
    ("oval21_base", HERE / "cifar_base_kw.onnx",
     SHARED / "oval21_2022/vnnlib/cifar_base_kw-img8194-eps0.018300653594771243.vnnlib"),
    ("oval21_deep", HERE / "cifar_deep_kw.onnx",
     SHARED / "oval21_2022/vnnlib/cifar_deep_kw-img4405-eps0.036732026143790855.vnnlib"),
    ("mnist_256x2", DATA / "mnist_fc/mnist-net_256x2.onnx", DATA / "mnist_fc/prop_0_0.05.vnnlib"),
    ("acasxu_1_1", DATA / "onnx/ACASXU_run2a_1_1_batch_2000.onnx", DATA / "onnx/prop_1.vnnlib"),
]
LIRPA = ["probe_mlp", "probe_cnn", "vision_cnn_bn_residual", "vision_cnn_hardtanh"]


def networks() -> dict[str, Path]:
    """Case name -> ONNX file (what the test needs: the input sets are in reference.npz)."""
    out = {f"{n}_l{norm}": DATA / "lirpa" / f"{n}.onnx" for n in LIRPA for norm in ("inf", 2)}
    out.update({name: onnx for name, onnx, _ in VNNCOMP})
    return out


def cases():
    """(name, onnx path, input set arrays) for every case (VNN-LIB boxes read from ../shared)."""
    for name in LIRPA:
        d = np.load(DATA / "lirpa" / f"{name}.npz")
        for norm in ("inf", 2):
            yield f"{name}_l{norm}", DATA / "lirpa" / f"{name}.onnx", {
                "x": d["x"].astype(np.float32), "eps": np.float64(d["eps"]), "norm": np.asarray(str(norm))}
    from perturbkit.verify.vnnlib import parse_vnnlib

    for name, onnx, vnnlib in VNNCOMP:
        box = parse_vnnlib(vnnlib).cases[0].box
        yield name, onnx, {"lo": np.asarray(box.lower, np.float32), "hi": np.asarray(box.upper, np.float32)}


def input_set(net, arrays: dict):
    import perturbkit as pk

    if "x" in arrays:
        norm = str(arrays["norm"])
        return pk.sets.LpBall(torch.from_numpy(arrays["x"]), float(arrays["eps"]), norm="inf" if norm == "inf" else 2)
    shape = (1, *net.sample_shape)
    return pk.sets.Box(torch.from_numpy(arrays["lo"]).reshape(shape), torch.from_numpy(arrays["hi"]).reshape(shape))


def main() -> None:
    import perturbkit as pk

    torch.set_num_threads(1)
    out: dict[str, np.ndarray] = {}
    for name, onnx, arrays in cases():
        net = pk.load(onnx)
        b = pk.bounds(net, input_set(net, arrays), method="crown")
        for k, v in arrays.items():
            out[f"{name}/{k}"] = v
        out[f"{name}/lower"] = b.lower.detach().numpy()
        out[f"{name}/upper"] = b.upper.detach().numpy()
        print(name, float((b.upper - b.lower).sum()), file=sys.stderr)
    np.savez_compressed(HERE / "reference.npz", **out)


if __name__ == "__main__":
    main()
