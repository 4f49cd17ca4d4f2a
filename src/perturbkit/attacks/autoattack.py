"""AutoAttack: a fixed ensemble of parameter-free attacks, run in sequence on the points
still robust.

Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks" (ICML); the L1 configuration from Croce & Hein 2021, "Mind
the box: l1-APGD for sparse adversarial attacks on image classifiers" (ICML), as set in the
authors' code (``autoattack.py``, ``set_version``).

========  ======  ==========================================================================
version   norm    stages, in order
========  ======  ==========================================================================
standard  Linf/L2 APGD-CE (100 it., 1 restart); APGD-T (9 targets, 100 it.); FAB-T (9 targets,
                  100 it.); Square (5000 queries, p_init 0.8)
standard  L1      APGD-CE (100 it., 5 restarts) and APGD-T (5 targets, 100 it.), both with the
                  3/2/1 x eps schedule (the reference's ``use_largereps``)
plus      Linf/L2 APGD-CE and APGD-DLR (5 restarts each); FAB (untargeted, 5 restarts);
                  Square (5000 queries, 5 restarts); APGD-T (9 targets); FAB-T (9 targets)
rand      any     APGD-CE and APGD-DLR, 1 restart, ``eot_iter=20`` (randomised defences)
fast      any     APGD-CE (50 it., 1 restart); APGD-T (3 targets, 50 it.) -- ours, see below
========  ======  ==========================================================================

Every stage uses ``seed``.  ``stages()`` gives the component attacks, so an evaluation
driver can run them itself and report each; ``perturb`` (through the base ``__call__``) runs
them in sequence, each stage with the random generator its own ``__call__`` would use, so
both give the same points.

Notes on L1: the authors' code also lists FAB-T and (L1-)Square for L1 standard; we follow
the two APGD stages only (our Square has no L1 variant).  ``plus`` is defined for Linf and
L2 only (it needs Square).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from perturbkit.attacks.apgd import APGD
from perturbkit.attacks.base import Attack, Classifier, ThreatModel
from perturbkit.attacks.losses import fooled
from perturbkit.errors import InputError

Tensor = torch.Tensor


def _standard(t: ThreatModel, seed: int) -> list[Attack]:
    if t.p == 1:
        return [APGD(t, loss="ce", steps=100, restarts=5, large_eps=True, seed=seed),
                APGD(t, targeted=True, n_target_classes=5, steps=100, restarts=1, large_eps=True, seed=seed)]
    from perturbkit.attacks.fab import FAB
    from perturbkit.attacks.square import Square

    return [APGD(t, loss="ce", steps=100, restarts=1, seed=seed),
            APGD(t, targeted=True, n_target_classes=9, steps=100, restarts=1, seed=seed),
            FAB(t, targeted=True, n_target_classes=9, steps=100, restarts=1, seed=seed),
            Square(t, queries=5000, p_init=0.8, restarts=1, seed=seed)]


def _plus(t: ThreatModel, seed: int) -> list[Attack]:
    from perturbkit.attacks.fab import FAB
    from perturbkit.attacks.square import Square

    return [APGD(t, loss="ce", steps=100, restarts=5, seed=seed),
            APGD(t, loss="dlr", steps=100, restarts=5, seed=seed),
            FAB(t, targeted=False, steps=100, restarts=5, seed=seed),
            Square(t, queries=5000, p_init=0.8, restarts=5, seed=seed),
            APGD(t, targeted=True, n_target_classes=9, steps=100, restarts=1, seed=seed),
            FAB(t, targeted=True, n_target_classes=9, steps=100, restarts=1, seed=seed)]


def _rand(t: ThreatModel, seed: int) -> list[Attack]:
    return [APGD(t, loss="ce", steps=100, restarts=1, eot_iter=20, seed=seed),
            APGD(t, loss="dlr", steps=100, restarts=1, eot_iter=20, seed=seed)]


def _fast(t: ThreatModel, seed: int) -> list[Attack]:
    return [APGD(t, loss="ce", steps=50, restarts=1, seed=seed),
            APGD(t, targeted=True, n_target_classes=3, steps=50, restarts=1, seed=seed)]


#: version -> builder of its stage list
VERSIONS: dict[str, Callable[[ThreatModel, int], list[Attack]]] = {
    "standard": _standard, "plus": _plus, "rand": _rand, "fast": _fast,
}
_NAMES = {"standard": "autoattack", "plus": "autoattack-plus", "rand": "autoattack-rand", "fast": "autoattack-fast"}


class AutoAttack(Attack):
    """AutoAttack (see the module docstring for the stages of each version).

    Args:
        threat: the threat model (Linf, L2; L1 for every version but ``plus``).
        version: ``"standard"``, ``"plus"``, ``"rand"`` or ``"fast"``.  ``fast`` is ours, a
            budgeted mode: APGD-CE with 50 iterations (instead of 100) and APGD-T with 50
            iterations towards the top 3 classes (instead of 9), and no FAB-T or Square
            (for L1: 1 restart instead of 5 and no 3/2/1 x eps schedule) -- at most 200
            gradients per point instead of about 1000 gradients, 900 FAB-T steps and 5000
            queries.  Expect a robust accuracy slightly above the standard one.
        seed: the seed of every stage.
    """

    def __init__(self, threat: ThreatModel, *, version: str = "standard", seed: int = 0):
        super().__init__(threat, seed=seed)
        if version not in VERSIONS:
            raise InputError(f"unknown AutoAttack version {version!r}; use {', '.join(VERSIONS)}")
        if version == "plus" and threat.p == 1:
            raise InputError("autoattack: version 'plus' needs Square, which has no L1 variant; use standard")
        self.version = version
        self.name = _NAMES[version]

    def __repr__(self) -> str:
        return f"AutoAttack(version={self.version!r}, eps={self.threat.eps}, norm={self.threat.p}, seed={self.seed})"

    def stages(self) -> list[Attack]:
        """The component attacks, in the order they run (fresh instances)."""
        return VERSIONS[self.version](self.threat, self.seed)

    def perturb(self, f: Classifier, x: Tensor, y: Tensor, target: Optional[Tensor],
                generator: torch.Generator) -> Tensor:
        """Each stage on the points no earlier stage broke; a broken point keeps the stage's
        (projected) point, a robust one the first stage's point."""
        out = x.clone()
        todo = torch.arange(x.shape[0], device=x.device)
        for k, att in enumerate(self.stages()):
            if not todo.numel():
                break
            t = None if target is None else target[todo]
            gen = torch.Generator().manual_seed(att.seed)  # what att's own __call__ would use
            cand = att.perturb(f, x[todo], y[todo], t, gen).detach().to(x.dtype)
            bad = ~torch.isfinite(cand.reshape(cand.shape[0], -1)).all(1)  # as the base class: keep x
            cand[bad] = x[todo][bad]
            xp = self.threat.project(x[todo], cand)
            with torch.no_grad():
                hit = fooled(f(xp), y[todo], t)
            if k == 0:
                out[todo] = xp
            else:
                out[todo[hit]] = xp[hit]
            todo = todo[~hit]
        return out
