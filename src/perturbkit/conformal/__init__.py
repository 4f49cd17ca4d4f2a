"""Conformal prediction sets with guaranteed coverage, and their robust version.

* ``scores.py``: THR (= HPS) and APS non-conformity scores;
* ``split.py``: split conformal calibration (:func:`conformal_quantile`), sets, coverage, size;
* ``robust.py``: RSCP+ (Yan et al. 2024): smoothed scores, the Monte-Carlo-corrected robust
  threshold, and PTT, the post-training transformation;
* ``attack.py``: PGD on a (smoothed) score, the evaluation's adversary;
* ``evaluate.py``: :func:`run_conformal`, everything on one labelled data set.
"""
from perturbkit.conformal.evaluate import ConformalConfig, run_conformal
from perturbkit.conformal.robust import PTT, rscp_calibrate, rscp_threshold, smoothed_scores
from perturbkit.conformal.scores import SCORES, aps, thr
from perturbkit.conformal.split import average_size, conformal_quantile, coverage, prediction_sets

__all__ = ["ConformalConfig", "PTT", "SCORES", "aps", "average_size", "conformal_quantile", "coverage",
           "prediction_sets", "rscp_calibrate", "rscp_threshold", "run_conformal", "smoothed_scores", "thr"]
