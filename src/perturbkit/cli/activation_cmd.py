"""``perturbkit attack-activation``: attacks on a named node's activation (see :mod:`perturbkit.cli._attack_common`)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

from perturbkit.cli._attack_common import (MAX_LINES, _check_at_least, _check_domain, _check_eps, _check_norm, _check_outputs, _flags_line, _inputs, _load_net, _norm_name, _num, _threat_record)
from perturbkit.cli.io import write_json_atomic
from perturbkit.errors import InputError


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
