"""Attacks: find perturbations inside a threat model that change a model's decision.

    from perturbkit.attacks import ThreatModel, PGD
    threat = ThreatModel(eps=0.1, norm="inf", domain=(0, 1))
    result = PGD(threat, steps=20)(model, x, y)     # AttackResult: x_adv, success, norms, flags

Every attack is a subclass of :class:`~perturbkit.attacks.base.Attack`, whose ``__call__``
validates inputs, uses eval mode, records sanity flags, projects the result onto the threat
model and re-evaluates success.
"""
from perturbkit.attacks.activation import ActivationAttack, ActivationResult, ControlResult
from perturbkit.attacks.apgd import APGD
from perturbkit.attacks.autoattack import AutoAttack
from perturbkit.attacks.base import Attack, AttackResult, Classifier, ThreatModel
from perturbkit.attacks.fab import FAB
from perturbkit.attacks.patch import PatchAttack, PatchResult
from perturbkit.attacks.pgd import FGSM, PGD
from perturbkit.attacks.regression import OutputAttack, RegressionResult
from perturbkit.attacks.square import Square
from perturbkit.attacks.topk import OrderedTopK

__all__ = [
    "APGD", "ActivationAttack", "ActivationResult", "Attack", "AttackResult", "AutoAttack", "Classifier",
    "ControlResult", "FAB", "FGSM", "OrderedTopK", "OutputAttack", "PGD", "PatchAttack", "PatchResult",
    "RegressionResult", "Square", "ThreatModel",
]
