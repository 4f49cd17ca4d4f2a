"""Self-contained SVG line charts (no plotting library): what the CLI writes for curves such as
certified accuracy vs radius, and what an HTML page can inline.

:func:`line_chart` draws one or more series of ``(x, y)`` points on linear axes with ticks,
labels and a legend; ``step=True`` draws them as right-continuous step functions (a certified
accuracy curve holds its value up to the next radius).  Every text is XML-escaped.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence
from xml.sax.saxutils import escape

#: colour-blind-safe palette (Okabe and Ito 2008)
COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values covering [lo, hi]."""
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    out, v = [], start
    while v <= hi + 1e-9 * step:
        if v >= lo - 1e-9 * step:
            out.append(round(v, 12))
        v += step
    return out


def line_chart(series: Mapping[str, Sequence[tuple[float, float]]], *, title: str = "", xlabel: str = "",
               ylabel: str = "", step: bool = False, width: int = 560, height: int = 360,
               y_range: tuple[float, float] | None = None) -> str:
    """An SVG document (a string) with one polyline per series (name -> points)."""
    pts = [(float(x), float(y)) for s in series.values() for x, y in s if math.isfinite(x) and math.isfinite(y)]
    if not pts:
        raise ValueError("line_chart: no finite points to draw")
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = y_range if y_range is not None else (min(p[1] for p in pts), max(p[1] for p in pts))
    if x1 <= x0:
        x1 = x0 + 1.0
    if y1 <= y0:
        y1 = y0 + 1.0
    left, right, top, bottom = 64, 16, 36 if title else 16, 48
    pw, ph = width - left - right, height - top - bottom

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        return top + (1.0 - (y - y0) / (y1 - y0)) * ph

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
           f'<rect x="0" y="0" width="{width}" height="{height}" fill="white"/>']
    if title:
        out.append(f'<text x="{width / 2:.1f}" y="20" text-anchor="middle" font-size="14">{escape(title)}</text>')
    for t in _ticks(x0, x1):
        out.append(f'<line x1="{sx(t):.1f}" y1="{top}" x2="{sx(t):.1f}" y2="{top + ph}" stroke="#e5e5e5"/>')
        out.append(f'<text x="{sx(t):.1f}" y="{top + ph + 16}" text-anchor="middle">{t:g}</text>')
    for t in _ticks(y0, y1):
        out.append(f'<line x1="{left}" y1="{sy(t):.1f}" x2="{left + pw}" y2="{sy(t):.1f}" stroke="#e5e5e5"/>')
        out.append(f'<text x="{left - 6}" y="{sy(t) + 4:.1f}" text-anchor="end">{t:g}</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>')
    if xlabel:
        out.append(f'<text x="{left + pw / 2:.1f}" y="{height - 8}" text-anchor="middle">{escape(xlabel)}</text>')
    if ylabel:
        out.append(f'<text x="14" y="{top + ph / 2:.1f}" text-anchor="middle" '
                   f'transform="rotate(-90 14 {top + ph / 2:.1f})">{escape(ylabel)}</text>')
    for k, (name, s) in enumerate(series.items()):
        s = sorted((float(x), float(y)) for x, y in s if math.isfinite(x) and math.isfinite(y))
        if not s:
            continue
        path = []
        for i, (x, y) in enumerate(s):
            if step and i > 0:
                path.append((x, s[i - 1][1]))
            path.append((x, y))
        colour = COLOURS[k % len(COLOURS)]
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in path)
        out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{coords}">'
                   f'<title>{escape(name)}</title></polyline>')
        ly = top + 14 + 16 * k
        out.append(f'<line x1="{left + pw - 150}" y1="{ly - 4}" x2="{left + pw - 130}" y2="{ly - 4}" '
                   f'stroke="{colour}" stroke-width="2"/>')
        out.append(f'<text x="{left + pw - 125}" y="{ly}">{escape(name)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


__all__ = ["COLOURS", "line_chart"]
