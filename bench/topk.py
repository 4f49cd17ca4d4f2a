"""Ordered top-K attacks: QuadAttacK-style ("quad") against the hinge-loss baseline ("naive").

    python bench/topk.py [--model digits-cnn] [--eps 0.3] [--steps 100] [--n 450] [--ks 1-9] [--travel 2.5]

For each K: random ordered targets (``random_targets``, seed 0, the same for both methods;
K distinct classes, none the label, so K <= 9 with 10 classes), the first ``--n`` images of
the bundled digits test split, a Linf threat model of radius ``--eps`` on [0, 1], and the
same budget for both methods (``--steps`` forward+backward passes, the same step sizes,
start at x, early stopping).  Reports the success rate (top-K of the re-evaluated logits
equal to the targets in order), the median Linf and L2 norms of the successful
perturbations, the wall time, and, for two methods, the median L2 norms on the points both
succeed on, as a markdown table.  One thread.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
import perturbkit as pk  # noqa: E402
import perturbkit.models  # noqa: E402
from perturbkit.attacks.base import ThreatModel  # noqa: E402
from perturbkit.attacks.norms import lp_norm  # noqa: E402
from perturbkit.attacks.topk import OrderedTopK, random_targets  # noqa: E402


def parse_ks(s: str) -> list[int]:
    if "-" in s:
        a, b = s.split("-")
        return list(range(int(a), int(b) + 1))
    return [int(v) for v in s.split(",")]


def table_row(net, x, y, threat, k: int, travel: float, methods: list[str], steps: int, seed: int,
              show_travel: bool) -> str:
    """One markdown row: K (and travel), then per method success, median norms, time."""
    t = random_targets(y, k, 10, torch.Generator().manual_seed(seed))
    cells = [str(k)] + ([f"{travel:g}"] if show_travel else [])
    found = []
    for m in methods:
        atk = OrderedTopK(threat, k=k, steps=steps, method=m, travel=travel, seed=seed)
        t0 = time.perf_counter()
        r = atk.attack(net, x, y, t)
        dt = time.perf_counter() - t0
        ok = r.success
        d = r.x_adv - x
        linf = lp_norm(d[ok], float("inf")).median().item() if ok.any() else float("nan")
        l2 = lp_norm(d[ok], 2).median().item() if ok.any() else float("nan")
        cells += [f"{100 * ok.float().mean().item():.1f} %", f"{linf:.3f}", f"{l2:.3f}", f"{dt:.1f}"]
        found.append((ok, lp_norm(d, 2)))
    if len(found) == 2:
        both = found[0][0] & found[1][0]
        cells.append(" / ".join(f"{n[both].median().item():.3f}" for _, n in found) if both.any() else "-")
    return "| " + " | ".join(cells) + " |"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="digits-cnn")
    ap.add_argument("--eps", type=float, default=0.3)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--n", type=int, default=450)
    ap.add_argument("--ks", default="1-9")
    ap.add_argument("--methods", default="quad,naive")
    ap.add_argument("--travel", default="2.5",
                    help="sum of the step sizes, in eps (a comma-separated list: one block of rows each)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    net = pk.load(str(pk.models.bundled_path(a.model)))
    xs, ys = pk.models.load_digits_test()
    x, y = torch.from_numpy(xs[:a.n]), torch.from_numpy(ys[:a.n])
    threat = ThreatModel(eps=a.eps, norm="inf", domain=(0.0, 1.0))
    methods = a.methods.split(",")
    travels = [float(v) for v in a.travel.split(",")]
    cmd = " ".join(["python bench/topk.py", *(argv if argv is not None else sys.argv[1:])])
    print(f"`{cmd}`\n")
    print(f"model {a.model}, {x.shape[0]} test images, Linf eps {a.eps}, {a.steps} steps (step sizes adding up "
          f"to {a.travel} eps), seed {a.seed}\n")
    head = ["K"] + (["travel"] if len(travels) > 1 else [])
    for m in methods:
        head += [f"{m} success", f"{m} median Linf", f"{m} median L2", f"{m} time (s)"]
    if len(methods) == 2:
        head.append("median L2 where both succeed (" + " / ".join(methods) + ")")
    print("| " + " | ".join(head) + " |")
    print("|" + " --- |" * len(head))
    for travel in travels:
        for k in parse_ks(a.ks):
            print(table_row(net, x, y, threat, k, travel, methods, a.steps, a.seed, len(travels) > 1), flush=True)


if __name__ == "__main__":
    main()
