"""``perturbkit report MODEL [MODEL ...] --data DATA``: the robustness report, ``DIR/report.html``
(self-contained) and ``DIR/report.json`` (schema ``perturbkit.report`` version 1, see
``src/perturbkit/report/schema.json``).

Everything that can be checked is checked before any work (the models load, the data fits
every model, the eps grid is non-empty and finite, the budget exists, the folder can be
written); the two files are written atomically at the end, so a failed or interrupted run
leaves no half-written report.  Finished sections are kept in ``DIR/.state``: ``--resume``
continues an interrupted report.  Exit status 0 on success, 2 on bad input, 3 when the
report shows a consistency error (certified points broken by an attack).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from perturbkit.errors import InputError


@dataclass(frozen=True)
class ReportCmdConfig:
    models: tuple[str, ...]
    data: str
    out: str = "perturbkit-report"
    norm: str = "inf"
    eps_grid: Optional[tuple[float, ...]] = None
    budget: str = "fast"
    sigma: float = 0.25
    seed: int = 0
    resume: bool = False
    progress: bool = True
    points: Optional[int] = None
    names: Optional[tuple[str, ...]] = None


def command(cfg: ReportCmdConfig) -> int:
    from perturbkit.report.build import ReportConfig, report, validate

    rc = ReportConfig(norm=cfg.norm, eps_grid=cfg.eps_grid, budget=cfg.budget, sigma=cfg.sigma, seed=cfg.seed,
                      points=cfg.points)
    validate(rc)
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file, expected a folder")
    if not out.parent.is_dir():
        raise InputError(f"--out {out}: folder {out.parent} does not exist")
    rep = report(list(cfg.models), cfg.data, config=rc, out_dir=str(out), resume=cfg.resume, progress=cfg.progress,
                 names=cfg.names)
    out.mkdir(exist_ok=True)
    rep.to_json(out / "report.json")
    rep.to_html(out / "report.html")
    print(format_summary(rep.record, out))
    return 3 if rep.errors else 0


def format_summary(rec: dict, out: Path) -> str:
    st = rec["settings"]
    grid = st["eps_grid"]
    nz = [k for k, e in enumerate(grid) if e > 0]
    mid = nz[len(nz) // 2] if nz else 0
    lines = [f"robustness report: {len(rec['models'])} model(s) on {st['data']} ({st['points']} points), "
             f"L{st['norm']}, budget {st['budget']['name']}, {rec['time_s']:.0f} s",
             f"{'model':<22} {'clean':>7} {'certified':>10} {'empirical':>10} {'smoothed':>9}   (at eps {grid[mid]:g}; "
             f"smoothed: L2 0.25)"]
    for m in rec["models"]:
        sm = dict(zip(m["smoothing"]["radii"], m["smoothing"]["certified_accuracy"]))
        lines.append(f"{m['name']:<22} {m['clean_accuracy']:>7.3f} {m['best_certified'][mid]:>10.3f} "
                     f"{m['best_empirical'][mid]:>10.3f} {sm.get(0.25, float('nan')):>9.3f}")
        for v in m["consistency"]["violations"]:
            lines.append(f"  ERROR: at eps {v['eps']:g} points certified by {v['certified_by']} were broken by "
                         f"{v['broken_by']}: {v['points'][:10]}")
    if rec.get("rating"):
        lines.append(f"most robust overall: {rec['rating']['order'][0]}")
    lines.append(f"page: {(out / 'report.html').resolve()}")
    lines.append(f"record: {(out / 'report.json').resolve()}")
    return "\n".join(lines)


def add_parser(sub) -> None:
    r = sub.add_parser("report", help="the robustness report: one HTML page and one JSON record",
                       description="Measure how robust each MODEL is on DATA (certified beside empirical robust "
                                   "accuracy, the power law of adversarial error, randomized smoothing, noise, "
                                   "blur, Fourier heat maps, saliency) and write DIR/report.html and DIR/report.json.")
    r.add_argument("models", nargs="+", metavar="MODEL", help=".onnx files or bundled model names")
    r.add_argument("--data", required=True, metavar="DATA",
                   help="an .npz with x and y, a CSV of label + pixels 0-255, or a bundled data set name (digits)")
    r.add_argument("--norm", default="inf", choices=["inf", "2", "1"], help="threat model norm (default: inf)")
    r.add_argument("--eps-grid", default=None, metavar="E,E,...",
                   help="radii (default per norm; inf: 0,0.005,0.01,0.02,0.05,0.1,0.2)")
    r.add_argument("--out", default="perturbkit-report", metavar="DIR", help="output folder (default: perturbkit-report)")
    r.add_argument("--budget", default="fast", choices=["fast", "standard", "thorough"],
                   help="points, attacks and samples (default: fast)")
    r.add_argument("--points", type=int, default=None, metavar="N",
                   help="use the first N points (default: the budget's: fast 40, standard 200, thorough all)")
    r.add_argument("--sigma", type=float, default=0.25, metavar="S", help="randomized smoothing noise (default: 0.25)")
    r.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default: 0)")
    r.add_argument("--resume", action="store_true", help="continue an interrupted report in DIR")
    r.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar on stderr")
    r.set_defaults(handler=_handler)


def _handler(args) -> int:
    from perturbkit.cli.main import UsageError

    grid = None
    if args.eps_grid is not None:
        try:
            grid = tuple(float(v) for v in args.eps_grid.split(",") if v.strip())
        except ValueError:
            raise UsageError(f"--eps-grid must be comma-separated numbers, got {args.eps_grid!r}") from None
        if not grid:
            raise InputError("--eps-grid is empty: give at least one radius")
        if any(not math.isfinite(e) for e in grid):
            raise InputError(f"--eps-grid must be finite numbers, got {args.eps_grid}")
    return command(ReportCmdConfig(models=tuple(args.models), data=args.data, out=args.out, norm=args.norm,
                                   eps_grid=grid, budget=args.budget, sigma=args.sigma, seed=args.seed,
                                   resume=args.resume, progress=args.progress, points=args.points))
