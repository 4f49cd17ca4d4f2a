"""``perturbkit.report(models, data, ...) -> Report``: every measurement of the robustness
report, per model, as one versioned JSON-ready record (``report/schema.json``).

Sections per model, each computed by one function of :mod:`perturbkit.analysis` (or of
:mod:`perturbkit.smoothing`) and kept, once finished, in a state folder so ``resume=True``
continues an interrupted report: clean accuracy and logit gaps; certified accuracy vs eps
(IBP, CROWN, alpha-CROWN); empirical robust accuracy vs eps (the budget's attacks), with the
consistency check (a certified point broken by an attack is an error shown on the page) and
the attacks' sanity flags; the power law of the strongest attack's error; randomized
smoothing's certified accuracy vs L2 radius; accuracy under Gaussian noise and blur; the Fourier
heat map; saliency (input gradient, SmoothGrad) beside the adversarial perturbation found.
With several models, :func:`rating` ranks them per setting and overall.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from perturbkit.errors import InputError
from perturbkit.report.budget import Budget, budget as get_budget

SCHEMA_NAME = "perturbkit.report"
SCHEMA_VERSION = 1
#: default eps grids per norm (inputs in [0, 1])
EPS_GRIDS = {"inf": (0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2), "2": (0.0, 0.1, 0.25, 0.5, 1.0, 2.0),
             "1": (0.0, 0.5, 1.0, 2.0, 5.0, 10.0)}
NOISE_SEVERITIES = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5)
BLUR_SEVERITIES = (0.0, 0.5, 0.75, 1.0, 1.5, 2.0)
SMOOTHING_RADII = (0.0, 0.25, 0.5, 0.75, 1.0)
#: what each sanity flag of the attacks means, in plain words
FLAG_TEXT = {
    "softmax_outputs": "the model outputs probabilities, not logits: attacks on softmax outputs can stall "
                       "(gradient masking)",
    "randomized": "the model gives different outputs for the same input: it is randomised, and attacks need "
                  "expectation over its randomness",
    "zero_gradients": "the gradient is exactly zero at some points: gradient-based attacks there see nothing "
                      "(gradient masking)",
    "nan_gradients": "the gradient is NaN at some points",
    "black_box_beats_white_box": "a black-box attack broke points the white-box attacks missed: a sign of "
                                 "gradient masking",
    "fgsm_beats_pgd": "one-step FGSM broke points that PGD missed: PGD is not converging",
    "norm_exceeds_eps": "an attack returned a perturbation larger than eps (a bug)",
}


@dataclass(frozen=True)
class ReportConfig:
    norm: str = "inf"
    eps_grid: Optional[tuple[float, ...]] = None
    budget: str = "fast"
    domain: tuple[float, float] = (0.0, 1.0)
    sigma: float = 0.25
    smoothing_alpha: float = 0.001
    noise_severities: tuple[float, ...] = NOISE_SEVERITIES
    blur_severities: tuple[float, ...] = BLUR_SEVERITIES
    fourier_norm: Optional[float] = None
    seed: int = 0
    points: Optional[int] = None  # overrides the budget's number of points

    def resolved_budget(self) -> Budget:
        from dataclasses import replace

        b = get_budget(self.budget)
        if self.points is None:
            return b
        return replace(b, points=self.points, smoothing_points=min(self.points, b.smoothing_points or self.points))

    def grid(self) -> tuple[float, ...]:
        return tuple(self.eps_grid) if self.eps_grid is not None else EPS_GRIDS[self.norm]


@dataclass
class Report:
    """The record (``record``: the JSON of ``report/schema.json``); :meth:`to_json` and
    :meth:`to_html` write it (atomically)."""

    record: dict = field(repr=False)

    def to_json(self, path: str | os.PathLike) -> None:
        from perturbkit._atomic import write_text_atomic

        write_text_atomic(path, json.dumps(self.record, indent=1, allow_nan=False) + "\n")

    def to_html(self, path: str | os.PathLike) -> None:
        from perturbkit._atomic import write_text_atomic
        from perturbkit.report.html import render

        write_text_atomic(path, render(self.record))

    @property
    def errors(self) -> list[str]:
        """The consistency errors of every model (must be empty)."""
        return [f"{m['name']}: {v}" for m in self.record["models"] for v in m["consistency"]["violations"]]


def validate(cfg: ReportConfig) -> None:
    if cfg.norm not in EPS_GRIDS:
        raise InputError(f"--norm must be one of {', '.join(EPS_GRIDS)}, got {cfg.norm!r}")
    grid = cfg.grid()
    if not grid:
        raise InputError("--eps-grid is empty: give at least one radius")
    if any(not (math.isfinite(e) and e >= 0) for e in grid):
        raise InputError(f"--eps-grid must be finite numbers >= 0, got {', '.join(f'{e:g}' for e in grid)}")
    get_budget(cfg.budget)
    if cfg.points is not None and cfg.points < 1:
        raise InputError(f"--points must be >= 1, got {cfg.points}")
    if not (math.isfinite(cfg.sigma) and cfg.sigma > 0):
        raise InputError(f"the smoothing sigma must be > 0, got {cfg.sigma:g}")
    lo, hi = cfg.domain
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise InputError(f"--domain needs finite LO < HI, got {lo:g} {hi:g}")


def _norm_value(norm: str) -> float:
    return math.inf if norm == "inf" else float(norm)


def _num(v: float) -> Optional[float]:
    v = float(v)
    return v if math.isfinite(v) else None


# ----------------------------------------------------------------------------- sections

def _clean(net, x, y, cfg, b) -> dict:
    from perturbkit.analysis import logit_gaps
    from perturbkit.analysis.corruptions import accuracy

    gaps = logit_gaps(net, x, y)
    counts, edges = np.histogram(gaps, bins=20)
    return {"clean_accuracy": accuracy(net, x, y),
            "logit_gaps": {"values": [float(g) for g in gaps], "median": float(np.median(gaps)),
                           "histogram": {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}}}


def _certified(net, x, y, cfg, b) -> dict:
    from perturbkit.analysis import certified_curve
    from perturbkit.bounds.alpha_crown import AlphaConfig

    out = []
    for m in ("ibp", "crown", "alpha-crown"):
        c = certified_curve(net, x, y, cfg.grid(), method=m, norm=_norm_value(cfg.norm), domain=cfg.domain,
                            alpha=AlphaConfig(iterations=b.alpha_iterations, stop_above=0.0))
        out.append({**c.to_json(), "per_point": [p.astype(int).tolist() for p in c.per_point]})
    return {"curves": out}


def _empirical(net, x, y, cfg, b) -> dict:
    from perturbkit.analysis import empirical_curve

    out, flags = [], {}
    mid = _saliency_eps_index(cfg.grid())
    adv = None
    for a in b.attacks:
        opts = {"steps": b.pgd_steps} if a == "pgd" else {}
        c, evals = empirical_curve(net, x, y, cfg.grid(), attack=a, norm=_norm_value(cfg.norm), domain=cfg.domain,
                                   seed=cfg.seed, **opts)
        out.append({**c.to_json(), "per_point": [p.astype(int).tolist() for p in c.per_point]})
        for ev in evals:
            for k, v in ev.flags.items():
                flags[k] = max(flags.get(k, 0), int(v))
        if mid is not None:
            adv = (evals[mid].x_adv[:b.saliency_samples] - x[:b.saliency_samples].numpy()).tolist()
    return {"curves": out, "flags": flags, "saliency_adversarial": adv}


def _saliency_eps_index(grid: Sequence[float]) -> Optional[int]:
    """The radius whose adversarial perturbations are shown: the middle non-zero one."""
    nz = [k for k, e in enumerate(grid) if e > 0]
    return nz[len(nz) // 2] if nz else None


def _smoothing(net, x, y, cfg, b) -> dict:
    from perturbkit.smoothing import CertifyConfig, Smooth, accuracy_curve, certified_accuracy, certify_dataset
    from perturbkit.smoothing.stats import max_certifiable_radius

    n_pts = x.shape[0] if b.smoothing_points is None else min(x.shape[0], b.smoothing_points)
    with torch.no_grad():
        classes = net(x[:1]).reshape(1, -1).shape[1]
    c = CertifyConfig(n0=b.smoothing_n0, n=b.smoothing_n, alpha=cfg.smoothing_alpha, seed=cfg.seed)
    recs = certify_dataset(Smooth(net, cfg.sigma, classes), x[:n_pts], y[:n_pts].numpy(), c)
    return {"sigma": cfg.sigma, "n0": c.n0, "n": c.n, "alpha": c.alpha, "points": n_pts,
            "max_certifiable_radius": max_certifiable_radius(cfg.sigma, c.n, c.alpha),
            "radii": list(SMOOTHING_RADII), "certified_accuracy": certified_accuracy(recs, SMOOTHING_RADII),
            "curve": [[r, a] for r, a in accuracy_curve(recs)],
            "abstained": sum(r.predict == -1 for r in recs)}


def _corruptions(net, x, y, cfg, b) -> dict:
    from perturbkit.analysis import corruption_curve

    return {"noise": [list(p) for p in corruption_curve(net, x, y, "noise", cfg.noise_severities, seed=cfg.seed,
                                                        domain=cfg.domain)],
            "blur": [list(p) for p in corruption_curve(net, x, y, "blur", cfg.blur_severities)] if x.dim() == 4 else None}


def _fourier(net, x, y, cfg, b) -> dict:
    from perturbkit.analysis import fourier_heat_map

    if x.dim() != 4:
        return {"norm": None, "error": None}
    norm = cfg.fourier_norm if cfg.fourier_norm is not None else 0.1 * math.sqrt(x[0].numel())
    return {"norm": norm, "error": fourier_heat_map(net, x, y, norm=norm, domain=cfg.domain).tolist()}


def _saliency(net, x, y, cfg, b) -> dict:
    from perturbkit.analysis import input_gradient, smoothgrad

    k = min(b.saliency_samples, x.shape[0])
    xs, ys = x[:k], y[:k]
    return {"indices": list(range(k)), "labels": ys.tolist(), "images": xs.tolist(),
            "input_gradient": input_gradient(net, xs, ys).tolist(),
            "smoothgrad": smoothgrad(net, xs, ys, n=b.smoothgrad_n, value_range=cfg.domain, seed=cfg.seed).tolist()}


#: section name -> (function, what the progress bar says)
SECTIONS: dict[str, tuple[Callable, str]] = {
    "clean": (_clean, "clean accuracy"),
    "certified": (_certified, "certified accuracy (IBP, CROWN, alpha-CROWN)"),
    "empirical": (_empirical, "attacks"),
    "smoothing": (_smoothing, "randomized smoothing"),
    "corruptions": (_corruptions, "noise and blur"),
    "fourier": (_fourier, "Fourier heat map"),
    "saliency": (_saliency, "saliency"),
}


# ----------------------------------------------------------------------------- assembly

def _fingerprint(name: str, x: np.ndarray, y: np.ndarray, cfg: ReportConfig, b: Budget, model_bytes: bytes) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([name, asdict(cfg), asdict(b), SCHEMA_VERSION], sort_keys=True, default=str).encode())
    h.update(model_bytes)
    h.update(np.ascontiguousarray(x).tobytes())
    h.update(np.ascontiguousarray(y).tobytes())
    return h.hexdigest()[:16]


def _model_record(name: str, path: str, sections: dict, cfg: ReportConfig, b: Budget, times: dict) -> dict:
    from perturbkit.analysis import fit_power_law
    from perturbkit.analysis.curves import Curve, check_consistency

    grid = list(cfg.grid())
    cert = sections["certified"]["curves"]
    emp = sections["empirical"]["curves"]

    def curves(rows, kind):
        return [Curve(r["method"], kind, tuple(r["eps"]), tuple(r["accuracy"]),
                      tuple(np.array(p, dtype=bool) for p in r["per_point"])) for r in rows]

    violations = check_consistency(curves(cert, "certified"), curves(emp, "empirical"))
    best_cert = [max(c["accuracy"][k] for c in cert) for k in range(len(grid))]
    best_emp = [min(c["accuracy"][k] for c in emp) for k in range(len(grid))]
    strongest = emp[-1]
    clean_err = 1.0 - sections["clean"]["clean_accuracy"]
    fit = fit_power_law(grid, [1.0 - a for a in strongest["accuracy"]], clean_error=clean_err)
    flags = sections["empirical"]["flags"]
    return {
        "name": name, "path": path,
        "clean_accuracy": sections["clean"]["clean_accuracy"],
        "logit_gaps": sections["clean"]["logit_gaps"],
        "certified": [{k: v for k, v in c.items() if k != "per_point"} for c in cert],
        "empirical": [{k: v for k, v in c.items() if k != "per_point"} for c in emp],
        "best_certified": best_cert, "best_empirical": best_emp,
        "gap": [e - c for c, e in zip(best_cert, best_emp)],
        "consistency": {"ok": not violations, "violations": violations},
        "power_law": None if fit is None else {"attack": strongest["method"], **fit.to_json()},
        "flags": flags,
        "flag_text": [f"{FLAG_TEXT.get(k, k)} ({v} points)" for k, v in sorted(flags.items()) if v],
        "smoothing": sections["smoothing"],
        "noise": sections["corruptions"]["noise"], "blur": sections["corruptions"]["blur"],
        "fourier": sections["fourier"],
        "saliency": {**sections["saliency"], "adversarial": sections["empirical"]["saliency_adversarial"],
                     "adversarial_eps": (grid[_saliency_eps_index(grid)] if _saliency_eps_index(grid) is not None
                                         else None),
                     "adversarial_attack": strongest["method"]},
        "time_s": times,
    }


def rating(models: Sequence[dict], grid: Sequence[float]) -> dict:
    """Ranks of the models (1 = most robust; ties share the better rank) in every setting
    (clean accuracy; certified and empirical robust accuracy at each non-zero eps; smoothing at
    radii 0.25 and 0.5; noise and blur at their middle severity) and overall (mean rank)."""
    settings: list[tuple[str, list[float]]] = [("clean accuracy", [m["clean_accuracy"] for m in models])]
    for k, e in enumerate(grid):
        if e > 0:
            settings.append((f"certified @ eps {e:g}", [m["best_certified"][k] for m in models]))
            settings.append((f"empirical @ eps {e:g}", [m["best_empirical"][k] for m in models]))
    for k, r in enumerate(SMOOTHING_RADII):
        if r in (0.25, 0.5):
            settings.append((f"smoothed @ L2 {r:g}", [m["smoothing"]["certified_accuracy"][k] for m in models]))
    for kind in ("noise", "blur"):
        if all(m[kind] for m in models):
            mid = len(models[0][kind]) // 2
            settings.append((f"{kind} severity {models[0][kind][mid][0]:g}", [m[kind][mid][1] for m in models]))
    rows = []
    for name, vals in settings:
        ranks = [1 + sum(v2 > v + 1e-12 for v2 in vals) for v in vals]
        rows.append({"setting": name, "values": vals, "ranks": ranks})
    overall = [float(np.mean([r["ranks"][i] for r in rows])) for i in range(len(models))]
    return {"models": [m["name"] for m in models], "settings": rows, "overall": overall,
            "order": [models[i]["name"] for i in np.argsort(overall, kind="stable")]}


def report(models: Sequence[str], data: Any, *, config: ReportConfig = ReportConfig(), out_dir: Optional[str] = None,
           resume: bool = False, progress: bool = True, data_name: Optional[str] = None,
           names: Optional[Sequence[str]] = None) -> Report:
    """Measure every model of ``models`` (ONNX paths or bundled names) on ``data`` (a data spec
    of :func:`perturbkit.attacks.data.load_dataset`, or ``(x, y)`` arrays) and return the
    :class:`Report`.  With ``out_dir``, finished sections are kept under ``out_dir/.state`` and
    ``resume=True`` reuses them (keyed by the model file, the data, the settings and the budget)."""
    import perturbkit
    from perturbkit.attacks.data import fit_to_model, load_dataset
    from perturbkit.models import resolve_model

    validate(config)
    if not models:
        raise InputError("no model to report on")
    b = config.resolved_budget()
    if isinstance(data, (str, os.PathLike)):
        data_name = data_name or str(data)
        x_all, y_all = load_dataset(data)
    else:
        x_all, y_all = (np.asarray(v) for v in data)
        data_name = data_name or "arrays"
    loaded = []
    for spec in models:  # load and check every model before any work
        path = resolve_model(str(spec))
        net = perturbkit.load(str(path))
        x = fit_to_model(np.asarray(x_all, dtype=np.float32), net.sample_shape, where=f"data {data_name}")
        n = x.shape[0] if b.points is None else min(b.points, x.shape[0])
        x, y = x[:n], np.asarray(y_all[:n], dtype=np.int64)
        lo, hi = config.domain
        if not np.isfinite(x).all() or x.min() < lo - 1e-6 or x.max() > hi + 1e-6:
            raise InputError(f"data {data_name}: inputs must be finite and inside the domain [{lo:g}, {hi:g}]")
        with torch.no_grad():
            z = net(torch.from_numpy(x[:1]))
        if y.min() < 0 or y.max() >= z.reshape(1, -1).shape[1]:
            raise InputError(f"data {data_name}: labels outside 0..{z.reshape(1, -1).shape[1] - 1} for model {spec}")
        loaded.append((str(spec), str(path), net, x, y, Path(path).read_bytes()))
    state = Path(out_dir) / ".state" if out_dir is not None else None
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(loaded) * len(SECTIONS), desc="report", unit="step", leave=False)
    records = []
    t0 = time.perf_counter()
    try:
        for i, (spec, path, net, x, y, raw) in enumerate(loaded):
            name = names[i] if names is not None else spec
            key = _fingerprint(spec, x, y, config, b, raw)
            xt, yt = torch.from_numpy(x), torch.from_numpy(y)
            sections, times = {}, {}
            for sec, (fn, what) in SECTIONS.items():
                if bar is not None:
                    bar.set_description(f"{name}: {what}")
                cached = state / key / f"{sec}.json" if state is not None else None
                if resume and cached is not None and cached.exists():
                    got = json.loads(cached.read_text())
                    sections[sec], times[sec] = got["value"], got["time_s"]
                else:
                    t = time.perf_counter()
                    sections[sec] = fn(net, xt, yt, config, b)
                    times[sec] = time.perf_counter() - t
                    if cached is not None:
                        from perturbkit._atomic import write_text_atomic

                        cached.parent.mkdir(parents=True, exist_ok=True)
                        write_text_atomic(cached, json.dumps({"value": sections[sec], "time_s": times[sec]}))
                if bar is not None:
                    bar.update(1)
            records.append(_model_record(name, path, sections, config, b, times))
    finally:
        if bar is not None:
            bar.close()
    record = {
        "schema": SCHEMA_NAME, "version": SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "perturbkit_version": perturbkit.__version__,
        "settings": {"data": data_name, "points": int(loaded[0][3].shape[0]), "norm": config.norm,
                     "eps_grid": list(config.grid()), "domain": list(config.domain), "budget": asdict(b),
                     "sigma": config.sigma, "smoothing_alpha": config.smoothing_alpha,
                     "noise_severities": list(config.noise_severities),
                     "blur_severities": list(config.blur_severities), "seed": config.seed},
        "models": records,
        "rating": rating(records, config.grid()) if len(records) > 1 else None,
        "time_s": time.perf_counter() - t0,
    }
    return Report(_finite(record))


def _finite(v: Any) -> Any:
    """The record with every non-finite float as None (JSON has no infinity or NaN)."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _finite(w) for k, w in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(w) for w in v]
    if isinstance(v, (np.floating, np.integer)):
        return _finite(v.item())
    return v


__all__ = ["BLUR_SEVERITIES", "EPS_GRIDS", "NOISE_SEVERITIES", "Report", "ReportConfig", "SCHEMA_NAME",
           "SCHEMA_VERSION", "rating", "report", "validate"]
