"""Conformal prediction on a labelled data set: standard split conformal, and with
``robust_eps`` RSCP+ (with and without PTT), each evaluated on clean test points and under a
PGD attack on the score it uses (:mod:`perturbkit.conformal.attack`).

The data is split once by a seeded permutation into holdout (PTT only), calibration and test
points.  Reported per method: the threshold, coverage and average set size on the clean test
points and on the attacked ones, and the guarantee it carries.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import Tensor

from perturbkit.conformal.attack import ScoreAttackConfig, attack_scores
from perturbkit.conformal.robust import (PTT, base_scores, rscp_calibrate, rscp_threshold, smoothed_scores,
                                         uniforms)
from perturbkit.conformal.scores import RANDOMISED, score_fn
from perturbkit.conformal.split import (average_size, conformal_quantile, coverage, min_calibration_size,
                                        prediction_sets)
from perturbkit.errors import InputError
from perturbkit.smoothing.stats import hoeffding_margin


@dataclass(frozen=True)
class ConformalConfig:
    """``alpha``: miscoverage; ``score``: thr, hps or aps; ``calib_fraction``: share of the
    non-holdout points used for calibration; ``robust_eps``: L2 radius of RSCP+ (None: standard
    conformal only); ``sigma``, ``n_s``, ``beta``: RSCP+'s noise, Monte-Carlo samples and
    Monte-Carlo failure probability; ``ptt``: also RSCP+ with PTT (``holdout_fraction`` of the
    points fit it, ``temperature`` its T); ``attack_steps`` and ``attack_samples``: the PGD on
    the score (``attack_eps``: its radius, default ``robust_eps``); ``domain``: the inputs' box."""

    alpha: float = 0.1
    score: str = "aps"
    calib_fraction: float = 0.5
    robust_eps: Optional[float] = None
    sigma: float = 0.25
    n_s: int = 256
    beta: float = 0.001
    ptt: bool = False
    holdout_fraction: float = 0.2
    temperature: float = 0.01
    attack_steps: int = 20
    attack_samples: int = 16
    attack_eps: Optional[float] = None
    domain: Optional[tuple[float, float]] = (0.0, 1.0)
    seed: int = 0


def validate(cfg: ConformalConfig) -> None:
    if not (0.0 < cfg.alpha < 1.0):
        raise InputError(f"--alpha must be in (0, 1), got {cfg.alpha:g}")
    score_fn(cfg.score)
    if not (0.0 < cfg.calib_fraction < 1.0):
        raise InputError(f"--calib-fraction must be in (0, 1), got {cfg.calib_fraction:g}")
    if cfg.robust_eps is not None and not (math.isfinite(cfg.robust_eps) and cfg.robust_eps >= 0):
        raise InputError(f"--robust-eps must be a finite number >= 0, got {cfg.robust_eps:g}")
    if cfg.attack_eps is not None and not (math.isfinite(cfg.attack_eps) and cfg.attack_eps >= 0):
        raise InputError(f"--attack-eps must be a finite number >= 0, got {cfg.attack_eps:g}")
    if not (math.isfinite(cfg.sigma) and cfg.sigma > 0):
        raise InputError(f"--sigma must be a finite number > 0, got {cfg.sigma:g}")
    for flag, v in (("--n-s", cfg.n_s), ("--attack-steps", cfg.attack_steps), ("--attack-samples", cfg.attack_samples)):
        if v < 1:
            raise InputError(f"{flag} must be >= 1, got {v}")
    if cfg.robust_eps is not None and not (0.0 < cfg.beta and 2 * cfg.beta < cfg.alpha):
        raise InputError(f"--beta must be in (0, alpha / 2) = (0, {cfg.alpha / 2:g}), got {cfg.beta:g}")
    if cfg.ptt and cfg.robust_eps is None:
        raise InputError("--ptt transforms the score of RSCP+: give --robust-eps too")
    if cfg.ptt and not (0.0 < cfg.holdout_fraction < 1.0):
        raise InputError(f"--holdout-fraction must be in (0, 1), got {cfg.holdout_fraction:g}")
    if not cfg.temperature > 0:
        raise InputError(f"--temperature must be > 0, got {cfg.temperature:g}")


def split_indices(n: int, cfg: ConformalConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(holdout, calibration, test)`` indices from a permutation seeded by ``cfg.seed``; the
    calibration set is checked to be large enough for the level it is used at."""
    perm = np.random.default_rng(cfg.seed).permutation(n)
    n_hold = int(round(cfg.holdout_fraction * n)) if cfg.ptt else 0
    rest = perm[n_hold:]
    n_cal = int(round(cfg.calib_fraction * len(rest)))
    hold, cal, test = np.sort(perm[:n_hold]), np.sort(rest[:n_cal]), np.sort(rest[n_cal:])
    level = cfg.alpha - 2 * cfg.beta if cfg.robust_eps is not None else cfg.alpha
    need = min_calibration_size(level)
    if len(cal) < need:
        raise InputError(f"calibration set too small: {len(cal)} of {n} points for alpha {level:g} (needs {need}; "
                         f"use more data or a larger --calib-fraction or --alpha)")
    if len(test) < 1:
        raise InputError(f"no test points left: {n} points, calibration fraction {cfg.calib_fraction:g}")
    return hold, cal, test


def _eval(sets_clean: np.ndarray, sets_adv: Optional[np.ndarray], y: np.ndarray) -> dict[str, Any]:
    out = {"coverage": coverage(sets_clean, y), "average_size": average_size(sets_clean)}
    if sets_adv is not None:
        out |= {"attacked_coverage": coverage(sets_adv, y), "attacked_average_size": average_size(sets_adv)}
    return out


def run_conformal(model: Callable[[Tensor], Tensor], x: Tensor, y: np.ndarray, cfg: ConformalConfig, *,
                  progress: bool = False) -> dict[str, Any]:
    """Every method of the module docstring on ``(x (N, ...), y (N,))``; a JSON-ready dict."""
    validate(cfg)
    y = np.asarray(y, dtype=np.int64)
    hold, cal, test = split_indices(x.shape[0], cfg)
    yt = torch.from_numpy(y)
    t0 = time.perf_counter()
    bar = _bar(progress, cfg, len(hold), len(cal), len(test))
    tick = (lambda k: bar.update(k)) if bar is not None else None
    methods: dict[str, Any] = {}
    attack_eps = cfg.attack_eps if cfg.attack_eps is not None else cfg.robust_eps
    try:
        # standard split conformal on the base model
        u_all = uniforms(cfg.seed, range(x.shape[0])) if cfg.score in RANDOMISED else None
        with torch.no_grad():
            s_all = base_scores(model, x, score=cfg.score, u=u_all).numpy()
        q = conformal_quantile(s_all[cal, y[cal]], cfg.alpha)
        adv_sets = None
        if attack_eps is not None:
            acfg = ScoreAttackConfig(eps=attack_eps, sigma=0.0, steps=cfg.attack_steps, domain=cfg.domain, seed=cfg.seed)
            xa = attack_scores(model, x[test], yt[test], test.tolist(), cfg=acfg)
            with torch.no_grad():
                s_adv = base_scores(model, xa, score=cfg.score, u=None if u_all is None else u_all[test]).numpy()
            adv_sets = prediction_sets(s_adv, q)
        methods["standard"] = {"threshold": q, "guarantee": f"coverage >= {1 - cfg.alpha:g} on clean data only",
                               **_eval(prediction_sets(s_all[test], q), adv_sets, y[test])}
        if cfg.robust_eps is not None:
            variants: list[tuple[str, Optional[PTT]]] = [("rscp+", None)]
            if cfg.ptt:
                (h,) = smoothed_scores(model, x[hold], hold.tolist(), sigma=cfg.sigma, n_s=1, score=cfg.score,
                                       seed=cfg.seed)
                variants.append(("rscp+ptt", PTT.fit(h[np.arange(len(hold)), y[hold]], alpha=cfg.alpha,
                                                      temperature=cfg.temperature)))
            transforms = [t for _, t in variants]
            cal_means = smoothed_scores(model, x[cal], cal.tolist(), sigma=cfg.sigma, n_s=cfg.n_s, score=cfg.score,
                                        seed=cfg.seed, transforms=transforms, progress=tick)
            clean_means = smoothed_scores(model, x[test], test.tolist(), sigma=cfg.sigma, n_s=cfg.n_s, score=cfg.score,
                                          seed=cfg.seed, transforms=transforms, progress=tick)
            for k, (name, t) in enumerate(variants):
                tau = rscp_calibrate(cal_means[k][np.arange(len(cal)), y[cal]], alpha=cfg.alpha, beta=cfg.beta)
                thr = rscp_threshold(tau, eps=cfg.robust_eps, sigma=cfg.sigma, n_s=cfg.n_s, beta=cfg.beta)
                if k == 0:  # one attack on the smoothed classifier serves every variant of the score
                    acfg = ScoreAttackConfig(eps=attack_eps, sigma=cfg.sigma, steps=cfg.attack_steps,
                                             samples=cfg.attack_samples, domain=cfg.domain, seed=cfg.seed)
                    xa = attack_scores(model, x[test], yt[test], test.tolist(), cfg=acfg, progress=tick)
                # the attacked points are scored with fresh noise (indices shifted past the data set)
                (adv_means,) = smoothed_scores(model, xa, (test + x.shape[0]).tolist(), sigma=cfg.sigma, n_s=cfg.n_s,
                                               score=cfg.score, seed=cfg.seed, transforms=[t], progress=tick)
                methods[name] = {
                    "tau": tau, "threshold": thr if math.isfinite(thr) else None,
                    "hoeffding_margin": hoeffding_margin(cfg.n_s, cfg.beta),
                    "guarantee": f"coverage >= {1 - cfg.alpha:g} for every L2 perturbation up to {cfg.robust_eps:g}",
                    **_eval(clean_means[k][:, :] <= thr, adv_means <= thr, y[test]),
                }
                if t is not None:
                    methods[name] |= {"ptt_b": t.b, "ptt_temperature": t.temperature}
    finally:
        if bar is not None:
            bar.close()
    return {"config": asdict(cfg), "points": {"holdout": len(hold), "calibration": len(cal), "test": len(test)},
            "attack_eps": attack_eps, "methods": methods, "time_s": time.perf_counter() - t0}


def _bar(progress: bool, cfg: ConformalConfig, n_hold: int, n_cal: int, n_test: int):
    if not progress or cfg.robust_eps is None:
        return None
    from tqdm import tqdm

    variants = 2 if cfg.ptt else 1
    return tqdm(total=n_cal + n_test + n_test + variants * n_test, desc="conformal", unit="pt", leave=False)


__all__ = ["ConformalConfig", "run_conformal", "split_indices", "validate"]
