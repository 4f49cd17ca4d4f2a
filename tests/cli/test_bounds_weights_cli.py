"""``perturbkit bounds --weight-eps NAME=E``: parameters perturbed jointly with the input."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import perturbkit
from perturbkit.cli.main import main
from perturbkit.models import bundled_path, load_digits_test


@pytest.fixture
def batch_file(tmp_path):
    x, _ = load_digits_test()
    path = tmp_path / "x.npy"
    np.save(path, x[:2])
    return path


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_weight_eps_matches_the_api_and_widens(capsys, tmp_path, batch_file):
    out_json = tmp_path / "w.json"
    code, out, err = _run(capsys, "bounds", "digits-mlp", "--input", batch_file, "--eps", "0.01", "--method", "ibp",
                          "--weight-eps", "5.weight=0.02", "--weight-eps", "3=0.01", "--json", out_json)
    assert code == 0, err
    assert "5.weight +-0.02, 3 +-0.01" in out
    rec = json.loads(out_json.read_text())
    assert rec["weight_eps"] == {"5.weight": 0.02, "3": 0.01}
    net = perturbkit.load(str(bundled_path("digits-mlp")))
    x = torch.from_numpy(np.load(batch_file))
    ball = perturbkit.sets.LpBall(x, 0.01)
    api = perturbkit.bounds(net, ball, method="ibp", weights={"5.weight": 0.02, "3": 0.01})
    np.testing.assert_allclose(np.array(rec["lower"]), api.lower.double().numpy(), rtol=1e-6, atol=1e-6)
    plain = perturbkit.bounds(net, ball, method="ibp")
    assert (np.array(rec["upper"]) - np.array(rec["lower"]) > (plain.upper - plain.lower).numpy()).all()


@pytest.mark.parametrize("arg,message", [
    ("5.weight", "expected NAME=E with a number E"),
    ("5.weight=abc", "expected NAME=E with a number E"),
    ("=0.1", "expected NAME=E with a number E"),
    ("5.weight=-1", "the radius must be a finite number >= 0"),
    ("nope=0.1", "no parameter 'nope' in"),
])
def test_bad_weight_eps_one_line_exit_2(capsys, batch_file, arg, message):
    code, out, err = _run(capsys, "bounds", "digits-mlp", "--input", batch_file, "--eps", "0.01", "--weight-eps", arg)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and message in err and "Traceback" not in err
