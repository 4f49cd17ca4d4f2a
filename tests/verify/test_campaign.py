"""Campaigns (``run_campaign`` and ``perturbkit verify-batch``): verdicts against the known
answers, workers=1 vs workers=2 vs Ray, the results CSV, resume after an interrupt or a kill,
dying workers, and bad input.  Instances: tests/data/campaign (see its README)."""
from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from perturbkit.cli.main import main
from perturbkit.verify import parse_counterexample, parse_vnnlib
from perturbkit.verify.campaign import HEADER, CampaignSummary, ResultsFile, read_instances, run_campaign
from perturbkit.verify.campaign_report import judge, read_answers
from tests.conftest import DATA, ROOT

CAMPAIGN = DATA / "campaign"
INSTANCES = CAMPAIGN / "instances.csv"
ANSWERS = read_answers(CAMPAIGN / "answers.csv")
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + str(ROOT)
       + os.pathsep + os.environ.get("PYTHONPATH", "")}
ACAS_11 = "onnx/ACASXU_run2a_1_1_batch_2000.onnx"


def rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def keys(path: Path) -> list[tuple[str, str]]:
    body = rows(path)
    assert tuple(body[0]) == HEADER
    return [(r[0], r[1]) for r in body[1:]]


def write_instances(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def instance_lines() -> list[str]:
    return INSTANCES.read_text().splitlines()


@pytest.fixture(scope="module")
def one_worker(tmp_path_factory) -> tuple[CampaignSummary, Path]:
    out = tmp_path_factory.mktemp("w1") / "results.csv"
    return run_campaign(INSTANCES, out=out, workers=1, progress=False), out


# -- verdicts and files ---------------------------------------------------------------

def test_one_worker_matches_known_answers(one_worker):
    summary, out = one_worker
    assert summary.complete and summary.n_run == summary.n_instances == 7 and summary.n_resumed == 0
    assert summary.verdicts == {k: a for k, (a, _) in ANSWERS.items() if k in summary.verdicts}
    assert summary.judgement.correct == 7 and summary.judgement.wrong == 0
    assert summary.counts == {"sat": 2, "unsat": 5, "unknown": 0, "timeout": 0, "error": 0}
    assert sorted(keys(out)) == sorted(k for k in summary.verdicts)
    for r in rows(out)[1:]:
        assert r[2] == summary.verdicts[(r[0], r[1])] and float(r[3]) >= 0
    table = summary.table()
    assert "7 correct, 0 wrong, 0 unsolved" in table and "WRONG" not in table


def test_counterexample_files_of_sat_instances(one_worker):
    summary, out = one_worker
    folder = out.parent / "counterexamples"
    sats = [k for k, v in summary.verdicts.items() if v == "sat"]
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        f"{Path(o).stem}__{Path(v).stem}.counterexample" for o, v in sats)
    for onnx_rel, vnnlib_rel in sats:
        path = folder / f"{Path(onnx_rel).stem}__{Path(vnnlib_rel).stem}.counterexample"
        assert path.read_text().startswith("sat\n")
        x, y = parse_counterexample(path)
        assert parse_vnnlib(CAMPAIGN / vnnlib_rel).is_counterexample(x, y)


def test_two_workers_give_the_same_verdicts(one_worker, tmp_path):
    summary = run_campaign(INSTANCES, out=tmp_path / "r.csv", workers=2, progress=False)
    assert summary.verdicts == one_worker[0].verdicts
    assert sorted(keys(tmp_path / "r.csv")) == sorted(one_worker[0].verdicts)


def test_ray_gives_the_same_verdicts(one_worker, tmp_path):
    ray = pytest.importorskip("ray")
    t0 = time.monotonic()
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    try:
        summary = run_campaign(INSTANCES, out=tmp_path / "r.csv", ray_address="auto", progress=False)
    finally:
        ray.shutdown()
    assert summary.verdicts == one_worker[0].verdicts
    assert sorted(keys(tmp_path / "r.csv")) == sorted(one_worker[0].verdicts)
    assert len(list((tmp_path / "counterexamples").iterdir())) == 2
    print(f"ray campaign incl. ray.init/shutdown: {time.monotonic() - t0:.1f} s")


# -- resume ----------------------------------------------------------------------------

def test_resume_runs_only_the_missing_instances(tmp_path, one_worker):
    lines = instance_lines()
    subset = write_instances(tmp_path / "subset.csv", lines[:3])
    full = write_instances(tmp_path / "full.csv", lines)
    out = tmp_path / "r.csv"
    first = run_campaign(subset, root=CAMPAIGN, out=out, progress=False)
    assert first.n_run == 3
    second = run_campaign(full, root=CAMPAIGN, out=out, resume=True, progress=False)
    assert (second.n_run, second.n_resumed) == (4, 3)
    assert second.verdicts == one_worker[0].verdicts
    got = keys(out)
    assert len(got) == len(set(got)) == 7
    third = run_campaign(full, root=CAMPAIGN, out=out, resume=True, progress=False)
    assert third.n_run == 0 and keys(out) == got


def test_resume_drops_a_half_written_last_row(tmp_path):
    lines = instance_lines()[:3]
    inst = write_instances(tmp_path / "i.csv", lines)
    out = tmp_path / "r.csv"
    out.write_text("onnx,vnnlib,verdict,time_s\nonnx/test_nano.onnx,vnnlib/test_nano.vnnlib,unsat,0.0100\n"
                   "onnx/test_tiny.onnx,vnnlib/test_ti")
    summary = run_campaign(inst, root=CAMPAIGN, out=out, resume=True, progress=False)
    assert (summary.n_run, summary.n_resumed) == (2, 1)
    assert sorted(keys(out)) == sorted(tuple(line.split(",")[:2]) for line in lines)
    assert out.read_text().endswith("\n")


def _procs_in_group(pgid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                found.append(int(entry))
    return found


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc")
@pytest.mark.parametrize("how", ["ctrl-c", "sigterm", "sigkill"])
def test_interrupted_campaign_resumes_without_duplicates(tmp_path, how):
    """Kill a real ``perturbkit verify-batch`` while it works on a slow instance (property 4,
    made to stall for a minute by a test task), then ``--resume`` (the real verifier, with
    ``--timeout-scale``): every instance exactly once, the first rows untouched."""
    lines = instance_lines()
    slow = f"{ACAS_11},vnnlib/prop_4.vnnlib,30"
    inst = write_instances(tmp_path / "i.csv", lines[:2] + [slow] + lines[2:4])
    out = tmp_path / "r.csv"
    # a user's shell starts commands with Ctrl-C at its default; a test process may have
    # inherited it ignored (Python then installs no KeyboardInterrupt handler)
    script = ("import signal, sys\n"
              "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
              "from perturbkit.verify import campaign\n"
              "from tests.verify.campaign_tasks import stall_on_prop_4\n"
              "campaign.verify_instance = stall_on_prop_4\n"
              "from perturbkit.cli.main import main\n"
              f"sys.argv = ['perturbkit', 'verify-batch', {str(inst)!r}, '--root', {str(CAMPAIGN)!r}, "
              f"'--out', {str(out)!r}, '--no-progress']\n"
              "sys.exit(main())\n")
    proc = subprocess.Popen([sys.executable, "-c", script], env=ENV, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not (out.exists() and len(out.read_text().splitlines()) >= 3):
            assert proc.poll() is None and time.monotonic() < deadline, "no rows appeared"
            time.sleep(0.05)
        time.sleep(0.3)  # now inside the stalled instance
        if how == "ctrl-c":
            os.killpg(proc.pid, signal.SIGINT)  # like Ctrl-C: the whole foreground group
        elif how == "sigterm":
            os.kill(proc.pid, signal.SIGTERM)   # the main process only
        else:
            os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if how == "sigkill":
        assert proc.returncode == -signal.SIGKILL
    else:
        assert proc.returncode == 130, err
        assert "--resume" in err and "Traceback" not in err
        time.sleep(0.2)
        assert _procs_in_group(proc.pid) == [], "worker processes left behind"
    before = keys(out)
    assert before == [tuple(line.split(",")[:2]) for line in lines[:2]]
    summary = run_campaign(inst, root=CAMPAIGN, out=out, resume=True, progress=False, timeout_scale=0.05)
    after = keys(out)
    assert after[:2] == before and len(after) == len(set(after)) == 5
    assert summary.complete and summary.n_resumed == 2 and summary.n_run == 3
    assert summary.verdicts[(ACAS_11, "vnnlib/prop_4.vnnlib")] in ("timeout", "unsat")


# -- failures inside workers -------------------------------------------------------------

def test_a_dying_worker_becomes_an_error_row(tmp_path):
    from tests.verify.campaign_tasks import crash_on_tiny

    inst = write_instances(tmp_path / "i.csv", instance_lines()[:3])
    out = tmp_path / "r.csv"
    summary = run_campaign(inst, root=CAMPAIGN, out=out, workers=2, progress=False, _task=crash_on_tiny)
    assert summary.verdicts == {("onnx/test_nano.onnx", "vnnlib/test_nano.vnnlib"): "unsat",
                                ("onnx/test_tiny.onnx", "vnnlib/test_tiny.vnnlib"): "error",
                                ("onnx/test_small.onnx", "vnnlib/test_small.vnnlib"): "unsat"}
    assert [e[:2] for e in summary.errors] == [("onnx/test_tiny.onnx", "vnnlib/test_tiny.vnnlib")]
    assert "worker process died" in summary.errors[0][2]
    assert len(keys(out)) == 3


def test_a_bad_instance_is_an_error_row_not_a_crash(tmp_path, capsys):
    folder = tmp_path / "bench"
    shutil.copytree(CAMPAIGN / "onnx", folder / "onnx")
    (folder / "vnnlib").mkdir()
    (folder / "vnnlib" / "bad.vnnlib").write_text("(declare-const X_0 Real)\n(assert (<= X_0 1.0)\n")
    shutil.copy(CAMPAIGN / "vnnlib" / "test_nano.vnnlib", folder / "vnnlib")
    inst = write_instances(folder / "instances.csv", ["onnx/test_nano.onnx,vnnlib/bad.vnnlib,10",
                                                      "onnx/test_nano.onnx,vnnlib/test_nano.vnnlib,10"])
    code = main(["verify-batch", str(inst), "--out", str(tmp_path / "r.csv"), "--no-progress"])
    out, _ = capsys.readouterr()
    assert code == 0
    assert [r[2] for r in rows(tmp_path / "r.csv")[1:]] == ["error", "unsat"]
    assert "bad.vnnlib:2:1" in out and "error          1" in out


# -- judging, the summary, the CLI ---------------------------------------------------------

def test_judge():
    assert judge("sat", "sat") == judge("unsat", "unsat") == "correct"
    assert judge("sat", "unsat") == judge("unsat", "sat") == "wrong"
    assert judge("timeout", "sat") == judge("unknown", "unsat") == judge("error", "sat") == "unsolved"
    assert judge("sat", "unknown") == judge("unsat", None) == "unjudged"


def test_wrong_answers_are_listed_loudly(tmp_path, capsys):
    """From a finished results file (nothing left to run): one wrong answer, one unsolved."""
    folder = tmp_path / "bench"
    shutil.copytree(CAMPAIGN, folder)
    out = tmp_path / "r.csv"
    verdicts = {"onnx/test_sat.onnx": "unsat", "onnx/test_nano.onnx": "timeout"}
    with open(out, "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(HEADER)
        for line in instance_lines():
            o, v, _ = line.split(",")
            w.writerow([o, v, verdicts.get(o, ANSWERS[(o, v)][0]), "0.5"])
    code = main(["verify-batch", str(folder / "instances.csv"), "--out", str(out), "--resume"])
    stdout, stderr = capsys.readouterr()
    assert code == 3  # a wrong answer fails the command
    assert "5 correct, 1 wrong, 1 unsolved" in stdout
    assert "WRONG: onnx/test_sat.onnx vnnlib/test_prop.vnnlib: ours unsat, known sat" in stdout
    assert "WRONG ANSWER: onnx/test_sat.onnx" in stderr
    assert "time: 3.500 s in total, max 0.500 s" in stdout


def test_read_instances_header_comments_duplicates_and_scale(tmp_path):
    lines = instance_lines()
    inst = write_instances(tmp_path / "i.csv", ["onnx,vnnlib,timeout", "# a comment", "", lines[0], lines[0],
                                                 lines[1]])
    got, dups = read_instances(inst, root=CAMPAIGN, timeout_scale=0.5)
    assert [g.key for g in got] == [tuple(line.split(",")[:2]) for line in lines[:2]]
    assert dups == 1 and got[0].timeout == 30.0
    assert Path(got[0].onnx_path) == CAMPAIGN / "onnx/test_nano.onnx"


def _bad_batch(tmp: Path) -> dict:
    lines = instance_lines()
    good = write_instances(tmp / "good.csv", lines[:1])
    existing = tmp / "existing.csv"
    existing.write_text("onnx,vnnlib,verdict,time_s\n")
    foreign = tmp / "foreign.csv"
    foreign.write_text("a,b,c\n1,2,3\n")
    return {
        "missing instances": ([tmp / "nope.csv", "--root", CAMPAIGN], "nope.csv not found"),
        "bad timeout": ([write_instances(tmp / "t.csv", ["onnx/test_nano.onnx,vnnlib/test_nano.vnnlib,soon"]),
                         "--root", CAMPAIGN], "t.csv:1: the timeout"),
        "too few columns": ([write_instances(tmp / "c.csv", ["onnx/test_nano.onnx"]), "--root", CAMPAIGN],
                            "c.csv:1: expected onnx,vnnlib,timeout"),
        "missing network": ([write_instances(tmp / "m.csv", ["onnx/nope.onnx,vnnlib/test_nano.vnnlib,5"]),
                             "--root", CAMPAIGN], "nope.onnx not found"),
        "paths relative to the csv": ([good], "relative to the csv's folder"),
        "workers 0": ([good, "--root", CAMPAIGN, "--workers", "0"], "--workers"),
        "timeout scale nan": ([good, "--root", CAMPAIGN, "--timeout-scale", "nan"], "--timeout-scale"),
        "workers and ray": ([good, "--root", CAMPAIGN, "--workers", "2", "--ray", "auto"], "exclude"),
        "out exists": ([good, "--root", CAMPAIGN, "--out", existing], "--resume"),
        "resume a foreign csv": ([good, "--root", CAMPAIGN, "--out", foreign, "--resume"], "not a perturbkit"),
        "out folder missing": ([good, "--root", CAMPAIGN, "--out", tmp / "no" / "r.csv"], "does not exist"),
    }


BAD_BATCH = ["missing instances", "bad timeout", "too few columns", "missing network",
             "paths relative to the csv", "workers 0", "timeout scale nan", "workers and ray", "out exists",
             "resume a foreign csv", "out folder missing"]


@pytest.mark.parametrize("case", BAD_BATCH)
def test_bad_batch_input_exits_2_and_writes_nothing(tmp_path, capsys, case):
    argv, needle = _bad_batch(tmp_path)[case]
    if "--out" not in argv:
        argv = argv + ["--out", tmp_path / "results.csv"]
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    code = main(["verify-batch", *map(str, argv)])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("perturbkit: error: ") and needle in lines[0], err
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_a_results_file_in_use_is_refused(tmp_path, capsys):
    pytest.importorskip("fcntl")
    out = tmp_path / "r.csv"
    holder = ResultsFile(out, resume=False)  # another campaign, still running
    try:
        before = out.read_bytes()
        code = main(["verify-batch", str(INSTANCES), "--out", str(out), "--resume"])
        _, err = capsys.readouterr()
        assert code == 2 and "in use by another running campaign" in err
        assert out.read_bytes() == before
    finally:
        holder.close()


def test_ray_missing_is_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    code = main(["verify-batch", str(INSTANCES), "--out", str(tmp_path / "r.csv"), "--ray", "auto"])
    _, err = capsys.readouterr()
    assert code == 2
    assert err.startswith("perturbkit: error: --ray needs Ray") and "perturbkit[ray]" in err
    assert not (tmp_path / "r.csv").exists()
