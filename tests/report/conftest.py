import pytest

from perturbkit.report.build import ReportConfig, report

#: a small, quick report: 2 bundled models, 12 points, 3 radii
TINY = ReportConfig(budget="fast", points=12, eps_grid=(0.0, 0.05, 0.1), noise_severities=(0.0, 0.2),
                    blur_severities=(0.0, 1.0))


@pytest.fixture(scope="session")
def tiny_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    rep = report(["digits-mlp", "digits-cnn-adv"], "digits", config=TINY, out_dir=str(out), progress=False)
    rep.to_json(out / "report.json")
    rep.to_html(out / "report.html")
    return rep, out
