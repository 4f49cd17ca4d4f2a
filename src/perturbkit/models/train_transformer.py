"""Train the bundled Transformer digit classifier and export it to ONNX.

``digits_transformer.onnx``: a ViT-style encoder (Dosovitskiy et al. 2021, "An image is
worth 16x16 words") for scikit-learn's 8x8 digits, small enough to certify:

* patch embedding: the 8x8 image cut into four 4x4 patches (tokens), each mapped linearly to
  ``D_MODEL`` features (a Conv with stride = kernel = 4), plus a learned position embedding;
* ``LAYERS`` pre-norm Transformer encoder layers (``nn.TransformerEncoderLayer``,
  ``norm_first=True``, ``batch_first=True``): multi-head self-attention (``HEADS`` heads,
  softmax attention), a GELU MLP of width ``FF``, LayerNorm, residual connections;
* a final LayerNorm, mean pooling over the tokens and a Linear head to 10 logits.

Data: the split of :func:`perturbkit.models.train_digits.load_split` (1347 train, 450 test).
Training: PGD adversarial training (Madry et al. 2018) at Linf radius ``ADV_EPS`` (5 steps of
2.5 eps / 5 from a random start, the radius growing linearly over the first quarter of the
epochs), which makes the model smooth enough for CROWN to certify it at small radii;
AdamW (weight decay 1e-2), one-cycle learning rate up to 3e-3, cross-entropy, batch 64,
``EPOCHS`` epochs, seeded, one intra-op thread (byte-for-byte reproducible with torch
2.13.0 on CPU); about half a minute.  Export: ``torch.onnx.export(..., opset 17,
dynamo=False)`` with the module's autograd on, so that torch's fused inference path for
encoder layers (which has no ONNX export) is not taken; checked against ONNX Runtime.

Regenerate::

    python -m perturbkit.models.train_transformer   # needs scikit-learn
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from perturbkit.models.train_digits import BATCH, SEED, accuracy, check_onnx, load_split, pgd_linf

PATCH = 4
D_MODEL = 16
HEADS = 2
LAYERS = 2
FF = 32
EPOCHS = 60
LR = 3e-3
ADV_EPS = 0.08
ADV_STEPS = 5


class DigitsTransformer(nn.Module):
    """``(B, 1, 8, 8)`` -> ``(B, 10)`` logits; see the module docstring."""

    def __init__(self, patch: int = PATCH, d_model: int = D_MODEL, heads: int = HEADS, layers: int = LAYERS,
                 ff: int = FF):
        super().__init__()
        tokens = (8 // patch) ** 2
        self.embed = nn.Conv2d(1, d_model, patch, stride=patch)
        self.pos = nn.Parameter(torch.randn(1, tokens, d_model) * 0.02)
        layer = nn.TransformerEncoderLayer(d_model, heads, ff, dropout=0.0, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x).flatten(2).transpose(1, 2) + self.pos
        return self.head(self.norm(self.encoder(t).mean(1)))


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, seed: int = SEED, epochs: int = EPOCHS,
          eps: float = ADV_EPS) -> nn.Module:
    """PGD adversarial training (see the module docstring); ``eps=0`` trains on clean data."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=1e-2)
    steps = epochs * ((len(x) + BATCH - 1) // BATCH)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss()
    warmup = max(1, epochs // 4)
    for epoch in range(epochs):
        e = eps * min(1.0, (epoch + 1) / warmup)
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), BATCH):
            idx = perm[i:i + BATCH]
            model.eval()
            xa = pgd_linf(model, x[idx], y[idx], e, ADV_STEPS, 2.5 * e / ADV_STEPS, gen) if e > 0 else x[idx]
            model.train()
            opt.zero_grad()
            loss_fn(model(xa), y[idx]).backward()
            opt.step()
            sched.step()
    model.eval()
    return model


def export_onnx(model: nn.Module, path: Path) -> None:
    """Opset 17, legacy exporter, autograd on (see the module docstring)."""
    tmp = path.with_suffix(".onnx.tmp")
    with torch.enable_grad():
        torch.onnx.export(model, (torch.zeros(1, 1, 8, 8),), str(tmp), input_names=["input"],
                          output_names=["logits"], opset_version=17, dynamo=False)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent,
                        help="output folder (default: next to this file)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    x_tr, y_tr, x_te, y_te = load_split()
    xt, yt = torch.from_numpy(x_tr), torch.from_numpy(y_tr)
    xe, ye = torch.from_numpy(x_te), torch.from_numpy(y_te)
    torch.manual_seed(SEED)
    model = train(DigitsTransformer(), xt, yt)
    path = args.out / "digits_transformer.onnx"
    export_onnx(model, path)
    diff = check_onnx(path, model, x_te)
    n_params = sum(p.numel() for p in model.parameters())
    pgd = pgd_linf(model, xe, ye, 0.03, 20, 2.5 * 0.03 / 20, torch.Generator().manual_seed(SEED + 1))
    print(f"digits_transformer: {n_params} parameters  train acc {accuracy(model, xt, yt):.4f}  "
          f"test acc {accuracy(model, xe, ye):.4f}  under PGD-20 at Linf 0.03 {accuracy(model, pgd, ye):.4f}  "
          f"onnx max |diff| {diff:.2e}  -> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
