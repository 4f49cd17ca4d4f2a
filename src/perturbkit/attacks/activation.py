"""Attacks on intermediate activations, and how many outputs an attacker on them controls.

The attacker replaces the value ``a`` (B, *act_shape) of one named node (a perturbkit
:class:`~perturbkit.Network`) or one named submodule's output (an ``nn.Module``, through a
forward hook) by ``a + delta`` with ``delta`` inside a budget, a
:class:`~perturbkit.attacks.base.ThreatModel` on the *activation* (use ``domain=None``
unless the activation lives in a range, e.g. ``(0, inf)`` after a ReLU), and runs the rest
of the model on it.  Goals:

* a target output vector ``t`` on chosen outputs ``S``: minimise ``||y_S - t||_2^2``;
  success when ``max_i |y_i - t_i| <= tol``;
* a target class: maximise the margin ``z_t - max_{j != t} z_j`` (Carlini & Wagner 2017);
  success when the argmax is ``t``.

:meth:`ActivationAttack.control` measures control as in Fort (2023), "Scaling laws for
adversarial attacks on language model activations" (arXiv:2312.02780): for a given budget,
targets are drawn for the outputs, and the first ``k`` of them are attacked for increasing
``k``; the largest ``k`` for which every smaller ``k`` (and ``k`` itself) was reached within
``tol`` is the number of output dimensions the attacker controls.  Fort finds that number
grows linearly with the number of activation dimensions attacked; for a linear map
``y = W a + b`` after the node it is at most ``rank(W)``, and under an L2 budget the first
``k`` targets are reachable iff ``||W_k^+ (t_k - y_k)||_2 <= eps`` (the least-norm solution).

The search is :func:`.regression.pgd_maximise` (PGD with restarts, early stopping, best
iterate) on the perturbed activation, by default with a cosine step decay so that the
iterates settle on the targets.  The promises of :class:`~perturbkit.attacks.base.Attack`
hold: eval mode for modules, validation with one-line errors (an unknown node lists the
available ones), the perturbation projected onto its budget, and the outputs re-evaluated
by running the model with the returned activation.

Shapes: ``x`` (B, *sample_shape); ``delta`` (B, *act_shape) (for a Network the value's
declared shape without its leading 1); outputs (B, m); targets (k,) or (B, k).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
import torch

from perturbkit.attacks.base import ThreatModel, as_batch
from perturbkit.attacks.losses import margin
from perturbkit.attacks.norms import lp_norm
from perturbkit.attacks.search import check_pgd_options, pgd_maximise
from perturbkit.attacks.sites import make_site
from perturbkit.errors import InputError

Tensor = torch.Tensor


@dataclass
class ActivationResult:
    """Outcome of an :class:`ActivationAttack` on a batch.

    Attributes:
        node: the perturbed node (or submodule).
        delta: (B, *act_shape) the perturbation of the activation, inside the budget (zero
            where the goal already held).
        outputs: (B, m) outputs re-evaluated with the perturbed activation.
        outputs_clean: (B, m) outputs of the clean model.
        success: (B,) bool: targets within ``tol`` / target class predicted.
        clean_success: (B,) bool: already so without perturbation.
        error: (B,) ``max_{i in S} |y_i - t_i|`` (target vector goal), else None.
        margin: (B,) ``z_t - max_{j != t} z_j`` (target class goal), else None.
        norms: (B,) ``||delta||_p``.
        flags: sanity flags on the clean batch.
        time_s: wall time.
    """

    node: str
    delta: Tensor
    outputs: Tensor
    outputs_clean: Tensor
    success: Tensor
    clean_success: Tensor
    error: Optional[Tensor]
    margin: Optional[Tensor]
    norms: Tensor
    flags: dict[str, int] = field(default_factory=dict)
    time_s: float = 0.0


@dataclass
class ControlResult:
    """Outcome of :meth:`ActivationAttack.control`.

    Attributes:
        node: the perturbed node.
        ks: the numbers of outputs tried, increasing.
        controlled: (B,) int64, the largest ``k`` of ``ks`` such that the first ``k'`` targets
            were reached for every ``k' <= k`` of ``ks`` (0: not even the first).
        success: (B, len(ks)) bool, reached for that ``k`` (False where not tried: after a failure).
        targets: (B, max(ks)) the target values.
        delta: (B, *act_shape) the perturbation reaching the first ``controlled`` targets (zero
            where none), inside the budget.
        attack_dims: number of activation values the attacker changes per sample.
        time_s: wall time.
    """

    node: str
    ks: tuple[int, ...]
    controlled: Tensor
    success: Tensor
    targets: Tensor
    delta: Tensor
    attack_dims: int
    time_s: float = 0.0

    @property
    def mean_controlled(self) -> float:
        return float(self.controlled.double().mean())

    @property
    def outputs_per_dim(self) -> float:
        """Mean controlled outputs per attacked activation dimension (Fort's attack multiplier, per dim)."""
        return self.mean_controlled / max(self.attack_dims, 1)


class ActivationAttack:
    """PGD on a named activation (see the module docstring).

    Args:
        node: a node name (or its output value name) of a Network, or a submodule name
            (``dict(model.named_modules())``) of an nn.Module.
        threat: the budget on the activation (``eps``, ``norm``, ``domain``; use
            ``domain=None`` for an unbounded activation; ``mean``/``std`` are not allowed).
        steps, step_size, restarts, random_start, rel_step, l1_fraction: as in
            :class:`~perturbkit.attacks.regression.OutputAttack`.
        schedule: ``"cosine"`` (default: the steps shrink to zero, so targets are met
            precisely) or ``"constant"``.
        tol: absolute tolerance of a target output value.
        seed: seeds random starts and random targets.
    """

    name = "activation"

    def __init__(self, node: str, threat: ThreatModel, *, steps: int = 100, step_size: Optional[float] = None,
                 restarts: int = 1, random_start: bool = True, rel_step: float = 2.5, schedule: str = "cosine",
                 tol: float = 1e-2, l1_fraction: float = 0.01, seed: int = 0):
        if not isinstance(threat, ThreatModel):
            raise InputError(f"threat must be a ThreatModel, got {type(threat).__name__}")
        if threat.mean is not None:
            raise InputError("an activation budget takes no mean/std normalisation")
        check_pgd_options(steps, restarts, step_size, schedule)
        if not (math.isfinite(tol) and tol > 0):
            raise InputError(f"tol must be > 0, got {tol}")
        if not isinstance(node, str) or not node:
            raise InputError(f"node must be a non-empty name, got {node!r}")
        self.node, self.threat = node, threat
        self.steps, self.restarts = int(steps), int(restarts)
        scale = 2.0 if schedule == "cosine" else 1.0
        self.step_size = step_size if step_size is not None else scale * rel_step * threat.eps / self.steps
        self.random_start, self.schedule = bool(random_start), schedule
        self.tol, self.l1_fraction, self.seed = float(tol), l1_fraction, int(seed)

    # -- shared steps ----------------------------------------------------------------------
    def _prepare(self, site, x: Tensor) -> tuple[Tensor, Tensor]:
        a, y0 = site.prepare(x)
        dom = self.threat.domain
        if dom is not None and bool(((a < dom[0] - 1e-6) | (a > dom[1] + 1e-6)).any()):
            raise InputError(f"the clean activation of '{self.node}' lies outside the budget's domain "
                             f"[{dom[0]}, {dom[1]}] (min {float(a.min()):.4g}, max {float(a.max()):.4g}); "
                             "use ThreatModel(eps, norm, domain=None) for activations")
        return a, y0

    def _flags(self, site, a: Tensor, y0: Tensor) -> dict[str, int]:
        rows = torch.arange(a.shape[0], device=a.device)
        flags = {"nan_outputs": int((~torch.isfinite(y0)).any(1).sum())}
        ag = a.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            y = site.run(rows, ag)
            g = torch.autograd.grad(y.sum(), ag, allow_unused=True)[0] if y.requires_grad else None
        scale = y0.abs().amax(1).clamp_min(1.0)
        differs = ((y.detach() - y0).abs().amax(1) / scale) > 1e-5
        flags["randomized"] = int((differs & torch.isfinite(y0).all(1)).sum())
        flags["zero_gradients"] = a.shape[0] if g is None else int((g.reshape(g.shape[0], -1) == 0).all(1).sum())
        return flags

    def _search(self, site, a: Tensor, rows: Tensor, goal, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        """Best activations (n, *act) for ``rows`` under ``goal(y, rows) -> (objective, hit)``,
        projected onto the budget, and the re-evaluated outputs (n, m)."""
        n = rows.numel()
        a_adv = a[rows].clone()

        def objective(z: Tensor, idx: Tensor):
            obj, hit = goal(site.run(rows[idx], z), rows[idx])
            return obj, obj.detach(), hit

        best, _, _ = pgd_maximise(objective, a[rows], self.threat, steps=self.steps, step_size=self.step_size,
                                  restarts=self.restarts, random_start=self.random_start, schedule=self.schedule,
                                  l1_fraction=self.l1_fraction, generator=gen)
        a_adv = self.threat.project(a[rows], best.detach().to(a.dtype))
        with torch.no_grad():
            y = site.run(rows, a_adv)
        return a_adv.reshape(n, *a.shape[1:]), y

    def _vector_goal(self, targets: Tensor, index: Tensor):
        def goal(y: Tensor, rows: Tensor):
            e = y[:, index] - targets[rows]
            return -(e * e).sum(1), e.abs().amax(1) <= self.tol
        return goal

    @staticmethod
    def _class_goal(cls: Tensor):
        def goal(y: Tensor, rows: Tensor):
            m = margin(y, cls[rows], cls[rows])
            return m, y.argmax(1) == cls[rows]
        return goal

    # -- the attack ------------------------------------------------------------------------
    def __call__(self, model: Any, x: Any, *, target: Any = None, target_class: Any = None,
                 outputs: Any = None) -> ActivationResult:
        """Perturb the activation to reach ``target`` (values (k,) or (B, k) for the outputs
        ``outputs``, default all) or ``target_class`` (int or (B,) ints)."""
        t0 = time.perf_counter()
        if (target is None) == (target_class is None):
            raise InputError("give exactly one of target= (output values) or target_class= (class indices)")
        x = as_batch(x)
        site = make_site(model, self.node)
        gen = torch.Generator().manual_seed(self.seed)
        with site.attacking():
            a, y0 = self._prepare(site, x)
            B, m = y0.shape
            rows = torch.arange(B, device=a.device)
            if target is not None:
                index = _indices(outputs, m)
                t = _targets(target, B, index.numel(), a)
                goal, err = self._vector_goal(t, index), lambda y: (y[:, index] - t).abs().amax(1)
                reached = lambda y: err(y) <= self.tol  # noqa: E731
            else:
                if outputs is not None:
                    raise InputError("outputs= applies to target=, not to target_class=")
                cls = _classes(target_class, B, m, a.device)
                goal, err = self._class_goal(cls), None
                reached = lambda y: y.argmax(1) == cls  # noqa: E731
            flags = self._flags(site, a, y0)
            clean = reached(y0)
            a_adv, y = a.clone(), y0.clone()
            todo = rows[~clean]
            if todo.numel():
                a_adv[todo], y[todo] = self._search(site, a, todo, goal, gen)
        success = reached(y) | clean
        delta = (a_adv - a).reshape(B, *site.act_shape)
        return ActivationResult(self.node, delta, y, y0, success, clean, None if err is None else err(y),
                                margin(y, cls, cls) if err is None else None, lp_norm(delta, self.threat.p),
                                flags, time.perf_counter() - t0)

    def control(self, model: Any, x: Any, *, ks: Optional[Sequence[int]] = None, targets: Any = None,
                target_scale: float = 1.0) -> ControlResult:
        """How many outputs the attacker sets to target values (see the module docstring).

        Args:
            ks: increasing numbers of outputs to try (default ``1, ..., m``); the first ``k``
                outputs are attacked together.
            targets: (max(ks),), (B, max(ks)) or (B, m) target values; default
                ``y(x) + target_scale * sigma * N(0, 1)`` per output, with ``sigma`` the
                standard deviation of the sample's clean outputs (1 where that is 0).
        """
        t0 = time.perf_counter()
        x = as_batch(x)
        site = make_site(model, self.node)
        gen = torch.Generator().manual_seed(self.seed)
        if not (math.isfinite(target_scale) and target_scale > 0):
            raise InputError(f"target_scale must be > 0, got {target_scale}")
        with site.attacking():
            a, y0 = self._prepare(site, x)
            B, m = y0.shape
            ks_t = _ks(ks, m)
            K = ks_t[-1]
            if targets is None:
                sigma = y0.std(1, keepdim=True) if m > 1 else torch.ones_like(y0[:, :1])
                sigma = torch.where(sigma > 0, sigma, torch.ones_like(sigma))
                noise = torch.randn((B, K), generator=gen, dtype=y0.dtype).to(y0.device)
                t = y0[:, :K] + target_scale * sigma * noise
            else:
                t = _targets(targets, B, None, a)
                if t.shape[1] < K:
                    raise InputError(f"{t.shape[1]} target values for ks up to {K}")
                t = t[:, :K]
            success = torch.zeros((B, len(ks_t)), dtype=torch.bool, device=a.device)
            controlled = torch.zeros(B, dtype=torch.long, device=a.device)
            delta = torch.zeros_like(a)
            alive = torch.ones(B, dtype=torch.bool, device=a.device)
            for j, k in enumerate(ks_t):
                rows = torch.nonzero(alive).flatten()
                if not rows.numel():
                    break
                index = torch.arange(k, device=a.device)
                tk = t[:, :k]
                ok = (y0[rows][:, :k] - tk[rows]).abs().amax(1) <= self.tol
                a_k, y_k = a[rows].clone(), y0[rows].clone()
                sub = rows[~ok]
                if sub.numel():
                    a_s, y_s = self._search(site, a, sub, self._vector_goal(tk, index), gen)
                    a_k[~ok], y_k[~ok] = a_s, y_s
                hit = (y_k[:, :k] - tk[rows]).abs().amax(1) <= self.tol
                success[rows, j] = hit
                controlled[rows[hit]] = k
                delta[rows[hit]] = a_k[hit] - a[rows[hit]]
                alive[rows[~hit]] = False
        return ControlResult(self.node, ks_t, controlled, success, t,
                             delta.reshape(B, *site.act_shape), math.prod(site.act_shape), time.perf_counter() - t0)


# -- argument parsing -----------------------------------------------------------------------

def _indices(outputs: Any, m: int) -> Tensor:
    if outputs is None:
        return torch.arange(m)
    idx = [outputs] if isinstance(outputs, (int, np.integer)) else list(torch.as_tensor(outputs).reshape(-1).tolist())
    if not idx or any(not float(i).is_integer() for i in idx):
        raise InputError(f"outputs must be output indices, got {outputs!r}")
    bad = [int(i) for i in idx if not 0 <= int(i) < m]
    if bad:
        raise InputError(f"output index {bad[0]} out of range for a model with {m} outputs")
    return torch.as_tensor([int(i) for i in idx], dtype=torch.long)


def _targets(target: Any, B: int, k: Optional[int], like: Tensor) -> Tensor:
    t = torch.as_tensor(np.asarray(target) if not isinstance(target, Tensor) else target)
    t = t.to(dtype=like.dtype, device=like.device)
    if t.dim() == 1:
        t = t.unsqueeze(0).expand(B, -1)
    if t.dim() != 2 or t.shape[0] != B or (k is not None and t.shape[1] != k):
        want = f"({k},) or ({B}, {k})" if k is not None else f"(n,) or ({B}, n)"
        raise InputError(f"targets of shape {tuple(t.shape)}: expected {want}")
    if not bool(torch.isfinite(t).all()):
        raise InputError("targets contain NaN or inf")
    return t


def _classes(target_class: Any, B: int, m: int, device) -> Tensor:
    c = torch.as_tensor(np.asarray(target_class) if not isinstance(target_class, Tensor) else target_class)
    if c.is_floating_point() and not bool((c == c.round()).all()):
        raise InputError("target_class must be integers")
    c = c.reshape(-1).long().to(device)
    if c.numel() == 1:
        c = c.expand(B)
    if c.numel() != B:
        raise InputError(f"{c.numel()} target classes for {B} inputs")
    if bool(((c < 0) | (c >= m)).any()):
        raise InputError(f"target class {int(c[(c < 0) | (c >= m)][0])} out of range for a model with {m} outputs")
    return c


def _ks(ks: Optional[Sequence[int]], m: int) -> tuple[int, ...]:
    if ks is None:
        return tuple(range(1, m + 1))
    try:
        out = tuple(int(k) for k in ks)
    except (TypeError, ValueError):
        raise InputError(f"ks must be increasing integers in [1, {m}], got {ks!r}") from None
    if not out or any(b <= a for a, b in zip(out, out[1:])) or out[0] < 1 or out[-1] > m:
        raise InputError(f"ks must be increasing integers in [1, {m}], got {list(out)}")
    return out


__all__ = ["ActivationAttack", "ActivationResult", "ControlResult", "make_site"]
