"""What a campaign reports: verdict counts, times, errors, and a judgement against the known
answers (VNN-COMP ``answers.csv``: ``onnx,vnnlib,timeout,answer,confidence``).

Judging one verdict against a known answer (VNN-COMP scores a wrong answer far below a
timeout, so wrong answers are listed loudly):

* ``correct``: ``sat`` vs known ``sat``, or ``unsat`` vs known ``unsat``;
* ``wrong``: ``sat`` vs known ``unsat``, or ``unsat`` vs known ``sat``;
* ``unsolved``: ``unknown``, ``timeout`` or ``error`` (whatever the known answer);
* ``unjudged``: ``sat``/``unsat`` where no answer is known (missing, or ``unknown``).
"""
from __future__ import annotations

import csv
import io
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional

from perturbkit.errors import InputError
from perturbkit.verify.instance import ROW_VERDICTS

Key = tuple[str, str]
DECIDED = ("sat", "unsat")


def read_answers(path: str | os.PathLike) -> dict[Key, tuple[str, str]]:
    """``(onnx, vnnlib) -> (answer, confidence)`` from an answers.csv with a header row."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {path}: {exc}") from None
    reader = csv.DictReader(io.StringIO(text))
    fields = set(reader.fieldnames or ())
    if not {"onnx", "vnnlib", "answer"} <= fields:
        raise InputError(f"{path}:1: expected a header with onnx, vnnlib and answer columns, "
                         f"got {','.join(reader.fieldnames or [])!r}")
    out: dict[Key, tuple[str, str]] = {}
    for row in reader:
        if row.get("onnx") and row.get("vnnlib"):
            key = (row["onnx"].strip(), row["vnnlib"].strip())
            out[key] = ((row.get("answer") or "").strip().lower(), (row.get("confidence") or "").strip())
    return out


def judge(verdict: str, answer: Optional[str]) -> str:
    """``correct``, ``wrong``, ``unsolved`` or ``unjudged`` (see the module docstring)."""
    if verdict not in DECIDED:
        return "unsolved"
    if answer not in DECIDED:
        return "unjudged"
    return "correct" if verdict == answer else "wrong"


@dataclass(frozen=True)
class Judgement:
    """Counts against the known answers; ``wrong_rows``: ``(onnx, vnnlib, ours, known, confidence)``."""

    correct: int = 0
    wrong: int = 0
    unsolved: int = 0
    unjudged: int = 0
    wrong_rows: tuple[tuple[str, str, str, str, str], ...] = ()


@dataclass(frozen=True)
class CampaignSummary:
    """The outcome of a campaign over all instances of the csv (this run and earlier ones).

    Attributes:
        counts: verdict -> number of instances (every verdict of ``ROW_VERDICTS`` present);
            instances not run yet (an interrupted campaign) are not counted.
        n_instances: rows of the csv (duplicates dropped); n_run: verified in this call;
            n_resumed: taken from the results file of an earlier run.
        total_time_s, max_time_s, slowest: verification time over the counted instances.
        errors: ``(onnx, vnnlib, message)`` of every ``error`` row.
        judgement: against ``answers.csv`` when one lies beside the instances file, else None.
        complete: False when the campaign was interrupted.
    """

    instances_csv: str
    out: str
    n_instances: int
    n_run: int
    n_resumed: int
    counts: Mapping[str, int]
    total_time_s: float
    max_time_s: float
    slowest: Optional[Key]
    errors: tuple[tuple[str, str, str], ...] = ()
    judgement: Optional[Judgement] = None
    duplicates: int = 0
    backend: str = ""
    wall_s: float = 0.0
    complete: bool = True
    verdicts: Mapping[Key, str] = field(default_factory=dict)

    def table(self) -> str:
        """The human-readable summary."""
        done = sum(self.counts.values())
        lines = [f"perturbkit verify-batch: {self.instances_csv} -> {self.out}",
                 f"  {done} of {self.n_instances} instances done: {self.n_run} now ({self.backend}, "
                 f"wall {self.wall_s:.1f} s), {self.n_resumed} from an earlier run"
                 + (f"; {self.duplicates} duplicate row(s) skipped" if self.duplicates else "")]
        if not self.complete:
            lines.append(f"  INTERRUPTED: {self.n_instances - done} instance(s) left; "
                         "rerun with --resume to finish")
        lines.append(f"  {'verdict':<9}{'count':>7}")
        lines += [f"  {v:<9}{self.counts.get(v, 0):>7}" for v in ROW_VERDICTS]
        lines.append(f"  {'total':<9}{done:>7}")
        slowest = f" ({self.slowest[0]}, {self.slowest[1]})" if self.slowest else ""
        lines.append(f"  time: {self.total_time_s:.3f} s in total, max {self.max_time_s:.3f} s{slowest}")
        j = self.judgement
        if j is not None:
            extra = f", {j.unjudged} without a known answer" if j.unjudged else ""
            lines.append(f"  against answers.csv: {j.correct} correct, {j.wrong} wrong, "
                         f"{j.unsolved} unsolved{extra}")
        if self.errors:
            lines.append(f"  errors ({len(self.errors)}):")
            lines += [f"    {o} {v}: {m}" for o, v, m in self.errors]
        if j is not None and j.wrong_rows:
            lines.append(f"  !!! {len(j.wrong_rows)} WRONG ANSWER(S) (VNN-COMP: -150 points each) !!!")
            lines += [f"    WRONG: {o} {v}: ours {ours}, known {known} ({conf})"
                      for o, v, ours, known, conf in j.wrong_rows]
        return "\n".join(lines)


def summarize(instances, previous: Mapping[Key, tuple[str, float]], new: Mapping, answers, *,
              instances_csv: str, out: str, duplicates: int, backend: str, wall_s: float,
              complete: bool) -> CampaignSummary:
    """Combine earlier rows (``previous``: key -> (verdict, time)) and this run's results
    (``new``: key -> InstanceResult) over the csv's ``instances``."""
    counts: Counter = Counter({v: 0 for v in ROW_VERDICTS})
    verdicts: dict[Key, str] = {}
    total, worst, slowest = 0.0, 0.0, None
    errors, wrong_rows = [], []
    tally: Counter = Counter()
    n_resumed = 0
    for inst in instances:
        key = inst.key
        if key in new:
            res = new[key]
            verdict, t, message = res.verdict, res.time_s, res.message
        elif key in previous:
            (verdict, t), message = previous[key], "(recorded by an earlier run)"
            n_resumed += 1
        else:
            continue
        verdicts[key] = verdict
        counts[verdict] += 1
        total += t
        if slowest is None or t > worst:
            worst, slowest = t, key
        if verdict == "error":
            errors.append((key[0], key[1], message))
        if answers is not None:
            known, conf = answers.get(key, ("", ""))
            outcome = judge(verdict, known)
            tally[outcome] += 1
            if outcome == "wrong":
                wrong_rows.append((key[0], key[1], verdict, known, conf))
    judgement = None
    if answers is not None:
        judgement = Judgement(tally["correct"], tally["wrong"], tally["unsolved"], tally["unjudged"],
                              tuple(wrong_rows))
    return CampaignSummary(instances_csv=instances_csv, out=out, n_instances=len(instances),
                           n_run=sum(1 for i in instances if i.key in new), n_resumed=n_resumed,
                           counts=dict(counts), total_time_s=total, max_time_s=worst, slowest=slowest,
                           errors=tuple(errors), judgement=judgement, duplicates=duplicates,
                           backend=backend, wall_s=wall_s, complete=complete, verdicts=verdicts)
