"""``perturbkit patch``: a universal patch with expectation over transformations (see :mod:`perturbkit.cli._attack_common`)."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from perturbkit.cli._attack_common import (_check_at_least, _check_domain, _check_outputs, _flags_line, _labelled, _load_net, _num, _save_npy_atomic)
from perturbkit.cli.io import write_json_atomic
from perturbkit.errors import InputError


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
