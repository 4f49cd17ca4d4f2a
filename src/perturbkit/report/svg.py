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


def _axis_labels(xlabel: str, ylabel: str, left: float, top: float, pw: float, ph: float, height: float) -> list[str]:
    """The x label under the plot area and the y label rotated beside it."""
    out = []
    if xlabel:
        out.append(f'<text x="{left + pw / 2:.1f}" y="{height - 8}" text-anchor="middle">{escape(xlabel)}</text>')
    if ylabel:
        out.append(f'<text x="14" y="{top + ph / 2:.1f}" text-anchor="middle" '
                   f'transform="rotate(-90 14 {top + ph / 2:.1f})">{escape(ylabel)}</text>')
    return out


def line_chart(series: Mapping[str, Sequence[tuple[float, float]]], *, title: str = "", xlabel: str = "",
               ylabel: str = "", step: bool = False, width: int = 560, height: int = 360,
               y_range: tuple[float, float] | None = None, dashed: Sequence[str] = (),
               markers: bool = False, legend: str = "top-right") -> str:
    """An SVG document (a string) with one polyline per series (name -> points); the series
    named in ``dashed`` are drawn dashed; ``markers`` draws a dot at every point; ``legend``
    ``"top-right"`` or ``"bottom-left"`` (for falling curves)."""
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
    out.extend(_axis_labels(xlabel, ylabel, left, top, pw, ph, height))
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
        dash = ' stroke-dasharray="6 4"' if name in dashed else ""
        out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2"{dash} points="{coords}">'
                   f'<title>{escape(name)}</title></polyline>')
        if markers:
            out.extend(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{colour}"/>' for x, y in s)
        if legend == "bottom-left":
            lx, ly = left + 10, top + ph - 8 - 16 * (len(series) - 1 - k)
        else:
            lx, ly = left + pw - 170, top + 14 + 16 * k
        out.append(f'<line x1="{lx}" y1="{ly - 4}" x2="{lx + 20}" y2="{ly - 4}" '
                   f'stroke="{colour}" stroke-width="2"{dash}/>')
        out.append(f'<text x="{lx + 25}" y="{ly}">{escape(name)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def bar_chart(edges: Sequence[float], counts: Sequence[int], *, title: str = "", xlabel: str = "",
              ylabel: str = "count", width: int = 560, height: int = 300, mark: float | None = None) -> str:
    """A histogram: bars between consecutive ``edges`` (len(counts) + 1 of them) with heights
    ``counts``; a vertical line at ``mark`` (e.g. a zero margin)."""
    if len(edges) != len(counts) + 1 or not counts:
        raise ValueError("bar_chart: needs len(edges) == len(counts) + 1 >= 2")
    x0, x1 = float(edges[0]), float(edges[-1])
    if x1 <= x0:
        x1 = x0 + 1.0
    top_count = max(1, max(int(c) for c in counts))
    left, right, top, bottom = 64, 16, 36 if title else 16, 48
    pw, ph = width - left - right, height - top - bottom

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * pw

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
           f'<rect x="0" y="0" width="{width}" height="{height}" fill="white"/>']
    if title:
        out.append(f'<text x="{width / 2:.1f}" y="20" text-anchor="middle" font-size="14">{escape(title)}</text>')
    for t in _ticks(0, top_count):
        y = top + (1 - t / top_count) * ph
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + pw}" y2="{y:.1f}" stroke="#e5e5e5"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{t:g}</text>')
    for t in _ticks(x0, x1):
        out.append(f'<text x="{sx(t):.1f}" y="{top + ph + 16}" text-anchor="middle">{t:g}</text>')
    for a, b, c in zip(edges[:-1], edges[1:], counts):
        h = int(c) / top_count * ph
        out.append(f'<rect x="{sx(a):.1f}" y="{top + ph - h:.1f}" width="{max(0.5, sx(b) - sx(a) - 1):.1f}" '
                   f'height="{h:.1f}" fill="{COLOURS[0]}"><title>[{a:.3g}, {b:.3g}): {int(c)}</title></rect>')
    if mark is not None and x0 <= mark <= x1:
        out.append(f'<line x1="{sx(mark):.1f}" y1="{top}" x2="{sx(mark):.1f}" y2="{top + ph}" stroke="{COLOURS[1]}" '
                   f'stroke-width="2" stroke-dasharray="4 3"/>')
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>')
    out.extend(_axis_labels(xlabel, ylabel, left, top, pw, ph, height))
    out.append("</svg>")
    return "\n".join(out) + "\n"


#: a perceptually ordered colour ramp (viridis' ends and three stops between)
_RAMP = ((68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37))


def _ramp(t: float) -> str:
    t = min(1.0, max(0.0, t)) * (len(_RAMP) - 1)
    i = min(int(t), len(_RAMP) - 2)
    f = t - i
    c = [round(a + (b - a) * f) for a, b in zip(_RAMP[i], _RAMP[i + 1])]
    return f"rgb({c[0]},{c[1]},{c[2]})"


def _diverging(t: float) -> str:
    """-1 blue, 0 white, +1 red."""
    t = min(1.0, max(-1.0, t))
    if t >= 0:
        return f"rgb(255,{round(255 * (1 - t))},{round(255 * (1 - t))})"
    return f"rgb({round(255 * (1 + t))},{round(255 * (1 + t))},255)"


def heat_map(values: Sequence[Sequence[float]], *, title: str = "", cell: int = 24, vmin: float | None = None,
             vmax: float | None = None, scale: str = "ramp", legend: str = "") -> str:
    """A grid of coloured cells (row 0 at the top): ``scale`` ``"ramp"`` (low dark, high
    yellow), ``"grey"`` (low black, high white) or ``"diverging"`` (symmetric around 0);
    a colour bar with ``legend`` beside it."""
    rows = [[float(v) for v in r] for r in values]
    if not rows or not rows[0]:
        raise ValueError("heat_map: no values")
    flat = [v for r in rows for v in r if math.isfinite(v)]
    lo = vmin if vmin is not None else (min(flat) if flat else 0.0)
    hi = vmax if vmax is not None else (max(flat) if flat else 1.0)
    if scale == "diverging":
        m = max(abs(lo), abs(hi)) or 1.0
        lo, hi = -m, m
    if hi <= lo:
        hi = lo + 1.0

    def colour(v: float) -> str:
        if not math.isfinite(v):
            return "#ccc"
        t = (v - lo) / (hi - lo)
        if scale == "grey":
            g = round(255 * min(1.0, max(0.0, t)))
            return f"rgb({g},{g},{g})"
        if scale == "diverging":
            return _diverging(2 * t - 1)
        return _ramp(t)

    h, w = len(rows), len(rows[0])
    top = 28 if title else 4
    bar_x = 8 + w * cell + 10
    width, height = bar_x + 70, top + max(h * cell, 80) + 8
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
           f'<rect x="0" y="0" width="{width}" height="{height}" fill="white"/>']
    if title:
        out.append(f'<text x="8" y="18" font-size="13">{escape(title)}</text>')
    for i, r in enumerate(rows):
        for j, v in enumerate(r):
            out.append(f'<rect x="{8 + j * cell}" y="{top + i * cell}" width="{cell}" height="{cell}" '
                       f'fill="{colour(v)}"><title>({i}, {j}): {v:.4g}</title></rect>')
    steps = 20
    for k in range(steps):
        v = hi - (hi - lo) * k / (steps - 1)
        out.append(f'<rect x="{bar_x}" y="{top + k * 4}" width="12" height="4" fill="{colour(v)}"/>')
    out.append(f'<text x="{bar_x + 16}" y="{top + 8}">{hi:.3g}</text>')
    out.append(f'<text x="{bar_x + 16}" y="{top + steps * 4}">{lo:.3g}</text>')
    if legend:
        out.append(f'<text x="{bar_x}" y="{top + steps * 4 + 16}">{escape(legend)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


__all__ = ["COLOURS", "bar_chart", "heat_map", "line_chart"]
