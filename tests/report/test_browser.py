"""The report page in a real browser (Debian's headless Chromium; ``.ci/run`` installs it):
the page's own check marks every chart drawn and no script error, and a screenshot is taken
(``PERTURBKIT_SCREENSHOT=path`` keeps it)."""
import os
import re
import shutil
import subprocess

import pytest

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--virtual-time-budget=10000"]


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no Chromium: apt-get install chromium (.ci/run does)")


def test_report_renders_in_headless_chromium(tiny_report, tmp_path):
    exe = _chromium()
    _, out = tiny_report
    url = (out / "report.html").resolve().as_uri()
    args = [exe, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(args + ["--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    m = re.search(r'<html[^>]*data-rendered="([^"]*)"', dom.stdout)
    assert m is not None, "the page's load check did not run"
    assert m.group(1) == "ok", m.group(1)
    charts = int(re.search(r'data-charts="(\d+)"', dom.stdout).group(1))
    # per model: robustness, power law (if any), logit gaps, smoothing, noise, blur, Fourier, 4 x 4 saliency maps
    assert charts >= 2 * (5 + 16)
    shot = os.environ.get("PERTURBKIT_SCREENSHOT") or str(tmp_path / "report.png")
    res = subprocess.run(args + ["--window-size=1280,3000", f"--screenshot={shot}", url], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    with open(shot, "rb") as fh:
        png = fh.read()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 50_000  # a blank page compresses to a few KB
