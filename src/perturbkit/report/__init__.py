"""The robustness report: ``perturbkit.report(models, data, ...) -> Report`` (``build.py``:
every measurement, one versioned JSON record, ``schema.json``), rendered to one self-contained
HTML page (``html.py``) with dependency-free SVG charts (``svg.py``).

``perturbkit.report(...)`` calls :func:`perturbkit.report.build.report`, while
``perturbkit.report`` stays this package (``import perturbkit.report.svg`` works)."""
import sys as _sys
import types as _types

from perturbkit.report.build import Report, ReportConfig, report
from perturbkit.report.svg import bar_chart, heat_map, line_chart

__all__ = ["Report", "ReportConfig", "bar_chart", "heat_map", "line_chart", "report"]


class _CallableModule(_types.ModuleType):
    def __call__(self, *args, **kwargs) -> Report:
        return report(*args, **kwargs)


_sys.modules[__name__].__class__ = _CallableModule
