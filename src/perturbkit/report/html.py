"""The report page: one self-contained HTML file (inline SVG charts, inline CSS, the JSON record
embedded; it opens offline) rendered from the record alone, so every number on the page comes
from ``report.json``.

A small script marks the page once it has loaded: ``<html data-rendered="ok">`` when every
chart has drawn (each ``svg.chart`` has content, no ``img`` is broken) and no script error
happened, else ``data-rendered="error: ..."``.  The browser test reads that mark.
"""
from __future__ import annotations

import json
import math
from html import escape
from typing import Any, Optional, Sequence

from perturbkit.report.svg import bar_chart, heat_map, line_chart

CSS = """
body { font-family: system-ui, sans-serif; margin: 0 auto; max-width: 1240px; padding: 16px 24px; color: #222; }
h1 { font-size: 26px; margin-bottom: 4px; } h2 { margin-top: 36px; border-bottom: 2px solid #ddd; padding-bottom: 4px; }
h3 { margin: 18px 0 6px 0; font-size: 16px; }
.sub { color: #666; margin-top: 0; }
.grid { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
.card { border: 1px solid #e3e3e3; border-radius: 8px; padding: 10px 12px; background: #fff; }
.headline { font-size: 18px; margin: 8px 0 12px 0; }
.headline b { font-size: 22px; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
th { background: #f5f5f5; } td.l, th.l { text-align: left; }
.error { background: #fde8e8; border: 2px solid #c0392b; color: #7b1d12; padding: 10px 14px; border-radius: 6px; }
.ok { color: #1e7e34; } .warn { color: #9c6500; }
.note { color: #555; font-size: 13px; max-width: 560px; }
.rank1 { background: #e6f4ea; font-weight: bold; }
.sal td { border: none; padding: 2px; text-align: center; font-size: 11px; }
"""

CHECK_JS = """
(function () {
  var errors = [];
  window.addEventListener('error', function (e) { errors.push(String(e.message || e)); });
  window.addEventListener('load', function () {
    var charts = document.querySelectorAll('svg.chart');
    for (var i = 0; i < charts.length; i++) {
      var bb = charts[i].getBBox();
      if (!charts[i].childElementCount || bb.width <= 0 || bb.height <= 0) { errors.push('empty chart ' + i); }
    }
    var imgs = document.querySelectorAll('img');
    for (var j = 0; j < imgs.length; j++) {
      if (!imgs[j].complete || imgs[j].naturalWidth === 0) { errors.push('broken image ' + j); }
    }
    try { JSON.parse(document.getElementById('report-data').textContent); } catch (e) { errors.push('bad JSON'); }
    document.documentElement.setAttribute('data-charts', String(charts.length));
    document.documentElement.setAttribute('data-rendered', errors.length ? 'error: ' + errors.join('; ') : 'ok');
  });
})();
"""


def _chart(svg: str) -> str:
    """Mark an SVG document as a chart of the page."""
    return svg.replace("<svg ", '<svg class="chart" ', 1)


def _pct(v: Optional[float]) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def _robustness_chart(m: dict, grid: Sequence[float], norm: str) -> str:
    series, dashed = {}, []
    for c in m["certified"]:
        name = f"certified: {c['method']}"
        series[name] = list(zip(c["eps"], c["accuracy"]))
    for c in m["empirical"]:
        series[f"empirical: {c['method']}"] = list(zip(c["eps"], c["accuracy"]))
        dashed.append(f"empirical: {c['method']}")
    return _chart(line_chart(series, title="robust accuracy vs eps: certified (solid) beside empirical (dashed)",
                             xlabel=f"eps (L{norm})", ylabel="accuracy", y_range=(0.0, 1.0), dashed=dashed,
                             markers=True, width=600, legend="bottom-left"))


def _power_law_chart(m: dict) -> Optional[str]:
    strongest = m["empirical"][-1]
    clean_err = 1.0 - m["clean_accuracy"]
    pts = [(math.log10(e), math.log10(1 - a - clean_err)) for e, a in zip(strongest["eps"], strongest["accuracy"])
           if e > 0 and 1 - a - clean_err > 0]
    if len(pts) < 2:
        return None
    series = {f"excess error, {strongest['method']}": pts}
    fit = m["power_law"]
    if fit is not None:
        lo, hi = math.log10(fit["eps_range"][0]), math.log10(fit["eps_range"][1])
        series[f"fit: k = {fit['exponent']:.2f}"] = [
            (t, math.log10(fit["prefactor"]) + fit["exponent"] * t) for t in (lo, hi)]
    return _chart(line_chart(series, title="adversarial error vs eps (log-log) with the power-law fit",
                             xlabel="log10 eps", ylabel="log10 (error - clean error)", markers=True,
                             dashed=[k for k in series if k.startswith("fit")]))


def _model_section(m: dict, settings: dict) -> str:
    grid, norm = settings["eps_grid"], settings["norm"]
    out = [f'<h2 id="{escape(m["name"])}">{escape(m["name"])}</h2>']
    if not m["consistency"]["ok"]:
        rows = "".join(f"<li>eps {v['eps']:g}: certified by {escape(v['certified_by'])} but broken by "
                       f"{escape(v['broken_by'])} (points {', '.join(map(str, v['points'][:20]))})</li>"
                       for v in m["consistency"]["violations"])
        out.append(f'<div class="error"><b>Consistency error (a bug): certified points were broken by an attack.'
                   f'</b><ul>{rows}</ul></div>')
    nz = [k for k, e in enumerate(grid) if e > 0]
    mid = nz[len(nz) // 2] if nz else 0
    out.append(f'<p class="headline">clean accuracy <b>{_pct(m["clean_accuracy"])}</b> &middot; at eps {grid[mid]:g}: '
               f'certified <b>{_pct(m["best_certified"][mid])}</b>, empirical <b>{_pct(m["best_empirical"][mid])}</b>, '
               f'unknown in between <b>{_pct(m["gap"][mid])}</b></p>')
    # the table of the curves
    head = "".join(f"<th>{e:g}</th>" for e in grid)
    rows = "".join(f'<tr><td class="l">certified: {escape(c["method"])}</td>'
                   + "".join(f"<td>{_pct(a)}</td>" for a in c["accuracy"]) + "</tr>" for c in m["certified"])
    rows += "".join(f'<tr><td class="l">empirical: {escape(c["method"])}</td>'
                    + "".join(f"<td>{_pct(a)}</td>" for a in c["accuracy"]) + "</tr>" for c in m["empirical"])
    rows += '<tr><td class="l"><b>gap</b> (not known either way)</td>' + "".join(
        f"<td><b>{_pct(g)}</b></td>" for g in m["gap"]) + "</tr>"
    cons = ('<p class="ok">Consistent: no certified point was broken by any attack.</p>' if m["consistency"]["ok"]
            else '<p class="error">Inconsistent: see the error above.</p>')
    out.append(f'<div class="grid"><div class="card">{_robustness_chart(m, grid, norm)}</div>'
               f'<div class="card"><h3>robust accuracy (L{escape(norm)})</h3><table><tr><th class="l">eps</th>{head}</tr>'
               f'{rows}</table>{cons}</div></div>')
    # power law and logit gaps
    pl = _power_law_chart(m)
    fit = m["power_law"]
    fit_text = ("No power law fitted: fewer than two radii with an error above the clean error and below 1."
                if fit is None else
                f"Excess error ~ {fit['prefactor']:.3g} &middot; eps<sup>{fit['exponent']:.2f}</sup> on "
                f"[{fit['eps_range'][0]:g}, {fit['eps_range'][1]:g}] ({fit['points']} radii, R<sup>2</sup> "
                f"{'n/a' if fit['r2'] is None else format(fit['r2'], '.3f')}), from {escape(fit['attack'])}.")
    lg = m["logit_gaps"]
    gaps = _chart(bar_chart(lg["histogram"]["edges"], lg["histogram"]["counts"], title="logit gaps z_y - max_j z_j",
                            xlabel="gap (negative: misclassified)", mark=0.0))
    out.append('<div class="grid">' + (f'<div class="card">{pl}<p class="note">{fit_text}</p></div>' if pl else
                                       f'<div class="card"><p class="note">{fit_text}</p></div>')
               + f'<div class="card">{gaps}<p class="note">median gap {lg["median"]:.3g}</p></div></div>')
    # smoothing, noise, blur
    sm = m["smoothing"]
    from perturbkit.smoothing.evaluate import step_points

    pts = step_points(sm["curve"])
    smooth = _chart(line_chart({f"sigma {sm['sigma']:g}": pts}, title="randomized smoothing: certified accuracy",
                               xlabel="L2 radius", ylabel="certified accuracy", step=True, y_range=(0.0, 1.0),
                               legend="bottom-left"))
    sm_note = (f"CERTIFY with n0 {sm['n0']}, n {sm['n']}, alpha {sm['alpha']:g} on {sm['points']} points; "
               f"the largest radius {sm['n']} samples can certify is {sm['max_certifiable_radius']:.3f}; "
               f"abstained on {sm['abstained']}. At radii "
               + ", ".join(f"{r:g}: {_pct(a)}" for r, a in zip(sm["radii"], sm["certified_accuracy"])) + ".")
    cards = [f'<div class="card">{smooth}<p class="note">{sm_note}</p></div>']
    for kind, label in (("noise", "Gaussian noise (standard deviation)"), ("blur", "Gaussian blur (pixels)")):
        if m[kind]:
            cards.append('<div class="card">' + _chart(line_chart(
                {kind: [tuple(p) for p in m[kind]]}, title=f"accuracy under {label.split(' (')[0].lower()}",
                xlabel=label, ylabel="accuracy", y_range=(0.0, 1.0), markers=True, width=420, height=300,
                legend="bottom-left")) + "</div>")
    out.append('<h3>natural perturbations and smoothing</h3><div class="grid">' + "".join(cards) + "</div>")
    # Fourier heat map and saliency
    fo = m["fourier"]
    row = []
    if fo["error"] is not None:
        row.append('<div class="card">' + _chart(heat_map(fo["error"], title=f"Fourier heat map (L2 norm {fo['norm']:.3g})",
                                                          vmin=0.0, vmax=1.0, legend="error rate", cell=28))
                   + '<p class="note">Error rate under a perturbation along each Fourier basis image; the zero '
                     'frequency is at the centre, the highest at the corners. Bright corners: the model is fragile '
                     'to high-frequency patterns.</p></div>')
    sal = m["saliency"]
    if sal["images"]:
        cols = ["image", "input gradient", "SmoothGrad"] + (
            [f"adversarial perturbation ({sal['adversarial_attack']}, eps {sal['adversarial_eps']:g})"]
            if sal.get("adversarial") else [])
        body = ""
        for k, idx in enumerate(sal["indices"]):
            maps = [(sal["images"][k], "grey"), (sal["input_gradient"][k], "diverging"), (sal["smoothgrad"][k], "diverging")]
            if sal.get("adversarial"):
                maps.append((sal["adversarial"][k], "diverging"))
            cells = "".join(f"<td>{_chart(heat_map(_first_channel(v), cell=10, scale=sc))}</td>" for v, sc in maps)
            body += f"<tr><td>#{idx}<br>label {sal['labels'][k]}</td>{cells}</tr>"
        row.append('<div class="card"><h3>saliency</h3><table class="sal"><tr><td></td>'
                   + "".join(f"<td>{escape(c)}</td>" for c in cols) + f"</tr>{body}</table></div>")
    out.append('<div class="grid">' + "".join(row) + "</div>")
    # flags
    if m["flag_text"]:
        out.append('<h3>sanity checks of the attacks</h3><ul class="warn">'
                   + "".join(f"<li>{escape(t)}</li>" for t in m["flag_text"]) + "</ul>")
    else:
        out.append('<h3>sanity checks of the attacks</h3><p class="ok">No sign of gradient masking: outputs are '
                   'logits, the model is deterministic, gradients are finite and non-zero, no black-box or '
                   'one-step attack beat the white-box attacks, every perturbation is inside its ball.</p>')
    return "\n".join(out)


def _first_channel(v: Any) -> list:
    """A (C, H, W) or (H, W) nested list as its first channel (H, W); a flat input as one row."""
    while isinstance(v, list) and v and isinstance(v[0], list) and v[0] and isinstance(v[0][0], list):
        v = v[0]
    if v and not isinstance(v[0], list):
        return [v]
    return v


def _rating_section(r: Optional[dict]) -> str:
    if not r:
        return ""
    head = "".join(f"<th>{escape(n)}</th>" for n in r["models"])
    rows = ""
    for s in r["settings"]:
        rows += f'<tr><td class="l">{escape(s["setting"])}</td>' + "".join(
            f'<td class="{"rank1" if rk == 1 else ""}">{_pct(v)} ({rk})</td>' for v, rk in zip(s["values"], s["ranks"])) + "</tr>"
    rows += '<tr><td class="l"><b>overall (mean rank)</b></td>' + "".join(
        f"<td><b>{o:.2f}</b></td>" for o in r["overall"]) + "</tr>"
    return (f'<h2>robustness rating</h2><p class="note">Rank of each model per setting (1 = most robust); the most '
            f'robust overall: <b>{escape(r["order"][0])}</b>.</p><table><tr><th class="l">setting</th>{head}</tr>{rows}</table>')


def render(record: dict) -> str:
    """The HTML page of a report record."""
    st = record["settings"]
    errors = [f"{m['name']}: eps {v['eps']:g}, certified by {v['certified_by']}, broken by {v['broken_by']}"
              for m in record["models"] for v in m["consistency"]["violations"]]
    err_box = ("" if not errors else '<div class="error"><b>Consistency errors: certified accuracy above empirical '
               'robust accuracy.</b> This is a bug in a bound or an attack and the numbers below cannot all be '
               'right.<ul>' + "".join(f"<li>{escape(e)}</li>" for e in errors) + "</ul></div>")
    toc = " &middot; ".join(f'<a href="#{escape(m["name"])}">{escape(m["name"])}</a>' for m in record["models"])
    data = json.dumps(record, allow_nan=False).replace("</", "<\\/")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>perturbkit robustness report</title>
<style>{CSS}</style><script>{CHECK_JS}</script></head><body>
<h1>How robust is it, and how sure are we?</h1>
<p class="sub">perturbkit {escape(record['perturbkit_version'])} &middot; {escape(record['created'])} &middot; data
{escape(str(st['data']))} ({st['points']} points) &middot; L{escape(st['norm'])} eps grid {', '.join(f'{e:g}' for e in st['eps_grid'])}
&middot; budget {escape(st['budget']['name'])} &middot; {record['time_s']:.0f} s</p>
{err_box}
<p class="note">Certified accuracy (IBP, CROWN, alpha-CROWN) is proved: no perturbation in the ball changes those
answers. Empirical robust accuracy (attacks) is an upper bound: the attacks found no counterexample for those
points. The truth lies between the two; the gap is what nobody knows yet. Models: {toc}</p>
{_rating_section(record.get('rating'))}
{''.join(_model_section(m, st) for m in record['models'])}
<script type="application/json" id="report-data">{data}</script>
</body></html>
"""


__all__ = ["render"]
