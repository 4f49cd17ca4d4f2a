"""Check a candidate counterexample by executing the network before it is reported.

For an ONNX model the network is executed by ONNX Runtime on the float32 input (the
precision VNN-COMP checks in); otherwise by perturbkit's own interpreter in float64.  The
input is first moved into the box in float32 (rounding could push it one ulp outside).
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np
import torch

from perturbkit.graph.network import Network
from perturbkit.verify.spec import Case

_SESSIONS: dict[str, object] = {}


def _session(path: str):
    s = _SESSIONS.get(path)
    if s is None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        s = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
        _SESSIONS[path] = s
    return s


def into_box32(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """float32 values inside [lo, hi] (float64 bounds), as close to x as possible."""
    x32 = np.clip(x, lo, hi).astype(np.float32)
    below = x32.astype(np.float64) < lo
    x32[below] = np.nextafter(lo[below].astype(np.float32), np.float32(np.inf))
    above = x32.astype(np.float64) > hi
    x32[above] = np.nextafter(hi[above].astype(np.float32), np.float32(-np.inf))
    return x32


def execute(net: Network, x32: np.ndarray) -> np.ndarray:
    """Outputs (flat float64) of the network on one flat float32 input."""
    src = net.source
    if src and src.endswith(".onnx") and os.path.exists(src):
        sess = _session(src)
        inp = sess.get_inputs()[0]
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
        y = sess.run(None, {inp.name: x32.reshape(shape)})[0]
        return np.asarray(y, dtype=np.float64).reshape(-1)
    with torch.no_grad():
        y = net(torch.from_numpy(x32.astype(np.float64)).reshape(1, *net.sample_shape))
    return y.reshape(-1).double().numpy()


def confirm(net: Network, case: Case, x: np.ndarray) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """``(x, y)`` if the network, executed on x (moved into the box in float32), satisfies
    some clause of the case; else None."""
    x32 = into_box32(np.asarray(x, dtype=np.float64).reshape(-1), case.box.lower, case.box.upper)
    if not case.box.contains(x32.astype(np.float64)):
        return None
    y = execute(net, x32)
    if case.output.satisfied(y):
        return x32.astype(np.float64), y
    return None
