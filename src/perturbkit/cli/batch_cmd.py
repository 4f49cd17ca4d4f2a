"""``perturbkit verify-batch``: every instance of a VNN-COMP instances.csv, as a campaign.

Arguments become a frozen :class:`BatchConfig`; :func:`command` calls
:func:`perturbkit.verify.campaign.run_campaign` and prints its summary table on stdout
(wrong answers are repeated on stderr).  Exit code 0, or 3 when an answer contradicts
``answers.csv`` (a wrong verdict is the worst outcome a verifier has: scripts and CI should
stop on it).  Ctrl-C stops cleanly: the rows written so far form a valid CSV, the summary of
the partial run is printed, and the exit code is 130.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Optional

from perturbkit.errors import InputError


#: exit code of ``verify-batch`` when a verdict contradicts answers.csv
WRONG_ANSWER_EXIT = 3


@dataclass(frozen=True)
class BatchConfig:
    """What ``perturbkit verify-batch`` was asked to do."""

    instances: str
    root: Optional[str] = None
    out: str = "results.csv"
    workers: Optional[int] = None
    ray: Optional[str] = None
    resume: bool = False
    timeout_scale: float = 1.0
    progress: bool = True
    strategy: str = "auto"


def validate(cfg: BatchConfig) -> None:
    """Option checks that need no file; raises InputError naming the flag."""
    if cfg.workers is not None and cfg.workers < 1:
        raise InputError(f"--workers must be >= 1, got {cfg.workers}")
    if cfg.workers is not None and cfg.ray is not None:
        raise InputError("--workers and --ray exclude each other: with --ray the cluster's CPUs "
                         "decide how many instances run at once")
    if not (math.isfinite(cfg.timeout_scale) and cfg.timeout_scale > 0):
        raise InputError(f"--timeout-scale must be a finite number > 0, got {cfg.timeout_scale}")
    if cfg.ray is not None and not cfg.ray.strip():
        raise InputError("--ray needs an address: auto, HOST:PORT, ray://HOST:PORT or local")


def command(cfg: BatchConfig) -> int:
    """Run the campaign; print the summary; exit 0, 3 on a wrong answer (130 when interrupted)."""
    from perturbkit.verify.campaign import CampaignInterrupted, run_campaign

    validate(cfg)
    try:
        summary = run_campaign(cfg.instances, root=cfg.root, out=cfg.out, workers=cfg.workers or 1,
                               ray_address=cfg.ray, resume=cfg.resume, progress=cfg.progress,
                               timeout_scale=cfg.timeout_scale, strategy=cfg.strategy)
    except CampaignInterrupted as stop:
        print(stop.summary.table(), flush=True)
        print(f"perturbkit: error: interrupted; {cfg.out} holds the finished rows: rerun with --resume "
              "to finish", file=sys.stderr)
        return 130
    print(summary.table(), flush=True)
    if summary.judgement is not None and summary.judgement.wrong_rows:
        for onnx, vnnlib, ours, known, conf in summary.judgement.wrong_rows:
            print(f"perturbkit: WRONG ANSWER: {onnx} {vnnlib}: ours {ours}, known {known} ({conf})",
                  file=sys.stderr)
        return WRONG_ANSWER_EXIT
    return 0
