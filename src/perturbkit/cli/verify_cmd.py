"""``perturbkit verify``: decide one VNN-LIB property on one ONNX network.

Arguments become a frozen :class:`VerifyCmdConfig`; :func:`run_verify` loads the network,
parses the property and calls the verifier with a hard deadline
(:func:`perturbkit.verify.instance.verify_with_deadline`); :func:`command` prints the
verdict (first line of stdout) and a short summary, and writes the VNN-COMP result file
(``--out``) and the JSON record (``--json``), each atomically and only after success.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from perturbkit.cli.io import write_json_atomic, write_text_checked
from perturbkit.errors import InputError, ModelError
from perturbkit.verify.instance import GRACE_S, check_timeout, plain_stats

DEFAULT_TIMEOUT = 60.0


@dataclass(frozen=True)
class VerifyCmdConfig:
    """What ``perturbkit verify`` was asked to do (paths as given on the command line)."""

    network: str
    property: str
    timeout: float = DEFAULT_TIMEOUT
    out: Optional[str] = None
    json_out: Optional[str] = None
    strategy: str = "auto"
    verbose: bool = False


@dataclass(frozen=True)
class VerifyOutcome:
    """The verifier's :class:`~perturbkit.verify.result.Result` with what the report needs."""

    result: Any
    n_inputs: int
    n_outputs: int
    n_cases: int
    total_s: float


def validate(cfg: VerifyCmdConfig) -> None:
    """Checks that need neither the network nor the property; raises InputError/ModelError."""
    check_timeout(cfg.timeout, what="--timeout")
    net, prop = Path(cfg.network), Path(cfg.property)
    if not net.exists():
        raise ModelError(f"network file {cfg.network} not found")
    if not net.is_file():
        raise ModelError(f"network {cfg.network} is not a file, expected an .onnx file")
    if not prop.exists():
        raise InputError(f"property file {cfg.property} not found")
    if not prop.is_file():
        raise InputError(f"property {cfg.property} is not a file, expected a .vnnlib file")
    for flag, target in (("--out", cfg.out), ("--json", cfg.json_out)):
        if target is None:
            continue
        folder = Path(target).parent
        if not folder.is_dir():
            raise InputError(f"{flag} {target}: folder {folder} does not exist")
        if Path(target).is_dir():
            raise InputError(f"{flag} {target} is a directory, expected a file name")
    if cfg.out is not None and cfg.out == cfg.json_out:
        raise InputError(f"--out and --json name the same file {cfg.out}")


def run_verify(cfg: VerifyCmdConfig) -> VerifyOutcome:
    """Load, parse, check sizes, verify; the timeout counts from the start of this call."""
    t0 = time.monotonic()
    validate(cfg)
    import perturbkit
    from perturbkit.verify.result import Result
    from perturbkit.verify.spec import check_sizes
    from perturbkit.verify.vnnlib import parse_vnnlib

    network = perturbkit.load(cfg.network)
    prop = parse_vnnlib(cfg.property)
    check_sizes(prop, network.n_inputs, network.n_outputs)
    left = cfg.timeout - (time.monotonic() - t0)
    if left <= 0:
        res = Result("timeout", None, 0.0, {"timed_out_loading": True})
    else:
        from perturbkit.verify.instance import verify_with_deadline
        from perturbkit.verify.runner import VerifyConfig

        res = verify_with_deadline(network, prop, timeout=left, grace=GRACE_S,
                                   config=VerifyConfig(strategy=cfg.strategy),
                                   progress=Reporter() if cfg.verbose else None)
    return VerifyOutcome(res, network.n_inputs, network.n_outputs, len(prop.cases),
                         time.monotonic() - t0)


class Reporter:
    """``--verbose``: one line on stderr at most every ``every`` seconds while branch and bound
    runs: strategy, domains bounded, open domains, the worst lower bound, domains per second."""

    def __init__(self, every: float = 1.0, stream=None):
        self.every, self.stream, self.last = every, stream, 0.0

    def __call__(self, info: dict) -> None:
        import sys

        now = time.monotonic()
        if now - self.last < self.every:
            return
        self.last = now
        parts = [f"{info.get('strategy', '?')}:", f"{info.get('domains', 0)} domains", f"{info.get('open', 0)} open"]
        worst = info.get("worst")
        if worst is not None and worst != float("-inf"):
            parts.append(f"worst lower bound {worst:.4g}")
        if "rate" in info:
            parts.append(f"{info['rate']:.0f}/s")
        print("  ".join(parts), file=self.stream or sys.stderr, flush=True)


def result_file_text(res) -> str:
    """The VNN-COMP result file: ``sat`` and the counterexample, or the verdict alone."""
    from perturbkit.verify.vnnlib import format_counterexample

    if res.verdict == "sat":
        x, y = res.counterexample
        return format_counterexample(x, y, with_result=True)
    return res.verdict + "\n"


def to_record(cfg: VerifyCmdConfig, res) -> dict[str, Any]:
    """The JSON record (see the README, "Verifying VNN-LIB properties")."""
    ce = None
    if res.counterexample is not None:
        x, y = res.counterexample
        ce = {"x": [float(v) for v in x], "y": [float(v) for v in y]}
    return {
        "verdict": res.verdict,
        "time_s": float(res.time),
        "counterexample": ce,
        "stats": plain_stats(res.stats),
        "network": cfg.network,
        "property": cfg.property,
    }


def format_summary(cfg: VerifyCmdConfig, out: VerifyOutcome) -> str:
    """The verdict line, then a few lines for people."""
    res = out.result
    lines = [
        res.verdict,
        f"network:  {cfg.network} ({_count(out.n_inputs, 'input')}, {_count(out.n_outputs, 'output')})",
        f"property: {cfg.property} ({_count(out.n_cases, 'input box', 'input boxes')})",
        f"time:     {res.time:.3f} s verifying, {out.total_s:.3f} s with loading (timeout {cfg.timeout:g} s)",
    ]
    stats = plain_stats(res.stats)
    if stats:
        lines.append("stats:    " + ", ".join(f"{k} {v}" for k, v in stats.items()))
    if res.counterexample is not None:
        x, y = res.counterexample
        lines.append("counterexample: x = " + _short(x) + ", y = " + _short(y))
    return "\n".join(lines)


def _count(n: int, one: str, many: Optional[str] = None) -> str:
    return f"{n} {one if n == 1 else (many or one + 's')}"


def _short(values, limit: int = 8) -> str:
    vals = [f"{float(v):.6g}" for v in list(values)[:limit]]
    more = f", ... ({len(values)} values)" if len(values) > limit else ""
    return "[" + ", ".join(vals) + more + "]"


def command(cfg: VerifyCmdConfig) -> int:
    """Run ``perturbkit verify``: write the result files if asked, then print; exit code 0."""
    out = run_verify(cfg)
    if cfg.out is not None:
        write_text_checked(cfg.out, result_file_text(out.result))
    if cfg.json_out is not None:
        write_json_atomic(cfg.json_out, to_record(cfg, out.result))
    print(format_summary(cfg, out), flush=True)
    return 0
