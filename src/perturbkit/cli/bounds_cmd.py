"""``perturbkit bounds``: bound a network's outputs (or label margins) over an Lp ball.

Arguments become a frozen :class:`BoundsConfig`; :func:`run_bounds` makes the public API
calls (``perturbkit.load``, ``perturbkit.sets.LpBall``, ``perturbkit.bounds``,
``perturbkit.margin_spec``) and returns a :class:`BoundsResult`; the table and the JSON
record are rendered from the result.
"""
from __future__ import annotations

import math
import shlex
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

import perturbkit
from perturbkit.cli.io import load_input, resolve_model, write_json_atomic
from perturbkit.errors import InputError

METHODS = ("ibp", "crown", "crown-ibp", "alpha-crown")
NORMS = {"inf": float("inf"), "2": 2, "1": 1}
DTYPES = {"float32": torch.float32, "float64": torch.float64}
DEVICES = ("cpu", "cuda")


@dataclass(frozen=True)
class BoundsConfig:
    """Everything ``perturbkit bounds`` was asked to do.

    ``norm`` is the CLI spelling (``"inf"``, ``"2"`` or ``"1"``); ``json_out`` the path of the
    JSON record or None.
    """

    model: str
    input: str
    eps: float
    norm: str = "inf"
    domain: Optional[tuple[float, float]] = None
    method: str = "crown"
    label: Optional[int] = None
    device: str = "cpu"
    dtype: str = "float32"
    json_out: Optional[str] = None
    #: parameter name -> Linf radius of its perturbation (jointly with the input)
    weight_eps: tuple[tuple[str, float], ...] = ()


def parse_weight_eps(items: list[str]) -> tuple[tuple[str, float], ...]:
    """``["fc1.weight=0.01", ...]`` -> ``(("fc1.weight", 0.01), ...)``; InputError naming the item."""
    out = []
    for item in items:
        name, sep, value = item.rpartition("=")
        try:
            eps = float(value)
        except ValueError:
            eps = math.nan
        if not sep or not name or math.isnan(eps):
            raise InputError(f"--weight-eps {item!r}: expected NAME=E with a number E, e.g. fc1.weight=0.01")
        out.append((name, eps))
    return tuple(out)


@dataclass(frozen=True)
class BoundsResult:
    """Bounds for one batch.

    Shapes: ``lower``, ``upper``: ``(B, n_outputs)``, or ``(B, n_outputs - 1)`` margins
    ``y_label - y_j`` (j != label, increasing j) when a label was given;
    ``prediction``: ``(B,)`` clean argmax; ``rows``: the output index (or j) of each column.
    """

    lower: np.ndarray
    upper: np.ndarray
    prediction: np.ndarray
    rows: tuple[int, ...]
    time_s: float
    n_outputs: int
    source: str

    @property
    def certified(self) -> np.ndarray:
        """``(B,)`` bool: every margin lower bound is > 0 (meaningful with a label)."""
        return (self.lower > 0).all(axis=1)


def validate(cfg: BoundsConfig) -> None:
    """Checks that need no model or input; raises InputError naming the option."""
    if not isinstance(cfg.eps, (int, float)) or math.isnan(cfg.eps) or math.isinf(cfg.eps) or cfg.eps < 0:
        raise InputError(f"--eps must be a finite number >= 0, got {cfg.eps}")
    if cfg.norm not in NORMS:
        raise InputError(f"--norm must be one of {', '.join(NORMS)}, got {cfg.norm!r}")
    if cfg.method not in METHODS:
        raise InputError(f"--method must be one of {', '.join(METHODS)}, got {cfg.method!r}")
    if cfg.dtype not in DTYPES:
        raise InputError(f"--dtype must be one of {', '.join(DTYPES)}, got {cfg.dtype!r}")
    if cfg.device not in DEVICES:
        raise InputError(f"--device must be one of {', '.join(DEVICES)}, got {cfg.device!r}")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        why = "this torch has no CUDA support" if torch.version.cuda is None else "no CUDA device is visible"
        raise InputError(f"--device cuda requested but CUDA is not available ({why}); use --device cpu")
    if cfg.domain is not None:
        lo, hi = cfg.domain
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
            raise InputError(f"--domain LO HI needs finite LO <= HI, got {lo} {hi}")
    if cfg.label is not None and cfg.label < 0:
        raise InputError(f"--label must be >= 0, got {cfg.label}")
    for name, e in cfg.weight_eps:
        if not math.isfinite(e) or e < 0:
            raise InputError(f"--weight-eps {name}={e:g}: the radius must be a finite number >= 0")
    names = [n for n, _ in cfg.weight_eps]
    if len(set(names)) != len(names):
        raise InputError(f"--weight-eps names a parameter twice: {', '.join(names)}")
    if cfg.json_out is not None:
        folder = Path(cfg.json_out).parent
        if not folder.is_dir():
            raise InputError(f"--json {cfg.json_out}: folder {folder} does not exist")
        if Path(cfg.json_out).is_dir():
            raise InputError(f"--json {cfg.json_out} is a directory, expected a file name")


def run_bounds(cfg: BoundsConfig) -> BoundsResult:
    """Load, bound, and time the ``perturbkit.bounds`` call alone (one run)."""
    validate(cfg)
    model_path = resolve_model(cfg.model)
    array = load_input(cfg.input)
    net = perturbkit.load(str(model_path))

    dtype, device = DTYPES[cfg.dtype], torch.device(cfg.device)
    x = torch.as_tensor(array).to(dtype=dtype, device=device)
    b = net.batch(x)
    x = x.reshape(b, *net.sample_shape)

    n_out = net.n_outputs
    if cfg.label is not None and not 0 <= cfg.label < n_out:
        raise InputError(f"--label {cfg.label} is out of range: {cfg.model} has {n_out} outputs (0..{n_out - 1})")

    with torch.no_grad():
        prediction = net(x).reshape(b, -1).argmax(dim=1).cpu().numpy()

    ball = perturbkit.sets.LpBall(x, cfg.eps, norm=NORMS[cfg.norm], domain=cfg.domain)
    C = None
    rows: tuple[int, ...] = tuple(range(n_out))
    if cfg.label is not None:
        labels = torch.full((b,), cfg.label, dtype=torch.long, device=device)
        C = perturbkit.margin_spec(labels, n_out).to(dtype=dtype, device=device)
        rows = tuple(j for j in range(n_out) if j != cfg.label)

    _sync(device)
    t0 = time.perf_counter()
    out = perturbkit.bounds(net, ball, method=cfg.method, C=C, weights=dict(cfg.weight_eps) or None)
    _sync(device)
    elapsed = time.perf_counter() - t0

    lower = out.lower.detach().reshape(b, -1).cpu().double().numpy()
    upper = out.upper.detach().reshape(b, -1).cpu().double().numpy()
    return BoundsResult(lower=lower, upper=upper, prediction=prediction, rows=rows,
                        time_s=elapsed, n_outputs=n_out, source=str(model_path))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def norm_name(norm: str) -> str:
    return f"L{norm}"


def describe_set(cfg: BoundsConfig) -> str:
    dom = "" if cfg.domain is None else f", domain [{cfg.domain[0]:g}, {cfg.domain[1]:g}]"
    w = "".join(f", {n} +-{e:g}" for n, e in cfg.weight_eps)
    return f"{norm_name(cfg.norm)} ball eps {cfg.eps:g}{dom}{w}"


def format_table(cfg: BoundsConfig, res: BoundsResult) -> str:
    """The human-readable report printed on stdout."""
    b = res.lower.shape[0]
    lines = [
        f"perturbkit bounds: {cfg.model}, method {cfg.method}, {describe_set(cfg)}, "
        f"{b} input{'s' if b != 1 else ''}, {cfg.dtype} on {cfg.device}, {res.time_s:.4f} s"
    ]
    head = "margin" if cfg.label is not None else "output"
    for i in range(b):
        title = f"input {i}: prediction {int(res.prediction[i])}"
        if cfg.label is not None:
            title += f", label {cfg.label}"
        lines.append("")
        lines.append(title)
        lines.append(f"  {head:<10} {'lower':>14} {'upper':>14}")
        for k, j in enumerate(res.rows):
            name = f"y{cfg.label} - y{j}" if cfg.label is not None else str(j)
            lines.append(f"  {name:<10} {res.lower[i, k]:>14.6g} {res.upper[i, k]:>14.6g}")
        if cfg.label is not None:
            lines.append(f"  certified: {'yes' if res.certified[i] else 'no'}")
    if cfg.label is not None and b > 1:
        lines.append("")
        lines.append(f"certified: {int(res.certified.sum())} of {b}")
    return "\n".join(lines)


def to_record(cfg: BoundsConfig, res: BoundsResult) -> dict[str, Any]:
    """The JSON record: lower/upper as nested lists ``(batch, outputs or specs)``.

    ``norm`` is a string (``"inf"``, ``"2"``, ``"1"``) because JSON has no infinity; a
    non-finite bound is written as ``null``.
    """
    record: dict[str, Any] = {
        "method": cfg.method,
        "lower": _nested(res.lower),
        "upper": _nested(res.upper),
        "time_s": res.time_s,
        "network": cfg.model,
        "eps": cfg.eps,
        "norm": cfg.norm,
    }
    if cfg.label is not None:
        record["label"] = cfg.label
    if cfg.weight_eps:
        record["weight_eps"] = dict(cfg.weight_eps)
    return record


def _nested(a: np.ndarray) -> list:
    return [[float(v) if math.isfinite(v) else None for v in row] for row in a.tolist()]


def command(cfg: BoundsConfig) -> int:
    """Run ``perturbkit bounds``: write the JSON record if asked, then print the table."""
    res = run_bounds(cfg)
    if cfg.json_out is not None:
        write_json_atomic(cfg.json_out, to_record(cfg, res))
    print(format_table(cfg, res))
    return 0


def command_line(cfg: BoundsConfig) -> str:
    """The shell command that reproduces ``cfg``."""
    parts = ["perturbkit", "bounds", cfg.model, "--input", cfg.input, "--eps", f"{cfg.eps:g}",
             "--norm", cfg.norm]
    if cfg.domain is not None:
        parts += ["--domain", f"{cfg.domain[0]:g}", f"{cfg.domain[1]:g}"]
    parts += ["--method", cfg.method]
    if cfg.label is not None:
        parts += ["--label", str(cfg.label)]
    if cfg.device != "cpu":
        parts += ["--device", cfg.device]
    if cfg.dtype != "float32":
        parts += ["--dtype", cfg.dtype]
    for name, e in cfg.weight_eps:
        parts += ["--weight-eps", f"{name}={e:g}"]
    if cfg.json_out is not None:
        parts += ["--json", cfg.json_out]
    return " ".join(shlex.quote(p) for p in parts)
