"""``perturbkit conformal``: conformal prediction sets on labelled data, standard and robust.

``perturbkit conformal MODEL --data DATA --alpha 0.1 [--score aps] [--robust-eps E [--ptt]]``
splits DATA (seeded) into calibration and test points (and a holdout set for PTT), runs
:func:`perturbkit.conformal.run_conformal` and prints coverage and average set size of each
method on clean test points and under a PGD attack on its score.  ``--json`` (atomic, only on
success) holds the configuration, the split sizes and every number printed.  Bad input (alpha
outside (0, 1), a calibration set too small for alpha, 2 beta >= alpha, ...) is one line and
exit status 2.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

from perturbkit.cli._attack_common import _check_outputs


@dataclass(frozen=True)
class ConformalCmdConfig:
    model: str
    data: str
    settings: object  # perturbkit.conformal.ConformalConfig
    json_out: Optional[str] = None
    max_points: Optional[int] = None
    shape: Optional[tuple[int, ...]] = None
    progress: bool = True


def command(cfg: ConformalCmdConfig) -> int:
    import torch

    from perturbkit.cli._attack_common import _labelled, _load_net
    from perturbkit.conformal.evaluate import run_conformal, split_indices, validate
    from perturbkit.errors import InputError

    validate(cfg.settings)
    if cfg.max_points is not None and cfg.max_points < 1:
        raise InputError(f"--max must be >= 1, got {cfg.max_points}")
    _check_outputs([("--json", cfg.json_out)])
    net = _load_net(cfg.model)
    x, y, _, _ = _labelled(net, cfg.model, cfg.data, shape=cfg.shape, n=cfg.max_points, domain=cfg.settings.domain)
    split_indices(x.shape[0], cfg.settings)  # "calibration set too small" before any work
    rec = run_conformal(net, torch.from_numpy(x), y, cfg.settings, progress=cfg.progress)
    rec = {"model": cfg.model, "data": cfg.data, **rec}
    if cfg.json_out:
        from perturbkit.cli.io import write_json_atomic

        write_json_atomic(cfg.json_out, rec)
    print(format_summary(rec))
    return 0


def format_summary(rec: dict) -> str:
    c, p = rec["config"], rec["points"]
    lines = [f"conformal: {rec['model']} on {rec['data']}, score {c['score']}, alpha {c['alpha']:g}; "
             f"{p['calibration']} calibration, {p['test']} test" + (f", {p['holdout']} holdout (PTT)" if p["holdout"] else "")
             + " points"]
    if c["robust_eps"] is not None:
        lines.append(f"RSCP+: sigma {c['sigma']:g}, n_s {c['n_s']}, beta {c['beta']:g}, robust to L2 eps "
                     f"{c['robust_eps']:g}; attack: PGD-{c['attack_steps']} at L2 {rec['attack_eps']:g}")
    attacked = rec["attack_eps"] is not None
    head = f"{'method':<10} {'coverage':>9} {'avg size':>9}" + (f" {'attacked cov':>13} {'attacked size':>14}" if attacked else "")
    lines.append(head)
    for name, m in rec["methods"].items():
        row = f"{name:<10} {m['coverage']:>9.4f} {m['average_size']:>9.3f}"
        if attacked:
            row += f" {m['attacked_coverage']:>13.4f} {m['attacked_average_size']:>14.3f}"
        lines.append(row)
    for name, m in rec["methods"].items():
        lines.append(f"  {name}: {m['guarantee']}")
    lines.append(f"time {rec['time_s']:.1f} s")
    return "\n".join(lines)


def add_parser(sub) -> None:
    """Register ``perturbkit conformal`` on the subparsers ``sub``."""
    c = sub.add_parser("conformal", help="conformal prediction sets (split, and RSCP+ robust to L2 attacks)",
                       description="Split DATA into calibration and test points and report coverage and average "
                                   "set size of split conformal prediction and, with --robust-eps, of RSCP+ "
                                   "(randomized smoothing, Yan et al. 2024), clean and under a PGD attack.")
    c.add_argument("model", metavar="MODEL", help="an .onnx file or a bundled model name (e.g. digits-cnn-noise)")
    c.add_argument("--data", required=True, metavar="DATA",
                   help="an .npz with x and y, a CSV of label + pixels 0-255 (with --shape), or a bundled data set "
                        "name (digits)")
    c.add_argument("--alpha", type=float, default=0.1, metavar="A", help="miscoverage level (default: 0.1)")
    c.add_argument("--score", default="aps", choices=["aps", "thr", "hps"], help="non-conformity score (default: aps)")
    c.add_argument("--calib-fraction", type=float, default=0.5, metavar="F",
                   help="share of the (non-holdout) points used for calibration (default: 0.5)")
    c.add_argument("--robust-eps", type=float, default=None, metavar="E",
                   help="RSCP+: sets robust to every L2 perturbation up to E")
    c.add_argument("--sigma", type=float, default=0.25, metavar="S", help="RSCP+ smoothing noise (default: 0.25)")
    c.add_argument("--n-s", type=int, default=256, metavar="N", help="RSCP+ Monte-Carlo samples (default: 256)")
    c.add_argument("--beta", type=float, default=0.001, metavar="B",
                   help="RSCP+ Monte-Carlo failure probability, < alpha / 2 (default: 0.001)")
    c.add_argument("--ptt", action="store_true", help="also RSCP+ with the post-training transformation")
    c.add_argument("--holdout-fraction", type=float, default=0.2, metavar="F",
                   help="share of the points that fit PTT (default: 0.2)")
    c.add_argument("--temperature", type=float, default=0.01, metavar="T", help="PTT temperature (default: 0.01)")
    c.add_argument("--attack-eps", type=float, default=None, metavar="E",
                   help="radius of the PGD attack on the scores (default: --robust-eps; none without it)")
    c.add_argument("--attack-steps", type=int, default=20, metavar="N", help="PGD steps (default: 20)")
    c.add_argument("--attack-samples", type=int, default=16, metavar="N",
                   help="noise samples per point and PGD step on a smoothed score (default: 16)")
    c.add_argument("--domain", nargs=2, type=float, default=(0.0, 1.0), metavar=("LO", "HI"),
                   help="input domain the attack stays in (default: 0 1)")
    c.add_argument("--seed", type=int, default=0, metavar="S", help="seeds the split, noise and attack (default: 0)")
    c.add_argument("--max", dest="max_points", type=int, default=None, metavar="N", help="only the first N points")
    c.add_argument("--shape", default=None, metavar="D,D,...", help="sample shape of CSV data as stored")
    c.add_argument("--json", dest="json_out", default=None, metavar="OUT", help="write the JSON record to OUT")
    c.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar on stderr")
    c.set_defaults(handler=_handler)


def _handler(args) -> int:
    from perturbkit.cli.main import _ints
    from perturbkit.conformal.evaluate import ConformalConfig

    s = ConformalConfig(alpha=args.alpha, score=args.score, calib_fraction=args.calib_fraction,
                        robust_eps=args.robust_eps, sigma=args.sigma, n_s=args.n_s, beta=args.beta, ptt=args.ptt,
                        holdout_fraction=args.holdout_fraction, temperature=args.temperature,
                        attack_steps=args.attack_steps, attack_samples=args.attack_samples, attack_eps=args.attack_eps,
                        domain=tuple(args.domain), seed=args.seed)
    shape = _ints("--shape", args.shape) if args.shape else None
    return command(ConformalCmdConfig(model=args.model, data=args.data, settings=replace(s), json_out=args.json_out,
                                      max_points=args.max_points, shape=shape, progress=args.progress))
