"""``perturbkit attack``: run attacks on a model over a labelled data set.

Arguments become a frozen :class:`AttackCmdConfig`; :func:`command` validates everything
it can before loading (eps, paths, options), loads the model and the data, checks that they
fit (shape, labels, NaN), runs :func:`perturbkit.attacks.evaluate.evaluate` and prints a
summary; ``--json`` and ``--save-adv`` are written atomically, only on success.

JSON record: ``clean_accuracy``, ``robust_accuracy`` (fraction of all points correct clean
and under every attack), ``time_s`` (attack time, without start-up and loading), then
``model``, ``data``, ``threat``, ``stages`` (per attack: points broken, robust accuracy
after it, time), ``flags`` (sanity checks; non-zero means look closer), ``max_norm`` and
``records`` (per sample).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from perturbkit._atomic import write_npz_atomic
from perturbkit.cli._attack_common import _check_outputs
from perturbkit.cli.io import write_json_atomic
from perturbkit.errors import InputError


@dataclass(frozen=True)
class AttackCmdConfig:
    model: str
    data: str
    attack: str
    eps: float
    norm: str = "inf"
    steps: Optional[int] = None
    step_size: Optional[float] = None
    restarts: Optional[int] = None
    seed: int = 0
    n: Optional[int] = None
    targeted: bool = False
    json_out: Optional[str] = None
    save_adv: Optional[str] = None
    shape: Optional[tuple[int, ...]] = None
    domain: Optional[tuple[float, float]] = (0.0, 1.0)
    batch_size: Optional[int] = None
    state: Optional[str] = None
    progress: bool = True


def validate(cfg: AttackCmdConfig) -> None:
    """Checks that need neither the model nor the data."""
    from perturbkit.attacks.registry import ATTACKS

    if not (isinstance(cfg.eps, (int, float)) and math.isfinite(cfg.eps) and cfg.eps >= 0):
        raise InputError(f"--eps must be a finite number >= 0, got {cfg.eps}")
    for flag, v in (("--steps", cfg.steps), ("--restarts", cfg.restarts), ("--n", cfg.n), ("--batch-size", cfg.batch_size)):
        if v is not None and v < 1:
            raise InputError(f"{flag} must be >= 1, got {v}")
    if cfg.step_size is not None and not (math.isfinite(cfg.step_size) and cfg.step_size > 0):
        raise InputError(f"--step-size must be > 0, got {cfg.step_size}")
    names = [a.strip().lower() for a in cfg.attack.split(",") if a.strip()]
    if not names:
        raise InputError("--attack is empty")
    for a in names:
        if a not in ATTACKS:
            raise InputError(f"unknown attack {a!r}; available: {', '.join(ATTACKS)}")
    if cfg.shape is not None and any(d < 1 for d in cfg.shape):
        raise InputError(f"--shape must be positive sizes, got {cfg.shape}")
    _check_outputs([("--json", cfg.json_out), ("--save-adv", cfg.save_adv), ("--state", cfg.state)])


def _targets(y: np.ndarray, n_classes: int, seed: int) -> np.ndarray:
    """A random class other than the label for every point (seeded)."""
    rng = np.random.default_rng(seed)
    shift = rng.integers(1, n_classes, size=y.shape[0])
    return (y + shift) % n_classes


def command(cfg: AttackCmdConfig) -> int:
    validate(cfg)
    from perturbkit.attacks.base import ThreatModel
    from perturbkit.attacks.evaluate import evaluate
    from perturbkit.cli._attack_common import _labelled, _load_net

    threat = ThreatModel(eps=cfg.eps, norm=cfg.norm, domain=cfg.domain, targeted=cfg.targeted)
    net = _load_net(cfg.model)
    x, y, n_classes, _ = _labelled(net, cfg.model, cfg.data, shape=cfg.shape, n=cfg.n, domain=cfg.domain,
                                   batch_size=cfg.batch_size or 256)
    targets = _targets(y, n_classes, cfg.seed) if cfg.targeted else None
    ev = evaluate(net, (x, y), threat, attacks=cfg.attack, batch_size=cfg.batch_size, targets=targets,
                  state_file=cfg.state, progress=cfg.progress, steps=cfg.steps, step_size=cfg.step_size,
                  restarts=cfg.restarts, seed=cfg.seed)
    record = ev.to_json()
    record = {"clean_accuracy": record.pop("clean_accuracy"), "robust_accuracy": record.pop("robust_accuracy"),
              "time_s": record.pop("time_s"), "model": cfg.model, "data": cfg.data, **record}
    if targets is not None:
        for r, t in zip(record["records"], targets.tolist()):
            r["target"] = int(t)
    if cfg.save_adv:
        write_npz_atomic(cfg.save_adv, x_adv=ev.x_adv, y=y)
    if cfg.json_out:
        write_json_atomic(cfg.json_out, record)
    print(format_summary(cfg, ev))
    return 0


def format_summary(cfg: AttackCmdConfig, ev) -> str:
    norm = {"inf": "Linf", "2": "L2", "1": "L1"}.get(str(ev.threat["norm"]), ev.threat["norm"])
    lines = [
        f"robust accuracy {ev.robust_accuracy:.4f} (clean {ev.clean_accuracy:.4f}) on {ev.n} points, "
        f"{norm} eps {cfg.eps:g}{', targeted' if cfg.targeted else ''}",
        f"model: {cfg.model}   data: {cfg.data}   attack time: {ev.time_s:.2f} s",
    ]
    for s in ev.stages:
        lines.append(f"  {s['attack']:<10} broke {s['broken']:>5}   robust {s['robust_accuracy']:.4f}   {s['time_s']:.2f} s")
    raised = {k: v for k, v in ev.flags.items() if v}
    lines.append("flags: " + (", ".join(f"{k} ({v} points)" for k, v in raised.items()) if raised else "none"))
    lines.append(f"largest perturbation found: {ev.max_norm:.4g}")
    return "\n".join(lines)
