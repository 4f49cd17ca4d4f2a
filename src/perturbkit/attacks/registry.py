"""Attacks by name (the CLI's ``--attack`` and ``evaluate(attacks=[...])``): one table.

Each entry builds the attack from the threat model and the common options ``steps``,
``step_size``, ``restarts`` and ``seed`` (None: the attack's own default).  ``steps`` means
iterations, except for Square where it is the query budget.  ``autoattack`` and its
variants expand into their published stages, so an evaluation reports each stage.
"""
from __future__ import annotations

from typing import Callable, Optional

from perturbkit.attacks.base import Attack, ThreatModel
from perturbkit.errors import InputError


def _opts(**kw) -> dict:
    return {k: v for k, v in kw.items() if v is not None}


def _fgsm(t, steps, step_size, restarts, seed):
    from perturbkit.attacks.pgd import FGSM

    return [FGSM(t, seed=seed)]


def _pgd(t, steps, step_size, restarts, seed):
    from perturbkit.attacks.pgd import PGD

    return [PGD(t, seed=seed, **_opts(steps=steps, step_size=step_size, restarts=restarts))]


def _apgd(loss: str, targeted: bool):
    def make(t, steps, step_size, restarts, seed):
        from perturbkit.attacks.apgd import APGD

        return [APGD(t, loss=loss, targeted=targeted, seed=seed, **_opts(steps=steps, restarts=restarts))]
    return make


def _fab(targeted: bool):
    def make(t, steps, step_size, restarts, seed):
        from perturbkit.attacks.fab import FAB

        return [FAB(t, targeted=targeted, seed=seed, **_opts(steps=steps, restarts=restarts))]
    return make


def _square(t, steps, step_size, restarts, seed):
    from perturbkit.attacks.square import Square

    return [Square(t, seed=seed, **_opts(queries=steps, restarts=restarts))]


def _autoattack(version: str):
    def make(t, steps, step_size, restarts, seed):
        from perturbkit.attacks.autoattack import AutoAttack

        return list(AutoAttack(t, version=version, seed=seed).stages())
    return make


ATTACKS: dict[str, Callable[..., list[Attack]]] = {
    "fgsm": _fgsm,
    "pgd": _pgd,
    "apgd-ce": _apgd("ce", False),
    "apgd-dlr": _apgd("dlr", False),
    "apgd-t": _apgd("dlr", True),
    "fab": _fab(False),
    "fab-t": _fab(True),
    "square": _square,
    "autoattack": _autoattack("standard"),
    "autoattack-plus": _autoattack("plus"),
    "autoattack-rand": _autoattack("rand"),
    "autoattack-fast": _autoattack("fast"),
}


def build(names: str | list[str], threat: ThreatModel, *, steps: Optional[int] = None,
          step_size: Optional[float] = None, restarts: Optional[int] = None, seed: int = 0) -> list[Attack]:
    """Attacks for a name, a comma-separated list of names, or a list of names."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    if not names:
        raise InputError("no attack given")
    out: list[Attack] = []
    for name in names:
        key = name.lower()
        if key not in ATTACKS:
            raise InputError(f"unknown attack {name!r}; available: {', '.join(ATTACKS)}")
        out += ATTACKS[key](threat, steps, step_size, restarts, seed)
    return out
