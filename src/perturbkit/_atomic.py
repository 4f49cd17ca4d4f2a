"""Atomic file writes: a temporary file in the target's folder, fsync, then a rename.

Either the complete new file appears at the path or the old state stays: a reader (or a
run interrupted half-way) never sees half a file.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable


def _write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(fh)`` on a temporary binary file beside ``path``, fsync, rename over ``path``."""
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; a result file is meant to be read
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically; the file is made readable (0644).

    Raises OSError (the folder is missing, not writable, ...); nothing is left behind then.
    """
    _write_atomic(path, lambda fh: fh.write(text.encode("utf-8")))


def write_npz_atomic(path: str | os.PathLike, **arrays) -> None:
    """``numpy.savez`` to ``path`` atomically (see :func:`write_text_atomic`)."""
    import numpy as np

    _write_atomic(path, lambda fh: np.savez(fh, **arrays))


def write_npy_atomic(path: str | os.PathLike, array) -> None:
    """``numpy.save`` to ``path`` atomically (see :func:`write_text_atomic`)."""
    import numpy as np

    _write_atomic(path, lambda fh: np.save(fh, array))
