"""Randomized smoothing: PREDICT and CERTIFY of Cohen, Rosenfeld and Kolter 2019 ("Certified
adversarial robustness via randomized smoothing", ICML), batched over points.

The smoothed classifier of a base classifier ``f`` is ``g(x) = argmax_c P(f(x + delta) = c)``
with ``delta ~ N(0, sigma^2 I)``.  If the top class ``c_A`` has probability at least
``p_A_lower > 1/2``, ``g`` is constant on the L2 ball of radius ``sigma * Phi^-1(p_A_lower)``
(Theorem 1 with ``p_B = 1 - p_A``).  :meth:`Smooth.certify` estimates ``p_A_lower`` from Monte
Carlo samples with the guarantee that, with probability at least ``1 - alpha`` over the samples,
a returned class and radius are correct for ``g``; :meth:`Smooth.predict` returns ``g(x)`` or
abstains, and is wrong with probability at most ``alpha``.

Noise is added in input space, before anything the base model does (normalisation included);
with a ``denoiser`` the base classifier is ``classifier(denoiser(x + delta))`` (denoised
smoothing, Salman et al. 2020; the diffusion- and consistency-model variants have this form).

Randomness: the noise of point ``index`` in phase ``phase`` (selection, estimation, prediction)
comes from its own ``torch.Generator`` seeded from ``(seed, index, phase)``, drawn in chunks
of :data:`NOISE_CHUNK` samples.  Results therefore depend on the seed and the point's index
only: not on the batch size, nor on which other points are certified in the same call (up
to the rare argmax tie that a different batch composition rounds the other way).
:func:`noise_chunks` is the one definition of that stream.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from perturbkit.errors import InputError
from perturbkit.smoothing.stats import binomial_p_value, certified_radius, clopper_pearson_lower

#: the class PREDICT and CERTIFY return when they abstain
ABSTAIN = -1
#: samples per draw of the noise stream (fixed, so results do not depend on the batch size)
NOISE_CHUNK = 1024
#: phases of the noise stream: CERTIFY's selection and estimation samples, PREDICT's samples
SELECTION, ESTIMATION, PREDICTION = 0, 1, 2
#: default size of one forward batch: rows * (widest activation) values (float32: 4 MB).  Measured
#: on digits-cnn-noise (1024 values in its widest layer), one thread: 11.2 us a row at 256 rows,
#: 9.8 at 1024, 13.7 at 4096 (past the cache); so the default batch is as large as stays near it.
FORWARD_BUDGET_VALUES = 1 << 20


def noise_generator(seed: int, index: int, phase: int) -> torch.Generator:
    """The generator of point ``index``'s noise in ``phase`` (seeded by ``numpy.SeedSequence``
    from ``(seed, index, phase)``, so neighbouring seeds and indices give unrelated streams)."""
    state = np.random.SeedSequence([int(seed), int(index), int(phase)]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & ((1 << 63) - 1))


def noise_chunks(seed: int, index: int, phase: int, num: int, shape: Sequence[int], sigma: float,
                 dtype: torch.dtype = torch.float32) -> Iterator[Tensor]:
    """``num`` Gaussian noise samples ``N(0, sigma^2)`` of ``shape``, as consecutive chunks of
    at most :data:`NOISE_CHUNK` samples ``(c, *shape)`` from :func:`noise_generator`."""
    gen = noise_generator(seed, index, phase)
    left = int(num)
    while left > 0:
        c = min(NOISE_CHUNK, left)
        yield torch.randn((c, *shape), generator=gen, dtype=dtype) * sigma
        left -= c


def _check_positive_int(name: str, v: Any) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise InputError(f"{name} must be an integer >= 1, got {v}")


def _check_alpha(alpha: Any) -> None:
    if isinstance(alpha, bool) or not (isinstance(alpha, (int, float)) and 0.0 < float(alpha) < 1.0):
        raise InputError(f"alpha must be in (0, 1), got {alpha}")


def _widest(model: Any, sample_numel: int) -> int:
    """Values per row in the widest activation of a perturbkit Network; else a guess (16x the input)."""
    shapes = getattr(getattr(model, "graph", None), "shapes", None)
    if shapes:
        return max(max(math.prod(s) for s in shapes.values()), sample_numel)
    return 16 * sample_numel


@dataclass(frozen=True)
class Certificate:
    """CERTIFY's answer for one point: ``prediction`` (``ABSTAIN`` = -1) and L2 ``radius``
    (0 when abstaining), with ``n_a`` (estimation samples voting for the selected class) and
    ``p_a_lower`` (its Clopper-Pearson lower bound)."""

    index: int
    prediction: int
    radius: float
    n_a: int
    p_a_lower: float
    time_s: float


class Smooth:
    """The smoothed classifier ``g`` of ``base`` under ``N(0, sigma^2 I)`` input noise.

    ``base``: a callable (a perturbkit Network or an ``nn.Module``) mapping a batch of inputs
    ``(B, *sample_shape)`` to logits or scores ``(B, num_classes)``; ``denoiser`` (optional):
    a callable mapping ``(B, *sample_shape)`` to the same shape, applied to the noisy inputs
    before ``base``.  Both are run under ``torch.no_grad()`` in float32.
    """

    def __init__(self, base: Callable[[Tensor], Tensor], sigma: float, num_classes: int, *,
                 denoiser: Optional[Callable[[Tensor], Tensor]] = None):
        if isinstance(sigma, bool) or not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
            raise InputError(f"sigma must be a finite number > 0, got {sigma}")
        _check_positive_int("num_classes", num_classes)
        if num_classes < 2:
            raise InputError(f"num_classes must be >= 2, got {num_classes}")
        self.base, self.sigma, self.num_classes, self.denoiser = base, float(sigma), int(num_classes), denoiser

    # ------------------------------------------------------------------ the paper's two calls

    def predict(self, x: Tensor, n: int, alpha: float, *, batch_size: Optional[int] = None, seed: int = 0,
                index: int = 0) -> int:
        """PREDICT (Cohen et al. 2019, Algorithm "PREDICT"): the smoothed class of one input
        ``x`` (``sample_shape``) from ``n`` noisy samples, or ``ABSTAIN`` when the two-sided
        binomial test of the top two counts does not reject ``p = 1/2`` at level ``alpha``.
        Returns a wrong class with probability at most ``alpha``."""
        return self.predict_batch(x[None], n, alpha, batch_size=batch_size, seed=seed, indices=[index])[0]

    def certify(self, x: Tensor, n0: int, n: int, alpha: float, *, batch_size: Optional[int] = None,
                seed: int = 0, index: int = 0) -> tuple[int, float]:
        """CERTIFY (Cohen et al. 2019): ``(prediction, radius)`` for one input ``x``.  The top
        class of ``n0`` selection samples is the guess ``c_A``; ``n`` fresh samples give ``n_A``
        votes for it and ``p_A_lower = clopper_pearson_lower(n_A, n, alpha)``; below 1/2 it
        abstains ``(ABSTAIN, 0.0)``, else returns ``(c_A, sigma * Phi^-1(p_A_lower))``.  With
        probability at least ``1 - alpha`` a returned class is ``g``'s on the whole L2 ball."""
        c = next(iter(self.certify_batch(x[None], n0, n, alpha, batch_size=batch_size, seed=seed, indices=[index])))
        return c.prediction, c.radius

    # ------------------------------------------------------------------ batched over points

    def certify_batch(self, x: Tensor, n0: int, n: int, alpha: float, *, batch_size: Optional[int] = None,
                      seed: int = 0, indices: Optional[Sequence[int]] = None) -> Iterator[Certificate]:
        """CERTIFY for every row of ``x`` ``(P, *sample_shape)``, yielding one
        :class:`Certificate` per point in order as soon as its samples are counted.  The
        noisy samples of consecutive points share forward batches of ``batch_size`` rows
        (default: a memory-bounded size from the model's widest activation).  ``indices``
        (default ``0..P-1``) key each point's noise stream."""
        _check_positive_int("n0", n0)
        _check_positive_int("n", n)
        _check_alpha(alpha)
        x, idx = self._points(x, indices)
        jobs = [j for p in range(len(idx)) for j in ((p, SELECTION, n0), (p, ESTIMATION, n))]
        t_last = time.perf_counter()
        for group in self._counts(x, idx, jobs, seed, batch_size, per_point=2):
            now = time.perf_counter()
            share = (now - t_last) / len(group)  # the points finished by one forward batch share its time
            t_last = now
            for p, counts in group:
                c_a = int(np.argmax(counts[0]))
                n_a = int(counts[1][c_a])
                p_a_lower = clopper_pearson_lower(n_a, n, alpha)
                if p_a_lower < 0.5:
                    yield Certificate(idx[p], ABSTAIN, 0.0, n_a, p_a_lower, share)
                else:
                    yield Certificate(idx[p], c_a, certified_radius(self.sigma, p_a_lower), n_a, p_a_lower, share)

    def predict_batch(self, x: Tensor, n: int, alpha: float, *, batch_size: Optional[int] = None, seed: int = 0,
                      indices: Optional[Sequence[int]] = None) -> list[int]:
        """PREDICT for every row of ``x`` ``(P, *sample_shape)``; a list of classes (``ABSTAIN``
        where the test does not reject)."""
        _check_positive_int("n", n)
        _check_alpha(alpha)
        x, idx = self._points(x, indices)
        jobs = [(p, PREDICTION, n) for p in range(len(idx))]
        return [predict_from_counts(counts, alpha)
                for group in self._counts(x, idx, jobs, seed, batch_size, per_point=1) for _, (counts,) in group]

    def counts(self, x: Tensor, num: int, *, phase: int = PREDICTION, batch_size: Optional[int] = None,
               seed: int = 0, indices: Optional[Sequence[int]] = None) -> np.ndarray:
        """Votes ``(P, num_classes)`` int64 of ``num`` noisy samples of every row of ``x``."""
        _check_positive_int("num", num)
        x, idx = self._points(x, indices)
        jobs = [(p, phase, num) for p in range(len(idx))]
        return np.stack([c for group in self._counts(x, idx, jobs, seed, batch_size, per_point=1) for _, (c,) in group])

    # ------------------------------------------------------------------ sampling

    def _points(self, x: Any, indices: Optional[Sequence[int]]) -> tuple[Tensor, list[int]]:
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(np.ascontiguousarray(x))
        if not isinstance(x, Tensor) or x.dim() < 2:
            raise InputError(f"inputs must be a batch (P, *sample_shape), got {getattr(x, 'shape', type(x).__name__)}")
        x = x.detach().to(torch.float32)
        if not bool(torch.isfinite(x).all()):
            raise InputError("inputs contain NaN or inf")
        idx = list(range(x.shape[0])) if indices is None else [int(i) for i in indices]
        if len(idx) != x.shape[0]:
            raise InputError(f"{len(idx)} indices for {x.shape[0]} points")
        return x, idx

    def batch_rows(self, sample_shape: Sequence[int], batch_size: Optional[int] = None) -> int:
        """Rows per forward batch: ``batch_size``, or the default that keeps the widest
        activation of one batch near :data:`FORWARD_BUDGET_VALUES` values."""
        if batch_size is not None:
            _check_positive_int("batch_size", batch_size)
            return int(batch_size)
        widest = _widest(self.base, math.prod(sample_shape))
        return max(64, FORWARD_BUDGET_VALUES // max(1, widest))

    def _forward_classes(self, xb: Tensor) -> Tensor:
        with torch.inference_mode():
            z = self.base(self.denoiser(xb) if self.denoiser is not None else xb)
        z = z.reshape(z.shape[0], -1)
        if z.shape[1] != self.num_classes:
            raise InputError(f"the base classifier returns {z.shape[1]} scores per input, expected num_classes "
                             f"= {self.num_classes}")
        return z.argmax(dim=1)

    def _counts(self, x: Tensor, idx: list[int], jobs: list[tuple[int, int, int]], seed: int,
                batch_size: Optional[int], *, per_point: int) -> Iterator[list[tuple[int, list[np.ndarray]]]]:
        """Stream the noisy samples of ``jobs`` (point, phase, num), in order, through the base
        classifier in forward batches; after each batch, yield the list of ``(point, [counts of
        its jobs])`` of the points whose ``per_point`` consecutive jobs are now all counted."""
        shape = tuple(x.shape[1:])
        rows = self.batch_rows(shape, batch_size)
        C = self.num_classes
        counts = np.zeros((len(jobs), C), dtype=np.int64)
        left = np.array([num for _, _, num in jobs], dtype=np.int64)
        buf: list[tuple[int, Tensor]] = []
        buffered = 0
        done_upto = 0  # jobs [0, done_upto) are yielded

        def flush() -> None:
            nonlocal buf, buffered
            if not buf:
                return
            batch = buf[0][1] if len(buf) == 1 else torch.cat([t for _, t in buf])
            pred = self._forward_classes(batch).numpy()
            owner = np.concatenate([np.full(t.shape[0], j, dtype=np.int64) for j, t in buf])
            counts[:] += np.bincount(owner * C + pred, minlength=len(jobs) * C).reshape(len(jobs), C)
            for j, t in buf:
                left[j] -= t.shape[0]
            buf, buffered = [], 0

        def ready() -> Iterator[list[tuple[int, list[np.ndarray]]]]:
            nonlocal done_upto
            group = []
            while done_upto + per_point <= len(jobs) and not left[done_upto:done_upto + per_point].any():
                p = jobs[done_upto][0]
                group.append((p, [counts[done_upto + k].copy() for k in range(per_point)]))
                done_upto += per_point
            if group:
                yield group

        for j, (p, phase, num) in enumerate(jobs):
            for noise in noise_chunks(seed, idx[p], phase, num, shape, self.sigma):
                buf.append((j, x[p] + noise))
                buffered += noise.shape[0]
                if buffered >= rows:
                    flush()
                    yield from ready()
        flush()
        yield from ready()


def predict_from_counts(counts: np.ndarray, alpha: float) -> int:
    """PREDICT's decision from the votes of ``n`` samples: the top class if the two-sided
    binomial test of its count against the runner-up's rejects ``p = 1/2`` at ``alpha``."""
    order = sorted(range(len(counts)), key=lambda c: (-int(counts[c]), c))
    c1, c2 = order[0], order[1]
    n1, n2 = int(counts[c1]), int(counts[c2])
    if n1 == 0 or binomial_p_value(n1, n1 + n2, 0.5) > alpha:
        return ABSTAIN
    return c1


__all__ = ["ABSTAIN", "Certificate", "NOISE_CHUNK", "Smooth", "noise_chunks", "noise_generator",
           "predict_from_counts"]
