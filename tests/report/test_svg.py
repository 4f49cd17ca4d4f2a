"""The SVG line chart: well-formed XML, every point inside the plot area, step curves, escaping."""
import xml.etree.ElementTree as ET

import pytest

from perturbkit.report.svg import line_chart

NS = "{http://www.w3.org/2000/svg}"


def _polylines(svg: str):
    root = ET.fromstring(svg)
    return root, [[tuple(map(float, p.split(","))) for p in pl.get("points").split()] for pl in root.iter(NS + "polyline")]


def test_points_land_in_the_plot_area_and_steps_add_corners():
    svg = line_chart({"a <b>": [(0, 1.0), (0.5, 0.8), (1.0, 0.2)], "c": [(0, 0.5), (1, 0.5)]}, title="t & u",
                     xlabel="radius", ylabel="accuracy", step=True, y_range=(0, 1))
    root, lines = _polylines(svg)
    w, h = float(root.get("width")), float(root.get("height"))
    assert len(lines) == 2 and len(lines[0]) == 5  # 3 points + 2 step corners
    for line in lines:
        for x, y in line:
            assert 0 <= x <= w and 0 <= y <= h
    # y = 1 is drawn above y = 0.2 (SVG y grows downwards), x = 0 left of x = 1
    assert lines[0][0][1] < lines[0][-1][1] and lines[0][0][0] < lines[0][-1][0]
    assert "a &lt;b&gt;" in svg and "t &amp; u" in svg


def test_no_points_is_an_error():
    with pytest.raises(ValueError):
        line_chart({"a": [(float("nan"), 1.0)]})
