"""Files the CLI reads and writes: model names, input arrays, JSON records.

Every failure here is a :class:`~perturbkit.errors.PerturbkitError` whose message names
the file, so the CLI can print it as one line.
"""
from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from perturbkit._atomic import write_text_atomic
from perturbkit.errors import InputError
from perturbkit.models import resolve_model  # noqa: F401  (re-exported for the commands)




_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"


def load_input(spec: str) -> np.ndarray:
    """Read one input or a batch from a ``.npy`` file (or an ``.npz`` holding ``x`` or one array).

    Returns a floating array; raises InputError for a missing/unreadable file, a non-numeric
    array, or NaN/inf values.
    """
    path = Path(spec)
    if not path.exists():
        raise InputError(f"input file {spec} not found")
    if path.is_dir():
        raise InputError(f"input {spec} is a directory, expected a .npy file")
    try:
        with open(path, "rb") as fh:
            magic = fh.read(6)
        if magic != _NPY_MAGIC and not magic.startswith(_ZIP_MAGIC):
            raise InputError(f"input {spec} is not a numpy .npy file (save one with numpy.save)")
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                keys = list(loaded.keys())
                if "x" in keys:
                    arr = loaded["x"]
                elif len(keys) == 1:
                    arr = loaded[keys[0]]
                else:
                    raise InputError(
                        f"input {spec} is an .npz with arrays {keys}; expected one array or one named 'x'"
                    )
        else:
            arr = loaded
    except InputError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise InputError(f"cannot read input {spec} as a numpy .npy file: {_one_line(exc)}") from None
    if not isinstance(arr, np.ndarray) or not (np.issubdtype(arr.dtype, np.floating)
                                               or np.issubdtype(arr.dtype, np.integer)
                                               or arr.dtype == np.bool_):
        raise InputError(f"input {spec} holds {getattr(arr, 'dtype', type(arr).__name__)} data, expected numbers")
    if arr.size == 0:
        raise InputError(f"input {spec} is empty (shape {arr.shape})")
    arr = arr.astype(np.float64) if arr.dtype == np.float64 else arr.astype(np.float32)
    bad = ~np.isfinite(arr)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise InputError(f"input {spec} contains NaN or inf ({int(bad.sum())} non-finite, the first at index {first})")
    return arr


def write_json_atomic(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Write ``record`` as JSON to ``path`` via a temporary file in the same folder and a rename.

    Either the complete file appears or nothing does.
    """
    text = json.dumps(record, indent=2, allow_nan=False) + "\n"
    write_text_checked(path, text)


def write_text_checked(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`perturbkit._atomic.write_text_atomic`);
    a missing folder or a failed write is an InputError naming the path."""
    folder = Path(path).parent if str(Path(path).parent) else Path(".")
    if not folder.is_dir():
        raise InputError(f"cannot write {path}: folder {folder} does not exist")
    try:
        write_text_atomic(path, text)
    except OSError as exc:
        raise InputError(f"cannot write {path}: {_one_line(exc)}") from None


def _one_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())
