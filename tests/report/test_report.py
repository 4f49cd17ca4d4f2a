"""The report record: its schema, every number of the page from it, resuming, the rating, and
bad input (exit 2, nothing written)."""
import json
import re
from pathlib import Path

import numpy as np
import pytest

import perturbkit
from perturbkit.cli.main import main
from perturbkit.report import build
from perturbkit.report.html import render

SCHEMA = Path(perturbkit.__file__).parent / "report" / "schema.json"


def test_record_validates_against_its_schema(tiny_report):
    jsonschema = pytest.importorskip("jsonschema")
    rep, out = tiny_report
    record = json.loads((out / "report.json").read_text())
    jsonschema.validate(record, json.loads(SCHEMA.read_text()), cls=jsonschema.Draft202012Validator)
    assert record["schema"] == "perturbkit.report" and record["version"] == build.SCHEMA_VERSION
    bad = json.loads(json.dumps(record))
    bad["models"][0]["clean_accuracy"] = 1.5
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, json.loads(SCHEMA.read_text()), cls=jsonschema.Draft202012Validator)


def test_measurements_are_consistent(tiny_report):
    rep, _ = tiny_report
    assert rep.errors == []
    for m in rep.record["models"]:
        assert m["consistency"]["ok"]
        for k in range(3):  # certified never above empirical; both at most the clean accuracy
            assert m["best_certified"][k] <= m["best_empirical"][k] <= m["clean_accuracy"] + 1e-12
        assert m["best_certified"][0] == pytest.approx(m["clean_accuracy"])  # eps 0
        assert m["noise"][0][1] == pytest.approx(m["clean_accuracy"]) and m["blur"][0][1] == pytest.approx(m["clean_accuracy"])
        assert len(m["fourier"]["error"]) == 8 and len(m["fourier"]["error"][0]) == 8
    r = rep.record["rating"]
    assert sorted(r["order"]) == ["digits-cnn-adv", "digits-mlp"]
    # the adversarially trained CNN is far more robust at eps 0.1
    assert r["order"][0] == "digits-cnn-adv"


def test_every_number_on_the_page_comes_from_the_record(tiny_report):
    rep, out = tiny_report
    page = (out / "report.html").read_text()
    record = rep.record
    fractions = set()

    def walk(v):
        if isinstance(v, float) and 0 <= v <= 1:
            fractions.add(round(100 * v, 1))
        elif isinstance(v, dict):
            for w in v.values():
                walk(w)
        elif isinstance(v, list):
            for w in v:
                walk(w)

    walk(record)
    shown = [float(p) for p in re.findall(r"(\d+\.\d)%", page)]
    assert len(shown) > 50
    assert all(p in fractions for p in shown), sorted(set(shown) - fractions)
    embedded = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page, re.S).group(1)
    assert json.loads(embedded.replace("<\\/", "</")) == record


def test_consistency_errors_are_shown_never_hidden(tiny_report):
    rep, _ = tiny_report
    rec = json.loads(json.dumps(rep.record))
    rec["models"][0]["consistency"] = {"ok": False, "violations": [
        {"eps": 0.05, "certified_by": "crown", "broken_by": "pgd", "points": [3]}]}
    page = render(rec)
    assert page.count('class="error"') >= 2 and "certified by crown" in page and "broken by pgd" in page


def test_resume_reuses_finished_sections(tmp_path, monkeypatch):
    cfg = build.ReportConfig(budget="fast", points=6, eps_grid=(0.0, 0.1), noise_severities=(0.0,),
                             blur_severities=(0.0,))
    first = build.report(["digits-mlp"], "digits", config=cfg, out_dir=str(tmp_path), progress=False)

    def boom(*a, **k):
        raise AssertionError("a finished section was recomputed")

    monkeypatch.setattr(build, "SECTIONS", {k: (boom, w) for k, (_, w) in build.SECTIONS.items()})
    again = build.report(["digits-mlp"], "digits", config=cfg, out_dir=str(tmp_path), resume=True, progress=False)
    strip = lambda r: {k: v for k, v in r.items() if k not in ("created", "time_s")}  # noqa: E731
    assert strip(again.record) == strip(first.record)


def test_rating_ranks_ties_alike():
    models = [{"name": n, "clean_accuracy": c, "best_certified": [c, b], "best_empirical": [c, b],
               "smoothing": {"certified_accuracy": [0, 0.5, 0.2, 0, 0]}, "noise": None, "blur": None}
              for n, c, b in (("a", 0.9, 0.5), ("b", 0.9, 0.7), ("c", 0.8, 0.1))]
    r = build.rating(models, [0.0, 0.1])
    assert r["settings"][0]["ranks"] == [1, 1, 3]
    assert r["order"][0] == "b"


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("case", ["unknown model", "data that does not fit", "empty grid", "bad grid", "bad budget"])
def test_bad_input_exit_2_and_no_report(capsys, tmp_path, case):
    out = tmp_path / "rep"
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, x=np.zeros((3, 5), np.float32), y=np.zeros(3, np.int64))
    argv = {"unknown model": ["report", "nope.onnx", "--data", "digits"],
            "data that does not fit": ["report", "digits-mlp", "--data", wrong],
            "empty grid": ["report", "digits-mlp", "--data", "digits", "--eps-grid", ""],
            "bad grid": ["report", "digits-mlp", "--data", "digits", "--eps-grid", "0,-1"],
            "bad budget": ["report", "digits-mlp", "--data", "digits", "--budget", "huge"]}[case]
    code, _, err = _run(capsys, *argv, "--out", out, "--no-progress")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "error" in err
    assert not out.exists()


def test_cli_writes_page_and_record(capsys, tmp_path):
    out = tmp_path / "rep"
    code, text, err = _run(capsys, "report", "digits-mlp", "--data", "digits", "--points", 6, "--eps-grid", "0,0.1",
                           "--out", out, "--no-progress")
    assert code == 0, err
    assert (out / "report.html").exists() and (out / "report.json").exists()
    assert "page: " in text and "digits-mlp" in text
