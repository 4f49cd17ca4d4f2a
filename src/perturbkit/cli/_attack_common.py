"""Shared by ``perturbkit topk``, ``patch``, ``attack-output`` and ``attack-activation``
(modules ``topk_cmd``, ``patch_cmd``, ``output_cmd``, ``activation_cmd``).

Four attacks of the Python API on the command line, with the conventions of
``perturbkit attack`` (:mod:`perturbkit.cli.attack_cmd`): the arguments become a frozen
config dataclass; ``validate`` checks everything it can before anything is loaded (numbers,
options, output paths); the command loads the model (:func:`~perturbkit.cli.io.resolve_model`
and :func:`perturbkit.load`) and the data (labelled data through
:func:`~perturbkit.attacks.data.load_dataset` and :func:`~perturbkit.attacks.data.fit_to_model`,
single inputs through :func:`~perturbkit.cli.io.load_input`), checks that they fit, runs the
attack and prints a summary.  ``--json`` (and ``--save-patch``) are written atomically, only
on success.  Every bad input is a :class:`~perturbkit.errors.PerturbkitError`, which the CLI
prints as one line and exits with 2.

* ``topk`` (:class:`TopkCmdConfig`): :class:`~perturbkit.attacks.topk.OrderedTopK` towards
  random ordered targets (:func:`~perturbkit.attacks.topk.random_targets`, seeded).  JSON:
  ``success_rate``, ``median_norm`` (median perturbation norm over the successful points,
  null if none), ``time_s``, then the settings, ``flags`` and ``records`` (per point: index,
  label, targets, success, clean_success, norm, top_k).
* ``patch`` (:class:`PatchCmdConfig`): :class:`~perturbkit.attacks.patch.PatchAttack`, a
  universal patch fitted on the data and evaluated on the same images under fresh random
  transformations, beside a uniformly random patch under the same transformations.  JSON:
  ``success_rate``, ``random_patch_success_rate``, ``clean_fooled_rate``, ``time_s``, the
  settings, ``patch`` (C, s, s), ``flags`` and ``records`` (per image).
* ``attack-output`` (:class:`OutputCmdConfig`): :class:`~perturbkit.attacks.regression.OutputAttack`
  on real-valued outputs.  JSON: ``success_rate`` (null for a deviation goal without a
  threshold), ``max_deviation``, ``time_s``, the settings, ``flags`` and ``records``.
* ``attack-activation`` (:class:`ActivationCmdConfig`):
  :class:`~perturbkit.attacks.activation.ActivationAttack` on a named node, towards a target
  class (JSON ``success_rate``) or the control measure ``--control`` (JSON
  ``mean_controlled``, ``outputs_per_dim``, ``attack_dims``).

Norms are written as strings (``"inf"``, ``"2"``, ``"1"``); non-finite numbers (an
unbounded activation domain) as null, since JSON has no infinity.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from perturbkit._atomic import write_npy_atomic
from perturbkit.errors import InputError

NORMS = ("inf", "2", "1")
TOPK_METHODS = ("quad", "naive")
GOALS = ("above", "below", "deviation")
#: at most this many per-input lines in the printed summaries (the JSON has every input)
MAX_LINES = 20


# ----------------------------------------------------------------------------- shared checks

def _check_eps(eps: Any) -> None:
    if isinstance(eps, bool) or not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps >= 0):
        raise InputError(f"--eps must be a finite number >= 0, got {eps}")


def _check_at_least(pairs: Sequence[tuple[str, Optional[int]]], low: int = 1) -> None:
    for flag, v in pairs:
        if v is not None and v < low:
            raise InputError(f"{flag} must be >= {low}, got {v}")


def _check_norm(norm: str) -> None:
    if norm not in NORMS:
        raise InputError(f"--norm must be one of {', '.join(NORMS)}, got {norm!r}")


def _check_domain(domain: Optional[tuple[float, float]], *, finite: bool = True) -> None:
    if domain is None:
        return
    lo, hi = domain
    if math.isnan(lo) or math.isnan(hi) or (finite and not (math.isfinite(lo) and math.isfinite(hi))) or not lo < hi:
        need = "finite LO < HI" if finite else "LO < HI"
        raise InputError(f"--domain LO HI needs {need}, got {lo:g} {hi:g}")


def _check_outputs(outs: Sequence[tuple[str, Optional[str]]]) -> None:
    """Output files: their folder exists, they are not folders, and they differ."""
    named = [(flag, target) for flag, target in outs if target]
    for flag, target in named:
        folder = Path(target).parent
        if not folder.is_dir():
            raise InputError(f"{flag} {target}: folder {folder} does not exist")
        if Path(target).is_dir():
            raise InputError(f"{flag} {target} is a directory, expected a file name")
    if len({os.path.abspath(t) for _, t in named}) < len(named):
        raise InputError(f"{' and '.join(f for f, _ in named)} must name different files")


def _num(v: Any) -> Optional[float]:
    """A float for JSON: None where not finite."""
    v = float(v)
    return v if math.isfinite(v) else None


def _norm_name(norm: str) -> str:
    return {"inf": "Linf", "2": "L2", "1": "L1"}.get(norm, norm)


def _threat_record(eps: float, norm: str, domain: Optional[tuple[float, float]]) -> dict[str, Any]:
    return {"eps": eps, "norm": norm, "domain": None if domain is None else [_num(domain[0]), _num(domain[1])]}


def _flags_line(flags: dict[str, int]) -> str:
    raised = {k: v for k, v in flags.items() if v}
    return "flags: " + (", ".join(f"{k} ({v} points)" for k, v in raised.items()) if raised else "none")


def _load_net(model: str):
    import perturbkit
    from perturbkit.models import resolve_model

    return perturbkit.load(str(resolve_model(model)), forward_only=True)  # attacks only run the model


def _labelled(net, model: str, data: str, *, shape: Optional[tuple[int, ...]], n: Optional[int],
              domain: Optional[tuple[float, float]], batch_size: int = 256
              ) -> tuple[np.ndarray, np.ndarray, int, tuple[int, ...]]:
    """``(x, y, n_classes, stored_shape)``: the labelled data in the model's shape, checked
    (finite, inside the domain, finite model outputs, labels in range) as ``perturbkit attack``
    does, and the sample shape as the data stores it."""
    import torch

    from perturbkit.attacks.data import fit_to_model, load_dataset

    x, y = load_dataset(data, shape=shape)
    if n is not None:
        x, y = x[:n], y[:n]
    stored = tuple(x.shape[1:])
    x = fit_to_model(x, net.sample_shape, where=f"data {data}")
    if not np.isfinite(x).all():
        raise InputError(f"data {data}: NaN or inf in the inputs")
    _check_in_domain(x, domain, f"data {data}", "set --domain")
    z = None
    with torch.no_grad():
        for s in range(0, x.shape[0], batch_size):
            z = net(torch.from_numpy(x[s:s + batch_size]))
            if not bool(torch.isfinite(z).all()):
                i = s + int(torch.nonzero(~torch.isfinite(z.reshape(z.shape[0], -1)).all(1))[0])
                raise InputError(f"model {model} gives NaN or inf on sample {i} of {data}")
    n_classes = z.reshape(z.shape[0], -1).shape[1]
    bad = (y < 0) | (y >= n_classes)
    if bad.any():
        i = int(np.nonzero(bad)[0][0])
        raise InputError(f"data {data}: label {int(y[i])} of sample {i} is out of range for a model with "
                         f"{n_classes} outputs")
    return x, y, n_classes, stored


def _check_in_domain(x: np.ndarray, domain: Optional[tuple[float, float]], where: str, hint: str) -> None:
    if domain is not None and (x.min() < domain[0] - 1e-6 or x.max() > domain[1] + 1e-6):
        raise InputError(f"{where}: inputs range over [{x.min():.4g}, {x.max():.4g}], outside the domain "
                         f"[{domain[0]:g}, {domain[1]:g}] ({hint})")


def _inputs(net, spec: str):
    """The inputs of ``spec`` (.npy: one sample or a batch) as a float32 tensor (B, *sample_shape)."""
    import torch

    from perturbkit.cli.io import load_input

    x = torch.as_tensor(load_input(spec)).to(torch.float32)
    try:
        b = net.batch(x)
    except InputError as e:
        raise InputError(f"input {spec}: {e}") from None
    return x.reshape(b, *net.sample_shape)


def _save_npy_atomic(path: str, array: np.ndarray) -> None:
    write_npy_atomic(path, array)
