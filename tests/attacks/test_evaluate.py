"""evaluate(): attacks in sequence, per-sample records, cross-stage flags, resuming."""
import numpy as np
import pytest
import torch

from perturbkit.attacks import FGSM, PGD, ThreatModel
from perturbkit.attacks.base import Attack
from perturbkit.attacks.evaluate import evaluate
from perturbkit.errors import InputError
from tests.attacks import models


class RandomSearch(Attack):
    """A tiny black-box attack: the best of many random corners of the Linf ball."""

    name = "random-search"
    white_box = False

    def perturb(self, f, x, y, target, generator):
        best = x.clone()
        best_m = torch.full((x.shape[0],), -float("inf"))
        for _ in range(50):
            cand = self.threat.project(x, x + self.threat.eps * torch.sign(torch.rand(x.shape, generator=generator) - 0.5))
            with torch.no_grad():
                z = f(cand)
            m = z.scatter(1, y[:, None], -float("inf")).amax(1) - z.gather(1, y[:, None]).squeeze(1)
            better = m > best_m
            best[better], best_m[better] = cand[better], m[better]
        return best


def test_records_and_stages_add_up():
    m = models.linear(n_in=16, n_cls=3)
    x = torch.rand(100, 16)
    y = m(x).argmax(1)
    y[:10] = (y[:10] + 1) % 3  # ten wrong clean
    t = ThreatModel(eps=0.1)
    ev = evaluate(m, (x, y), t, attacks=[FGSM(t), PGD(t, steps=10)], batch_size=32, progress=False)
    assert ev.clean_accuracy == pytest.approx(0.9)
    broken = sum(s["broken"] for s in ev.stages)
    assert ev.robust_accuracy == pytest.approx(0.9 - broken / 100)
    assert ev.stages[-1]["robust_accuracy"] == pytest.approx(ev.robust_accuracy)
    for r in ev.records:
        if r["broken_by"] is not None:
            assert r["clean_correct"] and not r["robust"] and r["norm"] <= 0.1 + 1e-6
            xa = torch.from_numpy(ev.x_adv[r["index"]])[None]
            assert int(m(xa).argmax(1)) == r["adv_pred"] != r["label"]
    assert ev.max_norm <= 0.1 + 1e-6 and ev.flags["norm_exceeds_eps"] == 0
    j = ev.to_json()
    assert list(j)[:3] == ["version", "clean_accuracy", "robust_accuracy"]


def test_black_box_beating_white_box_is_flagged():
    m = models.Quantised()  # zero input gradients: gradient attacks are blind
    x = torch.rand(64, 16)
    y = m(x).argmax(1)
    t = ThreatModel(eps=0.3)
    ev = evaluate(m, (x, y), t, attacks=[PGD(t, steps=5, random_start=False), RandomSearch(t)], progress=False)
    assert ev.stages[0]["broken"] == 0 and ev.stages[1]["broken"] > 0
    assert ev.flags["black_box_beats_white_box"] == ev.stages[1]["broken"]
    assert ev.flags["zero_gradients"] > 0


def test_fgsm_beating_pgd_is_flagged():
    m = models.Bump()
    x = torch.full((20, 16), 0.5) + 0.01 * torch.rand(20, 16)
    y = torch.zeros(20, dtype=torch.long)
    t = ThreatModel(eps=0.3)
    ev = evaluate(m, (x, y), t, attacks=[PGD(t, steps=20), FGSM(t)], progress=False)
    assert ev.stages[0]["broken"] == 0
    assert ev.flags["fgsm_beats_pgd"] == ev.stages[1]["broken"] > 0
    # a well-behaved model raises neither cross-stage flag
    lin = models.linear()
    xl = torch.rand(50, 16)
    ev2 = evaluate(lin, (xl, lin(xl).argmax(1)), t, attacks=[PGD(t, steps=20), FGSM(t), RandomSearch(t)], progress=False)
    assert ev2.flags["fgsm_beats_pgd"] == 0 and ev2.flags["black_box_beats_white_box"] == 0


class Interrupting(PGD):
    """PGD that raises KeyboardInterrupt on its n-th call (a user pressing Ctrl-C)."""

    calls = 0

    def __init__(self, *a, stop_at: int, **k):
        super().__init__(*a, **k)
        self.stop_at = stop_at

    def perturb(self, *a):
        Interrupting.calls += 1
        if Interrupting.calls == self.stop_at:
            raise KeyboardInterrupt
        return super().perturb(*a)


def test_interrupted_run_resumes_without_losing_or_repeating(tmp_path):
    m = models.linear(n_in=16, n_cls=3)
    x = torch.rand(90, 16)
    y = m(x).argmax(1)
    t = ThreatModel(eps=0.1)
    state = tmp_path / "state.npz"
    full = evaluate(m, (x, y), t, attacks=[PGD(t, steps=5, seed=1)], batch_size=20, progress=False)
    Interrupting.calls = 0
    with pytest.raises(KeyboardInterrupt):
        evaluate(m, (x, y), t, attacks=[Interrupting(t, steps=5, seed=1, stop_at=3)], batch_size=20,
                 state_file=state, progress=False)
    assert state.exists()
    with np.load(state) as z:
        import json
        meta = json.loads(str(z["meta"]))
    assert sorted(meta["done_batches"]) == [0, 1]
    Interrupting.calls = 100  # never interrupts again
    resumed = evaluate(m, (x, y), t, attacks=[Interrupting(t, steps=5, seed=1, stop_at=3)], batch_size=20,
                       state_file=state, progress=False)
    assert Interrupting.calls == 103  # only the three missing batches ran
    assert [r["index"] for r in resumed.records] == list(range(90))
    assert resumed.records == full.records
    assert np.array_equal(resumed.x_adv, full.x_adv)
    # a state file from another evaluation is refused
    with pytest.raises(InputError, match="another evaluation"):
        evaluate(m, (x, y), ThreatModel(eps=0.2), attacks=[PGD(ThreatModel(eps=0.2), steps=5)], batch_size=20,
                 state_file=state, progress=False)


def test_attacks_by_name_and_errors():
    m = models.linear()
    x = torch.rand(10, 16)
    y = m(x).argmax(1)
    t = ThreatModel(eps=0.1)
    ev = evaluate(m, (x, y), t, attacks="fgsm,pgd", steps=3, progress=False)
    assert [s["attack"] for s in ev.stages] == ["fgsm", "pgd"]
    with pytest.raises(InputError, match="unknown attack"):
        evaluate(m, (x, y), t, attacks="nope", progress=False)
    with pytest.raises(InputError, match="threat model"):
        evaluate(m, (x, y), t, attacks=[PGD(ThreatModel(eps=0.2))], progress=False)
