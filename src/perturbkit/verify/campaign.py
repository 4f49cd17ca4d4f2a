"""Verification campaigns: every instance of a VNN-COMP ``instances.csv``, results streamed
to a CSV that a later run can resume.

``run_campaign(instances_csv, out=...)`` reads the rows ``onnx,vnnlib,timeout`` (paths
relative to the csv's folder, or to ``root``), skips (with ``resume=True``) the instances
already in ``out``, verifies the others in a local process pool (``workers``) or as Ray
tasks (``ray_address``; :mod:`.ray_backend`), and appends one row
``onnx,vnnlib,verdict,time_s`` per instance as each one finishes (whole rows, flushed and
fsynced: an interrupted campaign leaves a valid CSV).  The counterexample of every ``sat``
instance goes to ``<out folder>/counterexamples/<onnx stem>__<vnnlib stem>.counterexample``.
Where an ``answers.csv`` lies beside the instances file the verdicts are judged against it
(:mod:`.campaign_report`).

Each instance runs :func:`perturbkit.verify.instance.verify_instance` in a worker with one
torch thread (:mod:`.local_pool` or :mod:`.ray_backend`); any failure there is an ``error``
row, and a worker process that dies is replaced (its instance is retried once alone, then
recorded as ``error``).
"""
from __future__ import annotations

import csv
import io
import math
from functools import partial
import os
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from perturbkit._atomic import write_text_atomic
from perturbkit.errors import InputError
from perturbkit.verify.campaign_report import CampaignSummary, judge, read_answers, summarize
from perturbkit.verify.instance import GRACE_S, ROW_VERDICTS, InstanceResult, one_line, verify_instance
from perturbkit.verify.local_pool import run_local

__all__ = ["CampaignInterrupted", "CampaignSummary", "Instance", "ResultsFile", "read_instances",
           "run_campaign"]

HEADER = ("onnx", "vnnlib", "verdict", "time_s")


@dataclass(frozen=True)
class Instance:
    """One row of an instances.csv.

    ``onnx`` and ``vnnlib`` are spelled as in the csv (they key the results); the ``*_path``
    fields are the resolved files; ``timeout`` is in seconds, already scaled.
    """

    onnx: str
    vnnlib: str
    timeout: float
    onnx_path: str
    vnnlib_path: str

    @property
    def key(self) -> tuple[str, str]:
        return (self.onnx, self.vnnlib)


class CampaignInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) stopped the campaign; ``summary`` covers the rows written so far."""

    def __init__(self, summary: CampaignSummary):
        super().__init__("campaign interrupted")
        self.summary = summary


def _number(text: str) -> Optional[float]:
    try:
        return float(text)
    except ValueError:
        return None


def read_instances(instances_csv: str | os.PathLike, *, root: str | os.PathLike | None = None,
                   timeout_scale: float = 1.0) -> tuple[list[Instance], int]:
    """The instances of a VNN-COMP ``instances.csv`` and how many duplicate rows were dropped.

    Rows are ``onnx,vnnlib,timeout`` (further columns are ignored; blank lines, ``#``
    comments and a header row are skipped).  Raises InputError naming ``FILE:LINE`` for a
    malformed row, and for files that do not exist.
    """
    csv_path = Path(instances_csv)
    if not csv_path.is_file():
        raise InputError(f"instances file {instances_csv} not found" if not csv_path.exists()
                         else f"instances {instances_csv} is not a file")
    base = Path(root) if root is not None else csv_path.parent
    if root is not None and not base.is_dir():
        raise InputError(f"--root {root} is not a folder")
    try:
        text = csv_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {instances_csv}: {one_line(exc)}") from None
    instances: list[Instance] = []
    seen: set[tuple[str, str]] = set()
    duplicates = 0
    missing: list[str] = []
    for line_no, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        cells = [c.strip() for c in row]
        if not any(cells) or cells[0].startswith("#"):
            continue
        where = f"{instances_csv}:{line_no}"
        if len(cells) < 3:
            raise InputError(f"{where}: expected onnx,vnnlib,timeout, got {len(cells)} column(s)")
        onnx, vnnlib, timeout = cells[:3]
        t = _number(timeout)
        if t is None and not instances and timeout.lower() == "timeout":
            continue  # a header row
        if t is None or not math.isfinite(t) or t <= 0:
            raise InputError(f"{where}: the timeout must be a number of seconds > 0, got {timeout!r}")
        if not onnx or not vnnlib:
            raise InputError(f"{where}: empty onnx or vnnlib path")
        if (onnx, vnnlib) in seen:
            duplicates += 1
            continue
        seen.add((onnx, vnnlib))
        paths = [base / onnx, base / vnnlib]
        missing += [f"{where}: {p} not found" for p in paths if not p.is_file()]
        instances.append(Instance(onnx, vnnlib, t * timeout_scale, str(paths[0]), str(paths[1])))
    if missing:
        more = f" (and {len(missing) - 1} more missing file(s))" if len(missing) > 1 else ""
        hint = "" if root is not None else "; paths are relative to the csv's folder unless --root is given"
        raise InputError(f"{missing[0]}{more}{hint}")
    if not instances:
        raise InputError(f"{instances_csv} lists no instances (expected rows onnx,vnnlib,timeout)")
    return instances, duplicates


def _lock(fh, path) -> None:
    """An exclusive advisory lock on the open results file, so two campaigns never append to
    one file (released by the kernel when the process ends, however it ends)."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks here
        return
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        raise InputError(f"--out {path} is in use by another running campaign") from None


class ResultsFile:
    """The results CSV: its earlier rows (when resuming) and whole-row appends.

    A new (or empty) file gets the header.  An existing file is refused unless ``resume``;
    when resuming, its header and rows are checked, and a last line without its newline (a
    run killed while writing it) is cut off, so that the instance runs again.  The file is
    locked while open: a second campaign on the same file is refused.
    """

    def __init__(self, path: str | os.PathLike, *, resume: bool):
        self.path = Path(path)
        folder = self.path.parent if str(self.path.parent) else Path(".")
        if not folder.is_dir():
            raise InputError(f"--out {path}: folder {folder} does not exist")
        if self.path.is_dir():
            raise InputError(f"--out {path} is a directory, expected a file name")
        self.previous: dict[tuple[str, str], tuple[str, float]] = {}
        size = self.path.stat().st_size if self.path.exists() else 0
        if size and not resume:
            raise InputError(f"--out {path} already exists: pass --resume to continue it, or remove it")
        try:
            self._fh = open(self.path, "a", encoding="utf-8", newline="")
        except OSError as exc:
            raise InputError(f"cannot write {path}: {one_line(exc)}") from None
        try:
            _lock(self._fh, path)
            if self.path.stat().st_size:
                self._read_previous()
            else:
                self._write(HEADER)
        except BaseException:
            self._fh.close()
            raise

    def _read_previous(self) -> None:
        raw = self.path.read_bytes()
        keep = raw.rfind(b"\n") + 1  # a last row without its newline was cut short: dropped
        try:
            rows = list(csv.reader(io.StringIO(raw[:keep].decode("utf-8"))))
        except (UnicodeDecodeError, csv.Error) as exc:
            raise InputError(f"cannot read {self.path} as a results CSV: {one_line(exc)}") from None
        if rows:
            self._check(rows)
        if keep < len(raw):
            os.truncate(self.path, keep)
        if not rows:
            self._write(HEADER)

    def _check(self, rows: list[list[str]]) -> None:
        if tuple(c.strip() for c in rows[0]) != HEADER:
            raise InputError(f"{self.path}:1: not a perturbkit results file: the header should be "
                             f"{','.join(HEADER)}")
        for line_no, row in enumerate(rows[1:], start=2):
            if not row:
                continue
            t = _number(row[3]) if len(row) == 4 else None
            if t is None or row[2] not in ROW_VERDICTS:
                raise InputError(f"{self.path}:{line_no}: expected onnx,vnnlib,verdict,time_s with a "
                                 f"verdict in {', '.join(ROW_VERDICTS)}, got {','.join(row)!r}")
            self.previous.setdefault((row[0], row[1]), (row[2], t))

    def _write(self, cells) -> None:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(cells)
        self._fh.write(buf.getvalue())  # one write per row
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def append(self, onnx: str, vnnlib: str, verdict: str, time_s: float) -> None:
        self._write((onnx, vnnlib, verdict, f"{time_s:.4f}"))

    def close(self) -> None:
        self._fh.close()


def counterexample_path(out: str | os.PathLike, onnx: str, vnnlib: str) -> Path:
    """``<out folder>/counterexamples/<onnx stem>__<vnnlib stem>.counterexample``."""
    return Path(out).parent / "counterexamples" / f"{_stem(onnx)}__{_stem(vnnlib)}.counterexample"


def _stem(rel: str) -> str:
    name = Path(rel).name
    name = name[:-3] if name.endswith(".gz") else name
    return Path(name).stem


def _raise_interrupt(signum, frame):  # SIGTERM -> the same clean stop as Ctrl-C
    raise KeyboardInterrupt


def run_campaign(instances_csv: str | os.PathLike, *, root: str | os.PathLike | None = None,
                 out: str | os.PathLike, workers: int = 1, ray_address: Optional[str] = None,
                 resume: bool = False, progress: bool = True, timeout_scale: float = 1.0,
                 grace: float = GRACE_S, strategy: str = "auto", _task: Optional[Callable] = None) -> CampaignSummary:
    """Run every instance of ``instances_csv`` not yet in ``out``; see the module docstring.

    Args:
        instances_csv: a VNN-COMP instances file (rows ``onnx,vnnlib,timeout``).
        root: the folder the csv's paths are relative to (default: the csv's folder).
        out: the results CSV (appended to; must not exist unless ``resume``).
        workers: local worker processes (ignored with ``ray_address``).
        ray_address: run the instances as Ray tasks on this cluster (``"auto"``, an address,
            or ``"local"`` to start a local Ray); needs ``pip install perturbkit[ray]``.
        resume: skip the instances already in ``out``.
        progress: a tqdm progress bar (and one line per error or wrong answer) on stderr.
        timeout_scale: multiply every instance's timeout by this factor.
        strategy: the verifier's strategy for every instance (``"auto"``, ``"input"``, ``"relu"``).
    Returns:
        :class:`CampaignSummary` over all the csv's instances (this run and earlier ones).
    Raises:
        InputError: bad arguments or files (before anything is written);
        CampaignInterrupted: Ctrl-C or SIGTERM, after the rows so far are safely written.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise InputError(f"workers must be an integer >= 1, got {workers!r}")
    if not (isinstance(timeout_scale, (int, float)) and math.isfinite(timeout_scale) and timeout_scale > 0):
        raise InputError(f"timeout scale must be a finite number > 0, got {timeout_scale!r}")
    from perturbkit.verify.runner import STRATEGIES

    if strategy not in STRATEGIES:
        raise InputError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    instances, duplicates = read_instances(instances_csv, root=root, timeout_scale=timeout_scale)
    answers_path = Path(instances_csv).parent / "answers.csv"
    answers = read_answers(answers_path) if answers_path.is_file() else None
    ray_started = False
    if ray_address is not None:
        from perturbkit.verify import ray_backend

        ray_started = ray_backend.connect(ray_address)
    try:
        return _run(instances, duplicates, answers, instances_csv=instances_csv, out=out, workers=workers,
                    ray_address=ray_address, resume=resume, progress=progress, grace=grace,
                    task=_task or partial(verify_instance, strategy=strategy, threads=_threads(workers, ray_address)),
                    strategy=strategy)
    finally:
        if ray_started:
            ray_backend.disconnect()


def _threads(workers: int, ray_address: Optional[str]) -> int:
    """torch threads per instance: the machine's CPUs shared by the local workers (1 on Ray:
    a task holds one CPU)."""
    if ray_address is not None:
        return 1
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cpus // workers)


def _run(instances, duplicates, answers, *, instances_csv, out, workers, ray_address, resume, progress,
         grace, task, strategy: str = "auto") -> CampaignSummary:
    """run_campaign once the instances are read and Ray (if asked for) is connected."""
    results = ResultsFile(out, resume=resume)
    todo = [i for i in instances if i.key not in results.previous]
    new: dict[tuple[str, str], InstanceResult] = {}
    backend = (f"Ray ({ray_address})" if ray_address is not None
               else f"local pool, {workers} worker{'s' if workers != 1 else ''}")
    t0 = time.monotonic()

    def summary(complete: bool) -> CampaignSummary:
        return summarize(instances, results.previous, new, answers, instances_csv=str(instances_csv),
                         out=str(out), duplicates=duplicates, backend=backend,
                         wall_s=time.monotonic() - t0, complete=complete)

    bar = None
    if progress and todo:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), file=sys.stderr, unit="inst", dynamic_ncols=True, desc="verify")
    tally: Counter = Counter()

    def on_result(job: Instance, res: InstanceResult) -> None:
        if res.verdict == "sat" and res.counterexample is not None:
            from perturbkit.verify.vnnlib import format_counterexample

            path = counterexample_path(out, job.onnx, job.vnnlib)
            path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(path, format_counterexample(*res.counterexample, with_result=True))
        results.append(job.onnx, job.vnnlib, res.verdict, res.time_s)
        new[job.key] = res
        tally[res.verdict] += 1
        if bar is not None:
            if res.verdict == "error":
                bar.write(f"error: {job.onnx} {job.vnnlib}: {res.message}", file=sys.stderr)
            known = answers.get(job.key) if answers else None
            if known and judge(res.verdict, known[0]) == "wrong":
                bar.write(f"WRONG: {job.onnx} {job.vnnlib}: ours {res.verdict}, known answer {known[0]}",
                          file=sys.stderr)
            bar.set_postfix_str(" ".join(f"{v} {tally[v]}" for v in ROW_VERDICTS if tally[v]), refresh=False)
            bar.update(1)

    old_term = None
    if threading.current_thread() is threading.main_thread():
        old_term = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        if not todo:
            pass
        elif ray_address is not None:
            from perturbkit.verify.ray_backend import run_ray

            run_ray(todo, grace=grace, on_result=on_result, strategy=strategy)
        else:
            run_local(todo, workers=workers, grace=grace, on_result=on_result, task=task)
    except KeyboardInterrupt:
        raise CampaignInterrupted(summary(complete=False)) from None
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
        if bar is not None:
            bar.close()
        results.close()
    return summary(complete=True)
