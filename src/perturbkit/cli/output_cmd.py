"""``perturbkit attack-output``: attacks on real-valued outputs (see :mod:`perturbkit.cli._attack_common`)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

from perturbkit.cli._attack_common import (GOALS, MAX_LINES, _check_at_least, _check_domain, _check_eps, _check_in_domain, _check_norm, _check_outputs, _flags_line, _inputs, _load_net, _norm_name, _num, _threat_record)
from perturbkit.cli.io import write_json_atomic
from perturbkit.errors import InputError


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
