"""``perturbkit attack``: the JSON record, the adversarial examples file, data formats, resuming,
and bad input (exit 2, one stderr line, nothing written)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import perturbkit as pk
from perturbkit.cli.main import main
from perturbkit.models import bundled_path, load_digits_test


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_json_record_and_adversarial_examples(tmp_path, capsys):
    js, adv = tmp_path / "r.json", tmp_path / "adv.npz"
    code, out, err = _run(capsys, "attack", "digits-cnn", "--data", "digits", "--attack", "fgsm,pgd", "--eps", "0.1",
                          "--steps", "5", "--n", "60", "--json", js, "--save-adv", adv, "--no-progress")
    assert code == 0, err
    rec = json.loads(js.read_text())
    assert list(rec)[:3] == ["clean_accuracy", "robust_accuracy", "time_s"]
    assert rec["n"] == 60 and len(rec["records"]) == 60
    assert [s["attack"] for s in rec["stages"]] == ["fgsm", "pgd"]
    assert 0 <= rec["robust_accuracy"] < rec["clean_accuracy"] <= 1
    assert "robust accuracy" in out.splitlines()[0]
    with np.load(adv) as z:
        xa, y = z["x_adv"], z["y"]
    x, y0 = load_digits_test()
    assert np.array_equal(y, y0[:60]) and xa.shape == (60, 1, 8, 8)
    assert np.abs(xa - x[:60]).max() <= 0.1 + 1e-6 and xa.min() >= 0 and xa.max() <= 1
    # robust accuracy recomputed from the saved points and the records
    net = pk.load(str(bundled_path("digits-cnn")))
    pred = net(torch.from_numpy(xa)).argmax(1).numpy()
    robust = np.mean([r["robust"] for r in rec["records"]])
    assert robust == pytest.approx(rec["robust_accuracy"])
    assert np.mean(pred == y) >= rec["robust_accuracy"] - 1e-9


def test_npz_and_csv_data_and_targeted(tmp_path, capsys):
    x, y = load_digits_test()
    np.savez(tmp_path / "d.npz", x=x[:20], y=y[:20])
    code, out, err = _run(capsys, "attack", "digits-mlp", "--data", tmp_path / "d.npz", "--attack", "pgd", "--eps", "0.2",
                          "--steps", "10", "--targeted", "--json", tmp_path / "t.json", "--no-progress")
    assert code == 0, err
    rec = json.loads((tmp_path / "t.json").read_text())
    assert all(r["target"] != r["label"] for r in rec["records"])
    assert all(r["adv_pred"] == r["target"] for r in rec["records"] if r["broken_by"])
    # CSV: label, then 64 pixel values 0-255, shape 8,8
    rows = [",".join([str(int(l))] + [str(int(round(v * 255))) for v in img.reshape(-1)]) for img, l in zip(x[:10], y[:10])]
    (tmp_path / "d.csv").write_text("# digits\n" + "\n".join(rows) + "\n")
    code, out, err = _run(capsys, "attack", "digits-mlp", "--data", tmp_path / "d.csv", "--shape", "8,8", "--attack",
                          "fgsm", "--eps", "0.05", "--no-progress")
    assert code == 0, err


def test_resume_with_a_state_file(tmp_path, capsys):
    st = tmp_path / "state.npz"
    args = ["attack", "digits-mlp", "--data", "digits", "--attack", "pgd", "--eps", "0.1", "--steps", "3", "--n", "40",
            "--batch-size", "16", "--state", st, "--no-progress", "--json"]
    code, _, err = _run(capsys, *args, tmp_path / "a.json")
    assert code == 0 and st.exists()
    code, _, err = _run(capsys, *args, tmp_path / "b.json")  # everything is done: nothing reruns
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("a.json", "b.json"))
    assert a["records"] == b["records"]


@pytest.mark.parametrize("argv,needle", [
    (["--eps", "-0.1"], "--eps"),
    (["--eps", "nan"], "--eps"),
    (["--eps", "0.1", "--attack", "nope"], "unknown attack"),
    (["--eps", "0.1", "--steps", "0"], "--steps"),
    (["--eps", "0.1", "--data", "missing.npz"], "not found"),
])
def test_bad_options(tmp_path, capsys, argv, needle):
    base = {"--data": "digits", "--attack": "pgd"}
    for k, v in zip(argv[::2], argv[1::2]):
        base[k] = v
    flat = [a for kv in base.items() for a in kv] + [a for a in argv if a not in base and a not in base.values()]
    code, out, err = _run(capsys, "attack", "digits-cnn", *flat, "--json", tmp_path / "o.json", "--no-progress")
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.json").exists()


def test_bad_data(tmp_path, capsys):
    x, y = load_digits_test()
    cases = {
        "shape.npz": dict(x=np.zeros((4, 3, 5, 5), np.float32), y=np.zeros(4, np.int64)),
        "labels.npz": dict(x=x[:4], y=np.array([0, 1, 2, 12])),
        "nan.npz": dict(x=np.where(np.arange(64).reshape(1, 1, 8, 8) == 5, np.nan, x[:4]).astype(np.float32), y=y[:4]),
        "range.npz": dict(x=x[:4] * 3, y=y[:4]),
        "noy.npz": dict(x=x[:4]),
    }
    needles = {"shape.npz": "do not fit", "labels.npz": "out of range", "nan.npz": "NaN", "range.npz": "domain",
               "noy.npz": "'y'"}
    for name, arrays in cases.items():
        np.savez(tmp_path / name, **arrays)
        code, out, err = _run(capsys, "attack", "digits-cnn", "--data", tmp_path / name, "--attack", "fgsm", "--eps", "0.1",
                              "--json", tmp_path / "o.json", "--save-adv", tmp_path / "adv.npz", "--no-progress")
        assert code == 2, (name, err)
        assert needles[name] in err and len(err.strip().splitlines()) == 1, (name, err)
        assert not (tmp_path / "o.json").exists() and not (tmp_path / "adv.npz").exists()
    (tmp_path / "bad.csv").write_text("3,0,0,zz\n")
    code, _, err = _run(capsys, "attack", "digits-cnn", "--data", tmp_path / "bad.csv", "--shape", "8,8", "--attack", "fgsm",
                        "--eps", "0.1", "--no-progress")
    assert code == 2 and "bad.csv:1" in err


def test_nan_model_outputs(tmp_path, capsys):
    import onnx
    from onnx import TensorProto, helper

    # y = x W with a NaN among the weights: NaN outputs everywhere
    w = np.zeros((64, 10), np.float32)
    w[3, 4] = np.nan
    g = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("MatMul", ["f", "w"], ["y"])], "nan",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        [helper.make_tensor("w", TensorProto.FLOAT, [64, 10], w.reshape(-1).tolist())])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "nan.onnx")
    code, _, err = _run(capsys, "attack", tmp_path / "nan.onnx", "--data", "digits", "--attack", "fgsm", "--eps", "0.1",
                        "--json", tmp_path / "o.json", "--no-progress")
    assert code == 2 and "NaN" in err and "sample 0" in err and not (tmp_path / "o.json").exists()
