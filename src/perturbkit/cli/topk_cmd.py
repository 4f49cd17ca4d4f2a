"""``perturbkit topk``: ordered top-K attacks towards random targets (see :mod:`perturbkit.cli._attack_common`)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from perturbkit.cli._attack_common import (TOPK_METHODS, _check_at_least, _check_domain, _check_eps, _check_norm, _check_outputs, _flags_line, _labelled, _load_net, _norm_name, _num, _threat_record)
from perturbkit.cli.io import write_json_atomic
from perturbkit.errors import InputError


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
