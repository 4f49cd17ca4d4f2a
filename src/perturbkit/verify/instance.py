"""One verification instance (network file + VNN-LIB file + timeout) end to end, with a hard
deadline: what ``perturbkit verify`` runs, and what every campaign worker runs.

:func:`verify_with_deadline` runs :func:`~perturbkit.verify.runner.verify` in a helper
thread and waits at most ``timeout + grace`` seconds: the verifier checks its deadline only
between steps, so a long step could overrun it; the caller then gets ``timeout`` on time
(the thread is abandoned: a daemon thread that stops at its own next deadline check; the
``perturbkit`` program then ends with ``os._exit`` once its output is written, because an
interpreter shutting down around a thread busy in torch's C++ code can abort).

:func:`verify_instance` loads the network and parses the property (their time counts
against the timeout), and turns any failure into an ``error`` outcome with a one-line
message, so that a campaign never stops on one bad instance.
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from perturbkit.errors import InputError

#: seconds past the timeout after which the verifier's thread is abandoned
GRACE_S = 1.0
#: the name of the thread that runs the verifier
THREAD_NAME = "perturbkit-verify"
#: the verdicts of a campaign row: the verifier's four, and ``error`` (the instance failed)
ROW_VERDICTS = ("sat", "unsat", "unknown", "timeout", "error")


@dataclass(frozen=True)
class InstanceResult:
    """The outcome of one instance, picklable (it travels back from worker processes).

    Attributes:
        verdict: one of :data:`ROW_VERDICTS`.
        time_s: seconds spent verifying (from the start of ``verify``; loading and parsing
            excluded); 0 for ``error``.
        counterexample: for ``sat``: ``(x, y)`` as lists of floats (input, output executed
            through the network); else None.
        stats: the verifier's counters (plain ints/floats/strings).
        message: for ``error``: one line saying what went wrong; else "".
    """

    verdict: str
    time_s: float = 0.0
    counterexample: Optional[tuple[list[float], list[float]]] = None
    stats: Mapping[str, Any] = field(default_factory=dict)
    message: str = ""

    def __post_init__(self) -> None:
        if self.verdict not in ROW_VERDICTS:
            raise ValueError(f"verdict must be one of {ROW_VERDICTS}, got {self.verdict!r}")


def check_timeout(timeout: float, *, what: str = "timeout") -> float:
    """``timeout`` as a float if it is a finite number > 0, else InputError."""
    try:
        t = float(timeout)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a number of seconds > 0, got {timeout!r}") from None
    if not (math.isfinite(t) and t > 0):
        raise InputError(f"{what} must be a finite number of seconds > 0, got {timeout!r}")
    return t


def plain_stats(stats: Mapping[str, Any]) -> dict[str, Any]:
    """The verifier's counters as JSON-ready Python values: numpy scalars unwrapped, nested
    mappings and sequences kept, non-finite floats and anything else as strings."""
    return {str(k): _plain(v) for k, v in stats.items()}


def _plain(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if hasattr(v, "item") and callable(v.item) and getattr(v, "ndim", 0) == 0:
        try:
            v = v.item()
        except (TypeError, ValueError):
            return str(v)
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v if isinstance(v, (bool, int, float, str)) or v is None else str(v)


def verify_with_deadline(network, prop, *, timeout: float, grace: float = GRACE_S, config=None, progress=None):
    """``verify(network, prop, timeout=timeout)``, but back within ``timeout + grace`` seconds.

    Returns the verifier's :class:`~perturbkit.verify.result.Result`, or, when it overruns,
    ``Result("timeout", time=<elapsed>, stats={"watchdog": True})``.  Exceptions raised by
    the verifier are re-raised here.
    """
    from perturbkit.verify.result import Result
    from perturbkit.verify.runner import VerifyConfig, verify

    config = config if config is not None else VerifyConfig()
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            extra = {} if progress is None else {"progress": progress}
            box["result"] = verify(network, prop, timeout=timeout, config=config, **extra)
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    t0 = time.monotonic()
    worker = threading.Thread(target=work, name=THREAD_NAME, daemon=True)
    worker.start()
    worker.join(timeout + grace)
    if worker.is_alive():
        return Result("timeout", None, time.monotonic() - t0, {"watchdog": True})
    if "error" in box:
        raise box["error"]
    return box["result"]


def verify_instance(onnx_path: str, vnnlib_path: str, timeout: float, *, grace: float = GRACE_S,
                    vnnlib_name: Optional[str] = None, strategy: str = "auto", threads: int = 1) -> InstanceResult:
    """Load ``onnx_path``, parse ``vnnlib_path``, verify within ``timeout`` seconds (counted
    from this call), never raising: a failure is ``InstanceResult("error", message=...)``.

    Sets torch to ``threads`` intra-op threads (campaigns run one instance per CPU by
    default; one worker on the whole machine gets all its CPUs).
    ``vnnlib_name`` is the name used in parse errors (default: the path); ``strategy`` is
    :attr:`perturbkit.verify.runner.VerifyConfig.strategy`.
    """
    t0 = time.monotonic()
    try:
        import torch

        torch.set_num_threads(max(1, int(threads)))
        import perturbkit
        from perturbkit.verify.spec import check_sizes
        from perturbkit.verify.vnnlib import parse_vnnlib

        timeout = check_timeout(timeout)
        network = perturbkit.load(onnx_path)
        prop = parse_vnnlib(vnnlib_path, name=vnnlib_name)
        check_sizes(prop, network.n_inputs, network.n_outputs)
        left = timeout - (time.monotonic() - t0)
        if left <= 0:
            return InstanceResult("timeout", 0.0, None, {"timed_out_loading": True})
        from perturbkit.verify.runner import VerifyConfig

        res = verify_with_deadline(network, prop, timeout=left, grace=grace, config=VerifyConfig(strategy=strategy))
        ce = None
        if res.counterexample is not None:
            x, y = res.counterexample
            ce = ([float(v) for v in x], [float(v) for v in y])
        return InstanceResult(res.verdict, float(res.time), ce, plain_stats(res.stats))
    except Exception as exc:  # noqa: BLE001 - one bad instance must not end a campaign
        return InstanceResult("error", 0.0, None, {}, one_line(exc))


def one_line(exc: BaseException) -> str:
    """``Type: message`` on one line (the type is left out for perturbkit's own errors)."""
    from perturbkit.errors import PerturbkitError

    text = " ".join((str(exc) or "").split())
    if isinstance(exc, PerturbkitError) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
