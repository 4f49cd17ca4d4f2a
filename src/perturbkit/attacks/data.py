"""Labelled inputs for attacks and evaluations: ``(x, y)`` from a file or a bundled data set.

* ``.npz`` with arrays ``x`` (inputs, already in the model's shape) and ``y`` (int labels);
* ``.csv``: one sample per line, the label then the pixel values 0-255 (the format of the
  VNN-COMP/ERAN test images), divided by 255; ``shape`` gives the sample shape as stored
  (e.g. ``(28, 28)`` or ``(32, 32, 3)`` for channels-last images); lines starting with ``#``
  are skipped;
* ``digits``: the bundled test split of scikit-learn's 8x8 digits, ``(450, 1, 8, 8)`` in [0, 1].

Every error names the file (and line for CSV).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from perturbkit.errors import InputError

BUNDLED_DATA = ("digits",)


def load_dataset(spec: str | os.PathLike, *, shape: Optional[Sequence[int]] = None) -> tuple[np.ndarray, np.ndarray]:
    """``(x float32 (N, *shape), y int64 (N,))`` from ``spec`` (see the module docstring)."""
    s = str(spec)
    if s in BUNDLED_DATA and not Path(s).exists():
        from perturbkit.models import load_digits_test

        x, y = load_digits_test()
        return x.astype(np.float32), y.astype(np.int64)
    path = Path(s)
    if not path.is_file():
        raise InputError(f"data file {s} not found (or give a bundled data set: {', '.join(BUNDLED_DATA)})")
    if path.suffix.lower() == ".npz":
        return _npz(path)
    if path.suffix.lower() == ".csv":
        return _csv(path, shape)
    raise InputError(f"data file {s}: expected .npz (x, y) or .csv (label, pixels)")


def _npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            if "x" not in z or "y" not in z:
                raise InputError(f"data file {path}: needs arrays 'x' and 'y', found {', '.join(z.files) or 'none'}")
            x, y = z["x"], z["y"]
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - numpy raises many kinds
        raise InputError(f"data file {path}: not a readable .npz ({type(e).__name__}: {e})") from None
    if x.dtype.kind not in "fiu":
        raise InputError(f"data file {path}: x has dtype {x.dtype}, expected numbers")
    if y.dtype.kind not in "iu" and not (y.dtype.kind == "f" and np.all(np.mod(y, 1) == 0)):
        raise InputError(f"data file {path}: y must hold integer labels")
    if x.ndim < 2 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise InputError(f"data file {path}: x {x.shape} and y {y.shape} must be (N, ...) and (N,)")
    return x.astype(np.float32), y.astype(np.int64)


def _csv(path: Path, shape: Optional[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    rows, labels = [], []
    width = None
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            try:
                vals = [float(v) for v in line.split(",")]
            except ValueError:
                raise InputError(f"{path}:{lineno}: not a comma-separated list of numbers") from None
            if width is None:
                width = len(vals)
            elif len(vals) != width:
                raise InputError(f"{path}:{lineno}: {len(vals)} values, the first line had {width}")
            if vals[0] != int(vals[0]) or vals[0] < 0:
                raise InputError(f"{path}:{lineno}: label {vals[0]} is not a non-negative integer")
            labels.append(int(vals[0]))
            rows.append(vals[1:])
    if not rows:
        raise InputError(f"{path}: no samples")
    x = np.asarray(rows, dtype=np.float32) / 255.0
    if not np.isfinite(x).all():
        raise InputError(f"{path}: NaN or inf among the pixel values")
    if shape is not None:
        if math.prod(shape) != x.shape[1]:
            raise InputError(f"{path}: {x.shape[1]} values per sample do not fit the shape {tuple(shape)}")
        x = x.reshape(len(rows), *shape)
    return x, np.asarray(labels, dtype=np.int64)


def fit_to_model(x: np.ndarray, sample_shape: Sequence[int], *, where: str = "data") -> np.ndarray:
    """``x`` (N, ...) reshaped for a model taking ``(N, *sample_shape)``: the same shape,
    the same number of values, or channels-last images (N, H, W, C) for a (C, H, W) model."""
    want = tuple(int(d) for d in sample_shape)
    got = tuple(x.shape[1:])
    if got == want:
        return x
    if len(got) == 3 and len(want) == 3 and (got[2], got[0], got[1]) == want:
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    if math.prod(got) == math.prod(want):
        return x.reshape(x.shape[0], *want)
    raise InputError(f"{where}: samples of shape {got} do not fit the model's input shape {want}")
