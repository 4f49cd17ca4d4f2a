"""Transposed convolution (the input gradient of a Conv) on the CPU: oneDNN against the
GradientProgram's kernel product + sparse tap scatter (perturbkit.graph.vjp._ConvTranspose).

    taskset -c 1 python bench/conv_transpose.py [--markdown OUT.md]

Question: for which convolutions is ``_ConvTranspose`` faster than PyTorch's
``convolution_backward`` (oneDNN)?  The answer sets ``SMALL_CONV_CHANNELS`` in
``perturbkit/graph/vjp.py`` (the GradientProgram uses ``_ConvTranspose`` when the per-group
channel product is at most that).  Shapes: the bundled digits CNN's two layers, MNIST- and
CIFAR-sized layers, channel products from 8 to 4096.  One thread, median of 30 calls after
3 warm-up calls, microseconds; both results are checked equal (relative 1e-4) first.

Exit status 0; the table is the result (it is a measurement, not a test).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from perturbkit.graph.ir import Node  # noqa: E402
from perturbkit.graph.vjp import SMALL_CONV_CHANNELS, _ConvTranspose  # noqa: E402

# (batch, c_in, c_out, size, stride, kernel, pad)
SHAPES = [
    (450, 1, 8, 8, 1, 3, 1),      # digits CNN, layer 1
    (450, 8, 16, 8, 2, 3, 1),     # digits CNN, layer 2
    (104, 8, 16, 8, 2, 3, 1),     # the same on the points AutoAttack's later stages see
    (450, 1, 16, 28, 2, 4, 1),    # MNIST-sized first layer
    (128, 3, 16, 32, 1, 3, 1),    # CIFAR-sized first layer
    (450, 16, 32, 14, 2, 4, 1),
    (128, 16, 32, 32, 2, 4, 1),
    (128, 32, 64, 16, 2, 3, 1),
    (128, 64, 64, 8, 1, 3, 1),
]


def _median(fn, reps: int = 30) -> float:
    for _ in range(3):
        fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def measure() -> list[str]:
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    lines = ["| batch | c_in | c_out | size | stride | kernel | channel product | oneDNN us | ours us | "
             "ours / oneDNN | ours used |", "|" + " --- |" * 11]
    for B, ci, co, H, s, k, p in SHAPES:
        x = torch.randn(B, ci, H, H, generator=g)
        W = torch.randn(co, ci, k, k, generator=g)
        y = torch.nn.functional.conv2d(x, W, padding=p, stride=s)
        go = torch.randn(y.shape, generator=g)
        node = Node(name="conv", op_type="Conv", inputs=("x", "W"), output="y",
                    attrs={"pads": [p] * 4, "strides": [s, s], "kernel_shape": [k, k]},
                    in_shapes=((1, ci, H, H), tuple(W.shape)), out_shape=(1, *y.shape[1:]))
        plan = _ConvTranspose(node, W, 1)
        goT = go.reshape(B, -1).t().contiguous()

        def native():
            return torch.ops.aten.convolution_backward(go, x, W, None, [s, s], [p, p], [1, 1], False, [0, 0], 1,
                                                       [True, False, False])[0]

        def ours():
            return plan(goT)

        ref = native()
        got = ours().t().reshape(ref.shape)
        assert torch.allclose(got, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max())), (B, ci, co)
        t_n, t_o = _median(native), _median(ours)
        lines.append(f"| {B} | {ci} | {co} | {H} | {s} | {k} | {ci * co} | {1e6 * t_n:.0f} | {1e6 * t_o:.0f} | "
                     f"{t_o / t_n:.2f} | {'yes' if ci * co <= SMALL_CONV_CHANNELS else 'no'} |")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--markdown", type=Path, default=None)
    args = ap.parse_args(argv)
    lines = measure()
    text = "\n".join(lines)
    print(text)
    if args.markdown is not None:
        args.markdown.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
