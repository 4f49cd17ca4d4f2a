"""Attacks on continuous outputs: regression models, control policies, any real-valued output.

A classifier attack asks "can the label change?"; here the model's outputs ``y = f(x)``
(B, m) are real numbers and the attacker, inside a :class:`~perturbkit.attacks.base.ThreatModel`
around ``x``, pursues one of three goals on a *selection* of the outputs:

* ``"above"`` / ``"below"`` (threshold goals): push the scalar ``s(y)`` (one output ``y_i`` or a
  linear functional ``c . y``) strictly above (below) a threshold ``t``; success = crossed.
  For a linear model ``y = w . x + b`` under an Linf ball without domain the largest value
  is ``w . x + b + eps ||w||_1`` (Hoelder), so "above t" is feasible iff ``t`` is below it.
* ``"deviation"``: maximise ``||y_S(x') - y_S(x)||_q`` over the chosen outputs ``S`` (or
  ``|c . (y(x') - y(x))|`` for a functional); with a ``threshold`` success means a deviation
  of at least ``t``, and points that reach it stop early.

The search is PGD (Madry et al. 2018, "Towards deep learning models resistant to adversarial
attacks") as in :mod:`.pgd`: projected steepest-ascent steps of the objective from uniformly
random starts, restarts, per-point early stopping (threshold crossed), the best iterate kept;
by default the step decays from ``eps`` to 0 on a cosine (a long first step reaches the
boundary, where these maxima lie; the decay settles there).
:func:`pgd_maximise` is that loop, independent of what is perturbed (inputs here, hidden
activations in :mod:`.activation`).

:class:`OutputAttack` keeps the promises of :class:`~perturbkit.attacks.base.Attack`:
validation with one-line :class:`~perturbkit.errors.InputError`, eval mode for modules,
sanity flags on the clean batch, projection of the result onto the threat model and
re-evaluation of the outputs at the returned points.

Shapes: ``x`` (B, *sample_shape); outputs (B, m) (the model's output flattened per sample);
a functional ``c`` (m,) or (B, m); a threshold a float or (B,).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch

from perturbkit.attacks.base import Classifier, ThreatModel, as_batch, parse_norm
from perturbkit.attacks.search import Objective, check_pgd_options, per_sample, pgd_maximise
from perturbkit.errors import InputError

Tensor = torch.Tensor

@dataclass(frozen=True)
class OutputSelection:
    """Which outputs the goal reads: indices ``S`` (k,) or a functional ``c`` (m,) / (B, m).

    ``select(y, rows)`` maps outputs (n, m) to (n, k) (k = 1 for a functional).
    """

    index: Optional[Tensor] = None
    c: Optional[Tensor] = None

    @property
    def k(self) -> int:
        return 1 if self.c is not None else int(self.index.numel())

    def select(self, y: Tensor, rows: Tensor) -> Tensor:
        if self.c is None:
            return y[:, self.index]
        c = self.c.to(y.dtype)
        return (y * (c[rows] if c.dim() == 2 else c)).sum(1, keepdim=True)

    def describe(self) -> str:
        if self.c is not None:
            return "c . y"
        return f"y[{int(self.index[0])}]" if self.k == 1 else f"y[{self.index.tolist()}]"


def parse_output(output: Any) -> Union[None, tuple[int, ...], Tensor]:
    """``output`` option: None, an index, indices (ints) or a functional (floats)."""
    if output is None:
        return None
    if isinstance(output, (bool, np.bool_)):
        raise InputError(f"output must be an index, indices or a c vector, got {output!r}")
    if isinstance(output, (int, np.integer)):
        return (int(output),)
    if isinstance(output, (Tensor, np.ndarray)):
        t = torch.as_tensor(output)
        if t.is_floating_point():
            return t.detach().to(torch.float64)
        return tuple(int(v) for v in t.reshape(-1).tolist())
    if isinstance(output, Sequence) and not isinstance(output, (str, bytes)):
        if not len(output):
            raise InputError("output is empty; give an index, indices or a c vector")
        if any(isinstance(v, float) for v in output):
            return torch.as_tensor([float(v) for v in output], dtype=torch.float64)
        if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in output):
            return tuple(int(v) for v in output)
    raise InputError(f"output must be an index, a list of indices or a c vector of floats, got {output!r}")


def make_selection(spec: Union[None, tuple[int, ...], Tensor], m: int, B: int, like: Tensor) -> OutputSelection:
    """Check ``spec`` (from :func:`parse_output`) against a model with ``m`` outputs."""
    if spec is None:
        return OutputSelection(index=torch.arange(m, device=like.device))
    if isinstance(spec, tuple):
        bad = [i for i in spec if not 0 <= i < m]
        if bad:
            raise InputError(f"output index {bad[0]} out of range for a model with {m} outputs "
                             f"(for a linear functional give floats, e.g. [1.0, -1.0])")
        return OutputSelection(index=torch.as_tensor(spec, dtype=torch.long, device=like.device))
    c = spec.to(dtype=like.dtype, device=like.device)
    if c.shape not in ((m,), (B, m)):
        raise InputError(f"c vector of shape {tuple(c.shape)} does not fit a model with {m} outputs: "
                         f"give ({m},) or ({B}, {m})")
    if not bool(torch.isfinite(c).all()):
        raise InputError("c vector contains NaN or inf")
    return OutputSelection(c=c)


def output_flags(f: Callable[[Tensor], Tensor], x: Tensor, y0: Tensor, direction: Callable[[Tensor], Tensor]
                 ) -> dict[str, int]:
    """Sanity flags on the clean batch (as :func:`.base.sanity_flags`, without labels): NaN
    outputs, randomised outputs (two evaluations differ), zero or NaN gradients of the
    scalar ``direction(y)`` (n,) the attack climbs first."""
    flags = {"nan_outputs": int((~torch.isfinite(y0)).any(1).sum())}
    with torch.no_grad():
        again = f(x)
    scale = y0.abs().amax(1).clamp_min(1.0)
    diff = ((again - y0).abs().amax(1) / scale) > 1e-5
    flags["randomized"] = int((diff & torch.isfinite(y0).all(1)).sum())
    xg = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        s = direction(f(xg))
        g = torch.autograd.grad(s.sum(), xg, allow_unused=True)[0] if s.requires_grad else None
    if g is None:
        flags["zero_gradients"], flags["nan_gradients"] = x.shape[0], 0
    else:
        gf = g.reshape(g.shape[0], -1)
        flags["nan_gradients"] = int((~torch.isfinite(gf)).any(1).sum())
        flags["zero_gradients"] = int((gf == 0).all(1).sum())
    return flags


# -- the attack ---------------------------------------------------------------------------

GOALS = ("above", "below", "deviation")


@dataclass
class RegressionResult:
    """Outcome of an :class:`OutputAttack` on a batch.

    Attributes:
        goal: ``"above"``, ``"below"`` or ``"deviation"``.
        x_adv: (B, *shape) points inside the threat model (the clean input where the goal
            already held there).
        outputs: (B, m) the model's outputs re-evaluated at ``x_adv``.
        outputs_clean: (B, m) the outputs at ``x``.
        deviation: (B,) ``||y_S(x_adv) - y_S(x)||_q`` for the deviation goal; ``|s(x_adv) -
            s(x)|`` for threshold goals.
        success: (B,) bool: threshold crossed at ``x_adv`` (threshold goals), deviation >=
            threshold (deviation goal with a threshold); None for a deviation goal without one.
        clean_success: (B,) bool: the goal already held at ``x`` (None where success is None).
        value, value_clean: (B,) the scalar ``s`` (``y_i`` or ``c . y``) at ``x_adv`` and at
            ``x`` for threshold goals; None for the deviation goal.
        norms: (B,) ``||x_adv - x||_p``.
        flags: sanity flags on the clean batch, name -> number of points concerned.
        time_s: wall time.
    """

    goal: str
    x_adv: Tensor
    outputs: Tensor
    outputs_clean: Tensor
    deviation: Tensor
    success: Optional[Tensor]
    clean_success: Optional[Tensor]
    value: Optional[Tensor]
    value_clean: Optional[Tensor]
    norms: Tensor
    flags: dict[str, int] = field(default_factory=dict)
    time_s: float = 0.0

    def raised(self) -> list[str]:
        return [k for k, v in self.flags.items() if v]


class OutputAttack:
    """PGD on continuous outputs (see the module docstring).

    Args:
        threat: the threat model on the inputs (its ``targeted`` flag is not used).
        goal: ``"above"``, ``"below"`` or ``"deviation"``.
        output: which outputs: an index, a list of indices (deviation goal), a c vector of
            floats (m,) or (B, m) for the functional ``c . y``, or None (the only output for
            threshold goals; all outputs for the deviation goal).
        threshold: ``t`` (float or (B,)): required for ``above``/``below``; for
            ``deviation`` optional, the deviation that counts as success (early stop).
        output_norm: ``q`` of the deviation over several outputs: ``"inf"``, 2 or 1.
        steps: gradient steps per restart (>= 1).
        step_size: (initial) step length in the threat's norm; default ``eps`` for the
            cosine schedule, ``rel_step * eps / steps`` for the constant one.
        restarts: random restarts (points already successful are not restarted).
        random_start: restart 0 from a random point of the ball (else from ``x``; the
            deviation goal then takes its first step along a random sign combination of the
            outputs, whose deviation gradient at ``x`` is zero).
        schedule: ``"cosine"`` (default): the step decays from ``step_size`` to 0, or
            ``"constant"`` (Madry et al.).  The maxima sought here lie on the boundary of the
            ball; a long first step gets there and the decay settles on it (on the L2 sphere
            a constant step of ``2.5 eps / steps`` leaves ~1% of a linear model's maximum
            after 30 steps; the cosine schedule from ``eps`` leaves ~1e-6).
        rel_step: constant schedule's default step, in units of ``eps / steps``.
        l1_fraction: share of coordinates an L1 step moves.
        seed: seeds random starts and directions; a fixed seed reproduces the result.
    """

    name = "output"

    def __init__(self, threat: ThreatModel, *, goal: str = "above", output: Any = None, threshold: Any = None,
                 output_norm: Union[str, float] = "inf", steps: int = 50, step_size: Optional[float] = None,
                 restarts: int = 1, random_start: bool = True, rel_step: float = 2.5, schedule: str = "cosine",
                 l1_fraction: float = 0.01, seed: int = 0):
        if not isinstance(threat, ThreatModel):
            raise InputError(f"threat must be a ThreatModel, got {type(threat).__name__}")
        if goal not in GOALS:
            raise InputError(f"unknown goal {goal!r}; use one of {', '.join(GOALS)}")
        check_pgd_options(steps, restarts, step_size, schedule)
        if goal != "deviation" and threshold is None:
            raise InputError(f"goal {goal!r} needs a threshold")
        self.output = parse_output(output)
        if goal != "deviation" and isinstance(self.output, tuple) and len(self.output) != 1:
            raise InputError(f"goal {goal!r} needs one output or a c vector, got indices {list(self.output)}")
        self.threat = threat
        self.goal = goal
        self.threshold = threshold
        self.q = parse_norm(output_norm)
        self.steps = int(steps)
        self.restarts = int(restarts)
        default = threat.eps if schedule == "cosine" else rel_step * threat.eps / self.steps
        self.step_size = step_size if step_size is not None else default
        self.random_start = bool(random_start)
        self.schedule = schedule
        self.l1_fraction = l1_fraction
        self.seed = int(seed)

    def _crossed(self, s: Tensor, t: Tensor) -> Tensor:
        return s > t if self.goal == "above" else s < t

    def __call__(self, model: Any, x: Any) -> RegressionResult:
        t0 = time.perf_counter()
        x = as_batch(x)
        B = x.shape[0]
        f = self.threat.classifier(model, x)
        gen = torch.Generator().manual_seed(self.seed)
        threshold = None if self.threshold is None else per_sample(self.threshold, B, "threshold", x)
        if self.goal == "deviation" and threshold is not None and bool((threshold < 0).any()):
            raise InputError("a deviation threshold must be >= 0")
        with f.attacking():
            with torch.no_grad():
                y0 = f(x)
            m = y0.shape[1]
            if self.goal != "deviation" and self.output is None and m != 1:
                raise InputError(f"the model has {m} outputs: give output= an index or a c vector")
            sel = make_selection(self.output, m, B, x)
            rows_all = torch.arange(B, device=x.device)
            s0 = sel.select(y0, rows_all)  # (B, k)
            u = torch.where(torch.rand((B, sel.k), generator=gen) < 0.5, -1.0, 1.0).to(x.dtype).to(x.device)
            sign = -1.0 if self.goal == "below" else 1.0
            flags = output_flags(f, x, y0, lambda y: (sel.select(y, rows_all) * (u if self.goal == "deviation" else
                                                                                 sign)).sum(1))
            if self.goal == "deviation":
                clean = torch.zeros(B, dtype=torch.bool, device=x.device) if threshold is None else threshold <= 0
            else:
                clean = self._crossed(s0[:, 0], threshold)
            todo = torch.nonzero(~clean).flatten()
            x_adv = x.clone()
            if todo.numel():
                best, _, _ = pgd_maximise(self._objective(f, sel, s0, u, threshold, todo), x[todo], self.threat,
                                          steps=self.steps, step_size=self.step_size, restarts=self.restarts,
                                          random_start=self.random_start, schedule=self.schedule,
                                          l1_fraction=self.l1_fraction, generator=gen)
                x_adv[todo] = self.threat.project(x[todo], best.detach().to(x.dtype))
            with torch.no_grad():
                y = f(x_adv)
        s = sel.select(y, rows_all)
        dev = self._deviation(s - s0)
        if self.goal == "deviation":
            success = None if threshold is None else dev >= threshold
            clean_out = None if threshold is None else clean
            value = value_clean = None
        else:
            success, clean_out = self._crossed(s[:, 0], threshold) | clean, clean
            value, value_clean = s[:, 0], s0[:, 0]
        return RegressionResult(self.goal, x_adv, y, y0, dev, success, clean_out, value, value_clean,
                                self.threat.distance(x, x_adv), flags, time.perf_counter() - t0)

    def _deviation(self, d: Tensor) -> Tensor:
        return torch.linalg.vector_norm(d, ord=self.q, dim=1)

    def _objective(self, f: Classifier, sel: OutputSelection, s0: Tensor, u: Tensor, threshold: Optional[Tensor],
                   todo: Tensor) -> Objective:
        """The objective on the points ``todo``: ``s`` (above), ``-s`` (below) or the deviation;
        at a zero deviation the random signs ``u`` give the first step a direction without
        changing the value."""

        def objective(z: Tensor, idx: Tensor):
            rows = todo[idx]
            s = sel.select(f(z), rows)
            if self.goal == "deviation":
                d = s - s0[rows]
                dev = self._deviation(d)
                at_zero = (d == 0).all(1)
                obj = dev + torch.where(at_zero, (u[rows] * d).sum(1), torch.zeros_like(dev))
                return obj, dev, None if threshold is None else dev >= threshold[rows]
            obj = s[:, 0] if self.goal == "above" else -s[:, 0]
            return obj, obj, self._crossed(s[:, 0], threshold[rows])

        return objective


__all__ = ["GOALS", "OutputAttack", "OutputSelection", "RegressionResult"]
