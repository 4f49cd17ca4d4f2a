"""Transposed convolution (the input gradient of a Conv) on the CPU: oneDNN against the
GradientProgram's kernel product + sparse tap scatter (perturbkit.graph.vjp.ConvTranspose).

    taskset -c 1 python bench/conv_transpose.py [--markdown OUT.md]

Question: for which convolutions is ``ConvTranspose`` faster than the Conv rule's own
transpose (oneDNN's transposed convolution, or an unfold-free product + fold for layers
with at most 4 input channels), which the GradientProgram uses otherwise?  Autograd's
``convolution_backward`` (oneDNN) is shown beside.  The answer sets the rule ``takes_fast_transpose`` in
``perturbkit/graph/vjp.py`` (channel product, stride, input channels, taps per channel).
Shapes: the bundled digits CNN's two layers, the layers of the shared VNN-COMP CNNs
(oval21, verivital), MNIST- and CIFAR-sized layers, channel products from 8 to 4096.
"ours, cols" takes the cotangent already in the column layout (as between two such
layers), "ours, rows" includes transposing it (as after a dense layer).  One thread,
median of 30 calls after 3 warm-up calls, microseconds; both results are checked equal
(relative 1e-4) first.

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
from perturbkit.graph.conv_transpose import ConvTranspose, takes_fast_transpose  # noqa: E402
from perturbkit.ops.registry import RULES  # noqa: E402

# (batch, c_in, c_out, size, stride, kernel, pad)
SHAPES = [
    (450, 1, 8, 8, 1, 3, 1),      # digits CNN, layer 1
    (450, 8, 16, 8, 2, 3, 1),     # digits CNN, layer 2
    (104, 8, 16, 8, 2, 3, 1),     # the same on the points AutoAttack's later stages see
    (450, 1, 16, 28, 2, 4, 1),    # MNIST-sized first layer
    (128, 3, 16, 32, 1, 3, 1),    # CIFAR-sized first layer
    (128, 3, 8, 32, 2, 4, 1),     # oval21 cifar_base_kw / cifar_deep_kw, layer 1
    (128, 8, 16, 16, 2, 4, 1),    # oval21 cifar_base_kw, layer 2
    (128, 8, 8, 16, 1, 3, 1),     # oval21 cifar_deep_kw, stride-1 layers
    (128, 1, 32, 28, 1, 2, 0),    # verivital Convnet, 2x2 kernel on one channel
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
    lines = ["| batch | c_in | c_out | size | stride | kernel | channel product | autograd (oneDNN) us | "
             "Conv rule's transpose us | ours, cols us | ours, rows us | ours / rule (cols, rows) | "
             "taken by the program (cols, rows) |", "|" + " --- |" * 13]
    for B, ci, co, H, s, k, p in SHAPES:
        x = torch.randn(B, ci, H, H, generator=g)
        W = torch.randn(co, ci, k, k, generator=g)
        y = torch.nn.functional.conv2d(x, W, padding=p, stride=s)
        go = torch.randn(y.shape, generator=g)
        node = Node(name="conv", op_type="Conv", inputs=("x", "W"), output="y",
                    attrs={"pads": [p] * 4, "strides": [s, s], "kernel_shape": [k, k]},
                    in_shapes=((1, ci, H, H), tuple(W.shape)), out_shape=(1, *y.shape[1:]))
        plan = ConvTranspose(node, W, 1)
        goT = go.reshape(B, -1).t().contiguous()

        def native():
            return torch.ops.aten.convolution_backward(go, x, W, None, [s, s], [p, p], [1, 1], False, [0, 0], 1,
                                                       [True, False, False])[0]

        def ours():
            return plan(goT)

        def ours_rows():
            return plan(go.reshape(B, -1).t().contiguous())

        go_lead = go.reshape(B, *node.out_shape)

        def rule():
            return RULES["Conv"].backward(node, go_lead, None, W)[0]

        ref = native()
        got = ours().t().reshape(ref.shape)
        assert torch.allclose(got, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max())), (B, ci, co)
        assert torch.allclose(rule().reshape(ref.shape), ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
        t_n, t_rule, t_o, t_r = _median(native), _median(rule), _median(ours), _median(ours_rows)
        taken = [takes_fast_transpose(node, W, torch.float32, torch.device("cpu"), columns_in=c) for c in (True, False)]
        lines.append(f"| {B} | {ci} | {co} | {H} | {s} | {k} | {ci * co} | {1e6 * t_n:.0f} | {1e6 * t_rule:.0f} | "
                     f"{1e6 * t_o:.0f} | {1e6 * t_r:.0f} | {t_o / t_rule:.2f}, {t_r / t_rule:.2f} | "
                     f"{', '.join('yes' if t else 'no' for t in taken)} |")
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
