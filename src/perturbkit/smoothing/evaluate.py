"""Certified accuracy of a smoothed classifier over a labelled data set.

:func:`certify_dataset` runs CERTIFY (:meth:`perturbkit.smoothing.certify.Smooth.certify_batch`)
on every point and returns :class:`CertifyRecord` rows (those of Cohen et al.'s ``certify.py``:
idx, label, predict, radius, correct, time); :func:`certified_accuracy` and
:func:`accuracy_curve` turn them into the table and the curve "certified accuracy vs L2 radius"
(the accuracy at radius ``r`` is the fraction of points certified correctly with a radius of
at least ``r``, as in Cohen et al.'s analysis).  :func:`format_tsv_row` writes a row as the
reference does (``{:.3}`` radius, time as ``H:MM:SS.ffffff``).
"""
from __future__ import annotations

import contextlib
import datetime
import time
from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Iterator, Optional, Sequence

import numpy as np
import torch

from perturbkit.errors import InputError
from perturbkit.smoothing.certify import ABSTAIN, Smooth
from perturbkit.smoothing.stats import max_certifiable_radius

TSV_HEADER = "idx\tlabel\tpredict\tradius\tcorrect\ttime"
PREDICT_TSV_HEADER = "idx\tlabel\tpredict\tcorrect\ttime"


@dataclass(frozen=True)
class CertifyConfig:
    """CERTIFY's settings: ``n0`` selection samples, ``n`` estimation samples, failure
    probability ``alpha``; ``batch_size`` rows per forward pass (None: memory-bounded
    default); ``seed`` keys the noise streams (with each point's index)."""

    n0: int = 100
    n: int = 100_000
    alpha: float = 0.001
    batch_size: Optional[int] = None
    seed: int = 0


@dataclass(frozen=True)
class CertifyRecord:
    """One point: ``predict`` is -1 when CERTIFY abstains; ``correct`` is ``predict == label``."""

    idx: int
    label: int
    predict: int
    radius: float
    correct: bool
    time_s: float
    n_a: int
    p_a_lower: float

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PredictRecord:
    """One point of PREDICT: ``predict`` is -1 when it abstains."""

    idx: int
    label: int
    predict: int
    correct: bool
    time_s: float

    def to_json(self) -> dict:
        return asdict(self)


def format_predict_row(r: PredictRecord) -> str:
    """``idx label predict correct time`` as Cohen et al.'s ``predict.py`` prints them."""
    return f"{r.idx}\t{r.label}\t{r.predict}\t{int(r.correct)}\t{datetime.timedelta(seconds=r.time_s)}"


@contextlib.contextmanager
def _progress(total: int, desc: str, enabled: bool) -> Iterator[Callable[[], None]]:
    """A callable that advances a tqdm bar by one point (a no-op when not ``enabled``)."""
    if not enabled or total == 0:
        yield lambda: None
        return
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit="pt", leave=False)
    try:
        yield lambda: bar.update(1)
    finally:
        bar.close()


def format_tsv_row(r: CertifyRecord) -> str:
    """``idx label predict radius correct time`` as Cohen et al.'s ``certify.py`` prints them."""
    return (f"{r.idx}\t{r.label}\t{r.predict}\t{r.radius:.3}\t{int(r.correct)}\t"
            f"{datetime.timedelta(seconds=r.time_s)}")


def certify_dataset(smooth: Smooth, x: torch.Tensor, y: np.ndarray, cfg: CertifyConfig, *,
                    indices: Optional[Sequence[int]] = None,
                    on_record: Optional[Callable[[CertifyRecord], None]] = None,
                    progress: bool = False) -> list[CertifyRecord]:
    """CERTIFY every point of ``x`` ``(N, *sample_shape)`` with labels ``y`` ``(N,)``.

    ``indices`` (default ``0..N-1``) are the points' indices in the data set: they key the
    noise and are the records' ``idx``.  ``on_record`` is called with each record as soon as
    it is known (in order), e.g. to append it to a TSV file, so an interrupted run keeps what
    it finished.  Shows a progress bar with ``progress``.
    """
    y = np.asarray(y, dtype=np.int64)
    if len(y) != x.shape[0]:
        raise InputError(f"{x.shape[0]} inputs but {len(y)} labels")
    idx = list(range(x.shape[0])) if indices is None else [int(i) for i in indices]
    label_of = dict(zip(idx, y.tolist()))
    out = []
    with _progress(len(idx), "certify", progress) as tick:
        for c in smooth.certify_batch(x, cfg.n0, cfg.n, cfg.alpha, batch_size=cfg.batch_size, seed=cfg.seed,
                                      indices=idx):
            label = int(label_of[c.index])
            r = CertifyRecord(c.index, label, c.prediction, c.radius, c.prediction == label, c.time_s, c.n_a,
                              c.p_a_lower)
            out.append(r)
            if on_record is not None:
                on_record(r)
            tick()
    return out


def predict_dataset(smooth: Smooth, x: torch.Tensor, y: np.ndarray, *, n: int, alpha: float,
                    batch_size: Optional[int] = None, seed: int = 0, indices: Optional[Sequence[int]] = None,
                    on_record: Optional[Callable[[PredictRecord], None]] = None,
                    progress: bool = False) -> list[PredictRecord]:
    """PREDICT every point of ``x`` ``(N, *sample_shape)`` (labels ``y``), one point per call so
    each record (``on_record``) is known as soon as it is decided."""
    y = np.asarray(y, dtype=np.int64)
    if len(y) != x.shape[0]:
        raise InputError(f"{x.shape[0]} inputs but {len(y)} labels")
    idx = list(range(x.shape[0])) if indices is None else [int(i) for i in indices]
    out = []
    with _progress(len(idx), "predict", progress) as tick:
        for k, i in enumerate(idx):
            t = time.perf_counter()
            (pred,) = smooth.predict_batch(x[k:k + 1], n, alpha, batch_size=batch_size, seed=seed, indices=[i])
            r = PredictRecord(i, int(y[k]), int(pred), int(pred) == int(y[k]), time.perf_counter() - t)
            out.append(r)
            if on_record is not None:
                on_record(r)
            tick()
    return out


def certified_accuracy(records: Sequence[CertifyRecord], radii: Iterable[float]) -> list[float]:
    """Fraction of ``records`` certified correctly with radius ``>= r``, for each ``r``
    (at ``r = 0``: the smoothed classifier's accuracy, abstentions counted wrong)."""
    if not records:
        return [float("nan") for _ in radii]
    rad = np.array([r.radius if r.correct else -1.0 for r in records])
    return [float(np.mean(rad >= float(t))) for t in radii]


def accuracy_curve(records: Sequence[CertifyRecord]) -> list[tuple[float, float]]:
    """The step curve of certified accuracy vs radius: ``(radius, accuracy)`` at 0 and at each
    distinct certified radius of a correct point (the accuracy holds up to and at that
    radius and drops right after it)."""
    radii = sorted({0.0} | {float(r.radius) for r in records if r.correct})
    return list(zip(radii, certified_accuracy(records, radii)))


def step_points(curve: Sequence[Sequence[float]]) -> list[tuple[float, float]]:
    """The points of :func:`accuracy_curve` ``[(radius, accuracy)]`` for a step drawing
    (``line_chart(step=True)``): the accuracy at ``r_i`` holds on ``(r_{i-1}, r_i]``, 0 past the last."""
    return ([tuple(curve[0])] + [(curve[i - 1][0], curve[i][1]) for i in range(1, len(curve))]
            + [(curve[-1][0], 0.0)])


def curve_svg(records: Sequence[CertifyRecord], *, sigma: float, title: str = "") -> str:
    """The certified accuracy curve as an SVG chart (a step function of the radius: the
    accuracy at radius ``r`` holds on ``(r_prev, r]`` and is 0 past the largest radius)."""
    from perturbkit.report.svg import line_chart

    pts = step_points(accuracy_curve(records))
    return line_chart({f"sigma = {sigma:g}": pts}, title=title or "certified accuracy (randomized smoothing)",
                      xlabel="L2 radius", ylabel="certified accuracy", step=True, y_range=(0.0, 1.0))


def summary(records: Sequence[CertifyRecord], *, sigma: float, cfg: CertifyConfig,
            radii: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0)) -> dict:
    """The JSON summary: certified accuracy at ``radii``, the curve, abstentions, the largest
    radius ``cfg.n`` samples can certify, time."""
    n_pts = len(records)
    return {
        "points": n_pts,
        "sigma": sigma,
        "n0": cfg.n0, "n": cfg.n, "alpha": cfg.alpha, "seed": cfg.seed,
        "max_certifiable_radius": max_certifiable_radius(sigma, cfg.n, cfg.alpha),
        "certified_accuracy": [{"radius": float(r), "accuracy": a} for r, a in zip(radii, certified_accuracy(records, radii))],
        "curve": [[r, a] for r, a in accuracy_curve(records)],
        "abstained": sum(1 for r in records if r.predict == ABSTAIN),
        "time_s": float(sum(r.time_s for r in records)),
    }


__all__ = ["CertifyConfig", "CertifyRecord", "PREDICT_TSV_HEADER", "PredictRecord", "TSV_HEADER", "accuracy_curve", "certified_accuracy", "certify_dataset",
           "curve_svg", "format_predict_row", "step_points", "format_tsv_row", "predict_dataset", "summary"]
