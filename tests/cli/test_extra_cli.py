"""``perturbkit topk``, ``patch``, ``attack-output`` and ``attack-activation``: the JSON
records, exact values on a linear model, and bad input (exit 2, one stderr line, nothing
written)."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from perturbkit.attacks.topk import random_targets
from perturbkit.cli.main import main
from perturbkit.models import load_digits_test

W = np.array([[0.5, -1.0], [-2.0, 0.25], [1.5, 0.0], [0.0, 3.0]], np.float32)   # (4, 2)
B = np.array([0.1, -0.2], np.float32)


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def linear(tmp_path):
    """A tiny regression model y = x W + b with 4 inputs and 2 outputs, and 3 inputs in [0, 1]."""
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["y"])], "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor("w", TensorProto.FLOAT, [4, 2], W.reshape(-1).tolist()),
         helper.make_tensor("b", TensorProto.FLOAT, [2], B.tolist())])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "lin.onnx")
    x = np.random.default_rng(0).uniform(0.2, 0.8, size=(3, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    return tmp_path / "lin.onnx", tmp_path / "x.npy", x


@pytest.fixture
def digits_file(tmp_path):
    x, _ = load_digits_test()
    np.save(tmp_path / "d.npy", x[:4])
    return tmp_path / "d.npy"


# -- topk ------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["quad", "naive"])
def test_topk_record(tmp_path, capsys, method):
    js = tmp_path / "t.json"
    code, out, err = _run(capsys, "topk", "digits-cnn", "--data", "digits", "--k", "3", "--eps", "0.3", "--steps", "10",
                          "--n", "20", "--method", method, "--seed", "4", "--json", js)
    assert code == 0, err
    rec = json.loads(js.read_text())
    assert list(rec)[:3] == ["success_rate", "median_norm", "time_s"]
    assert rec["n"] == 20 and len(rec["records"]) == 20 and rec["method"] == method and rec["k"] == 3
    _, y = load_digits_test()
    expect = random_targets(torch.from_numpy(y[:20]), 3, 10, torch.Generator().manual_seed(4)).tolist()
    assert [r["targets"] for r in rec["records"]] == expect          # seeded random ordered targets
    for r in rec["records"]:
        assert r["label"] not in r["targets"] and len(set(r["targets"])) == 3
        assert r["success"] == (r["top_k"] == r["targets"])        # success: top-3 equal to the targets, in order
        assert 0 <= r["norm"] <= 0.3 + 1e-6
    assert rec["success_rate"] == pytest.approx(np.mean([r["success"] for r in rec["records"]]))
    assert 0 < rec["success_rate"] <= 1
    hits = [r["norm"] for r in rec["records"] if r["success"]]
    assert rec["median_norm"] == pytest.approx(np.median(hits))
    assert "success rate" in out.splitlines()[0] and "median perturbation norm" in out


# -- patch -----------------------------------------------------------------------------

def test_patch_record_and_patch_file(tmp_path, capsys):
    js, pf = tmp_path / "p.json", tmp_path / "patch.npy"
    code, out, err = _run(capsys, "patch", "digits-cnn", "--data", "digits", "--size", "3", "--steps", "5",
                          "--eot-samples", "4", "--n-eval", "5", "--n", "24", "--json", js, "--save-patch", pf)
    assert code == 0, err
    rec = json.loads(js.read_text())
    assert list(rec)[:3] == ["success_rate", "random_patch_success_rate", "clean_fooled_rate"]
    patch = np.load(pf)
    assert patch.shape == (1, 3, 3) and patch.min() >= 0 and patch.max() <= 1
    assert np.allclose(np.asarray(rec["patch"]), patch, atol=1e-6)
    assert rec["n"] == rec["n_valid"] == 24 and len(rec["records"]) == 24
    for key in ("success_rate", "random_patch_success_rate", "clean_fooled_rate"):
        assert 0 <= rec[key] <= 1
    assert rec["success_rate"] == pytest.approx(np.mean([r["success"] for r in rec["records"]]))
    assert all(r["success"] * 5 == pytest.approx(round(r["success"] * 5)) for r in rec["records"])  # k of 5
    assert "patch success rate" in out and "random patch" in out


def test_patch_targeted(tmp_path, capsys):
    js = tmp_path / "p.json"
    code, _, err = _run(capsys, "patch", "digits-mlp", "--data", "digits", "--size", "2", "--steps", "3", "--target", "1",
                        "--eot-samples", "2", "--n-eval", "3", "--n", "20", "--json", js)
    assert code == 0, err
    rec = json.loads(js.read_text())
    _, y = load_digits_test()
    assert rec["n_valid"] == int((y[:20] != 1).sum()) and rec["attack"]["target"] == 1
    assert all(r["valid"] == (r["label"] != 1) for r in rec["records"])


# -- attack-output ---------------------------------------------------------------------

def test_output_threshold_exact_on_a_linear_model(linear, tmp_path, capsys):
    model, xf, x = linear
    eps = 0.1
    clean = x @ W + B
    best = clean[:, 1] + eps * np.abs(W[:, 1]).sum()            # Hoelder: the largest value of y_1 in the ball
    t = float(np.median(best))  # crossed where the maximum exceeds it
    js = tmp_path / "o.json"
    code, out, err = _run(capsys, "attack-output", model, "--input", xf, "--eps", eps, "--goal", "above", "--output", "1",
                          "--threshold", t, "--no-domain", "--json", js)
    assert code == 0, err
    rec = json.loads(js.read_text())
    assert list(rec)[:3] == ["success_rate", "max_deviation", "time_s"]
    assert rec["goal"] == "above" and rec["threshold"] == t and rec["threat"]["domain"] is None
    for r, c, b in zip(rec["records"], clean[:, 1], best):
        assert r["value_clean"] == pytest.approx(c, abs=1e-5)
        assert r["success"] == (b > t)
        assert r["norm"] <= eps + 1e-6
        if not r["success"]:
            assert r["value"] == pytest.approx(b, abs=1e-4)         # the exact maximum when not crossed
    assert rec["success_rate"] == pytest.approx(np.mean(best > t))
    assert "above" in out.splitlines()[0]


def test_output_deviation_and_weights(linear, tmp_path, capsys):
    model, xf, x = linear
    js = tmp_path / "o.json"
    code, out, err = _run(capsys, "attack-output", model, "--input", xf, "--eps", "0.05", "--norm", "2",
                          "--goal", "deviation", "--output", "0", "--no-domain", "--json", js)
    assert code == 0, err
    rec = json.loads(js.read_text())
    assert rec["success_rate"] is None                              # no threshold: no success
    assert rec["max_deviation"] == pytest.approx(0.05 * np.linalg.norm(W[:, 0]), rel=1e-3)
    c = np.array([1.0, -1.0], np.float32)
    code, out, err = _run(capsys, "attack-output", model, "--input", xf, "--eps", "0.05", "--goal", "below",
                          "--weights", "1,-1", "--threshold", "-100", "--json", js)
    assert code == 0, err
    rec = json.loads(js.read_text())
    assert rec["output"] == "c . y" and rec["success_rate"] == 0.0
    assert rec["threat"]["domain"] == [0.0, 1.0]
    for r, xi in zip(rec["records"], x):
        assert r["value"] == pytest.approx(float((xi @ W + B) @ c) - 0.05 * np.abs(W @ c).sum(), abs=1e-4)


# -- attack-activation -----------------------------------------------------------------

def test_activation_target_class(digits_file, tmp_path, capsys):
    js = tmp_path / "a.json"
    code, out, err = _run(capsys, "attack-activation", "digits-mlp", "--input", digits_file, "--node", "/4/Relu",
                          "--eps", "3", "--target-class", "3", "--steps", "20", "--domain", "0", "inf", "--json", js)
    assert code == 0, err
    rec = json.loads(js.read_text())
    assert list(rec)[:2] == ["success_rate", "time_s"]
    assert rec["attack_dims"] == 32 and rec["budget"]["domain"] == [0.0, None] and len(rec["records"]) == 4
    assert all(r["success"] == (r["pred"] == 3) for r in rec["records"])
    assert all(r["norm"] <= 3 + 1e-5 for r in rec["records"])
    assert rec["success_rate"] > 0 and "target class 3" in out


def test_activation_control(digits_file, tmp_path, capsys):
    js = tmp_path / "c.json"
    code, out, err = _run(capsys, "attack-activation", "digits-mlp", "--input", digits_file, "--node", "/4/Relu",
                          "--eps", "50", "--norm", "2", "--control", "--steps", "30", "--json", js)
    assert code == 0, err
    rec = json.loads(js.read_text())
    assert list(rec)[:4] == ["mean_controlled", "outputs_per_dim", "attack_dims", "time_s"]
    assert rec["ks"] == list(range(1, 11)) and rec["attack_dims"] == 32
    ctl = [r["controlled"] for r in rec["records"]]
    assert rec["mean_controlled"] == pytest.approx(np.mean(ctl)) and max(ctl) >= 1
    for r in rec["records"]:  # controlled = the number of leading ks reached
        assert r["reached"][:r["controlled"]] == [True] * r["controlled"]
        assert not any(r["reached"][r["controlled"]:])
    assert "controlled outputs" in out


# -- bad input ---------------------------------------------------------------------------

def _bad_cases(model, xf, digits_file, bad_shape):
    topk = ["topk", "digits-cnn", "--data", "digits", "--n", "5", "--steps", "2"]
    patch = ["patch", "digits-cnn", "--data", "digits", "--n", "5", "--steps", "1", "--eot-samples", "1", "--n-eval", "1"]
    out = ["attack-output", model, "--input", xf, "--goal", "above", "--output", "0", "--threshold", "0"]
    act = ["attack-activation", "digits-mlp", "--input", digits_file, "--node", "/4/Relu", "--target-class", "1"]
    return [
        (topk + ["--k", "3", "--eps", "-0.1"], "--eps"),
        (topk + ["--k", "3", "--eps", "nan"], "--eps"),
        (topk + ["--k", "10", "--eps", "0.1"], "--k 10 is too large"),
        (topk + ["--k", "0", "--eps", "0.1"], "--k must be >= 1"),
        (["topk", "digits-cnn", "--data", "missing.npz", "--k", "2", "--eps", "0.1"], "not found"),
        (["topk", "nope.onnx", "--data", "digits", "--k", "2", "--eps", "0.1"], "not found"),
        (patch + ["--size", "0"], "--size"),
        (patch + ["--size", "8"], "does not fit"),
        (patch + ["--size", "3", "--target", "10"], "out of range"),
        (["patch", "digits-cnn", "--data", "missing.npz", "--size", "3"], "not found"),
        (out + ["--eps", "-1"], "--eps"),
        (out + ["--eps", "0.1", "--input", "missing.npy"], "not found"),
        (out + ["--eps", "0.1", "--input", bad_shape], "does not fit"),
        (out + ["--eps", "0.1", "--output", "2"], "out of range"),
        (out + ["--eps", "0.1", "--output", "x"], "--output"),
        (["attack-output", model, "--input", xf, "--goal", "above", "--threshold", "0", "--eps", "0.1"],
         "has 2 outputs"),
        (["attack-output", model, "--input", xf, "--goal", "below", "--output", "0", "--eps", "0.1"], "--threshold"),
        (act + ["--eps", "-1"], "--eps"),
        (act[:5] + ["nope", "--eps", "1", "--control"], "/4/Relu"),  # the error lists the nodes
        (act + ["--eps", "1", "--input", bad_shape], "does not fit"),
        (act + ["--eps", "1", "--input", "missing.npy"], "not found"),
        (act + ["--eps", "1", "--target-class", "10"], "out of range"),
        (act + ["--eps", "1", "--domain", "0", "1"], "outside --domain"),
        (act[:6] + ["--eps", "1"], "--target-class"),  # neither --target-class nor --control
    ]


def test_bad_input(linear, digits_file, tmp_path, capsys):
    model, xf, _ = linear
    bad_shape = tmp_path / "bad.npy"
    np.save(bad_shape, np.zeros((3, 5), np.float32))
    js, pf = tmp_path / "o.json", tmp_path / "p.npy"
    for argv, needle in _bad_cases(model, xf, digits_file, bad_shape):
        extra = ["--save-patch", pf] if argv[0] == "patch" else []
        code, out, err = _run(capsys, *argv, "--json", js, *extra)
        assert code == 2, (argv, err)
        assert needle in err and len(err.strip().splitlines()) == 1 and err.startswith("perturbkit: error: "), (argv, err)
        assert not js.exists() and not pf.exists(), argv


def test_input_outside_the_domain(linear, tmp_path, capsys):
    model, _, x = linear
    np.save(tmp_path / "big.npy", x * 3)
    code, _, err = _run(capsys, "attack-output", model, "--input", tmp_path / "big.npy", "--eps", "0.1", "--goal",
                        "deviation", "--json", tmp_path / "o.json")
    assert code == 2 and "--no-domain" in err and not (tmp_path / "o.json").exists()
    code, _, err = _run(capsys, "attack-output", model, "--input", tmp_path / "big.npy", "--eps", "0.1", "--goal",
                        "deviation", "--no-domain")
    assert code == 0, err
