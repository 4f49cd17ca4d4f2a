"""The bundled models: small digit classifiers shipped with perturbkit.

``bundled_path("digits-mlp")``, ``bundled_path("digits-cnn")`` and
``bundled_path("digits-cnn-adv")`` (PGD adversarially trained at Linf eps 0.2) and
``bundled_path("digits-transformer")`` (a 2-layer ViT-style encoder on 4x4 patches) and
``bundled_path("digits-cnn-noise")`` (a wider CNN trained with Gaussian noise at sigma 0.25, the
base classifier for randomized smoothing) give the ONNX files; ``load_digits_test()`` gives the held-out test images they were evaluated on.  See
``models/README.md`` (next to this file) for how they were trained.
"""
from __future__ import annotations

import os
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

import numpy as np

from perturbkit.errors import ModelError

_HERE = Path(__file__).resolve().parent

BUNDLED: Mapping[str, str] = MappingProxyType({
    "digits-mlp": "digits_mlp.onnx",
    "digits-cnn": "digits_cnn.onnx",
    "digits-cnn-adv": "digits_cnn_adv.onnx",
    "digits-transformer": "digits_transformer.onnx",
    "digits-cnn-noise": "digits_cnn_noise.onnx",
})


def bundled_names() -> list[str]:
    return sorted(BUNDLED)


def bundled_path(name: str) -> Path:
    """Path of the bundled model ``name`` (``digits-mlp``, ``digits-cnn``, ``digits-cnn-adv``,
    ``digits-transformer`` or ``digits-cnn-noise``)."""
    try:
        return _HERE / BUNDLED[name]
    except KeyError:
        raise ModelError(
            f"unknown bundled model '{name}'; bundled models: {', '.join(bundled_names())}"
        ) from None


def resolve_model(spec: str) -> Path:
    """``spec`` is an existing file path or a bundled model name; returns the file to load.

    An existing file wins over a bundled name of the same spelling.
    """
    path = Path(spec)
    if path.is_file():
        return path
    if path.is_dir():
        raise ModelError(f"model {spec} is a directory, expected an .onnx file")
    if spec in BUNDLED:
        return bundled_path(spec)
    if path.suffix or os.sep in spec or (os.altsep and os.altsep in spec):
        raise ModelError(f"model file {spec} not found")
    raise ModelError(
        f"unknown model '{spec}': no such file and no bundled model of that name "
        f"(bundled: {', '.join(bundled_names())})"
    )


def load_digits_test() -> tuple[np.ndarray, np.ndarray]:
    """The bundled digits test split: ``x`` float32 ``(450, 1, 8, 8)`` in [0, 1], ``y`` int64 ``(450,)``."""
    with np.load(_HERE / "digits_test.npz") as data:
        return data["x"].astype(np.float32), data["y"].astype(np.int64)


__all__ = ["BUNDLED", "bundled_names", "bundled_path", "load_digits_test", "resolve_model"]
