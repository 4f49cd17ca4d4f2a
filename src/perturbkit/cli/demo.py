"""``perturbkit demo`` (what ``make demo`` runs): the robustness report of the bundled digits
models (:func:`run_report_demo`), or with ``--certify`` a table of bounds on a few test digits.

``--certify``: for each bundled model (the MLP, the CNN and the Transformer) and a handful of test digits
it prints the clean prediction, the lower bound of the worst label margin
``min_j (y_label - y_j)`` under IBP, CROWN, CROWN-IBP and alpha-CROWN, whether the digit is
certified (some method proves every margin > 0), the time of each method, what PGD finds,
and the equivalent ``perturbkit bounds`` command line.  The Transformer is certified at a
third of the radius (its bounds through attention and LayerNorm are looser): the radius is
printed with it.
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import numpy as np
import torch

import perturbkit
from perturbkit.bounds.alpha_crown import AlphaConfig
from perturbkit.cli.bounds_cmd import METHODS, NORMS, BoundsConfig, command_line
from perturbkit.errors import InputError
from perturbkit.models import bundled_path, load_digits_test

METHOD_TITLES = {"ibp": "IBP", "crown": "CROWN", "crown-ibp": "CROWN-IBP", "alpha-crown": "alpha-CROWN"}
DOMAIN = (0.0, 1.0)
@dataclass(frozen=True)
class DemoModel:
    """A bundled model in the demo: its radius as a fraction of ``--eps`` and alpha-CROWN's settings."""

    name: str
    eps_scale: float = 1.0
    alpha: AlphaConfig = AlphaConfig()
    note: str = ""


DEMO_MODELS = (
    DemoModel("digits-mlp"),
    DemoModel("digits-cnn"),
    # every attention score, softmax sum and LayerNorm statistic is an intermediate bound:
    # optimising all their relaxations takes a minute, the output's a second
    DemoModel("digits-transformer", 1 / 3, AlphaConfig(optimize_intermediate=False),
              "alpha-CROWN optimises the output's relaxations only"),
)


@dataclass(frozen=True)
class DemoConfig:
    n_digits: int = 8
    eps: float = 0.03
    norm: str = "inf"
    save_dir: Optional[str] = None  # where the first digit is saved for the printed command

    @property
    def norm_title(self) -> str:
        return f"L{self.norm}"


def _validate(cfg: DemoConfig) -> None:
    if cfg.n_digits < 1:
        raise InputError(f"--n must be >= 1, got {cfg.n_digits}")
    if not (np.isfinite(cfg.eps) and cfg.eps >= 0):
        raise InputError(f"--eps must be a finite number >= 0, got {cfg.eps}")
    if cfg.norm not in NORMS:
        raise InputError(f"--norm must be one of {', '.join(NORMS)}, got {cfg.norm!r}")


#: steps of the demo's PGD attack
PGD_STEPS = 20


def run_demo(cfg: DemoConfig) -> int:
    _validate(cfg)
    x_all, y_all = load_digits_test()
    n = min(cfg.n_digits, len(x_all))
    xs = torch.from_numpy(x_all[:n])
    ys = torch.from_numpy(y_all[:n])
    save_dir = Path(cfg.save_dir) if cfg.save_dir else Path(tempfile.gettempdir()) / "perturbkit-demo"
    save_dir.mkdir(parents=True, exist_ok=True)
    digit0 = save_dir / "digit0.npy"
    np.save(digit0, x_all[0])

    dom = f"pixels kept in [{DOMAIN[0]:g}, {DOMAIN[1]:g}]"
    print(f"perturbkit demo: can a perturbation with ||delta||_{cfg.norm} <= {cfg.eps:g} ({dom}) "
          f"change the prediction of a bundled digit classifier?")
    print("Each column is a provable lower bound of min_j (y_label - y_j); > 0 means certified. "
          "PGD then searches for perturbations that do change it.")
    for model in DEMO_MODELS:
        _demo_model(model, replace(cfg, eps=cfg.eps * model.eps_scale), xs, ys, x_all, y_all, digit0)
    return 0


def _demo_model(model: DemoModel, cfg: DemoConfig, xs: torch.Tensor, ys: torch.Tensor,
                x_all: np.ndarray, y_all: np.ndarray, digit0: Path) -> None:
    name = model.name
    net = perturbkit.load(str(bundled_path(name)))
    n = xs.shape[0]
    with torch.no_grad():
        acc = (net(torch.from_numpy(x_all)).argmax(dim=1).numpy() == y_all).mean()
        pred = net(xs).argmax(dim=1)
    C = perturbkit.margin_spec(ys, net.n_outputs).to(xs.dtype)
    ball = perturbkit.sets.LpBall(xs, cfg.eps, norm=NORMS[cfg.norm], domain=DOMAIN)

    worst: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}
    for method in METHODS:
        t0 = time.perf_counter()
        b = perturbkit.bounds(net, ball, method=method, C=C, alpha=model.alpha)
        seconds[method] = time.perf_counter() - t0
        worst[method] = b.lower.detach().min(dim=1).values.double().numpy()
    certified = np.zeros(n, dtype=bool)
    for m in METHODS:
        certified |= worst[m] > 0

    print()
    note = f"; {model.note}" if model.note else ""
    print(f"{name}  ({_architecture(net)}; clean accuracy {100 * acc:.1f}% on {len(y_all)} test digits; "
          f"{cfg.norm_title} radius {cfg.eps:g}{note})")
    cols = "".join(f"{METHOD_TITLES[m]:>12}" for m in METHODS)
    print(f"  {'digit':>5} {'label':>5} {'pred':>5}{cols}  certified")
    for i in range(n):
        vals = "".join(f"{worst[m][i]:>12.4f}" for m in METHODS)
        verdict = "yes" if certified[i] else ("no (misclassified)" if pred[i] != ys[i] else "no")
        print(f"  {i:>5} {int(ys[i]):>5} {int(pred[i]):>5}{vals}  {verdict}")
    counts = "   ".join(f"{METHOD_TITLES[m]} {int((worst[m] > 0).sum())}" for m in METHODS)
    times = "   ".join(f"{METHOD_TITLES[m]} {seconds[m]:.4f} s" for m in METHODS)
    print(f"  certified of {n}:  {counts}   (any method: {int(certified.sum())})")
    print(f"  time for {n} digits:  {times}")
    # the other side: an attack looks for a perturbation that does change the prediction
    from perturbkit.attacks import PGD, ThreatModel

    t0 = time.perf_counter()
    attack = PGD(ThreatModel(eps=cfg.eps, norm=cfg.norm, domain=DOMAIN), steps=PGD_STEPS, restarts=2, seed=0)(net, xs, ys)
    t_attack = time.perf_counter() - t0
    broken = attack.success.numpy()
    both = int((broken & certified).sum())
    print(f"  broken by PGD ({PGD_STEPS} steps, 2 restarts): {int(broken.sum())} of {n} in {t_attack:.3f} s;"
          f"  undecided: {int((~broken & ~certified).sum())};  certified and broken at once: {both}"
          + ("" if both == 0 else "  <- A SOUNDNESS BUG, please report it"))
    same = BoundsConfig(model=name, input=str(digit0), eps=cfg.eps, norm=cfg.norm, domain=DOMAIN,
                        method="crown", label=int(ys[0]))
    print(f"  digit 0 from the command line:  {command_line(same)}")


def _architecture(net) -> str:
    """The operator sequence of a small network, or its operator counts for a large one."""
    ops = [node.op_type for node in net.graph.nodes]
    if len(ops) <= 12:
        return "-".join(ops)
    from collections import Counter

    counts = Counter(ops)
    return f"{len(ops)} nodes: " + ", ".join(f"{k} {v}" for k, v in counts.most_common(8)) + ", ..."


__all__ = ["DemoConfig", "run_demo"]


#: the models of the report demo: plain, adversarially trained, noise trained, and an MLP
REPORT_MODELS = ("digits-mlp", "digits-cnn", "digits-cnn-adv", "digits-cnn-noise")


def run_report_demo(*, out: str = "perturbkit-demo", budget: str = "fast", progress: bool = True) -> int:
    """``perturbkit report`` of :data:`REPORT_MODELS` on the bundled test digits into ``out``."""
    from perturbkit.cli.report_cmd import ReportCmdConfig, command

    return command(ReportCmdConfig(models=REPORT_MODELS, data="digits", out=out, budget=budget, progress=progress))
