"""RSCP+ (Yan, Romano and Weng 2024, "Provably robust conformal prediction with improved
efficiency", ICLR): conformal prediction sets that keep coverage ``>= 1 - alpha`` for every L2
perturbation of the test input up to ``eps``, with the Monte-Carlo error of the smoothed score
accounted for; and PTT, their post-training transformation of the base score.

The smoothed score of a base score ``s`` in [0, 1] is ``g(x, y) = E s(x + delta, y)``, ``delta ~
N(0, sigma^2 I)``; ``Phi^-1(g(., y))`` is ``1/sigma``-Lipschitz in L2 (Salman et al. 2019, Lemma 2).
It is estimated by the mean ``m(x, y)`` of ``n_s`` samples; ``b = sqrt(ln(1/beta) / (2 n_s))``
bounds the Monte-Carlo error one way with probability ``1 - beta`` (Hoeffding).

Calibration: ``tau`` = the conformal quantile at level ``alpha - 2 beta`` of the calibration
means ``m(x_i, y_i)``.  Test (input ``x~``, possibly attacked): label ``y`` is in the set iff
``Phi^-1(m(x~, y) - b) - eps / sigma <= Phi^-1(tau + b)``, i.e. ``m(x~, y) <= t`` with
:func:`rscp_threshold` ``t = b + Phi(Phi^-1(tau + b) + eps / sigma)``.

Guarantee (the chain of the paper's Theorem, written out): by exchangeability of the
Monte-Carlo scores, ``m(x, y) <= tau`` for the clean test point with probability ``>= 1 -
alpha + 2 beta``; then ``g(x, y) <= tau + b`` (fails with prob. ``<= beta``), so ``Phi^-1
g(x~, y) <= Phi^-1(tau + b) + eps / sigma`` for every ``||x~ - x||_2 <= eps`` (Lipschitz), and
``m(x~, y) <= g(x~, y) + b`` (fails with prob. ``<= beta``): ``y`` is in the set of ``x~`` with
probability ``>= 1 - alpha``.  It needs ``2 beta < alpha`` and a base score in [0, 1].

PTT (their Section 4.1): the base score is replaced by ``sigmoid((r(s) - b_ptt) / T)`` where
``r`` is the ranking transformation, the empirical distribution function of the true-label
scores of a holdout set disjoint from calibration and test (here interpolated linearly, so an
attack still has a gradient), and ``b_ptt = 1 - alpha``.  Any fixed increasing map of the score
keeps the guarantee; this one pushes the scores to 0 or 1, which makes the smoothed score
sharper and the robust sets smaller.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from perturbkit.conformal.scores import RANDOMISED, score_fn
from perturbkit.conformal.split import conformal_quantile
from perturbkit.errors import InputError
from perturbkit.smoothing.certify import noise_chunks, noise_generator
from perturbkit.smoothing.stats import hoeffding_margin

#: noise-stream phases (with the point's index in the data set; see perturbkit.smoothing.certify)
SCORE_PHASE, U_PHASE, ATTACK_PHASE = 10, 11, 12
#: default forward batch: rows of noisy samples per pass
ROWS = 8192


@dataclass(frozen=True)
class PTT:
    """The post-training transformation ``s -> sigmoid((r(s) - b) / T)``: ``knots_x``, ``knots_y``
    the increasing piecewise-linear ranking transformation on [0, 1], ``b`` its centre,
    ``temperature`` ``T``."""

    knots_x: tuple[float, ...]
    knots_y: tuple[float, ...]
    b: float
    temperature: float

    @staticmethod
    def fit(holdout_scores: np.ndarray, *, alpha: float, temperature: float = 0.01) -> "PTT":
        """From the true-label base scores of a holdout set (under the smoothing noise)."""
        s = np.sort(np.asarray(holdout_scores, dtype=np.float64).reshape(-1))
        if len(s) < 2:
            raise InputError("PTT needs at least 2 holdout scores")
        if not temperature > 0:
            raise InputError(f"the PTT temperature must be > 0, got {temperature:g}")
        xs = np.unique(s)
        ys = np.searchsorted(s, xs, side="right") / len(s)  # the empirical distribution function at each score
        kx = np.concatenate([[0.0] if xs[0] > 0 else [], xs, [1.0] if xs[-1] < 1 else []])
        ky = np.concatenate([[0.0] if xs[0] > 0 else [], ys, [1.0] if xs[-1] < 1 else []])
        return PTT(tuple(float(v) for v in kx), tuple(float(v) for v in ky), 1.0 - alpha, float(temperature))

    def rank(self, s: Tensor) -> Tensor:
        """The ranking transformation ``r(s)`` in [0, 1], increasing, piecewise linear."""
        kx = torch.tensor(self.knots_x, dtype=s.dtype)
        ky = torch.tensor(self.knots_y, dtype=s.dtype)
        if len(kx) == 1:
            return torch.full_like(s, float(ky[0]))
        j = torch.searchsorted(kx, s.contiguous(), right=True).clamp(1, len(kx) - 1)
        x0, x1, y0, y1 = kx[j - 1], kx[j], ky[j - 1], ky[j]
        t = ((s - x0) / (x1 - x0).clamp_min(1e-12)).clamp(0.0, 1.0)
        return y0 + t * (y1 - y0)

    def __call__(self, s: Tensor) -> Tensor:
        return torch.sigmoid((self.rank(s) - self.b) / self.temperature)


def uniforms(seed: int, indices: Sequence[int]) -> Tensor:
    """APS's ``u ~ U(0, 1)`` of each point, keyed by ``(seed, index)``: ``(N,)``."""
    return torch.cat([torch.rand(1, generator=noise_generator(seed, i, U_PHASE)) for i in indices])


def base_scores(model: Callable[[Tensor], Tensor], x: Tensor, *, score: str, u: Optional[Tensor],
                transform: Optional[Callable[[Tensor], Tensor]] = None) -> Tensor:
    """Scores ``(N, C)`` of the base model at inputs ``x`` ``(N, ...)`` (``u`` (N,) for APS)."""
    z = model(x)
    s = score_fn(score)(torch.softmax(z.reshape(z.shape[0], -1), dim=1), u if score in RANDOMISED else None)
    return transform(s) if transform is not None else s


def smoothed_scores(model: Callable[[Tensor], Tensor], x: Tensor, indices: Sequence[int], *, sigma: float, n_s: int,
                    score: str, seed: int, transforms: Sequence[Optional[Callable[[Tensor], Tensor]]] = (None,),
                    rows: int = ROWS, progress: Optional[Callable[[int], None]] = None) -> list[np.ndarray]:
    """Monte-Carlo smoothed scores ``m(x, y)``: for each transform (None = the raw score) an
    array ``(N, C)`` of the means over ``n_s`` noisy samples of every point (the noise of point
    ``indices[i]`` is its own stream, so calibration and test points never share noise).
    Shapes: x (N, *sample_shape)."""
    if n_s < 1:
        raise InputError(f"n_s must be >= 1, got {n_s}")
    shape = tuple(x.shape[1:])
    u = uniforms(seed, indices) if score in RANDOMISED else None
    outs = [[] for _ in transforms]
    per = max(1, rows // n_s)
    with torch.no_grad():
        for s0 in range(0, x.shape[0], per):
            pts = range(s0, min(x.shape[0], s0 + per))
            noisy = torch.cat([x[i] + torch.cat(list(noise_chunks(seed, indices[i], SCORE_PHASE, n_s, shape, sigma)))
                               for i in pts])
            uu = None if u is None else u[s0:s0 + len(pts)].repeat_interleave(n_s)
            raw = base_scores(model, noisy, score=score, u=uu)
            for k, t in enumerate(transforms):
                v = raw if t is None else t(raw)
                outs[k].append(v.reshape(len(pts), n_s, -1).mean(dim=1).numpy())
            if progress is not None:
                progress(len(pts))
    return [np.concatenate(o) for o in outs]


def rscp_threshold(tau: float, *, eps: float, sigma: float, n_s: int, beta: float) -> float:
    """The test threshold on Monte-Carlo means: ``b + Phi(Phi^-1(tau + b) + eps / sigma)``
    (infinite when ``tau + b >= 1``: every label is in every set)."""
    from scipy.stats import norm

    b = hoeffding_margin(n_s, beta)
    if tau + b >= 1.0:
        return math.inf
    return b + float(norm.cdf(norm.ppf(tau + b) + eps / sigma))


def rscp_calibrate(cal_means_true: np.ndarray, *, alpha: float, beta: float) -> float:
    """``tau``: the conformal quantile at ``alpha - 2 beta`` of the calibration points'
    true-label means."""
    if not (0 < beta and 2 * beta < alpha):
        raise InputError(f"RSCP+ needs 0 < 2 beta < alpha, got beta {beta:g} and alpha {alpha:g}")
    return conformal_quantile(cal_means_true, alpha - 2 * beta)


__all__ = ["PTT", "base_scores", "rscp_calibrate", "rscp_threshold", "smoothed_scores", "uniforms"]
