"""``perturbkit smooth certify|predict``: randomized smoothing on a labelled data set.

Arguments become a frozen :class:`SmoothCmdConfig`; :func:`validate` checks the numbers and
paths before anything is loaded (sigma > 0, n0 and n >= 1, alpha in (0, 1)); the command
loads the model (and the optional denoiser) and the data as ``perturbkit attack`` does, runs
CERTIFY or PREDICT (:mod:`perturbkit.smoothing`) and prints certified accuracy at a few radii.

``--out`` is the per-point TSV of Cohen et al.'s scripts (certify: ``idx label predict radius
correct time``; predict: ``idx label predict correct time``), appended and flushed point by
point so an interrupted run keeps what it finished; ``--resume`` continues it (the points
already in it are skipped).  ``--json`` (written atomically at the end) holds the settings, the
summary (certified accuracy table, curve, abstentions, the largest certifiable radius) and the
per-point records.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional


from perturbkit.cli._attack_common import _check_outputs
from perturbkit.errors import InputError

RADII = (0.0, 0.25, 0.5, 0.75, 1.0)


@dataclass(frozen=True)
class SmoothCmdConfig:
    action: str  # "certify" or "predict"
    model: str
    data: str
    sigma: float
    n0: int = 100
    n: int = 100_000
    alpha: float = 0.001
    out: Optional[str] = None
    json_out: Optional[str] = None
    plot: Optional[str] = None
    denoiser: Optional[str] = None
    batch_size: Optional[int] = None
    seed: int = 0
    max_points: Optional[int] = None
    skip: int = 1
    shape: Optional[tuple[int, ...]] = None
    resume: bool = False
    radii: tuple[float, ...] = RADII
    progress: bool = True


def validate(cfg: SmoothCmdConfig) -> None:
    if not (math.isfinite(cfg.sigma) and cfg.sigma > 0):
        raise InputError(f"--sigma must be a finite number > 0, got {cfg.sigma:g}")
    for flag, v in (("--n0", cfg.n0), ("--n", cfg.n), ("--batch-size", cfg.batch_size), ("--max", cfg.max_points),
                    ("--skip", cfg.skip)):
        if v is not None and v < 1:
            raise InputError(f"{flag} must be >= 1, got {v}")
    if not (0.0 < cfg.alpha < 1.0):
        raise InputError(f"--alpha must be in (0, 1), got {cfg.alpha:g}")
    if any(not (math.isfinite(r) and r >= 0) for r in cfg.radii) or not cfg.radii:
        raise InputError(f"--radii must be finite numbers >= 0, got {','.join(f'{r:g}' for r in cfg.radii)}")
    if cfg.shape is not None and any(d < 1 for d in cfg.shape):
        raise InputError(f"--shape must be positive sizes, got {cfg.shape}")
    if cfg.resume and not cfg.out:
        raise InputError("--resume needs --out (the TSV to continue)")
    if cfg.plot and cfg.action != "certify":
        raise InputError("--plot draws the certified accuracy curve: only for 'smooth certify'")
    _check_outputs([("--out", cfg.out), ("--json", cfg.json_out), ("--plot", cfg.plot)])


def _header(action: str) -> str:
    from perturbkit.smoothing.evaluate import PREDICT_TSV_HEADER, TSV_HEADER

    return TSV_HEADER if action == "certify" else PREDICT_TSV_HEADER


def _done_rows(path: str, action: str) -> dict[int, list[str]]:
    """The rows of an earlier run of the TSV at ``path``, by idx (for --resume)."""
    if not os.path.exists(path):
        return {}
    rows: dict[int, list[str]] = {}
    with open(path, encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    if not lines:
        return {}
    if lines[0] != _header(action):
        raise InputError(f"--resume: {path}:1 is not the header of a '{action}' TSV ({_header(action)!r})")
    width = len(_header(action).split("\t"))
    for lineno, line in enumerate(lines[1:], 2):
        parts = line.split("\t")
        if len(parts) != width:
            if lineno == len(lines):  # a last line cut by an interruption: redo that point
                break
            raise InputError(f"--resume: {path}:{lineno}: {len(parts)} columns, expected {width}")
        try:
            rows[int(parts[0])] = parts
        except ValueError:
            raise InputError(f"--resume: {path}:{lineno}: idx {parts[0]!r} is not an integer") from None
    return rows


def _seconds(text: str) -> float:
    h, m, s = text.split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


def command(cfg: SmoothCmdConfig) -> int:
    validate(cfg)
    import torch

    from perturbkit.cli._attack_common import _labelled, _load_net
    from perturbkit.smoothing import Smooth

    net = _load_net(cfg.model)
    x, y, n_classes, _ = _labelled(net, cfg.model, cfg.data, shape=cfg.shape, n=cfg.max_points, domain=None)
    denoiser = None
    if cfg.denoiser:
        denoiser = _load_net(cfg.denoiser)
        with torch.no_grad():
            out = denoiser(torch.from_numpy(x[:1]))
        if tuple(out.shape[1:]) != tuple(x.shape[1:]):
            raise InputError(f"denoiser {cfg.denoiser} maps inputs {tuple(x.shape[1:])} to {tuple(out.shape[1:])}; "
                             f"it must return the input's shape")
    idx = list(range(0, x.shape[0], cfg.skip))
    done = _done_rows(cfg.out, cfg.action) if (cfg.resume and cfg.out) else {}
    todo = [i for i in idx if i not in done]
    smooth = Smooth(net, cfg.sigma, n_classes, denoiser=denoiser)
    fh = None
    if cfg.out:
        keep = [done[i] for i in idx if i in done]
        fh = open(cfg.out, "w", encoding="utf-8")
        fh.write(_header(cfg.action) + "\n")
        for parts in keep:
            fh.write("\t".join(parts) + "\n")
        fh.flush()
    t0 = time.perf_counter()
    try:
        if cfg.action == "certify":
            records = _certify(cfg, smooth, x, y, todo, fh)
        else:
            records = _predict(cfg, smooth, x, y, todo, fh)
    finally:
        if fh is not None:
            fh.close()
    took = time.perf_counter() - t0
    records = sorted(_resumed(done, idx, cfg.action) + records, key=lambda r: r["idx"])
    record = _record(cfg, records, took, len(todo))
    if cfg.json_out:
        from perturbkit.cli.io import write_json_atomic

        write_json_atomic(cfg.json_out, record)
    if cfg.plot and records:
        from perturbkit.cli.io import write_text_checked
        from perturbkit.smoothing.evaluate import CertifyRecord, curve_svg

        rows = [CertifyRecord(r["idx"], r["label"], r["predict"], r["radius"], r["correct"], r["time_s"], -1, 0.0)
                for r in records]
        write_text_checked(cfg.plot, curve_svg(rows, sigma=cfg.sigma, title=f"{cfg.model}: certified accuracy"))
    print(format_summary(cfg, record))
    return 0


def _resumed(done: dict[int, list[str]], idx: list[int], action: str) -> list[dict]:
    out = []
    for i in idx:
        if i not in done:
            continue
        p = done[i]
        try:
            if action == "certify":
                out.append({"idx": i, "label": int(p[1]), "predict": int(p[2]), "radius": float(p[3]),
                            "correct": p[4] == "1", "time_s": _seconds(p[5])})
            else:
                out.append({"idx": i, "label": int(p[1]), "predict": int(p[2]), "correct": p[3] == "1",
                            "time_s": _seconds(p[4])})
        except (ValueError, IndexError):
            raise InputError(f"--resume: the row of idx {i} is not a '{action}' row") from None
    return out


def _certify(cfg, smooth, x, y, todo, fh) -> list[dict]:
    import torch

    from perturbkit.smoothing.evaluate import CertifyConfig, certify_dataset, format_tsv_row

    def write(r):
        if fh is not None:
            fh.write(format_tsv_row(r) + "\n")
            fh.flush()

    if not todo:
        return []
    recs = certify_dataset(smooth, torch.from_numpy(x[todo]), y[todo],
                           CertifyConfig(n0=cfg.n0, n=cfg.n, alpha=cfg.alpha, batch_size=cfg.batch_size, seed=cfg.seed),
                           indices=todo, on_record=write, progress=cfg.progress)
    return [r.to_json() for r in recs]


def _predict(cfg, smooth, x, y, todo, fh) -> list[dict]:
    import torch

    from perturbkit.smoothing.evaluate import format_predict_row, predict_dataset

    def write(r):
        if fh is not None:
            fh.write(format_predict_row(r) + "\n")
            fh.flush()

    if not todo:
        return []
    recs = predict_dataset(smooth, torch.from_numpy(x[todo]), y[todo], n=cfg.n, alpha=cfg.alpha,
                           batch_size=cfg.batch_size, seed=cfg.seed, indices=todo, on_record=write,
                           progress=cfg.progress)
    return [r.to_json() for r in recs]


def _record(cfg: SmoothCmdConfig, records: list[dict], took: float, new: int) -> dict:
    from perturbkit.smoothing.stats import max_certifiable_radius

    n_pts = len(records)
    rec = {"action": cfg.action, "model": cfg.model, "data": cfg.data, "denoiser": cfg.denoiser, "sigma": cfg.sigma,
           "n": cfg.n, "alpha": cfg.alpha, "seed": cfg.seed, "points": n_pts,
           "abstained": sum(1 for r in records if r["predict"] == -1),
           "accuracy": (sum(1 for r in records if r["correct"]) / n_pts) if n_pts else None,
           "time_s": took, "points_per_s": (new / took) if new and took > 0 else None}
    if cfg.action == "certify":
        from perturbkit.smoothing.evaluate import CertifyRecord, accuracy_curve, certified_accuracy

        rows = [CertifyRecord(r["idx"], r["label"], r["predict"], r["radius"], r["correct"], r["time_s"],
                              r.get("n_a", -1), r.get("p_a_lower", float("nan"))) for r in records]
        rec["n0"] = cfg.n0
        rec["max_certifiable_radius"] = max_certifiable_radius(cfg.sigma, cfg.n, cfg.alpha)
        rec["certified_accuracy"] = [{"radius": r, "accuracy": a} for r, a in zip(cfg.radii, certified_accuracy(rows, cfg.radii))]
        rec["curve"] = [[r, a] for r, a in accuracy_curve(rows)]
        for r in records:  # JSON has no NaN: the resumed rows have no n_a / p_a_lower
            if "p_a_lower" in r and not math.isfinite(r["p_a_lower"]):
                r["p_a_lower"] = None
    rec["records"] = records
    return rec


def format_summary(cfg: SmoothCmdConfig, rec: dict) -> str:
    pts = rec["points"]
    speed = f", {rec['points_per_s']:.2f} points/s" if rec["points_per_s"] else ""
    lines = [f"{cfg.action}: {pts} points of {cfg.data}, model {cfg.model}"
             + (f" behind denoiser {cfg.denoiser}" if cfg.denoiser else "")
             + f", sigma {cfg.sigma:g}, n {cfg.n}" + (f", n0 {cfg.n0}" if cfg.action == "certify" else "")
             + f", alpha {cfg.alpha:g}",
             f"time {rec['time_s']:.2f} s{speed}; abstained on {rec['abstained']} of {pts}"]
    if cfg.action == "certify":
        lines.append(f"largest radius {cfg.n} samples can certify: {rec['max_certifiable_radius']:.4f}")
        lines.append("radius   certified accuracy")
        for row in rec["certified_accuracy"]:
            lines.append(f"{row['radius']:<8g} {row['accuracy']:.4f}")
    else:
        acc = rec["accuracy"]
        lines.append(f"accuracy of the smoothed classifier (abstentions wrong): {acc:.4f}" if acc is not None else "")
    if cfg.out:
        lines.append(f"per-point rows: {Path(cfg.out)}")
    if cfg.plot and pts:
        lines.append(f"curve: {Path(cfg.plot)}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- argparse

def add_parser(sub) -> None:
    """Register ``perturbkit smooth {certify,predict}`` on the subparsers ``sub``."""
    s = sub.add_parser("smooth", help="randomized smoothing: certified L2 radii (CERTIFY) or predictions (PREDICT)",
                       description="Randomized smoothing (Cohen et al. 2019) of MODEL under N(0, sigma^2) input noise "
                                   "on labelled data.")
    ss = s.add_subparsers(dest="smooth_action", metavar="{certify,predict}")
    for action, helptext in (("certify", "certified L2 radius of every point (CERTIFY)"),
                             ("predict", "the smoothed classifier's prediction of every point (PREDICT)")):
        p = ss.add_parser(action, help=helptext, description=helptext)
        p.add_argument("model", metavar="MODEL", help="an .onnx file or a bundled model name (e.g. digits-cnn-noise)")
        p.add_argument("--data", required=True, metavar="DATA",
                       help="an .npz with x and y, a CSV of label + pixels 0-255 (with --shape), or a bundled data "
                            "set name (digits)")
        p.add_argument("--sigma", required=True, type=float, metavar="S", help="noise standard deviation (> 0)")
        if action == "certify":
            p.add_argument("--n0", type=int, default=100, metavar="N0", help="selection samples (default: 100)")
        p.add_argument("--n", type=int, default=100_000, metavar="N",
                       help="estimation samples (default: 100000)")
        p.add_argument("--alpha", type=float, default=0.001, metavar="A", help="failure probability (default: 0.001)")
        p.add_argument("--out", default=None, metavar="OUT.tsv",
                       help="per-point TSV, written point by point (columns as Cohen et al.'s scripts)")
        p.add_argument("--resume", action="store_true", help="continue --out: skip the points already in it")
        p.add_argument("--json", dest="json_out", default=None, metavar="OUT", help="write the JSON record to OUT")
        if action == "certify":
            p.add_argument("--plot", default=None, metavar="OUT.svg",
                           help="draw certified accuracy vs radius as an SVG chart")
        p.add_argument("--denoiser", default=None, metavar="MODEL",
                       help="an .onnx denoiser applied to the noisy input before MODEL (denoised smoothing)")
        p.add_argument("--batch-size", type=int, default=None, metavar="B",
                       help="noisy samples per forward pass (default: memory-bounded, from the widest layer)")
        p.add_argument("--seed", type=int, default=0, metavar="S", help="seeds the noise (default: 0)")
        p.add_argument("--max", dest="max_points", type=int, default=None, metavar="N", help="only the first N points")
        p.add_argument("--skip", type=int, default=1, metavar="K", help="every K-th point (default: 1)")
        p.add_argument("--shape", default=None, metavar="D,D,...",
                       help="sample shape of CSV data as stored, e.g. 28,28 or 32,32,3")
        if action == "certify":
            p.add_argument("--radii", default=",".join(f"{r:g}" for r in RADII), metavar="R,R,...",
                           help="radii of the certified accuracy table (default: 0,0.25,0.5,0.75,1)")
        p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar on stderr")
        p.set_defaults(handler=_handler)


def _handler(args) -> int:
    from perturbkit.cli.main import _floats, _ints

    radii = _floats("--radii", args.radii) if getattr(args, "radii", None) else RADII
    shape = _ints("--shape", args.shape) if args.shape else None
    return command(SmoothCmdConfig(action=args.smooth_action, model=args.model, data=args.data, sigma=args.sigma,
                                   n0=getattr(args, "n0", 100), n=args.n, alpha=args.alpha, out=args.out,
                                   json_out=args.json_out, plot=getattr(args, "plot", None), denoiser=args.denoiser, batch_size=args.batch_size,
                                   seed=args.seed, max_points=args.max_points, skip=args.skip, shape=shape,
                                   resume=args.resume, radii=radii, progress=args.progress))
