"""Where patch mode's transposed convolution should use a dense local matrix (issue 14).

``patches._local_transpose`` computes the transposed convolution of N small patches
(N, Co, ph, pw) either with the convolution routine (oneDNN) or as a product with a dense
(Co*ph*pw, Ci*ph2*pw2) matrix, most of whose entries are zero for large patches.  This bench
times both, one thread, for input channels Ci, output channels Co, patch sizes and strides,
and prints the waste ratio (matrix entries / convolution multiply-adds per patch) with the
winner; the limit in ``_local_transpose`` (26 / Ci, between 4 and 50, doubled for strides)
follows these numbers.

    OMP_NUM_THREADS=1 python bench/conv_transpose_choice.py
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F


def _bench(f, n: int = 3) -> float:
    f()
    t = time.perf_counter()
    for _ in range(n):
        f()
    return (time.perf_counter() - t) / n * 1e3


def main() -> None:
    torch.set_num_threads(1)
    N, k = 1024, 3
    for Ci in (1, 3, 16, 32):
        for Co in (16, 32, 64):
            for ph in (3, 6, 8, 12):
                for s in (1, 2):
                    ph2 = (ph - 1) * s + k
                    m, n = Co * ph * ph, Ci * ph2 * ph2
                    if m * n > 2 ** 24:
                        continue
                    P, W = torch.randn(N, Co, ph, ph), torch.randn(Co, Ci, k, k)
                    M = torch.randn(m, n)
                    tc = _bench(lambda: F.conv_transpose2d(P, W, stride=s))
                    tm = _bench(lambda: P.reshape(N, m) @ M)
                    work = Co * Ci * k * k * ph * ph
                    print(f"Ci {Ci:2d} Co {Co:2d} patch {ph:2d} stride {s}: waste {m * n / work:6.1f}  "
                          f"conv {tc:7.2f} ms  matrix {tm:7.2f} ms  -> {'matrix' if tm < tc else 'conv'}", flush=True)


if __name__ == "__main__":
    main()
