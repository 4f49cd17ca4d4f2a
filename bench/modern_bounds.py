"""Tightness and speed of perturbkit's bounds on Transformer-era networks, against auto_LiRPA.

    python bench/modern_bounds.py [--family modern|conv] [--models a,b,...] [--runs 5] [--markdown OUT.md]
                                  [--lirpa PATH --lirpa-python PYTHON]

(``--family conv``: the pooling, batch-norm and residual CNNs of bench/conv_models.py, issue 14.)

For every network of bench/modern_models.py (2-layer Transformer encoders, one attention layer
with either softmax form, LSTM and GRU sequence classifiers, a GELU/SiLU/ELU MLP, the bundled
digits Transformer) and every method (IBP, CROWN, alpha-CROWN), a fresh process (one thread)

* builds the model and its input (seeded), an Linf ball of the network's eps;
* perturbkit: ``perturbkit.load(module)`` (and the ONNX export, ``torch.onnx.export`` opset 17,
  for the "onnx" column: same bounds expected), then one cold ``perturbkit.bounds`` call and
  the median of ``--runs`` warm calls (model loading excluded);
* auto_LiRPA (optional oracle, when importable; ``--lirpa PATH`` puts PATH first on sys.path,
  ``--lirpa-python`` runs it in another environment, e.g. one with auto_LiRPA 0.7.1 built from
  its source, which PyPI does not offer):
  ``BoundedModule(model, x)``, then ``compute_bounds`` with IBP, CROWN, CROWN-Optimized
  (alpha-CROWN: 20 iterations, lr 0.5, its defaults for the rest); a failure is recorded with
  the first line of its message;
* reports the sum of the bound widths over the 10 logits, the times, and the peak resident
  memory of the process (``ru_maxrss``) after the bound computations.

Columns: ``width ratio`` = perturbkit's sum of widths / auto_LiRPA's (<= 1.001 is "at least as
tight"); times are the first (cold) call, the median and the best of ``--runs`` warm calls in
each of ``--rounds`` processes per library, the libraries alternating (alpha-CROWN: one call); ``speed-up`` = auto_LiRPA's best time / perturbkit's best time (the
best of several calls is the least disturbed by other load on the machine; auto_LiRPA's warm
calls are faster than its cold one, so this favours it).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
METHODS = {"ibp": "IBP", "crown": "CROWN", "alpha-crown": "CROWN-Optimized"}


#: model families: the module of bench/ whose build(name) and MODELS the benchmark uses
FAMILIES = {"modern": "modern_models", "conv": "conv_models"}


def _family(name: str):
    import importlib

    sys.path.insert(0, str(HERE))
    return importlib.import_module(FAMILIES[name])


def _child(lib: str, name: str, method: str, runs: int, family: str = "modern") -> dict:
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(ROOT / "src"))
    build = _family(family).build

    model, x, eps = build(name)
    out: dict = {"lib": lib, "model": name, "method": method}
    if lib.startswith("perturbkit"):
        import perturbkit as pk

        if lib == "perturbkit-onnx":
            import tempfile

            path = Path(tempfile.mkdtemp()) / f"{name}.onnx"
            with torch.enable_grad():
                torch.onnx.export(model, (x,), str(path), opset_version=17, dynamo=False)
            net = pk.load(path)
        else:
            net = pk.load(model, example_input=x)
        ball = pk.sets.LpBall(x, eps)

        def run():
            return pk.bounds(net, ball, method=method)
    else:
        from auto_LiRPA import BoundedModule, BoundedTensor, PerturbationLpNorm

        try:
            bm = BoundedModule(model, torch.zeros_like(x), device="cpu", verbose=0)
        except Exception as e:  # noqa: BLE001 - the peer's failure is a result
            return {**out, "error": f"BoundedModule: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:300]}
        bx = BoundedTensor(x, PerturbationLpNorm(norm=float("inf"), eps=eps))
        if method == "alpha-crown":
            bm.set_bound_opts({"optimize_bound_args": {"iteration": 20, "lr_alpha": 0.5}})

        def run():
            lb, ub = bm.compute_bounds(x=(bx,), method=METHODS[method])

            class B:
                lower, upper = lb.detach(), ub.detach()
            return B
    try:
        t = time.perf_counter()
        b = run()
        out["cold_s"] = time.perf_counter() - t
        warm = []
        for _ in range(0 if method == "alpha-crown" else runs):
            t = time.perf_counter()
            run()
            warm.append(time.perf_counter() - t)
        out["warm_s"] = statistics.median(warm) if warm else out["cold_s"]
        out["best_s"] = min(warm) if warm else out["cold_s"]
        out["warm_all"] = warm
    except Exception as e:  # noqa: BLE001
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return {**out, "error": f"{type(e).__name__}: {msg}"[:300]}
    with torch.no_grad():
        y = model(x)
    out["width"] = float((b.upper - b.lower).sum())
    out["sound_at_centre"] = bool((b.lower <= y + 1e-5).all() and (y <= b.upper + 1e-5).all())
    out["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def _spawn(lib: str, name: str, method: str, runs: int, lirpa: str | None, lirpa_python: str | None,
           family: str = "modern") -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    python = sys.executable
    if lib == "auto_LiRPA":
        if lirpa:
            env["PYTHONPATH"] = lirpa + os.pathsep + env.get("PYTHONPATH", "")
        python = lirpa_python or python
    p = subprocess.run([python, __file__, "--family", family, "--child", lib, name, method, str(runs)],
                       capture_output=True, text=True, env=env)
    lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
    if p.returncode != 0 or not lines:
        err = (p.stderr.strip().splitlines() or ["no output"])[-1]
        return {"lib": lib, "model": name, "method": method, "error": f"process failed: {err}"[:300]}
    res = json.loads(lines[-1])
    # auto_LiRPA logs the operators it refuses before raising: name them in the error
    ops = sorted(set(re.findall(r"Name: (\S+), Attr", p.stdout + p.stderr)))
    if "error" in res and ops:
        res["error"] += f" (it printed: unsupported {', '.join(ops)})"
    return res


def _lirpa_available(lirpa: str | None, lirpa_python: str | None) -> bool:
    env = dict(os.environ)
    if lirpa:
        env["PYTHONPATH"] = lirpa + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([lirpa_python or sys.executable, "-c", "import auto_LiRPA"], env=env,
                          capture_output=True).returncode == 0


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", default="modern", choices=list(FAMILIES),
                    help="modern: bench/modern_models.py (Transformers, RNNs); conv: bench/conv_models.py "
                         "(pooling, batch norm, residual CNNs; issue 14)")
    ap.add_argument("--models", default=None, help="comma-separated names (default: all)")
    ap.add_argument("--methods", default="ibp,crown,alpha-crown")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3, help="processes per library, alternating (IBP, CROWN)")
    ap.add_argument("--markdown", type=Path)
    ap.add_argument("--lirpa", default=None, help="a folder holding the auto_LiRPA package (put first on sys.path)")
    ap.add_argument("--lirpa-python", default=None, help="the Python that runs auto_LiRPA (default: this one)")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        lib, name, method, runs = args.child
        print(json.dumps(_child(lib, name, method, int(runs), args.family)))
        return
    MODELS = _family(args.family).MODELS

    names = args.models.split(",") if args.models else list(MODELS)
    methods = args.methods.split(",")
    libs = ["perturbkit", "perturbkit-onnx"] + (["auto_LiRPA"] if _lirpa_available(args.lirpa, args.lirpa_python) else [])
    rows = []
    for name in names:
        for method in methods:
            rounds = 1 if method == "alpha-crown" else args.rounds
            got: dict = {lib: [] for lib in libs}
            for _ in range(rounds):  # the libraries alternate: slow spells of the machine hit both
                for lib in libs:
                    if not any("error" in r for r in got[lib]):
                        got[lib].append(_spawn(lib, name, method, args.runs, args.lirpa, args.lirpa_python,
                                               args.family))
            res = {lib: _merge(got[lib]) for lib in libs}
            rows.append((name, method, res))
            print(json.dumps(res), file=sys.stderr)
            if args.markdown:  # after every row: an interrupted run keeps what it finished
                args.markdown.write_text(_table(rows) + "\n")
    print(_table(rows))


def _merge(results: list) -> dict:
    """One library's rounds as one result: the best cold call (the first call of each fresh
    process), median and best of all warm calls."""
    bad = [r for r in results if "error" in r]
    if bad:
        return bad[0]
    out = dict(results[0])
    out["cold_all"] = [r["cold_s"] for r in results]
    out["cold_s"] = min(out["cold_all"])
    warm = [t for r in results for t in r.get("warm_all", [])]
    if warm:
        out["warm_s"], out["best_s"] = statistics.median(warm), min(warm)
    out["peak_mb"] = max(r["peak_mb"] for r in results)
    out["rounds"] = len(results)
    return out


def _times(r: dict) -> str:
    if "error" in r:
        return "error"
    if r["best_s"] == r["cold_s"]:  # a single run
        return f"{r['cold_s']:.1f} s" if r["cold_s"] > 10 else f"{r['cold_s'] * 1e3:.0f} ms"
    return f"{r['cold_s'] * 1e3:.1f} / {r['warm_s'] * 1e3:.1f} / {r['best_s'] * 1e3:.1f} ms"


def _table(rows: list) -> str:
    lines = ["| network | method | perturbkit width | onnx width | auto_LiRPA width | width ratio | perturbkit cold / median / best | "
             "auto_LiRPA cold / median / best | speed-up cold (best) | peak RSS pk / LiRPA |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]

    def cell(r, key, fmt):
        return "error" if "error" in r else fmt.format(r[key])

    notes = []
    for name, method, res in rows:
        pk_, onx = res["perturbkit"], res["perturbkit-onnx"]
        li = res.get("auto_LiRPA", {"error": "not installed"})
        ratio = speed = "-"
        if "error" not in pk_ and "error" not in li:
            ratio = f"{pk_['width'] / li['width']:.4f}" if li["width"] > 0 else "-"
            speed = f"{li['cold_s'] / pk_['cold_s']:.1f}x ({li['best_s'] / pk_['best_s']:.1f}x)"
        for lib, r in res.items():
            if "error" in r:
                notes.append(f"- {lib} on {name} ({method}): {r['error']}")
        lines.append(f"| {name} | {method} | {cell(pk_, 'width', '{:.5g}')} | {cell(onx, 'width', '{:.5g}')} | "
                     f"{cell(li, 'width', '{:.5g}')} | {ratio} | "
                     + _times(pk_) + " | " + _times(li) + " | "
                     + f"{speed} | " + ("-" if "error" in pk_ else f"{pk_['peak_mb']:.0f} MB") + " / "
                     + ("-" if "error" in li else f"{li['peak_mb']:.0f} MB") + " |")
    return "\n".join(lines + ([""] + notes if notes else []))


if __name__ == "__main__":
    main()
