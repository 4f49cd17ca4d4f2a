"""``perturbkit smooth certify|predict`` and ``perturbkit conformal``: the TSV and JSON records,
resuming, agreement with the Python API, and bad input (exit 2, one stderr line, nothing written)."""
from __future__ import annotations

import json

import pytest
import torch

import perturbkit
from perturbkit.cli.main import main
from perturbkit.models import bundled_path, load_digits_test
from perturbkit.smoothing import Smooth


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_certify_tsv_json_and_the_api_agree(capsys, tmp_path):
    tsv, js = tmp_path / "c.tsv", tmp_path / "c.json"
    code, out, err = _run(capsys, "smooth", "certify", "digits-cnn-noise", "--data", "digits", "--sigma", 0.25,
                          "--n0", 50, "--n", 300, "--max", 6, "--out", tsv, "--json", js, "--no-progress")
    assert code == 0, err
    lines = tsv.read_text().splitlines()
    assert lines[0] == "idx\tlabel\tpredict\tradius\tcorrect\ttime" and len(lines) == 7
    rec = json.loads(js.read_text())
    assert rec["points"] == 6 and rec["certified_accuracy"][0]["radius"] == 0.0
    assert "largest radius 300 samples can certify" in out
    net = perturbkit.load(str(bundled_path("digits-cnn-noise")), forward_only=True)
    x, _ = load_digits_test()
    smooth = Smooth(net, 0.25, 10)
    for r in rec["records"]:
        pred, radius = smooth.certify(torch.from_numpy(x[r["idx"]]), 50, 300, 0.001, index=r["idx"])
        assert (pred, radius) == (r["predict"], pytest.approx(r["radius"], rel=1e-12))


def test_certify_resume_keeps_finished_rows(capsys, tmp_path):
    tsv = tmp_path / "c.tsv"
    args = ["smooth", "certify", "digits-cnn-noise", "--data", "digits", "--sigma", 0.25, "--n0", 20, "--n", 100,
            "--out", tsv, "--no-progress"]
    assert _run(capsys, *args, "--max", 3)[0] == 0
    first = tsv.read_text().splitlines()
    with open(tsv, "a") as fh:
        fh.write("3\t1\t")  # a row cut by an interruption
    code, out, err = _run(capsys, *args, "--max", 5, "--resume")
    assert code == 0, err
    lines = tsv.read_text().splitlines()
    assert lines[:4] == first and [line.split("\t")[0] for line in lines[1:]] == ["0", "1", "2", "3", "4"]


def test_predict(capsys, tmp_path):
    tsv = tmp_path / "p.tsv"
    code, out, err = _run(capsys, "smooth", "predict", "digits-cnn-noise", "--data", "digits", "--sigma", 0.25,
                          "--n", 200, "--max", 4, "--out", tsv, "--no-progress")
    assert code == 0, err
    lines = tsv.read_text().splitlines()
    assert lines[0] == "idx\tlabel\tpredict\tcorrect\ttime" and len(lines) == 5
    assert "accuracy of the smoothed classifier" in out


@pytest.mark.parametrize("extra,match", [(["--sigma", 0], "--sigma"), (["--sigma", -1], "--sigma"),
                                         (["--sigma", 0.25, "--n0", 0], "--n0"), (["--sigma", 0.25, "--n", 0], "--n"),
                                         (["--sigma", 0.25, "--alpha", 1.5], "--alpha"),
                                         (["--sigma", 0.25, "--alpha", 0], "--alpha"),
                                         (["--sigma", 0.25, "--resume"], "--resume needs --out")])
def test_bad_smooth_input(capsys, tmp_path, extra, match):
    js = tmp_path / "o.json"
    code, out, err = _run(capsys, "smooth", "certify", "digits-cnn-noise", "--data", "digits", "--out",
                          tmp_path / "o.tsv", "--json", js, *extra) if "--resume" not in extra else \
        _run(capsys, "smooth", "certify", "digits-cnn-noise", "--data", "digits", *extra)
    assert code == 2 and match in err and len(err.strip().splitlines()) == 1
    assert not js.exists() and not (tmp_path / "o.tsv").exists()


def test_smooth_without_action_and_unknown_model(capsys):
    code, _, err = _run(capsys, "smooth")
    assert code == 2 and "certify or predict" in err
    code, _, err = _run(capsys, "smooth", "certify", "nope.onnx", "--data", "digits", "--sigma", 0.25)
    assert code == 2 and "nope.onnx" in err


def test_conformal_cli(capsys, tmp_path):
    js = tmp_path / "c.json"
    code, out, err = _run(capsys, "conformal", "digits-cnn-noise", "--data", "digits", "--alpha", 0.1, "--score", "thr",
                          "--json", js, "--no-progress")
    assert code == 0, err
    rec = json.loads(js.read_text())
    assert rec["points"]["calibration"] == 225 and rec["methods"]["standard"]["coverage"] > 0.8
    assert "standard" in out and "coverage" in out


@pytest.mark.parametrize("extra,match", [(["--alpha", 1.2], "--alpha"), (["--alpha", 0.001], "calibration set too small"),
                                         (["--robust-eps", 0.1, "--beta", 0.2], "--beta"),
                                         (["--ptt"], "--robust-eps"), (["--sigma", 0, "--robust-eps", 0.1], "--sigma")])
def test_bad_conformal_input(capsys, tmp_path, extra, match):
    js = tmp_path / "c.json"
    code, out, err = _run(capsys, "conformal", "digits-cnn-noise", "--data", "digits", "--json", js, *extra)
    assert code == 2 and match in err and len(err.strip().splitlines()) == 1
    assert not js.exists()


def test_certify_plot_is_an_svg_curve(capsys, tmp_path):
    import xml.etree.ElementTree as ET

    svg = tmp_path / "c.svg"
    code, out, err = _run(capsys, "smooth", "certify", "digits-cnn-noise", "--data", "digits", "--sigma", 0.25,
                          "--n0", 20, "--n", 200, "--max", 5, "--plot", svg, "--no-progress")
    assert code == 0, err
    root = ET.fromstring(svg.read_text())
    assert root.tag.endswith("svg") and list(root.iter("{http://www.w3.org/2000/svg}polyline"))
    code, _, err = _run(capsys, "smooth", "predict", "digits-cnn-noise", "--data", "digits", "--sigma", 0.25,
                        "--plot", tmp_path / "p.svg")
    assert code == 2  # predict has no curve: argparse refuses the flag
