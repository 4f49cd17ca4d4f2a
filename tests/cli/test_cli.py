"""The ``perturbkit`` command line: good runs, the JSON record, the demo, and bad input.

Most tests call ``main([...])`` in-process and read stdout/stderr with capsys; a few run
the real process (``python -m perturbkit.cli.main``) to check exit codes and that no
traceback escapes.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

import perturbkit
from perturbkit.cli.main import main
from perturbkit.models import bundled_path, load_digits_test

JSON_KEYS = {"method", "lower", "upper", "time_s", "network", "eps", "norm"}


# -- fixtures -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits():
    x, y = load_digits_test()
    return x[:4], y[:4]


@pytest.fixture
def batch_file(tmp_path, digits):
    path = tmp_path / "x.npy"
    np.save(path, digits[0])
    return path


@pytest.fixture
def one_file(tmp_path, digits):
    path = tmp_path / "x1.npy"
    np.save(path, digits[0][0])  # one unbatched sample (1, 8, 8)
    return path


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _hardmax_onnx(path: Path) -> Path:
    """A valid ONNX model whose only operator (Hardmax) has no rule."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Hardmax", ["x"], ["y"], name="hm", axis=1)], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, str(path))
    return path


# -- good runs ------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["ibp", "crown", "crown-ibp"])
def test_bounds_json_record(capsys, tmp_path, batch_file, method):
    out_json = tmp_path / "out.json"
    code, out, err = _run(capsys, "bounds", "digits-mlp", "--input", batch_file, "--eps", "0.01",
                          "--domain", "0", "1", "--method", method, "--json", out_json)
    assert code == 0, err
    assert err == ""
    rec = json.loads(out_json.read_text())
    assert set(rec) == JSON_KEYS
    assert rec["method"] == method and rec["network"] == "digits-mlp"
    assert rec["eps"] == 0.01 and rec["norm"] == "inf"
    lower, upper = np.array(rec["lower"]), np.array(rec["upper"])
    assert lower.shape == upper.shape == (4, 10)
    assert (lower <= upper).all()
    assert isinstance(rec["time_s"], float) and rec["time_s"] >= 0
    # the clean logits lie inside the bounds
    net = perturbkit.load(str(bundled_path("digits-mlp")))
    logits = net(torch.from_numpy(np.load(batch_file))).double().numpy()
    assert (lower <= logits + 1e-4).all() and (logits <= upper + 1e-4).all()
    assert f"method {method}" in out and "input 3" in out
    assert not list(tmp_path.glob("*.tmp")), "temporary file left behind"


def test_label_gives_margins(capsys, tmp_path, batch_file, digits):
    x, y = digits
    label = int(y[0])
    out_json = tmp_path / "m.json"
    code, out, err = _run(capsys, "bounds", "digits-cnn", "--input", batch_file, "--eps", "0.005",
                          "--domain", "0", "1", "--label", label, "--json", out_json)
    assert code == 0, err
    rec = json.loads(out_json.read_text())
    assert set(rec) == JSON_KEYS | {"label"} and rec["label"] == label
    lower, upper = np.array(rec["lower"]), np.array(rec["upper"])
    assert lower.shape == upper.shape == (4, 9)
    net = perturbkit.load(str(bundled_path("digits-cnn")))
    logits = net(torch.from_numpy(x)).double().numpy()
    others = [j for j in range(10) if j != label]
    margins = logits[:, [label]] - logits[:, others]
    assert (lower <= margins + 1e-4).all() and (margins <= upper + 1e-4).all()
    assert f"y{label} - y{others[0]}" in out
    assert out.count("certified: ") == 4 + 1  # one per input plus the summary
    # the first digit has this label and is confidently right: small eps certifies it
    assert "certified: yes" in out.split("input 1:")[0]


def test_single_sample_and_options(capsys, tmp_path, one_file):
    out_json = tmp_path / "one.json"
    code, out, err = _run(capsys, "bounds", str(bundled_path("digits-mlp")), "--input", one_file,
                          "--eps", "0.1", "--norm", "2", "--dtype", "float64", "--device", "cpu",
                          "--json", out_json)
    assert code == 0, err
    rec = json.loads(out_json.read_text())
    assert np.array(rec["lower"]).shape == (1, 10) and rec["norm"] == "2"
    assert "1 input," in out and "float64" in out


def test_l1_ball_runs(capsys, one_file):
    code, out, err = _run(capsys, "bounds", "digits-cnn", "--input", one_file, "--eps", "0.2", "--norm", "1")
    assert code == 0, err
    assert "L1 ball eps 0.2" in out


def test_json_overwrites_atomically(capsys, tmp_path, one_file):
    out_json = tmp_path / "o.json"
    out_json.write_text("old")
    code, _, err = _run(capsys, "bounds", "digits-mlp", "--input", one_file, "--eps", "0", "--json", out_json)
    assert code == 0, err
    rec = json.loads(out_json.read_text())
    assert np.allclose(rec["lower"], rec["upper"], atol=1e-4)  # eps 0: bounds are the output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.json", "x1.npy"]


def test_help_exits_zero(capsys):
    assert main(["--help"]) == 0
    assert main(["bounds", "--help"]) == 0
    out, _ = capsys.readouterr()
    for flag in ("--input", "--eps", "--norm", "--domain", "--method", "--label", "--device", "--dtype", "--json"):
        assert flag in out


def test_demo_runs_and_its_command_reproduces(capsys, tmp_path):
    code, out, err = _run(capsys, "demo", "--certify", "--n", "3", "--save-dir", tmp_path)
    assert code == 0, err
    for word in ("digits-mlp", "digits-cnn", "digits-transformer", "IBP", "CROWN", "CROWN-IBP", "certified",
                 "time for 3 digits", "Linf radius 0.01"):
        assert word in out
    commands = [line.split(":  ", 1)[1] for line in out.splitlines() if "from the command line:" in line]
    assert len(commands) == 3 and all(c.startswith("perturbkit bounds digits-") for c in commands)
    assert "--eps 0.01" in commands[2]  # the Transformer at a third of the radius
    argv = shlex.split(commands[0])[1:]
    code, out2, err2 = _run(capsys, *argv)
    assert code == 0, err2
    assert "certified: " in out2


def test_demo_attack_never_breaks_a_certified_digit(capsys, tmp_path):
    """At an eps where PGD breaks some digits and the bounds certify others, no digit is both."""
    code, out, err = _run(capsys, "demo", "--certify", "--n", "16", "--eps", "0.08", "--save-dir", tmp_path)
    assert code == 0, err
    lines = [line for line in out.splitlines() if "broken by PGD" in line]
    assert len(lines) == 3
    broken = [int(line.split("):")[1].split(" of ")[0]) for line in lines]
    assert sum(broken) > 0
    assert all(line.rstrip().endswith("certified and broken at once: 0") for line in lines)
    assert any(int(line.split("(any method: ")[1].rstrip(")")) > 0 for line in out.splitlines() if "any method" in line)


# -- bad input: one line, exit 2, nothing written -------------------------------------------------

def _bad_cases(tmp_path: Path, batch_file: Path) -> dict[str, list[str]]:
    bad_onnx = tmp_path / "bad.onnx"
    bad_onnx.write_bytes(b"this is not a protobuf")
    bad_npy = tmp_path / "bad.npy"
    bad_npy.write_text("not numpy")
    nan_npy = tmp_path / "nan.npy"
    arr = np.zeros((2, 1, 8, 8), np.float32)
    arr[1, 0, 2, 2] = np.nan
    np.save(nan_npy, arr)
    inf_npy = tmp_path / "inf.npy"
    np.save(inf_npy, np.full((1, 8, 8), np.inf, np.float32))
    shape_npy = tmp_path / "shape.npy"
    np.save(shape_npy, np.zeros((3, 7), np.float32))
    hardmax = _hardmax_onnx(tmp_path / "hardmax.onnx")
    x4 = tmp_path / "x4.npy"
    np.save(x4, np.zeros(4, np.float32))
    good = ["--input", str(batch_file), "--eps", "0.01"]
    return {
        "invalid onnx": ["bounds", str(bad_onnx), *good],
        "unknown bundled name": ["bounds", "digits-rnn", *good],
        "missing model file": ["bounds", str(tmp_path / "missing.onnx"), *good],
        "model is a folder": ["bounds", str(tmp_path), *good],
        "missing input file": ["bounds", "digits-mlp", "--input", str(tmp_path / "missing.npy"), "--eps", "0.01"],
        "input not npy": ["bounds", "digits-mlp", "--input", str(bad_npy), "--eps", "0.01"],
        "operator without rule": ["bounds", str(hardmax), "--input", str(x4), "--eps", "0.01"],
        "shape mismatch": ["bounds", "digits-mlp", "--input", str(shape_npy), "--eps", "0.01"],
        "negative eps": ["bounds", "digits-mlp", "--input", str(batch_file), "--eps", "-0.5"],
        "nan eps": ["bounds", "digits-mlp", "--input", str(batch_file), "--eps", "nan"],
        "inf eps": ["bounds", "digits-mlp", "--input", str(batch_file), "--eps", "inf"],
        "nan in input": ["bounds", "digits-mlp", "--input", str(nan_npy), "--eps", "0.01"],
        "inf in input": ["bounds", "digits-mlp", "--input", str(inf_npy), "--eps", "0.01"],
        "label too large": ["bounds", "digits-mlp", *good, "--label", "10"],
        "label negative": ["bounds", "digits-mlp", *good, "--label", "-1"],
        "cuda unavailable": ["bounds", "digits-mlp", *good, "--device", "cuda"],
        "bad norm": ["bounds", "digits-mlp", *good, "--norm", "3"],
        "bad method": ["bounds", "digits-mlp", *good, "--method", "alpha"],
        "domain reversed": ["bounds", "digits-mlp", *good, "--domain", "1", "0"],
        "eps not a number": ["bounds", "digits-mlp", "--input", str(batch_file), "--eps", "lots"],
        "missing --eps": ["bounds", "digits-mlp", "--input", str(batch_file)],
        "no command": [],
        "unknown command": ["prove", "digits-mlp"],
    }


BAD_NAMES = [
    "invalid onnx", "unknown bundled name", "missing model file", "model is a folder", "missing input file",
    "input not npy", "operator without rule", "shape mismatch", "negative eps", "nan eps", "inf eps",
    "nan in input", "inf in input", "label too large", "label negative", "cuda unavailable", "bad norm",
    "bad method", "domain reversed", "eps not a number", "missing --eps", "no command", "unknown command",
]


@pytest.mark.parametrize("case", BAD_NAMES)
def test_bad_input_one_line_exit_2(capsys, monkeypatch, tmp_path, batch_file, case):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    argv = _bad_cases(tmp_path, batch_file)[case]
    out_json = tmp_path / "never.json"
    if argv and argv[0] == "bounds":
        argv = argv + ["--json", str(out_json)]
    code, out, err = _run(capsys, *argv)
    assert code == 2, (case, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("perturbkit: error: "), err
    assert "Traceback" not in err and out == ""
    assert not out_json.exists()
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".never.json*"))


def test_bad_cases_cover_the_list(tmp_path):
    assert sorted(_bad_cases(tmp_path, tmp_path / "x.npy")) == sorted(BAD_NAMES)


def test_error_messages_say_what_and_where(capsys, tmp_path, batch_file):
    cases = _bad_cases(tmp_path, batch_file)
    expect = {
        "operator without rule": ["Hardmax", "hardmax.onnx"],
        "unknown bundled name": ["digits-rnn", "digits-mlp", "digits-cnn"],
        "label too large": ["--label 10", "10 outputs"],
        "nan in input": ["nan.npy", "NaN"],
        "shape mismatch": ["(3, 7)"],
        "invalid onnx": ["bad.onnx"],
    }
    for case, words in expect.items():
        _, _, err = _run(capsys, *cases[case])
        for word in words:
            assert word in err, (case, err)


def test_failed_run_keeps_existing_json(capsys, tmp_path, batch_file):
    out_json = tmp_path / "keep.json"
    out_json.write_text('{"old": true}')
    code, _, _ = _run(capsys, "bounds", "digits-mlp", "--input", batch_file, "--eps", "0.01",
                      "--label", "99", "--json", out_json)
    assert code == 2
    assert out_json.read_text() == '{"old": true}'


def test_json_into_missing_folder_is_exit_2(capsys, tmp_path, batch_file):
    code, out, err = _run(capsys, "bounds", "digits-mlp", "--input", batch_file, "--eps", "0.01",
                          "--json", tmp_path / "no" / "such" / "out.json")
    assert code == 2 and out == "" and "does not exist" in err


def test_unexpected_exception_is_one_line_exit_1(capsys, monkeypatch, batch_file):
    def boom(*args, **kwargs):
        raise RuntimeError("engine exploded\nsecond line")

    monkeypatch.delenv("PERTURBKIT_DEBUG", raising=False)
    monkeypatch.setattr(perturbkit, "bounds", boom)
    code, out, err = _run(capsys, "bounds", "digits-mlp", "--input", batch_file, "--eps", "0.01")
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "RuntimeError" in lines[0] and "engine exploded" in lines[0]


# -- real processes -------------------------------------------------------------------------

def _cli(*argv, cwd=None):
    src = str(Path(perturbkit.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=src + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("PERTURBKIT_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "perturbkit.cli.main", *map(str, argv)],
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def test_subprocess_good_run(tmp_path, batch_file):
    out_json = tmp_path / "r.json"
    proc = _cli("bounds", "digits-cnn", "--input", batch_file, "--eps", "0.01", "--domain", "0", "1",
                "--method", "crown-ibp", "--label", "2", "--json", out_json)
    assert proc.returncode == 0, proc.stderr
    rec = json.loads(out_json.read_text())
    assert np.array(rec["lower"]).shape == (4, 9) and rec["label"] == 2


@pytest.mark.parametrize("case", ["invalid onnx", "missing input file", "nan in input", "bad norm"])
def test_subprocess_bad_input(tmp_path, batch_file, case):
    out_json = tmp_path / "never.json"
    proc = _cli(*_bad_cases(tmp_path, batch_file)[case], "--json", out_json)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith("perturbkit: error: ")
    assert proc.stdout == ""
    assert not out_json.exists()
