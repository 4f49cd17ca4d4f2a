"""Complete verification on image networks (issue 11): ``perturbkit verify-batch`` on a
VNN-COMP folder with ReLU-splitting branch and bound, solved counts against the issue's
targets, per network, with the peak memory of the worker processes.

    python bench/verify_images.py --folder mnist_fc_2022 [--workers 1] [--timeout-scale 1]
                                  [--results runs/mnist.csv [--resume]] [--markdown OUT.md]

Question: within each instance's own VNN-COMP timeout, on this 2-core machine without a
GPU, how many instances does perturbkit solve, with no wrong answer (issue 11's targets:
mnist_fc_2022 >= 75 of 90, oval21_2022 >= 20 of 30, verivital_2021 >= 55 of the 58 with a
known answer; alpha-beta-CROWN on a GPU in VNN-COMP: 84, 26, all)?

One worker by default, with every CPU (as VNN-COMP runs one instance at a time on the
machine); ``--workers 2`` halves the wall time and the CPUs per instance.  ``--results``
keeps the per-instance CSV (and ``--resume`` continues an interrupted run of it).  Peak
memory: the largest resident set size of any process of the run, sampled every 0.5 s
from /proc.  Exit status 0 when the target holds and nothing is wrong.
"""
from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "benchmarks"
TARGETS = {"mnist_fc_2022": 75, "oval21_2022": 20, "verivital_2021": 55}
ABCROWN_GPU = {"mnist_fc_2022": "84 of 90", "oval21_2022": "26 of 30", "verivital_2021": "all"}


class PeakRss:
    """Largest VmRSS (bytes) of the process ``pid`` and its descendants, sampled."""

    def __init__(self, pid: int, every: float = 0.5):
        self.pid, self.every, self.peak, self._stop = pid, every, 0, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _tree(self) -> list[int]:
        parent = {}
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    with open(f"/proc/{d}/stat") as fh:
                        parent[int(d)] = int(fh.read().rsplit(")", 1)[1].split()[1])
                except OSError:
                    continue
        out, todo = [], [self.pid]
        while todo:
            p = todo.pop()
            out.append(p)
            todo += [c for c, pp in parent.items() if pp == p]
        return out

    def _run(self) -> None:
        while not self._stop.is_set():
            for p in self._tree():
                try:
                    with open(f"/proc/{p}/status") as fh:
                        for line in fh:
                            if line.startswith("VmRSS:"):
                                self.peak = max(self.peak, int(line.split()[1]) * 1024)
                except OSError:
                    pass
            self._stop.wait(self.every)

    def stop(self) -> int:
        self._stop.set()
        self._t.join()
        return self.peak


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folder", default="mnist_fc_2022", help="a folder of ../shared/benchmarks")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--timeout-scale", type=float, default=1.0)
    ap.add_argument("--strategy", default="auto", choices=["auto", "input", "relu"])
    ap.add_argument("--results", help="keep the per-instance results CSV here")
    ap.add_argument("--resume", action="store_true", help="continue --results")
    ap.add_argument("--markdown", help="also write the tables to this file")
    args = ap.parse_args(argv)
    folder = SHARED / args.folder
    if not (folder / "instances.csv").exists():
        print(f"bench: no instances.csv in {folder}", file=sys.stderr)
        return 2
    tmp = tempfile.TemporaryDirectory()
    out = Path(args.results) if args.results else Path(tmp.name) / "results.csv"
    cmd = [sys.executable, "-m", "perturbkit.cli.main", "verify-batch", str(folder / "instances.csv"), "--out", str(out),
           "--workers", str(args.workers), "--timeout-scale", str(args.timeout_scale), "--strategy", args.strategy]
    if args.resume:
        cmd.append("--resume")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    rss = PeakRss(proc.pid)
    stdout, stderr = proc.communicate()
    peak = rss.stop()
    wall = time.monotonic() - t0
    if proc.returncode not in (0, 3):
        print(stdout + stderr, file=sys.stderr)
        return 2
    rows = list(csv.DictReader(out.open()))
    answers = {(r["onnx"], r["vnnlib"]): r["answer"] for r in csv.DictReader((folder / "answers.csv").open())}
    per = defaultdict(lambda: defaultdict(int))
    solved_t = defaultdict(float)
    wrong_rows = []
    for r in rows:
        net = Path(r["onnx"]).stem
        truth = answers.get((r["onnx"], r["vnnlib"]), "unknown")
        v = r["verdict"]
        per[net]["instances"] += 1
        per[net]["known"] += truth in ("sat", "unsat")
        if v in ("sat", "unsat"):
            if truth in ("sat", "unsat") and truth != v:
                per[net]["wrong"] += 1
                wrong_rows.append(r)
            else:
                per[net][v] += 1
                solved_t[net] += float(r["time_s"])
        else:
            per[net]["unsolved"] += 1
    tot = defaultdict(int)
    for d in per.values():
        for k, v in d.items():
            tot[k] += v
    solved = tot["sat"] + tot["unsat"]
    target = TARGETS.get(args.folder)
    shown = ["perturbkit"] + cmd[3:5] + ["--out", "results.csv"] + cmd[7:]
    lines = [f"Command: `{' '.join(shown)}` ({len(rows)} instances, wall {wall / 60:.1f} min, "
             f"peak RSS of any process {peak / 2**30:.2f} GB)", "",
             "| network | instances | solved (sat + unsat) | wrong | unsolved | time of the solved |",
             "| --- | --- | --- | --- | --- | --- |"]
    for net in sorted(per):
        d = per[net]
        lines.append(f"| {net} | {d['instances']} | {d['sat'] + d['unsat']} ({d['sat']} + {d['unsat']}) | "
                     f"{d['wrong']} | {d['unsolved']} | {solved_t[net]:.0f} s |")
    lines.append(f"| **all** | {len(rows)} | **{solved}** ({tot['sat']} + {tot['unsat']}) | {tot['wrong']} | "
                 f"{tot['unsolved']} | {sum(solved_t.values()):.0f} s |")
    lines.append("")
    checks = {"0 wrong": tot["wrong"] == 0, "peak memory < 8 GB": peak < 8 * 2**30}
    if target is not None:
        checks[f"solved >= {target} (alpha-beta-CROWN on GPU: {ABCROWN_GPU[args.folder]})"] = solved >= target
    lines += ["| target | holds |", "| --- | --- |"] + [f"| {k} | {'yes' if ok else '**NO**'} |" for k, ok in checks.items()]
    for r in wrong_rows:
        lines.append(f"WRONG: {r['onnx']} {r['vnnlib']} said {r['verdict']}")
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    tmp.cleanup()
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
