"""Attacks: find perturbations inside a threat model that change a model's decision.

    from perturbkit.attacks import ThreatModel, PGD
    threat = ThreatModel(eps=0.1, norm="inf", domain=(0, 1))
    result = PGD(threat, steps=20)(model, x, y)     # AttackResult: x_adv, success, norms, flags

Every attack is a subclass of :class:`~perturbkit.attacks.base.Attack`, whose ``__call__``
validates inputs, uses eval mode, records sanity flags, projects the result onto the threat
model and re-evaluates success.
"""
from perturbkit.attacks.base import Attack, AttackResult, Classifier, ThreatModel
from perturbkit.attacks.pgd import FGSM, PGD

__all__ = ["Attack", "AttackResult", "Classifier", "ThreatModel", "FGSM", "PGD"]
