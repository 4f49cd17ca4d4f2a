"""Train the bundled digit classifiers and export them to ONNX.

Data: scikit-learn's 8x8 handwritten digits (1797 images), pixel values divided by 16 so
they lie in [0, 1], split with ``train_test_split(test_size=0.25, random_state=0,
stratify=y)`` into 1347 training and 450 test images.

Models (all take ``(1, 1, 8, 8)`` and return ``(1, 10)`` logits):

* ``digits_mlp.onnx``: Flatten - Linear(64, 64) - ReLU - Linear(64, 32) - ReLU - Linear(32, 10)
* ``digits_cnn.onnx``: Conv(1, 8, 3, pad 1) - ReLU - Conv(8, 16, 3, stride 2, pad 1) - ReLU -
  Flatten - Linear(256, 32) - ReLU - Linear(32, 10)
* ``digits_cnn_adv.onnx``: the architecture of ``digits_cnn``, adversarially trained (PGD
  adversarial training, Madry et al. 2018, "Towards deep learning models resistant to
  adversarial attacks") against Linf perturbations of radius 0.2, see :func:`train_adv`.
* ``digits_cnn_noise.onnx``: Conv(1, 16, 3, pad 1) - ReLU - Conv(16, 32, 3, stride 2, pad 1) -
  ReLU - Flatten - Linear(512, 64) - ReLU - Linear(64, 10), trained with Gaussian noise
  augmentation at sigma 0.25 for randomized smoothing, see :func:`main_noise`.

Training of the first two: Adam (lr 1e-2 then 1e-3), cross-entropy, full CPU, seeded; takes a
few seconds.  By default writes ``digits_mlp.onnx``, ``digits_cnn.onnx`` and
``digits_test.npz`` (``x`` float32 ``(N, 1, 8, 8)``, ``y`` int64 ``(N,)``) next to this file,
or into ``--out``; with ``--adv`` writes only ``digits_cnn_adv.onnx`` (a few seconds on one
CPU core).

Regenerate with::

    pip install scikit-learn   # or: pip install -e '.[train]'
    python -m perturbkit.models.train_digits          # digits_mlp, digits_cnn, digits_test
    python -m perturbkit.models.train_digits --adv    # digits_cnn_adv only
    python -m perturbkit.models.train_digits --noise  # digits_cnn_noise only
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

SEED = 0
EPOCHS = 60
BATCH = 64


def load_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test); x float32 ``(N, 1, 8, 8)`` in [0, 1], y int64."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    y = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, random_state=SEED, stratify=y)
    return x_tr, y_tr, x_te, y_te


def make_mlp() -> nn.Module:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(64, 64), nn.ReLU(),
        nn.Linear(64, 32), nn.ReLU(),
        nn.Linear(32, 10),
    )


def make_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 32), nn.ReLU(),
        nn.Linear(32, 10),
    )


def make_wide_cnn() -> nn.Module:
    """The architecture of ``digits_cnn_noise``: ``make_cnn`` with twice the channels and units."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 64), nn.ReLU(),
        nn.Linear(64, 10),
    )


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, seed: int = SEED) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[EPOCHS // 2], gamma=0.1)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(EPOCHS):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), BATCH):
            idx = perm[i:i + BATCH]
            opt.zero_grad()
            loss_fn(model(x[idx]), y[idx]).backward()
            opt.step()
        sched.step()
    model.eval()
    return model


# PGD adversarial training (digits_cnn_adv): Linf radius, PGD steps per training batch and
# step size (Madry et al.'s 2.5 eps / steps), epochs, radius warm-up epochs, Adam learning rate.
ADV_EPS = 0.2
ADV_STEPS = 10
ADV_STEP_SIZE = 2.5 * ADV_EPS / ADV_STEPS
ADV_EPOCHS = 20
ADV_WARMUP = 5
ADV_LR = 1e-3


def pgd_linf(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int, step_size: float,
             gen: torch.Generator) -> torch.Tensor:
    """Untargeted Linf PGD on the cross-entropy from a uniform random start in the ball,
    inside ``[0, 1]`` (Madry et al. 2018); returns the last iterate (detached)."""
    delta = (torch.rand(x.shape, generator=gen) * 2 - 1) * eps
    xa = (x + delta).clamp(0, 1)
    for _ in range(steps):
        xa.requires_grad_(True)
        loss = nn.functional.cross_entropy(model(xa), y)
        (g,) = torch.autograd.grad(loss, xa)
        xa = xa.detach() + step_size * g.sign()
        xa = torch.minimum(torch.maximum(xa, x - eps), x + eps).clamp(0, 1)
    return xa.detach()


def train_adv(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, seed: int = SEED, eps: float = ADV_EPS,
              steps: int = ADV_STEPS, step_size: float = ADV_STEP_SIZE, epochs: int = ADV_EPOCHS,
              warmup: int = ADV_WARMUP, log=None) -> nn.Module:
    """PGD adversarial training (Madry et al. 2018): minimise the cross-entropy at the PGD
    point of every training batch, ``min_theta E max_{||d||_inf <= eps} CE(f(x + d), y)``.

    The radius grows linearly from ``eps / warmup`` to ``eps`` over the first ``warmup``
    epochs (a common curriculum; the step size scales with it).  Adam, learning rate
    ``ADV_LR``, divided by 10 for the last quarter of the epochs; batch 64; the attack runs
    on the model in eval mode (it has no dropout or batch norm, so this changes nothing
    today); random starts and shuffling from one seeded generator.  The defaults (20 epochs)
    give a moderately robust model, the kind robustness evaluations are benchmarked on:
    see ``models/README.md`` for its clean, PGD and AutoAttack accuracies.
    """
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=ADV_LR)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[epochs * 3 // 4], gamma=0.1)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(epochs):
        e = eps * min(1.0, (epoch + 1) / warmup) if warmup else eps
        perm = torch.randperm(len(x), generator=gen)
        total = 0.0
        for i in range(0, len(x), BATCH):
            idx = perm[i:i + BATCH]
            model.eval()
            xa = pgd_linf(model, x[idx], y[idx], e, steps, step_size * e / eps, gen)
            model.train()
            opt.zero_grad()
            loss = loss_fn(model(xa), y[idx])
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        sched.step()
        if log is not None and (epoch + 1) % 5 == 0:
            log(f"  epoch {epoch + 1}/{epochs}: eps {e:.3f}  adversarial loss {total / len(x):.4f}")
    model.eval()
    return model


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return (model(x).argmax(dim=1) == y).float().mean().item()


def export_onnx(model: nn.Module, path: Path) -> None:
    """Export with a fixed ``(1, 1, 8, 8)`` input, opset 13, legacy (TorchScript) exporter."""
    dummy = torch.zeros(1, 1, 8, 8)
    tmp = path.with_suffix(".onnx.tmp")
    torch.onnx.export(model, (dummy,), str(tmp), input_names=["input"], output_names=["logits"],
                      opset_version=13, dynamo=False)
    os.replace(tmp, path)


def check_onnx(path: Path, model: nn.Module, x: np.ndarray) -> float:
    """Largest |onnxruntime - torch| over the first samples of ``x``."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    with torch.no_grad():
        for i in range(min(len(x), 20)):
            ref = model(torch.from_numpy(x[i:i + 1])).numpy()
            got = sess.run(None, {"input": x[i:i + 1]})[0]
            worst = max(worst, float(np.abs(ref - got).max()))
    return worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent,
                        help="output folder (default: next to this file)")
    parser.add_argument("--adv", action="store_true",
                        help="write only digits_cnn_adv.onnx (PGD adversarial training, a few seconds)")
    parser.add_argument("--noise", action="store_true",
                        help="write only digits_cnn_noise.onnx (Gaussian noise augmentation, sigma 0.25)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(SEED)
    x_tr, y_tr, x_te, y_te = load_split()
    xt, yt = torch.from_numpy(x_tr), torch.from_numpy(y_tr)
    xe, ye = torch.from_numpy(x_te), torch.from_numpy(y_te)

    if args.adv:
        return main_adv(args.out, xt, yt, xe, ye, x_te)
    if args.noise:
        return main_noise(args.out, xt, yt, xe, ye, x_te)

    for name, make in (("digits_mlp", make_mlp), ("digits_cnn", make_cnn)):
        torch.manual_seed(SEED)
        model = train(make(), xt, yt)
        path = args.out / f"{name}.onnx"
        export_onnx(model, path)
        diff = check_onnx(path, model, x_te)
        print(f"{name}: train acc {accuracy(model, xt, yt):.4f}  test acc {accuracy(model, xe, ye):.4f}  "
              f"onnx max |diff| {diff:.2e}  -> {path}")

    np.savez_compressed(args.out / "digits_test.npz", x=x_te, y=y_te)
    print(f"digits_test.npz: {len(x_te)} test images -> {args.out / 'digits_test.npz'}")
    return 0


def main_adv(out: Path, xt: torch.Tensor, yt: torch.Tensor, xe: torch.Tensor, ye: torch.Tensor,
             x_te: np.ndarray) -> int:
    """Train and write ``digits_cnn_adv.onnx`` only (one intra-op thread, for reproducibility)."""
    import time

    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    t0 = time.perf_counter()
    model = train_adv(make_cnn(), xt, yt, log=print)
    took = time.perf_counter() - t0
    path = out / "digits_cnn_adv.onnx"
    export_onnx(model, path)
    diff = check_onnx(path, model, x_te)
    pgd = pgd_linf(model, xe, ye, ADV_EPS, 20, 2.5 * ADV_EPS / 20, torch.Generator().manual_seed(SEED + 1))
    print(f"digits_cnn_adv: train acc {accuracy(model, xt, yt):.4f}  test acc {accuracy(model, xe, ye):.4f}  "
          f"test acc under PGD-20 (Linf {ADV_EPS}) {accuracy(model, pgd, ye):.4f}  onnx max |diff| {diff:.2e}  "
          f"trained in {took:.0f} s -> {path}")
    return 0


# Gaussian noise augmentation (digits_cnn_noise): the smoothing noise level and training.
NOISE_SIGMA = 0.25
NOISE_EPOCHS = 60
NOISE_COPIES = 4
NOISE_LR = 1e-2


def main_noise(out: Path, xt: torch.Tensor, yt: torch.Tensor, xe: torch.Tensor, ye: torch.Tensor,
               x_te: np.ndarray) -> int:
    """Train and write ``digits_cnn_noise.onnx`` only: ``make_wide_cnn`` trained with Gaussian
    noise augmentation at sigma 0.25 (Cohen et al. 2019; every step sees 4 noisy copies of each
    point of the batch), the base classifier of the randomized-smoothing and robust conformal
    examples (one intra-op thread, for reproducibility)."""
    import time

    from perturbkit.smoothing.training import NoiseTrainConfig, train_gaussian

    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    t0 = time.perf_counter()
    cfg = NoiseTrainConfig(sigma=NOISE_SIGMA, epochs=NOISE_EPOCHS, copies=NOISE_COPIES, lr=NOISE_LR, seed=SEED)
    model = train_gaussian(make_wide_cnn(), xt, yt, cfg, log=print)
    took = time.perf_counter() - t0
    path = out / "digits_cnn_noise.onnx"
    export_onnx(model, path)
    diff = check_onnx(path, model, x_te)
    gen = torch.Generator().manual_seed(SEED + 1)
    noisy = xe + NOISE_SIGMA * torch.randn(xe.shape, generator=gen)
    print(f"digits_cnn_noise: train acc {accuracy(model, xt, yt):.4f}  test acc {accuracy(model, xe, ye):.4f}  "
          f"test acc under N(0, {NOISE_SIGMA}^2) noise {accuracy(model, noisy, ye):.4f}  onnx max |diff| {diff:.2e}  "
          f"trained in {took:.0f} s -> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
