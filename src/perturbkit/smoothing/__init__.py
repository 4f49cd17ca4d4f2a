"""Randomized smoothing (Cohen, Rosenfeld and Kolter 2019): certified L2 robustness of the
smoothed version of any base classifier, optionally behind a denoiser.

* :class:`Smooth` (``certify.py``): PREDICT and CERTIFY, batched over points, seedable;
* :func:`certify_dataset`, :func:`predict_dataset`, :func:`certified_accuracy`, :func:`accuracy_curve` (``evaluate.py``):
  per-point records and certified accuracy vs radius;
* :func:`train_gaussian` (``training.py``): Gaussian noise augmentation of a base model;
* ``stats.py``: Clopper-Pearson bounds, the binomial test, radii, Hoeffding margins.
"""
from perturbkit.smoothing.certify import ABSTAIN, Certificate, Smooth
from perturbkit.smoothing.evaluate import (CertifyConfig, CertifyRecord, PredictRecord, accuracy_curve,
                                           certified_accuracy, certify_dataset, predict_dataset)
from perturbkit.smoothing.stats import (binomial_p_value, certified_radius, clopper_pearson_lower,
                                        max_certifiable_radius)
from perturbkit.smoothing.training import NoiseTrainConfig, train_gaussian

__all__ = ["ABSTAIN", "Certificate", "CertifyConfig", "CertifyRecord", "NoiseTrainConfig", "PredictRecord", "Smooth",
           "accuracy_curve", "binomial_p_value", "certified_accuracy", "certified_radius", "certify_dataset",
           "clopper_pearson_lower", "max_certifiable_radius", "predict_dataset", "train_gaussian"]
