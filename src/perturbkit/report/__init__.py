"""Rendering of results: self-contained SVG charts (``svg.py``), no plotting dependency."""
from perturbkit.report.svg import line_chart

__all__ = ["line_chart"]
