"""The threat model, the model wrapper and the attack base class that keeps the promises.

:class:`ThreatModel` says what the attacker may do: an Lp ball (inf, 2 or 1) of radius
``eps`` around each input, intersected with the input domain (e.g. ``[0, 1]`` for images),
untargeted or targeted, with an optional normalisation ``(x - mean) / std`` that belongs to
the model (applied inside :class:`Classifier`; the threat model is on raw inputs).

:class:`Attack` is the base of every attack.  Its ``__call__`` (do not override it) does,
whatever the subclass's :meth:`Attack.perturb` returns (after foolbox's final ``__call__``
and AutoAttack's checks):

1. validates inputs (shapes, NaN, domain, label range) with one-line errors;
2. puts ``nn.Module`` models in eval mode for the attack and restores their mode after;
3. records sanity flags on the clean batch: NaN outputs, outputs that look like
   probabilities (softmax) instead of logits, randomised outputs (two evaluations differ),
   points whose input gradient is zero or NaN;
4. attacks only the points not already misclassified (or at their target);
5. replaces non-finite candidates by the clean point, projects the result onto the threat model (``clip(x + P_ball(x_adv - x))``: inside the
   ball *and* the domain, because clipping to a box containing ``x`` never increases any
   Lp norm of the perturbation) and re-evaluates success on the projected points.

Shapes: ``x`` (B, *sample_shape), ``y`` and ``target`` (B,) int64, logits (B, C).
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterator, Optional, Union

import numpy as np
import torch

from perturbkit.attacks.losses import fooled, loss_and_grad, margin
from perturbkit.attacks.norms import lp_norm, project_ball, project_l1_box
from perturbkit.errors import InputError, ModelError
from perturbkit.graph.network import Network
from perturbkit.graph.vjp import GradientProgram

Tensor = torch.Tensor

_NORMS = {"inf": math.inf, "linf": math.inf, "2": 2.0, "l2": 2.0, "1": 1.0, "l1": 1.0}


def parse_norm(norm: Union[str, float, int]) -> float:
    if isinstance(norm, str):
        key = norm.strip().lower()
        if key not in _NORMS:
            raise InputError(f"unknown norm {norm!r}; use inf, 2 or 1")
        return _NORMS[key]
    p = float(norm)
    if p not in (math.inf, 2.0, 1.0):
        raise InputError(f"unsupported norm {norm!r}; use inf, 2 or 1")
    return p


@dataclass(frozen=True)
class ThreatModel:
    """What the attacker may change.

    Attributes:
        eps: radius of the Lp ball, >= 0.
        norm: ``"inf"``, ``2`` or ``1`` (stored as the float p).
        domain: ``(lo, hi)`` every input coordinate must stay in, or None (unbounded).
        targeted: the attack must reach a given target class instead of any wrong one.
        mean, std: optional per-channel normalisation (channel = dim 1) applied inside the
            model wrapper; ``eps`` and ``domain`` are on the raw (unnormalised) inputs.
    """

    eps: float
    norm: Union[str, float] = "inf"
    domain: Optional[tuple[float, float]] = (0.0, 1.0)
    targeted: bool = False
    mean: Optional[tuple[float, ...]] = None
    std: Optional[tuple[float, ...]] = None

    def __post_init__(self):
        try:
            eps = float(self.eps)
        except (TypeError, ValueError):
            raise InputError(f"eps must be a number, got {self.eps!r}") from None
        if not math.isfinite(eps) or eps < 0:
            raise InputError(f"eps must be a finite number >= 0, got {self.eps}")
        object.__setattr__(self, "eps", eps)
        object.__setattr__(self, "norm", parse_norm(self.norm))
        if self.domain is not None:
            lo, hi = (float(v) for v in self.domain)
            if not lo < hi:
                raise InputError(f"domain must be (lo, hi) with lo < hi, got {self.domain}")
            object.__setattr__(self, "domain", (lo, hi))
        if (self.mean is None) != (self.std is None):
            raise InputError("normalisation needs both mean and std")
        if self.std is not None and any(s <= 0 for s in self.std):
            raise InputError(f"std must be > 0, got {self.std}")

    @property
    def p(self) -> float:
        return float(self.norm)

    def clip(self, x: Tensor) -> Tensor:
        return x if self.domain is None else x.clamp(self.domain[0], self.domain[1])

    def project(self, x: Tensor, x_adv: Tensor, eps: Union[float, Tensor, None] = None) -> Tensor:
        """The point of the threat model for ``x_adv``: ``clip(x + P_ball(x_adv - x))``; for L1
        with a domain, the exact Euclidean projection onto the ball intersected with the domain
        (:func:`.norms.project_l1_box`; clipping after the ball's projection is feasible but not
        the nearest point)."""
        e = self.eps if eps is None else eps
        if self.p == 1 and self.domain is not None and not isinstance(e, Tensor):
            # the exact nearest point of the L1 ball intersected with the domain
            return self.clip(x + project_l1_box(x_adv - x, e, self.domain[0] - x, self.domain[1] - x))
        return self.clip(x + project_ball(x_adv - x, e, self.p))

    def check_inputs(self, x: Tensor) -> None:
        """InputError unless every input coordinate lies in the domain (within 1e-6)."""
        dom = self.domain
        if dom is not None and bool(((x < dom[0] - 1e-6) | (x > dom[1] + 1e-6)).any()):
            raise InputError(f"inputs lie outside the domain [{dom[0]}, {dom[1]}] (min {float(x.min()):.4g}, "
                             f"max {float(x.max()):.4g})")

    def classifier(self, model: Any, x: Tensor) -> "Classifier":
        """``model`` wrapped with this threat's normalisation, once ``x`` is checked against
        the domain (the common start of every attack)."""
        f = Classifier(model, mean=self.mean, std=self.std)
        self.check_inputs(x)
        return f

    def distance(self, x: Tensor, x_adv: Tensor) -> Tensor:
        """``||x_adv - x||_p`` per sample: (B,)."""
        return lp_norm(x_adv - x, self.p)

    def contains(self, x: Tensor, x_adv: Tensor, tol: float = 1e-6) -> Tensor:
        """(B,) True where ``x_adv`` is allowed (within ``tol``, relative to eps when eps > 1)."""
        ok = self.distance(x, x_adv) <= self.eps + tol * max(1.0, self.eps)
        if self.domain is not None:
            flat = x_adv.reshape(x_adv.shape[0], -1)
            ok &= ((flat >= self.domain[0] - tol) & (flat <= self.domain[1] + tol)).all(1)
        return ok


class Classifier:
    """A model as a function ``f(x) -> logits (B, C)``, with the normalisation inside.

    ``model``: an ``nn.Module``, a :class:`perturbkit.Network` (ONNX models: differentiable),
    an ``.onnx`` path or a bundled model name, or any callable on tensors.
    """

    def __init__(self, model: Any, *, mean: Optional[tuple] = None, std: Optional[tuple] = None):
        if isinstance(model, Classifier):
            mean = model.mean_t if mean is None else mean
            std = model.std_t if std is None else std
            model = model.model
        if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
            from perturbkit.api import load
            from perturbkit.models import resolve_model

            model = load(str(resolve_model(str(model))), forward_only=True)
        if not callable(model):
            raise ModelError(f"cannot attack a {type(model).__name__}: give an nn.Module, a Network, an .onnx path "
                             "or a callable")
        self.model = model
        self.chunk_rows = _chunk_rows(model)
        self.mean_t = None if mean is None else torch.as_tensor(mean, dtype=torch.float64)
        self.std_t = None if std is None else torch.as_tensor(std, dtype=torch.float64)
        #: a perturbkit Network's gradients come from its GradientProgram (no autograd; see
        #: :mod:`perturbkit.graph.vjp`) unless ``PERTURBKIT_GRADIENTS=autograd`` is set
        self.program = None
        if isinstance(model, Network) and os.environ.get("PERTURBKIT_GRADIENTS", "") != "autograd":
            self.program = GradientProgram.for_network(model)

    def _normalise(self, x: Tensor) -> Tensor:
        if self.mean_t is None:
            return x
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return (x - self.mean_t.to(x.dtype).to(x.device).reshape(shape)) / self.std_t.to(x.dtype).to(x.device).reshape(shape)

    def __call__(self, x: Tensor) -> Tensor:
        z = self.model(self._normalise(x))
        if not isinstance(z, Tensor):
            raise ModelError(f"the model returned a {type(z).__name__}, expected a tensor of logits")
        return z.reshape(z.shape[0], -1)

    def forward_vjp(self, x: Tensor) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
        """Logits ``(B, C)`` at ``x`` and the pull-back ``dz (B, C) -> d <dz, f(x)> / dx``
        (``x.shape``), which may be called several times (e.g. once per logit).

        A Network is differentiated by its :class:`~perturbkit.graph.vjp.GradientProgram`;
        anything else by autograd through :meth:`__call__`."""
        if self.program is not None:
            net, b = self.model, x.shape[0]
            xn = self._normalise(x.detach())
            z, tape = self.program.forward(net.internal(xn, b))
            z = z.reshape(b, -1)

            def pull(dz: Tensor) -> Tensor:
                g = self.program.pullback(tape, dz.reshape(b, *net.graph.output_shape)).reshape(x.shape)
                if self.std_t is not None:
                    g = g / self.std_t.to(g.dtype).to(g.device).reshape((1, -1) + (1,) * (x.dim() - 2))
                return g

            return z, pull
        xg = x.detach().requires_grad_(True)
        with torch.enable_grad():
            z = self(xg)

        def pull_autograd(dz: Tensor) -> Tensor:
            if not z.requires_grad:
                return torch.zeros_like(xg)
            (g,) = torch.autograd.grad(z, xg, dz, retain_graph=True, allow_unused=True)
            return torch.zeros_like(xg) if g is None else g

        return z.detach(), pull_autograd

    @contextlib.contextmanager
    def attacking(self) -> Iterator["Classifier"]:
        """Eval mode (and no parameter gradients) for nn.Modules during the attack; restored after."""
        if not isinstance(self.model, torch.nn.Module):
            yield self
            return
        modes = {m: m.training for m in self.model.modules()}
        grads = {p: p.requires_grad for p in self.model.parameters()}
        self.model.eval()
        for p in grads:
            p.requires_grad_(False)
        try:
            yield self
        finally:
            for m, t in modes.items():
                m.train(t)
            for p, r in grads.items():
                p.requires_grad_(r)


#: gradient batches are cut so that the widest activation of one chunk stays around this
#: many float values (512 KB in float32: inside a CPU's L2 cache).  Measured on the digits
#: CNN (450 rows, 512 values per row in its widest layer): one 450-row gradient 4.65 ms,
#: two of 225 rows 3.9 ms together; PGD-40 416 -> 306 ms.  The MLP (64 values) is not cut.
CHUNK_VALUES = 1 << 17
#: on the CPU, attacks that run several targets (or restarts) on few points batch those runs
#: together, up to this many rows: a forward and backward pass on a small batch costs mostly
#: its fixed cost per call (with the bundled digits CNN, 105 rows cost 8.4 us a row, 210 rows
#: 6.8 us)
CPU_ROWS = 256


def _chunk_rows(model: Any) -> Optional[int]:
    """Rows per gradient chunk for a perturbkit Network (its value shapes are known), else None."""
    graph = getattr(model, "graph", None)
    shapes = getattr(graph, "shapes", None)
    if not shapes:
        return None
    widest = max(math.prod(s) for s in shapes.values())
    return max(32, CHUNK_VALUES // max(1, widest))


def as_batch(x: Any) -> Tensor:
    """Inputs as a finite floating tensor with a batch dimension (B, ...), validated."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, Tensor):
        raise InputError(f"inputs must be a tensor or an array, got {type(x).__name__}")
    if not x.is_floating_point():
        x = x.float()
    if x.dim() < 2:
        raise InputError(f"inputs must be a batch (B, ...), got shape {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise InputError("inputs contain NaN or inf")
    return x


def as_tensor_batch(x: Any, y: Any, target: Any = None) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """Inputs as a float tensor and labels as int64 tensors, validated."""
    x = as_batch(x)

    def labels(v, what):
        if isinstance(v, np.ndarray):
            v = torch.from_numpy(np.ascontiguousarray(v))
        v = torch.as_tensor(v)
        if v.is_floating_point():
            if not bool((v == v.round()).all()):
                raise InputError(f"{what} must be integers")
        v = v.reshape(-1).long().to(x.device)
        if v.numel() != x.shape[0]:
            raise InputError(f"{v.numel()} {what} for {x.shape[0]} inputs")
        return v

    return x, labels(y, "labels"), None if target is None else labels(target, "targets")


@dataclass
class AttackResult:
    """Outcome of one attack on a batch.

    Attributes:
        x_adv: (B, *shape) points inside the threat model (the clean input where the point
            was already misclassified, or the attack's best point otherwise).
        success: (B,) the re-evaluated model misclassifies ``x_adv`` (or predicts the target).
        logits: (B, C) the model's outputs at ``x_adv``.
        clean_success: (B,) already misclassified (or at the target) without perturbation.
        norms: (B,) ``||x_adv - x||_p``.
        flags: sanity flags (see :class:`Attack`), name -> count of points (0: fine).
        time_s: wall time of the attack.
    """

    attack: str
    x_adv: Tensor
    success: Tensor
    logits: Tensor
    clean_success: Tensor
    norms: Tensor
    flags: dict[str, int] = field(default_factory=dict)
    time_s: float = 0.0

    @property
    def robust(self) -> Tensor:
        """(B,) neither already wrong nor broken by the attack."""
        return ~self.success

    def raised(self) -> list[str]:
        return [k for k, v in self.flags.items() if v]


#: the randomness and gradient checks look at this many points of a batch (they cost extra
#: model evaluations; a flawed model shows on a few points)
SANITY_POINTS = 16


def sanity_flags(f: Classifier, x: Tensor, y: Tensor, logits: Tensor, *, gradients: bool = True) -> dict[str, int]:
    """Checks on the clean batch; each value counts the points concerned.  NaN and softmax
    outputs are checked on every point, randomness and gradients on the first
    :data:`SANITY_POINTS`.  ``gradients`` False (black-box attacks) skips the gradient checks:
    the model need not be differentiable."""
    finite = torch.isfinite(logits).all(1)
    flags = {"nan_outputs": logits.shape[0] - int(finite.sum())}
    flags["softmax_outputs"] = 0
    if logits.shape[1] > 1 and bool(torch.aminmax(logits).min >= 0):  # cheap test first: logits are rarely all >= 0
        probs_like = (logits <= 1).all(1) & ((logits.sum(1) - 1).abs() < 1e-4)
        flags["softmax_outputs"] = int(probs_like.sum()) if bool(probs_like.all()) else 0
    x, y, logits = x[:SANITY_POINTS], y[:SANITY_POINTS], logits[:SANITY_POINTS]
    g = None
    if gradients:  # one evaluation serves the gradient checks and the randomness check
        z, pull = f.forward_vjp(x)
        # the margin's gradient, not cross-entropy's: CE saturates to an exact 0 in float32
        # on confidently classified points, which would look like gradient masking
        g = pull(loss_and_grad(margin, z, y)[1])
        again = z
    else:
        with torch.no_grad():
            again = f(x)
    scale = logits.abs().amax(1).clamp_min(1.0)
    diff = ((again - logits).abs().amax(1) / scale) > 1e-5
    flags["randomized"] = int((diff & finite[:SANITY_POINTS]).sum())
    if not gradients:
        flags["zero_gradients"] = flags["nan_gradients"] = 0
    elif g is None:
        flags["zero_gradients"] = x.shape[0]
        flags["nan_gradients"] = 0
    else:
        gf = g.reshape(g.shape[0], -1)
        flags["nan_gradients"] = int((~torch.isfinite(gf)).any(1).sum())
        flags["zero_gradients"] = int((gf == 0).all(1).sum())
    return flags


def check_classes(n_classes: int, **labels: Optional[Tensor]) -> None:
    """InputError naming the first label (or target) outside ``[0, n_classes)``."""
    for what, v in labels.items():
        if v is not None and bool(((v < 0) | (v >= n_classes)).any()):
            bad = int(v[(v < 0) | (v >= n_classes)][0])
            raise InputError(f"{what} {bad} out of range for a model with {n_classes} outputs")


def adopt(threat: ThreatModel, x: Tensor, cand: Tensor) -> Tensor:
    """An attack's candidates for ``x`` made into allowed points: non-finite ones fall back to
    the clean point, then everything is projected onto the threat model (see the module)."""
    cand = cand.detach().to(x.dtype)
    bad = ~torch.isfinite(cand.reshape(cand.shape[0], -1)).all(1)
    cand[bad] = x[bad]
    return threat.project(x, cand)


class Attack:
    """Base class: subclasses implement :meth:`perturb`; ``__call__`` keeps the promises
    listed in the module docstring."""

    name: ClassVar[str] = "attack"
    #: uses gradients of the model (False: black-box, e.g. Square)
    white_box: ClassVar[bool] = True

    def __init__(self, threat: ThreatModel, *, seed: int = 0):
        if not isinstance(threat, ThreatModel):
            raise InputError(f"threat must be a ThreatModel, got {type(threat).__name__}")
        self.threat = threat
        self.seed = int(seed)

    def perturb(self, f: Classifier, x: Tensor, y: Tensor, target: Optional[Tensor],
                generator: torch.Generator) -> Tensor:  # pragma: no cover - abstract
        """Candidate adversarial points (B, *shape) for the points given (all still correct)."""
        raise NotImplementedError

    def check_targets(self, y: Tensor, target: Optional[Tensor]) -> None:
        """A targeted threat model needs targets; a target must differ from the label.
        (Targets given under an untargeted threat model make success mean "at the target".)"""
        if self.threat.targeted and target is None:
            raise InputError(f"{self.name}: the threat model is targeted, give target labels")
        if target is not None and bool((target == y).any()):
            raise InputError(f"{self.name}: a target equals the true label (sample "
                             f"{int(torch.nonzero(target == y)[0])})")

    def __call__(self, model: Any, x: Any, y: Any, *, target: Any = None) -> AttackResult:
        t0 = time.perf_counter()
        x, y, target = as_tensor_batch(x, y, target)
        self.check_targets(y, target)
        f = self.threat.classifier(model, x)
        gen = torch.Generator().manual_seed(self.seed)
        with f.attacking():
            with torch.no_grad():
                z0 = f(x)
            check_classes(z0.shape[1], label=y, target=target)
            flags = sanity_flags(f, x, y, z0, gradients=self.white_box)
            clean = fooled(z0, y, target)
            x_adv = x.clone()
            todo = torch.nonzero(~clean).flatten()
            if todo.numel():
                t_sub = None if target is None else target[todo]
                x_adv[todo] = adopt(self.threat, x[todo], self.perturb(f, x[todo], y[todo], t_sub, gen))
            with torch.no_grad():
                z = f(x_adv)
        success = fooled(z, y, target) | clean
        return AttackResult(self.name, x_adv, success, z, clean, self.threat.distance(x, x_adv), flags,
                            time.perf_counter() - t0)


def run_loss(f: Callable[[Tensor], Tensor], loss: Callable[..., Tensor], x: Tensor, y: Tensor,
             target: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """Logits, per-sample loss and its input gradient at ``x``: ((B, C), (B,), x.shape).

    Large batches are cut into equal chunks of at most ``f.chunk_rows`` rows (see
    :data:`CHUNK_VALUES`); the per-sample results are the same."""
    rows = getattr(f, "chunk_rows", None)
    B = x.shape[0]
    if rows is not None and B > rows:
        size = -(-B // -(-B // rows))
        parts = [_run_loss(f, loss, x[i:i + size], y[i:i + size], None if target is None else target[i:i + size])
                 for i in range(0, B, size)]
        return tuple(torch.cat([p[j] for p in parts]) for j in range(3))
    return _run_loss(f, loss, x, y, target)


def _run_loss(f, loss, x, y, target):
    if isinstance(f, Classifier):
        z, pull = f.forward_vjp(x)
        l, dz = loss_and_grad(loss, z, y, target)
        return z, l, pull(dz)
    xg = x.detach().requires_grad_(True)
    with torch.enable_grad():
        z = f(xg)
        l = loss(z, y, target)
        (g,) = torch.autograd.grad(l.sum(), xg)
    return z.detach(), l.detach(), g
