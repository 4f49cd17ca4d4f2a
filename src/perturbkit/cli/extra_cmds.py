"""``perturbkit topk``, ``patch``, ``attack-output`` and ``attack-activation``.

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
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from perturbkit.cli.io import write_json_atomic
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
    from perturbkit.cli.io import resolve_model

    return perturbkit.load(str(resolve_model(model)))


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
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent if str(target.parent) else ".")
    os.close(fd)
    try:
        with open(tmp, "wb") as fh:
            np.save(fh, array)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


# ----------------------------------------------------------------------------- topk

@dataclass(frozen=True)
class TopkCmdConfig:
    model: str
    data: str
    k: int
    eps: float
    norm: str = "inf"
    method: str = "quad"
    steps: int = 100
    n: Optional[int] = None
    seed: int = 0
    shape: Optional[tuple[int, ...]] = None
    domain: Optional[tuple[float, float]] = (0.0, 1.0)
    batch_size: int = 256
    json_out: Optional[str] = None


def validate_topk(cfg: TopkCmdConfig) -> None:
    """Checks that need neither the model nor the data."""
    _check_eps(cfg.eps)
    _check_norm(cfg.norm)
    _check_at_least((("--k", cfg.k), ("--steps", cfg.steps), ("--n", cfg.n), ("--batch-size", cfg.batch_size)))
    if cfg.method not in TOPK_METHODS:
        raise InputError(f"--method must be one of {', '.join(TOPK_METHODS)}, got {cfg.method!r}")
    if cfg.shape is not None and any(d < 1 for d in cfg.shape):
        raise InputError(f"--shape must be positive sizes, got {cfg.shape}")
    _check_domain(cfg.domain)
    _check_outputs((("--json", cfg.json_out),))


def topk_command(cfg: TopkCmdConfig) -> int:
    validate_topk(cfg)
    import torch

    from perturbkit.attacks.base import ThreatModel
    from perturbkit.attacks.topk import OrderedTopK, random_targets

    net = _load_net(cfg.model)
    x, y, n_classes, _ = _labelled(net, cfg.model, cfg.data, shape=cfg.shape, n=cfg.n, domain=cfg.domain,
                                   batch_size=cfg.batch_size)
    if cfg.k > n_classes - 1:
        raise InputError(f"--k {cfg.k} is too large: model {cfg.model} has {n_classes} outputs and the targets "
                         f"exclude the label, so --k must be at most {n_classes - 1}")
    y_t = torch.from_numpy(y)
    targets = random_targets(y_t, cfg.k, n_classes, torch.Generator().manual_seed(cfg.seed))
    attack = OrderedTopK(ThreatModel(eps=cfg.eps, norm=cfg.norm, domain=cfg.domain), k=cfg.k, steps=cfg.steps,
                         method=cfg.method, seed=cfg.seed)
    success, clean, norms, top = [], [], [], []
    flags: dict[str, int] = {}
    t0 = time.perf_counter()
    for s in range(0, x.shape[0], cfg.batch_size):
        r = attack.attack(net, torch.from_numpy(x[s:s + cfg.batch_size]), y_t[s:s + cfg.batch_size],
                          targets[s:s + cfg.batch_size])
        success.append(r.success.cpu())
        clean.append(r.clean_success.cpu())
        norms.append(r.norms.detach().double().cpu())
        top.append(r.logits.detach().topk(cfg.k, dim=1).indices.cpu())
        for name, v in r.flags.items():
            flags[name] = flags.get(name, 0) + int(v)
    time_s = time.perf_counter() - t0
    success_t, clean_t, norms_t, top_t = (torch.cat(v) for v in (success, clean, norms, top))
    hit = norms_t[success_t].numpy()
    record = {
        "success_rate": float(success_t.double().mean()),
        "median_norm": float(np.median(hit)) if hit.size else None,
        "time_s": time_s,
        "model": cfg.model, "data": cfg.data,
        "threat": _threat_record(cfg.eps, cfg.norm, cfg.domain),
        "k": cfg.k, "method": cfg.method, "steps": cfg.steps, "seed": cfg.seed, "n": int(x.shape[0]),
        "flags": flags,
        "records": [{"index": i, "label": int(y[i]), "targets": targets[i].tolist(), "success": bool(success_t[i]),
                     "clean_success": bool(clean_t[i]), "norm": _num(norms_t[i]), "top_k": top_t[i].tolist()}
                    for i in range(x.shape[0])],
    }
    if cfg.json_out:
        write_json_atomic(cfg.json_out, record)
    print(format_topk(cfg, record))
    return 0


def format_topk(cfg: TopkCmdConfig, rec: dict[str, Any]) -> str:
    n_hit = sum(r["success"] for r in rec["records"])
    med = "n/a (no success)" if rec["median_norm"] is None else f"{rec['median_norm']:.4g}"
    return "\n".join([
        f"ordered top-{cfg.k} success rate {rec['success_rate']:.4f} ({n_hit} of {rec['n']} points), "
        f"{_norm_name(cfg.norm)} eps {cfg.eps:g}, method {cfg.method}, {cfg.steps} steps",
        f"median perturbation norm (successful points): {med}",
        f"model: {cfg.model}   data: {cfg.data}   attack time: {rec['time_s']:.2f} s",
        _flags_line(rec["flags"]),
    ])


# ----------------------------------------------------------------------------- patch

@dataclass(frozen=True)
class PatchCmdConfig:
    model: str
    data: str
    size: int
    steps: int = 100
    target: Optional[int] = None
    eot_samples: int = 16
    n_eval: int = 100
    n: Optional[int] = None
    seed: int = 0
    shape: Optional[tuple[int, ...]] = None
    domain: tuple[float, float] = (0.0, 1.0)
    batch_size: Optional[int] = None
    json_out: Optional[str] = None
    save_patch: Optional[str] = None


def validate_patch(cfg: PatchCmdConfig) -> None:
    """Checks that need neither the model nor the data."""
    _check_at_least((("--size", cfg.size), ("--steps", cfg.steps), ("--eot-samples", cfg.eot_samples),
                     ("--n-eval", cfg.n_eval), ("--n", cfg.n), ("--batch-size", cfg.batch_size)))
    if cfg.target is not None and cfg.target < 0:
        raise InputError(f"--target must be a class index >= 0, got {cfg.target}")
    if cfg.shape is not None and any(d < 1 for d in cfg.shape):
        raise InputError(f"--shape must be positive sizes, got {cfg.shape}")
    _check_domain(cfg.domain)
    _check_outputs((("--json", cfg.json_out), ("--save-patch", cfg.save_patch)))


def _as_images(x: np.ndarray, stored: tuple[int, ...], data: str) -> np.ndarray:
    """``x`` (N, *model sample shape) as images (N, C, H, W) for pasting a patch: the model's
    own (C, H, W), else the data's stored (C, H, W) or (H, W) (the model reshapes any layout
    with the right number of values)."""
    if x.ndim == 4:
        return x
    if len(stored) in (2, 3) and math.prod(stored) == math.prod(x.shape[1:]):
        return x.reshape(x.shape[0], *((1,) * (3 - len(stored))), *stored)
    raise InputError(f"data {data}: a patch needs images, samples (C, H, W) or (H, W), got samples of shape "
                     f"{stored} for a model taking {tuple(x.shape[1:])} (give --shape H,W for CSV data)")


def patch_command(cfg: PatchCmdConfig) -> int:
    validate_patch(cfg)
    import torch

    from perturbkit.attacks.patch import PatchAttack

    net = _load_net(cfg.model)
    x, y, n_classes, stored = _labelled(net, cfg.model, cfg.data, shape=cfg.shape, n=cfg.n, domain=cfg.domain)
    x = _as_images(x, stored, cfg.data)
    if cfg.target is not None and cfg.target >= n_classes:
        raise InputError(f"--target {cfg.target} is out of range: model {cfg.model} has {n_classes} outputs "
                         f"(0..{n_classes - 1})")
    attack = PatchAttack(cfg.size, steps=cfg.steps, eot_samples=cfg.eot_samples, target=cfg.target,
                         batch_size=cfg.batch_size, domain=cfg.domain, seed=cfg.seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    t0 = time.perf_counter()
    patch = attack.fit(net, xt, yt)
    fit_s = time.perf_counter() - t0
    res = attack.evaluate(net, xt, yt, patch, n=cfg.n_eval)
    lo, hi = cfg.domain
    rand = lo + (hi - lo) * torch.rand(tuple(patch.shape), generator=torch.Generator().manual_seed(cfg.seed + 2),
                                       dtype=patch.dtype)
    base = attack.evaluate(net, xt, yt, rand, n=cfg.n_eval)  # the same fresh transformations (seed + 1)
    time_s = time.perf_counter() - t0
    valid = res.valid
    record = {
        "success_rate": _num(res.success_rate),
        "random_patch_success_rate": _num(base.success_rate),
        "clean_fooled_rate": _num(res.clean_success[valid].double().mean()) if bool(valid.any()) else None,
        "time_s": time_s,
        "fit_time_s": fit_s,
        "model": cfg.model, "data": cfg.data,
        "attack": {"size": cfg.size, "steps": cfg.steps, "eot_samples": cfg.eot_samples, "target": cfg.target,
                   "n_eval": cfg.n_eval, "batch_size": cfg.batch_size, "seed": cfg.seed,
                   "domain": [cfg.domain[0], cfg.domain[1]]},
        "n": int(x.shape[0]), "n_valid": int(valid.sum()),
        "patch": patch.double().cpu().numpy().tolist(),
        "flags": dict(res.flags),
        "records": [{"index": i, "label": int(y[i]), "valid": bool(valid[i]), "success": float(res.success[i]),
                     "random_patch_success": float(base.success[i]), "clean_fooled": bool(res.clean_success[i])}
                    for i in range(x.shape[0])],
    }
    if cfg.save_patch:
        _save_npy_atomic(cfg.save_patch, patch.cpu().numpy().astype(np.float32))
    if cfg.json_out:
        write_json_atomic(cfg.json_out, record)
    print(format_patch(cfg, record))
    return 0


def format_patch(cfg: PatchCmdConfig, rec: dict[str, Any]) -> str:
    def rate(v):
        return "n/a" if v is None else f"{v:.4f}"

    goal = f"target {cfg.target}" if cfg.target is not None else "untargeted"
    side = cfg.size
    return "\n".join([
        f"patch success rate {rate(rec['success_rate'])} (random patch {rate(rec['random_patch_success_rate'])}, "
        f"no patch {rate(rec['clean_fooled_rate'])}) on {rec['n_valid']} images, {cfg.n_eval} fresh "
        f"transformations each",
        f"{side}x{side} universal patch, {goal}, {cfg.steps} steps x {cfg.eot_samples} transformations",
        f"model: {cfg.model}   data: {cfg.data}   time: {rec['time_s']:.2f} s (fit {rec['fit_time_s']:.2f} s)",
        _flags_line(rec["flags"]),
    ])


# ----------------------------------------------------------------------------- attack-output

@dataclass(frozen=True)
class OutputCmdConfig:
    model: str
    input: str
    eps: float
    goal: str
    norm: str = "inf"
    output: Optional[tuple[int, ...]] = None
    weights: Optional[tuple[float, ...]] = None
    threshold: Optional[float] = None
    steps: int = 50
    restarts: int = 1
    seed: int = 0
    domain: Optional[tuple[float, float]] = (0.0, 1.0)
    json_out: Optional[str] = None


def validate_output(cfg: OutputCmdConfig) -> None:
    """Checks that need neither the model nor the input."""
    _check_eps(cfg.eps)
    _check_norm(cfg.norm)
    _check_at_least((("--steps", cfg.steps), ("--restarts", cfg.restarts)))
    if cfg.goal not in GOALS:
        raise InputError(f"--goal must be one of {', '.join(GOALS)}, got {cfg.goal!r}")
    if cfg.output is not None and cfg.weights is not None:
        raise InputError("give --output or --weights, not both")
    if cfg.output is not None:
        if not cfg.output or any(i < 0 for i in cfg.output):
            raise InputError(f"--output must be output indices >= 0, got {list(cfg.output)}")
        if cfg.goal != "deviation" and len(cfg.output) != 1:
            raise InputError(f"--goal {cfg.goal} needs one --output index, got {len(cfg.output)}")
    if cfg.weights is not None and (not cfg.weights or not all(math.isfinite(w) for w in cfg.weights)):
        raise InputError(f"--weights must be finite numbers, got {list(cfg.weights)}")
    if cfg.threshold is not None and not math.isfinite(cfg.threshold):
        raise InputError(f"--threshold must be a finite number, got {cfg.threshold}")
    if cfg.goal != "deviation" and cfg.threshold is None:
        raise InputError(f"--goal {cfg.goal} needs --threshold T")
    if cfg.goal == "deviation" and cfg.threshold is not None and cfg.threshold < 0:
        raise InputError(f"a deviation --threshold must be >= 0, got {cfg.threshold}")
    _check_domain(cfg.domain)
    _check_outputs((("--json", cfg.json_out),))


def output_command(cfg: OutputCmdConfig) -> int:
    validate_output(cfg)
    import torch

    from perturbkit.attacks.base import ThreatModel
    from perturbkit.attacks.regression import OutputAttack

    net = _load_net(cfg.model)
    x = _inputs(net, cfg.input)
    _check_in_domain(x.numpy(), cfg.domain, f"input {cfg.input}", "set --domain LO HI or --no-domain")
    m = net.n_outputs
    if cfg.output is not None and any(i >= m for i in cfg.output):
        bad = next(i for i in cfg.output if i >= m)
        raise InputError(f"--output {bad} is out of range: model {cfg.model} has {m} outputs (0..{m - 1})")
    if cfg.weights is not None and len(cfg.weights) != m:
        raise InputError(f"--weights has {len(cfg.weights)} values, model {cfg.model} has {m} outputs")
    if cfg.goal != "deviation" and cfg.output is None and cfg.weights is None and m != 1:
        raise InputError(f"model {cfg.model} has {m} outputs: choose one with --output I (or --weights)")
    output: Any = list(cfg.output) if cfg.output is not None else (
        torch.tensor(cfg.weights, dtype=torch.float64) if cfg.weights is not None else None)
    with torch.no_grad():
        y0 = net(x).reshape(x.shape[0], -1)
    if not bool(torch.isfinite(y0).all()):
        i = int(torch.nonzero(~torch.isfinite(y0).all(1))[0])
        raise InputError(f"model {cfg.model} gives NaN or inf on input {i} of {cfg.input}")
    attack = OutputAttack(ThreatModel(eps=cfg.eps, norm=cfg.norm, domain=cfg.domain), goal=cfg.goal, output=output,
                          threshold=cfg.threshold, steps=cfg.steps, restarts=cfg.restarts, seed=cfg.seed)
    r = attack(net, x)
    B = x.shape[0]
    dev = r.deviation.detach().double().cpu()
    succ = None if r.success is None else r.success.cpu()
    records = []
    for i in range(B):
        rec: dict[str, Any] = {"index": i}
        if r.value is not None:
            rec["value_clean"] = _num(r.value_clean[i])
            rec["value"] = _num(r.value[i])
        rec["deviation"] = _num(dev[i])
        rec["success"] = None if succ is None else bool(succ[i])
        rec["clean_success"] = None if r.clean_success is None else bool(r.clean_success[i])
        rec["norm"] = _num(r.norms[i])
        rec["outputs_clean"] = [_num(v) for v in r.outputs_clean[i].tolist()]
        rec["outputs"] = [_num(v) for v in r.outputs[i].tolist()]
        records.append(rec)
    if cfg.weights is not None:
        what = "c . y"
    elif cfg.output is not None:
        what = f"y[{cfg.output[0]}]" if len(cfg.output) == 1 else f"y[{','.join(map(str, cfg.output))}]"
    else:
        what = "y" if cfg.goal == "deviation" else "y[0]"
    record = {
        "success_rate": None if succ is None else float(succ.double().mean()),
        "max_deviation": _num(dev.max()),
        "time_s": r.time_s,
        "model": cfg.model, "input": cfg.input, "goal": cfg.goal, "output": what,
        "weights": None if cfg.weights is None else list(cfg.weights),
        "threshold": cfg.threshold,
        "threat": _threat_record(cfg.eps, cfg.norm, cfg.domain),
        "steps": cfg.steps, "restarts": cfg.restarts, "seed": cfg.seed, "n": B,
        "flags": dict(r.flags),
        "records": records,
    }
    if cfg.json_out:
        write_json_atomic(cfg.json_out, record)
    print(format_output(cfg, record))
    return 0


def format_output(cfg: OutputCmdConfig, rec: dict[str, Any]) -> str:
    n, what = rec["n"], rec["output"]
    dom = "no domain" if cfg.domain is None else f"domain [{cfg.domain[0]:g}, {cfg.domain[1]:g}]"
    if cfg.goal == "deviation":
        head = f"deviation of {what}: largest {rec['max_deviation']:.6g}"
        if rec["success_rate"] is not None:
            hits = sum(bool(r["success"]) for r in rec["records"])
            head += f"; >= {cfg.threshold:g} on {hits} of {n} inputs"
    else:
        hits = sum(bool(r["success"]) for r in rec["records"])
        clean = sum(bool(r["clean_success"]) for r in rec["records"])
        head = (f"{what} {cfg.goal} {cfg.threshold:g}: success on {hits} of {n} inputs"
                f"{f' ({clean} already without attack)' if clean else ''}")
    lines = [f"{head}, {_norm_name(cfg.norm)} eps {cfg.eps:g}, {dom}"]
    if cfg.goal == "deviation":
        lines.append(f"  {'input':>5} {'deviation':>14}" + ("  success" if rec["success_rate"] is not None else ""))
    else:
        lines.append(f"  {'input':>5} {'clean':>14} {'attacked':>14} {'change':>14}  success")
    for r in rec["records"][:MAX_LINES]:
        if cfg.goal == "deviation":
            tail = "" if r["success"] is None else f"  {'yes' if r['success'] else 'no'}"
            lines.append(f"  {r['index']:>5} {r['deviation']:>14.6g}{tail}")
        else:
            lines.append(f"  {r['index']:>5} {r['value_clean']:>14.6g} {r['value']:>14.6g} "
                         f"{r['value'] - r['value_clean']:>+14.6g}  {'yes' if r['success'] else 'no'}")
    if n > MAX_LINES:
        lines.append(f"  ... {n - MAX_LINES} more in --json")
    lines.append(f"model: {cfg.model}   input: {cfg.input}   attack time: {rec['time_s']:.2f} s")
    lines.append(_flags_line(rec["flags"]))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- attack-activation

@dataclass(frozen=True)
class ActivationCmdConfig:
    model: str
    input: str
    node: str
    eps: float
    norm: str = "inf"
    target_class: Optional[int] = None
    control: bool = False
    steps: int = 100
    restarts: int = 1
    tol: float = 1e-2
    seed: int = 0
    domain: Optional[tuple[float, float]] = None
    json_out: Optional[str] = None


def validate_activation(cfg: ActivationCmdConfig) -> None:
    """Checks that need neither the model nor the input."""
    _check_eps(cfg.eps)
    _check_norm(cfg.norm)
    _check_at_least((("--steps", cfg.steps), ("--restarts", cfg.restarts)))
    if not cfg.node:
        raise InputError("--node must name a node of the model")
    if (cfg.target_class is None) == (not cfg.control):
        raise InputError("give exactly one of --target-class C and --control")
    if cfg.target_class is not None and cfg.target_class < 0:
        raise InputError(f"--target-class must be a class index >= 0, got {cfg.target_class}")
    if not (math.isfinite(cfg.tol) and cfg.tol > 0):
        raise InputError(f"--tol must be > 0, got {cfg.tol}")
    _check_domain(cfg.domain, finite=False)
    _check_outputs((("--json", cfg.json_out),))


def activation_command(cfg: ActivationCmdConfig) -> int:
    validate_activation(cfg)
    import torch

    from perturbkit.attacks.activation import ActivationAttack, make_site
    from perturbkit.attacks.base import ThreatModel

    net = _load_net(cfg.model)
    site = make_site(net, cfg.node)  # an unknown node: one line listing the available ones, before the input is read
    x = _inputs(net, cfg.input)
    if cfg.domain is not None:
        with site.attacking():
            a, _ = site.prepare(x)
        lo, hi = float(a.min()), float(a.max())
        if lo < cfg.domain[0] - 1e-6 or hi > cfg.domain[1] + 1e-6:
            raise InputError(f"the clean activation of node {cfg.node} ranges over [{lo:.4g}, {hi:.4g}], outside "
                             f"--domain {cfg.domain[0]:g} {cfg.domain[1]:g} (widen or omit --domain)")
    m = net.n_outputs
    if cfg.target_class is not None and cfg.target_class >= m:
        raise InputError(f"--target-class {cfg.target_class} is out of range: model {cfg.model} has {m} outputs "
                         f"(0..{m - 1})")
    with torch.no_grad():
        y0 = net(x).reshape(x.shape[0], -1)
    if not bool(torch.isfinite(y0).all()):
        i = int(torch.nonzero(~torch.isfinite(y0).all(1))[0])
        raise InputError(f"model {cfg.model} gives NaN or inf on input {i} of {cfg.input}")
    budget = ThreatModel(eps=cfg.eps, norm=cfg.norm, domain=cfg.domain)
    attack = ActivationAttack(cfg.node, budget, steps=cfg.steps, restarts=cfg.restarts, tol=cfg.tol, seed=cfg.seed)
    B = x.shape[0]
    common = {"model": cfg.model, "input": cfg.input, "node": cfg.node,
              "budget": _threat_record(cfg.eps, cfg.norm, cfg.domain), "steps": cfg.steps,
              "restarts": cfg.restarts, "tol": cfg.tol, "seed": cfg.seed, "n": B, "n_outputs": m}
    if cfg.control:
        c = attack.control(net, x)
        record = {
            "mean_controlled": c.mean_controlled,
            "outputs_per_dim": c.outputs_per_dim,
            "attack_dims": int(c.attack_dims),
            "time_s": c.time_s,
            **common,
            "ks": list(c.ks),
            "records": [{"index": i, "controlled": int(c.controlled[i]),
                         "reached": [bool(v) for v in c.success[i].tolist()],
                         "targets": [_num(v) for v in c.targets[i].tolist()]} for i in range(B)],
        }
    else:
        r = attack(net, x, target_class=cfg.target_class)
        pred0, pred = r.outputs_clean.argmax(1), r.outputs.argmax(1)
        record = {
            "success_rate": float(r.success.double().mean()),
            "time_s": r.time_s,
            **common,
            "target_class": cfg.target_class,
            "attack_dims": int(math.prod(r.delta.shape[1:])),
            "flags": dict(r.flags),
            "records": [{"index": i, "pred_clean": int(pred0[i]), "pred": int(pred[i]), "success": bool(r.success[i]),
                         "clean_success": bool(r.clean_success[i]), "margin": _num(r.margin[i]),
                         "norm": _num(r.norms[i])} for i in range(B)],
        }
    if cfg.json_out:
        write_json_atomic(cfg.json_out, record)
    print(format_activation(cfg, record))
    return 0


def format_activation(cfg: ActivationCmdConfig, rec: dict[str, Any]) -> str:
    n = rec["n"]
    dom = "unbounded" if cfg.domain is None else f"domain [{cfg.domain[0]:g}, {cfg.domain[1]:g}]"
    budget = f"{_norm_name(cfg.norm)} eps {cfg.eps:g} on node {cfg.node} ({rec['attack_dims']} values, {dom})"
    if cfg.control:
        lines = [f"controlled outputs: mean {rec['mean_controlled']:.3g} of {rec['n_outputs']} on {n} inputs "
                 f"({rec['outputs_per_dim']:.3g} per attacked value), tol {cfg.tol:g}", budget]
        shown = [str(r["controlled"]) for r in rec["records"][:MAX_LINES]]
        more = f" ... ({n - MAX_LINES} more in --json)" if n > MAX_LINES else ""
        lines.append(f"per input: {' '.join(shown)}{more}")
    else:
        hits = sum(r["success"] for r in rec["records"])
        clean = sum(r["clean_success"] for r in rec["records"])
        lines = [f"target class {cfg.target_class}: success on {hits} of {n} inputs (rate {rec['success_rate']:.4f}"
                 f"{f', {clean} already without attack' if clean else ''})", budget]
        lines.append(f"  {'input':>5} {'clean':>5} {'attacked':>8} {'margin':>12} {'norm':>12}")
        for r in rec["records"][:MAX_LINES]:
            margin = "n/a" if r["margin"] is None else f"{r['margin']:.4g}"
            lines.append(f"  {r['index']:>5} {r['pred_clean']:>5} {r['pred']:>8} {margin:>12} {r['norm']:>12.4g}")
        if n > MAX_LINES:
            lines.append(f"  ... {n - MAX_LINES} more in --json")
    lines.append(f"model: {cfg.model}   input: {cfg.input}   attack time: {rec['time_s']:.2f} s")
    if "flags" in rec:
        lines.append(_flags_line(rec["flags"]))
    return "\n".join(lines)
