"""CERTIFY speed (issue 12): ``perturbkit.smoothing.Smooth.certify_batch`` against a plain
per-point implementation of Cohen et al.'s published algorithm on the same noise.

    python bench/smoothing_certify.py [--model digits-cnn-noise] [--points 100] [--n0 100] [--n 1000]
                                      [--sigma 0.25] [--alpha 0.001] [--threads 1]

The plain implementation below follows the paper's pseudocode point by point: ``n0`` selection
samples, then ``n`` estimation samples in forward batches of ``NOISE_CHUNK``, counts, the
Clopper-Pearson bound (scipy's Beta quantile), ``sigma * Phi^-1``.  It draws its noise from the
same per-point generators (``noise_generator(seed, index, phase)``, chunks of ``NOISE_CHUNK``)
so both must return identical predictions and radii.  Question: is ours no slower, and how
many points per second does each certify on this CPU?  Exit status 1 if any answer differs.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import beta, norm

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import perturbkit  # noqa: E402
from perturbkit.models import load_digits_test, resolve_model  # noqa: E402
from perturbkit.smoothing.certify import ESTIMATION, NOISE_CHUNK, SELECTION, Smooth, noise_generator  # noqa: E402


def plain_certify(base, x: torch.Tensor, *, sigma: float, n0: int, n: int, alpha: float, num_classes: int,
                  seed: int, index: int) -> tuple[int, float]:
    """Cohen et al. 2019, CERTIFY, one point, written from the paper."""

    def sample_noise(num: int, phase: int) -> np.ndarray:
        gen = noise_generator(seed, index, phase)
        counts = np.zeros(num_classes, dtype=np.int64)
        remaining = num
        with torch.no_grad():
            while remaining > 0:
                b = min(NOISE_CHUNK, remaining)
                noise = torch.randn((b, *x.shape), generator=gen) * sigma
                pred = base(x[None] + noise).argmax(1)
                counts += np.bincount(pred.numpy(), minlength=num_classes)
                remaining -= b
        return counts

    c_a = int(np.argmax(sample_noise(n0, SELECTION)))
    n_a = int(sample_noise(n, ESTIMATION)[c_a])
    p_a_lower = float(beta.ppf(alpha, n_a, n - n_a + 1)) if n_a > 0 else 0.0
    if p_a_lower < 0.5:
        return -1, 0.0
    return c_a, float(sigma * norm.ppf(p_a_lower))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="digits-cnn-noise")
    ap.add_argument("--points", type=int, default=100)
    ap.add_argument("--n0", type=int, default=100)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--sigma", type=float, default=0.25)
    ap.add_argument("--alpha", type=float, default=0.001)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    net = perturbkit.load(str(resolve_model(args.model)), forward_only=True)
    x, _ = load_digits_test()
    x = torch.from_numpy(x[:args.points])
    num_classes = net(x[:1]).shape[1]
    smooth = Smooth(net, args.sigma, num_classes)
    list(smooth.certify_batch(x[:2], 10, 10, args.alpha))  # warm-up, both sides
    plain_certify(net, x[0], sigma=args.sigma, n0=10, n=10, alpha=args.alpha, num_classes=num_classes, seed=0, index=0)

    t0 = time.perf_counter()
    plain = [plain_certify(net, x[i], sigma=args.sigma, n0=args.n0, n=args.n, alpha=args.alpha,
                           num_classes=num_classes, seed=args.seed, index=i) for i in range(x.shape[0])]
    t_plain = time.perf_counter() - t0
    t0 = time.perf_counter()
    ours = [(c.prediction, c.radius) for c in smooth.certify_batch(x, args.n0, args.n, args.alpha, seed=args.seed)]
    t_ours = time.perf_counter() - t0
    same = sum(a == b for a, b in zip(plain, ours))
    print(f"model {args.model}, {x.shape[0]} points, sigma {args.sigma}, n0 {args.n0}, n {args.n}, alpha {args.alpha}, "
          f"{args.threads} thread(s)")
    print("| implementation | time (s) | points/s | identical answers |")
    print("| --- | --- | --- | --- |")
    print(f"| plain per point (paper) | {t_plain:.2f} | {x.shape[0] / t_plain:.1f} | |")
    print(f"| perturbkit certify_batch | {t_ours:.2f} | {x.shape[0] / t_ours:.1f} | {same} of {x.shape[0]} |")
    print(f"speed-up {t_plain / t_ours:.2f}x")
    return 0 if same == x.shape[0] else 1


if __name__ == "__main__":
    raise SystemExit(main())
