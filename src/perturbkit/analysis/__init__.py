"""Measurements of how a model's error grows with a perturbation (the "measure" verb):

* ``curves.py``: certified (IBP, CROWN, alpha-CROWN) and empirical (PGD, AutoAttack) robust
  accuracy vs eps, their consistency check, logit gaps;
* ``powerlaw.py``: the power-law fit of adversarial error vs eps;
* ``corruptions.py``: accuracy under Gaussian noise and blur;
* ``fourier.py``: Fourier heat maps;
* ``saliency.py``: input-gradient and SmoothGrad maps.
"""
from perturbkit.analysis.corruptions import corruption_curve, gaussian_blur, gaussian_noise
from perturbkit.analysis.curves import Curve, certified_curve, check_consistency, empirical_curve, logit_gaps
from perturbkit.analysis.fourier import fourier_basis, fourier_heat_map
from perturbkit.analysis.powerlaw import PowerLawFit, fit_power_law
from perturbkit.analysis.saliency import input_gradient, smoothgrad

__all__ = ["Curve", "PowerLawFit", "certified_curve", "check_consistency", "corruption_curve", "empirical_curve",
           "fit_power_law", "fourier_basis", "fourier_heat_map", "gaussian_blur", "gaussian_noise", "input_gradient",
           "logit_gaps", "smoothgrad"]
