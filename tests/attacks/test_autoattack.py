"""AutoAttack: the published stage lists, the sequence, and the ensemble's strength."""
import pytest
import torch

from perturbkit.attacks.apgd import APGD
from perturbkit.attacks.autoattack import AutoAttack
from perturbkit.attacks.base import ThreatModel
from perturbkit.errors import InputError
from tests.attacks.conftest import digits_test

LINF, L2, L1 = ThreatModel(eps=0.1), ThreatModel(eps=0.6, norm=2), ThreatModel(eps=2.0, norm=1)


@pytest.fixture(scope="module")
def digits():
    return digits_test(64)




def _config(att) -> tuple:
    """The published knobs of a stage."""
    if isinstance(att, APGD):
        return (att.name, att.steps, att.restarts, att.n_target_classes if att.targeted else None, att.eot_iter,
                att.large_eps)
    if att.name.startswith("fab"):
        return (att.name, att.steps, att.restarts, att.n_target_classes if att.targeted else None)
    return (att.name, att.queries, att.restarts, att.p_init)


STANDARD = [("apgd-ce", 100, 1, None, 1, False), ("apgd-t", 100, 1, 9, 1, False),
            ("fab-t", 100, 1, 9), ("square", 5000, 1, 0.8)]
STANDARD_L1 = [("apgd-ce", 100, 5, None, 1, True), ("apgd-t", 100, 1, 5, 1, True)]
PLUS = [("apgd-ce", 100, 5, None, 1, False), ("apgd-dlr", 100, 5, None, 1, False), ("fab", 100, 5, None),
        ("square", 5000, 5, 0.8), ("apgd-t", 100, 1, 9, 1, False), ("fab-t", 100, 1, 9)]
RAND = [("apgd-ce", 100, 1, None, 20, False), ("apgd-dlr", 100, 1, None, 20, False)]
FAST = [("apgd-ce", 50, 1, None, 1, False), ("apgd-t", 50, 1, 3, 1, False)]


@pytest.mark.parametrize("threat, version, expected", [
    (LINF, "standard", STANDARD), (L2, "standard", STANDARD), (L1, "standard", STANDARD_L1),
    (LINF, "plus", PLUS), (L2, "plus", PLUS),
    (LINF, "rand", RAND), (L2, "rand", RAND), (L1, "rand", RAND),
    (LINF, "fast", FAST), (L1, "fast", FAST),
])
def test_stages_match_the_published_configuration(threat, version, expected):
    aa = AutoAttack(threat, version=version, seed=7)
    stages = aa.stages()
    assert [_config(a) for a in stages] == expected
    assert all(a.seed == 7 and a.threat == threat for a in stages)
    assert aa.name == {"standard": "autoattack"}.get(version, f"autoattack-{version}")


def test_bad_versions_raise():
    with pytest.raises(InputError):
        AutoAttack(LINF, version="cheap")
    with pytest.raises(InputError):
        AutoAttack(L1, version="plus")


def test_standard_at_most_each_component(mlp, digits):
    x, y = digits
    t = ThreatModel(eps=0.12)  # a few points stay robust; Square's 5000 queries dominate the time
    aa = AutoAttack(t)
    r = aa(mlp, x, y)
    assert bool(t.contains(x, r.x_adv).all())
    assert torch.equal(r.success, mlp(r.x_adv).argmax(1) != y)
    robust = int(r.robust.sum())
    singles = {a.name: int(a(mlp, x, y).robust.sum()) for a in aa.stages()}
    assert robust > 0 and all(robust <= v for v in singles.values()), (robust, singles)
    assert robust < singles["apgd-ce"] or robust == min(singles.values())


@pytest.mark.parametrize("threat", [LINF, L2, L1])
def test_perturb_equals_running_the_stages_in_sequence(threat, cnn, digits):
    """What an evaluation driver gets by calling the stages one after another."""
    x, y = digits
    aa = AutoAttack(threat, version="fast", seed=3)
    r = aa(cnn, x, y)
    assert bool(threat.contains(x, r.x_adv).all())
    robust = ~r.clean_success
    for att in aa.stages():
        idx = torch.nonzero(robust).flatten()
        res = att(cnn, x[idx], y[idx])
        robust[idx[res.success]] = False
    assert torch.equal(robust, r.robust)
    clean = float((~r.clean_success).float().mean())
    assert float(r.robust.float().mean()) < clean - 0.3


def test_fixed_seed_reproduces(cnn, digits):
    x, y = digits
    a = AutoAttack(LINF, version="fast", seed=1)(cnn, x, y)
    b = AutoAttack(LINF, version="fast", seed=1)(cnn, x, y)
    assert torch.equal(a.x_adv, b.x_adv)
