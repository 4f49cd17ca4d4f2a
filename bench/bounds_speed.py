"""Speed of perturbkit's bounds against auto_LiRPA's recorded times, and CROWN's peak memory.

    python bench/bounds_speed.py [--runs 30] [--markdown OUT.md]
                                 [--conv-family [--lirpa PATH --lirpa-python PYTHON]]

* probe_mlp / probe_cnn (../shared/benchmarks/lirpa_refs, or the copies in tests/data/lirpa):
  one thread, a few warm-up calls, then the median wall time of ``--runs`` calls of
  ``perturbkit.bounds`` (model loading excluded, as for auto_LiRPA's numbers, which were
  measured after building its module).  auto_LiRPA's times are the ones recorded in
  lirpa_refs/README.md on this kind of machine (auto_LiRPA 0.7.1 is not on PyPI to rerun).
  The bounds are checked against the reference bounds before timing.
* oval21_2022: peak resident memory (``ru_maxrss``) of a fresh process that loads each
  network and runs CROWN on the input box of one of its VNN-LIB properties (width 0.16 in
  these networks' normalised input space), and on wider Linf balls (eps 0.25 and 1.0)
  around the box centre, where far more neurons are unstable.
* ``--conv-family`` (issue 14): CROWN on the pooling, batch-norm and residual CNNs of
  bench/conv_models.py against auto_LiRPA run on the same inputs, cold call and warm
  median, one thread, three fresh processes per library (``bench/modern_bounds.py --family
  conv --methods crown``; auto_LiRPA 0.7.1 is built from its source, ``--lirpa`` and
  ``--lirpa-python`` say where).  With ``--markdown OUT.md`` its table goes to
  ``OUT_conv.md``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
import perturbkit as pk  # noqa: E402

SHARED = ROOT.parent / "shared" / "benchmarks"
REFS = SHARED / "lirpa_refs" if (SHARED / "lirpa_refs").exists() else ROOT / "tests" / "data" / "lirpa"
LIRPA_MS = {("probe_mlp", "ibp"): 1.9, ("probe_mlp", "crown"): 15.0, ("probe_mlp", "alpha-crown"): 880.0,
            ("probe_cnn", "ibp"): 3.6, ("probe_cnn", "crown"): 100.0, ("probe_cnn", "alpha-crown"): 9900.0}


def time_bounds(name: str, method: str, runs: int) -> tuple[float, float]:
    net = pk.load(REFS / f"{name}.onnx")
    d = np.load(REFS / f"{name}.npz")
    s = pk.sets.LpBall(torch.from_numpy(d["x"]), float(d["eps"]))
    key = {"ibp": "IBP", "crown": "CROWN"}.get(method)
    b = pk.bounds(net, s, method=method)
    if key:
        np.testing.assert_allclose(b.lower.numpy(), d[f"{key}_lower"], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(b.upper.numpy(), d[f"{key}_upper"], rtol=1e-4, atol=1e-5)
    if method == "alpha-crown":  # at least as tight as auto_LiRPA's alpha-CROWN
        gap_lo = float((b.lower.numpy() - d["alpha_CROWN_lower"]).min())
        gap_hi = float((d["alpha_CROWN_upper"] - b.upper.numpy()).min())
        print(f"{name} alpha-crown: min(lower - ref) = {gap_lo:.2e}, min(ref - upper) = {gap_hi:.2e}", file=sys.stderr)
    runs = max(3, runs // 10) if method == "alpha-crown" else runs
    for _ in range(1 if method == "alpha-crown" else 3):
        pk.bounds(net, s, method=method)
    ts = []
    for _ in range(runs):
        t = time.perf_counter()
        pk.bounds(net, s, method=method)
        ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1e3, min(ts) * 1e3


_MEM_CHILD = r"""
import json, re, resource, sys, time
import numpy as np, torch
sys.path.insert(0, sys.argv[1])
import perturbkit as pk
torch.set_num_threads(1)
net = pk.load(sys.argv[2])
text = open(sys.argv[3]).read()
n = net.n_inputs
lo = np.full(n, np.inf); hi = np.full(n, -np.inf)
for op, i, c in re.findall(r"\(\s*(<=|>=)\s+X_(\d+)\s+([-+0-9.eE]+)\s*\)", text):
    i, c = int(i), float(c)
    if op == ">=": lo[i] = min(lo[i], c)
    else: hi[i] = max(hi[i], c)
box = pk.sets.Box(torch.from_numpy(lo).float().reshape(1, *net.sample_shape),
                  torch.from_numpy(hi).float().reshape(1, *net.sample_shape))
eps = float(sys.argv[4])
if eps > 0:  # a wider Linf ball around the box centre: many more unstable neurons
    box = pk.sets.LpBall((box.lower + box.upper) / 2, eps)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
b = pk.bounds(net, box, method="crown")
dt = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"before_mb": before / 1024, "peak_mb": peak / 1024, "time_s": dt}))
"""


def crown_memory() -> list[dict]:
    rows = []
    folder = SHARED / "oval21_2022"
    if not folder.exists():
        return rows
    first = {}
    for line in (folder / "instances.csv").read_text().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 2:
            first.setdefault(parts[0], parts[1])
    for onnx_rel, vnn_rel in sorted(first.items()):
        for eps in (0.0, 0.25, 1.0):
            out = subprocess.run([sys.executable, "-c", _MEM_CHILD, str(ROOT / "src"), str(folder / onnx_rel),
                                  str(folder / vnn_rel), str(eps)], capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            r["network"] = Path(onnx_rel).name
            r["set"] = "VNN-LIB box" if eps == 0 else f"Linf ball eps {eps:g}"
            rows.append(r)
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--markdown", type=Path)
    ap.add_argument("--conv-family", action="store_true",
                    help="also CROWN on bench/conv_models.py against auto_LiRPA (bench/modern_bounds.py --family conv)")
    ap.add_argument("--lirpa", default=None, help="a folder holding the auto_LiRPA package (with --conv-family)")
    ap.add_argument("--lirpa-python", default=None, help="the Python that runs auto_LiRPA (with --conv-family)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    lines = ["| net | method | perturbkit median (min) | auto_LiRPA (recorded) | speed-up |",
             "| --- | --- | --- | --- | --- |"]
    for name in ["probe_mlp", "probe_cnn"]:
        for method in ["ibp", "crown", "crown-ibp", "alpha-crown"]:
            med, best = time_bounds(name, method, args.runs)
            ref = LIRPA_MS.get((name, method))
            ratio = f"{ref / med:.1f}x" if ref else "-"
            lines.append(f"| {name} | {method} | {med:.2f} ms ({best:.2f}) | {f'{ref:g} ms' if ref else '-'} | {ratio} |")
    lines += ["", "| oval21 network | input set | CROWN time | peak RSS | RSS before bounds |",
              "| --- | --- | --- | --- | --- |"]
    for r in crown_memory():
        lines.append(f"| {r['network']} | {r['set']} | {r['time_s']:.2f} s | {r['peak_mb']:.0f} MB | "
                     f"{r['before_mb']:.0f} MB |")
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    if args.conv_family:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import modern_bounds

        conv = ["--family", "conv", "--methods", "crown", "--runs", "3", "--rounds", "3"]
        conv += ["--lirpa", args.lirpa] if args.lirpa else []
        conv += ["--lirpa-python", args.lirpa_python] if args.lirpa_python else []
        if args.markdown:
            conv += ["--markdown", str(args.markdown.with_name(args.markdown.stem + "_conv.md"))]
        modern_bounds.main(conv)


if __name__ == "__main__":
    main()
