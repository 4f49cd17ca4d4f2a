"""The outcome of verifying one property: :class:`Result`."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

import numpy as np

VERDICTS = ("sat", "unsat", "unknown", "timeout")


@dataclass(frozen=True)
class Result:
    """Verdict of one property on one network.

    Attributes:
        verdict: ``"sat"`` (a counterexample exists; one is attached, checked by executing
            the network, with ONNX Runtime for ONNX models), ``"unsat"`` (proved: no input
            in the property's boxes satisfies its output constraints), ``"unknown"`` (the
            methods available gave up) or ``"timeout"``.
        counterexample: for ``sat``, ``(x, y)`` flat float64 arrays: an input inside a box
            and the network's output there, as ONNX Runtime computed it.
        time: wall-clock seconds.
        stats: counters (boxes bounded, splits, falsification attempts, ...).
    """

    verdict: str
    counterexample: Optional[tuple[np.ndarray, np.ndarray]] = None
    time: float = 0.0
    stats: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")
        if (self.verdict == "sat") != (self.counterexample is not None):
            raise ValueError("a sat result carries a counterexample, and only a sat result does")
