"""perturbkit: perturbation analysis of neural networks.

Public API (explicit re-exports only)::

    net = perturbkit.load("model.onnx")            # or load(module, example_input)
    s = perturbkit.sets.LpBall(x, eps=0.01, norm="inf", domain=(0, 1))
    b = perturbkit.bounds(net, s, method="crown")  # b.lower, b.upper: (B, outputs)
    C = perturbkit.margin_spec(labels, 10)         # bound y_label - y_j instead
    r = perturbkit.verify(net, "prop.vnnlib", timeout=60)  # r.verdict: sat/unsat/unknown/timeout
    t = perturbkit.attacks.ThreatModel(eps=0.1, norm="inf")
    ev = perturbkit.evaluate(model, (x, y), t, attacks="autoattack")  # ev.robust_accuracy
    g = perturbkit.smoothing.Smooth(net, sigma=0.25, num_classes=10)   # g.certify(x, n0, n, alpha)
    rec = perturbkit.conformal.run_conformal(net, x, y, perturbkit.conformal.ConformalConfig(robust_eps=0.1))
    rep = perturbkit.report(["digits-cnn", "model.onnx"], "digits")    # rep.to_html(p), rep.to_json(p)

``perturbkit.verify`` is the verifier's package, and calling it runs the verifier
(:func:`perturbkit.verify.runner.verify`).
"""
from perturbkit import attacks, conformal, sets, smoothing
from perturbkit import report  # a callable package: perturbkit.report(models, data, ...) -> Report
from perturbkit.attacks.evaluate import Evaluation, evaluate
from perturbkit.api import Bounds, bounds, load
from perturbkit.bounds.spec import margin_spec
from perturbkit.errors import InputError, ModelError, PerturbkitError, UnsupportedOperatorError
from perturbkit.graph.network import Network
from perturbkit import verify  # a callable package: perturbkit.verify(net, prop, timeout=...)
from perturbkit.verify.result import Result
from perturbkit.verify.runner import VerifyConfig

__version__ = "0.1.0"

__all__ = [
    "Bounds", "Evaluation", "InputError", "attacks", "evaluate", "Result", "VerifyConfig", "verify", "ModelError", "Network", "PerturbkitError", "UnsupportedOperatorError",
    "bounds", "conformal", "load", "margin_spec", "report", "sets", "smoothing", "__version__",
]
