"""perturbkit's attacks against torchattacks' on the bundled digits models: strength and speed.

    pip install --no-deps torchattacks        # the oracle; never a dependency of perturbkit
    taskset -c 1 python bench/attacks_vs_torchattacks.py [--only pgd|autoattack|all|none] [--reps 5]
                                                          [--markdown OUT.md] [--profile]

Question: at the same threat model, steps, step size and number of restarts, is
``perturbkit.attacks.PGD`` at least as strong as ``torchattacks.PGD`` / ``PGDL2`` (robust
accuracy ours <= theirs, up to the randomness of the random starts) and at most half as slow?

* models: digits-mlp, digits-cnn and digits-cnn-adv (PGD adversarially trained at Linf 0.2),
  all 450 points of the bundled test split; both libraries attack the identical forward
  function (the perturbkit ``Network`` of the ONNX file; torchattacks gets it wrapped in a
  tiny ``nn.Module``);
* Linf PGD at eps 0.1 and 0.2, L2 PGD at eps 0.5 and 1.0, 10 and 40 steps, step size
  ``2.5 eps / steps``, one uniformly random start (torchattacks has no restarts, so ours runs
  with ``restarts=1``);
* robust accuracy: mean over ``--reps`` seeds (``PGD(seed=r)`` for ours, ``torch.manual_seed(r)``
  before torchattacks' call), with the range over seeds; "ours <= theirs" is checked on the
  mean numbers of robust points: ours - theirs <= two standard errors of that difference
  (from the seed-to-seed spread of both; at least 2 points);
* time: median over the ``--reps`` runs after one warm-up run, one intra-op thread, the two
  libraries' runs interleaved; wall time, and the process's CPU time beside it (less
  disturbed when other processes share the cores: pin with ``taskset``).  Ours is
  the whole ``PGD(...)(net, x, y)`` call (input validation, sanity flags on the clean batch,
  the attack, projection and re-evaluation); theirs is ``atk(x, y)`` only (no evaluation of
  the result), which favours torchattacks.  "gradient rows" counts the input rows that went
  through a forward+backward in one run (per-point early stopping makes ours smaller);
* ``compare_autoattack``: ``perturbkit.attacks.autoattack.AutoAttack(threat, version="standard")``
  against ``torchattacks.AutoAttack(model, norm="Linf", eps=0.2, version="standard",
  n_classes=10, seed=0)`` on digits-cnn-adv at Linf eps 0.2, all 450 points, and stage by
  stage.  torchattacks' AutoAttack runs APGD-CE, APGD-T and FAB-T with 10 iterations (its
  defaults) where the reference AutoAttack (and ours) uses 100, so the same four torchattacks
  attacks with 100 iterations are timed too (equal work).  Skipped with a message while
  ``perturbkit.attacks.autoattack`` does not exist;
* ``--profile``: where the time of one PGD step goes (Network interpreter vs an equivalent
  plain ``nn.Sequential``, autograd and oneDNN convolutions, batch chunking, the attack loop's
  bookkeeping, the base class), in CPU time.

Exit status: 0 when every check holds, 1 when one fails (the table says which), 2 when
torchattacks is missing.
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import shlex
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
import perturbkit as pk  # noqa: E402
from perturbkit.attacks import PGD, ThreatModel  # noqa: E402
from perturbkit.models import bundled_path, load_digits_test  # noqa: E402

MODELS = ("digits-mlp", "digits-cnn", "digits-cnn-adv")
# (norm, eps) pairs and step counts; step size 2.5 eps / steps (Madry et al.)
PGD_THREATS = (("inf", 0.1), ("inf", 0.2), ("2", 0.5), ("2", 1.0))
PGD_STEPS = (10, 40)
SLACK_POINTS = 2          # robust points: least slack for the randomness of the random starts
MAX_TIME_RATIO = 0.5      # ours must take at most this fraction of torchattacks' time

INSTALL_HINT = ("torchattacks is the oracle of this benchmark and not a dependency of perturbkit; install it with\n"
                "    pip install --no-deps torchattacks")


def import_torchattacks():
    try:
        import torchattacks
    except ImportError as e:
        print(f"torchattacks is not installed ({e}).\n{INSTALL_HINT}", file=sys.stderr)
        raise SystemExit(2)
    return torchattacks


class AsModule(nn.Module):
    """A perturbkit ``Network`` as an ``nn.Module`` for torchattacks: the same forward function.

    The empty parameter only tells torchattacks the device (it reads ``next(model.parameters())``)."""

    def __init__(self, net: pk.Network):
        super().__init__()
        self.net = net
        self.anchor = nn.Parameter(torch.zeros(0), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def load_model(name: str) -> pk.Network:
    return pk.load(str(bundled_path(name)))


def load_data(n: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = load_digits_test()
    if n is not None:
        x, y = x[:n], y[:n]
    return torch.from_numpy(x), torch.from_numpy(y)


@torch.no_grad()
def correct(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return f(x).reshape(len(x), -1).argmax(1) == y


def timed(fn: Callable[[], object]) -> tuple[float, float, object]:
    """(wall seconds, CPU seconds of this process, result)."""
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - t, time.process_time() - c, out


class RowCounter:
    """Counts the model calls and the rows that carry an input gradient (the expensive part)."""

    def __init__(self, f: Callable[[torch.Tensor], torch.Tensor]):
        self.f, self.calls, self.grad_rows = f, 0, 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if x.requires_grad:
            self.grad_rows += x.shape[0]
        return self.f(x)


@dataclass
class Row:
    model: str
    attack: str
    norm: str
    eps: float
    steps: int
    alpha: float
    clean: float
    ours: list[float]           # robust accuracy per seed
    theirs: list[float]
    t_ours: list[float]         # wall seconds per timed run
    t_theirs: list[float]
    c_ours: list[float]         # CPU seconds (process time) per timed run
    c_theirs: list[float]
    n: int
    in_ball: bool
    rows_ours: int = 0          # rows with an input gradient in one run (seed 0)
    rows_theirs: int = 0

    @property
    def gap_points(self) -> float:
        """mean robust points of ours minus theirs (> 0: ours weaker)."""
        return self.n * (statistics.mean(self.ours) - statistics.mean(self.theirs))

    @property
    def noise_points(self) -> float:
        """Allowed gap: two standard errors of the difference of the means (seed-to-seed spread
        of the random starts), at least SLACK_POINTS."""
        k = len(self.ours)
        se = math.sqrt((statistics.variance(self.ours) + statistics.variance(self.theirs)) / k) if k > 1 else 0.0
        return max(SLACK_POINTS, 2 * self.n * se)

    @property
    def strong_ok(self) -> bool:
        return self.gap_points <= self.noise_points + 1e-9

    @property
    def ratio(self) -> float:
        return statistics.median(self.t_ours) / statistics.median(self.t_theirs)

    @property
    def cpu_ratio(self) -> float:
        return statistics.median(self.c_ours) / statistics.median(self.c_theirs)

    @property
    def fast_ok(self) -> bool:
        return self.ratio <= MAX_TIME_RATIO


def pct(v: list[float]) -> str:
    m = 100 * statistics.mean(v)
    if len(v) > 1 and max(v) > min(v):
        return f"{m:.2f} ({100 * min(v):.2f}-{100 * max(v):.2f})"
    return f"{m:.2f}"


def compare_pgd_one(ta, name: str, net: pk.Network, x: torch.Tensor, y: torch.Tensor, norm: str, eps: float,
                    steps: int, reps: int) -> Row:
    """One line of the PGD table: ``reps`` seeds of each library after one warm-up run each."""
    module = AsModule(net).eval()
    alpha = 2.5 * eps / steps
    threat = ThreatModel(eps=eps, norm=norm, domain=(0.0, 1.0))
    if norm == "inf":
        atk = ta.PGD(module, eps=eps, alpha=alpha, steps=steps, random_start=True)
    else:
        atk = ta.PGDL2(module, eps=eps, alpha=alpha, steps=steps, random_start=True)
    clean = correct(net, x, y)
    ours, theirs, t_ours, t_theirs, c_ours, c_theirs = [], [], [], [], [], []
    in_ball = True

    def run_ours(seed):
        return PGD(threat, steps=steps, step_size=alpha, restarts=1, random_start=True, seed=seed)(net, x, y)

    def run_theirs(seed):
        torch.manual_seed(seed)
        return atk(x, y)

    run_ours(10_000)
    run_theirs(10_000)  # warm-up
    for r in range(reps):  # interleaved, so that load from other processes hits both alike
        t, c, res = timed(lambda: run_ours(r))
        t_ours.append(t)
        c_ours.append(c)
        ours.append(res.robust.float().mean().item())
        in_ball &= bool(threat.contains(x, res.x_adv, tol=1e-5).all())
        t, c, xa = timed(lambda: run_theirs(r))
        t_theirs.append(t)
        c_theirs.append(c)
        theirs.append((correct(net, xa, y) & clean).float().mean().item())
        in_ball &= bool(threat.contains(x, xa, tol=1e-5).all())
    # how much gradient work each does (untimed runs through a counting wrapper)
    count = RowCounter(net)
    PGD(threat, steps=steps, step_size=alpha, restarts=1, random_start=True, seed=0)(count, x, y)
    count_ta = RowCounter(net)
    module.net = count_ta
    torch.manual_seed(0)
    atk(x, y)
    module.net = net
    return Row(name, "PGD" if norm == "inf" else "PGD-L2", "Linf" if norm == "inf" else "L2", eps, steps, alpha,
               clean.float().mean().item(), ours, theirs, t_ours, t_theirs, c_ours, c_theirs, len(x), in_ball,
               count.grad_rows, count_ta.grad_rows)


def compare_pgd(ta, reps: int, models=MODELS, threats=PGD_THREATS, steps_list=PGD_STEPS, n=None) -> list[Row]:
    x, y = load_data(n)
    rows = []
    for name in models:
        net = load_model(name)
        for norm, eps in threats:
            for steps in steps_list:
                row = compare_pgd_one(ta, name, net, x, y, norm, eps, steps, reps)
                print(f"  {name:15s} {row.attack:6s} eps {eps:<4} steps {steps:<3} robust ours {pct(row.ours):>22s} "
                      f"theirs {pct(row.theirs):>22s}  time ours {1e3 * statistics.median(row.t_ours):7.1f} ms "
                      f"theirs {1e3 * statistics.median(row.t_theirs):7.1f} ms  ratio {row.ratio:.2f} "
                      f"(CPU {row.cpu_ratio:.2f}, gradient rows {row.rows_ours / max(row.rows_theirs, 1):.2f})",
                      file=sys.stderr, flush=True)
                rows.append(row)
    return rows


def pgd_table(rows: list[Row]) -> str:
    out = ["| model | attack | eps | steps | step size | clean % | robust % ours | robust % torchattacks "
           "| wall ms ours | wall ms torchattacks | wall ours / theirs | CPU ours / theirs "
           "| gradient rows ours / theirs | robust points ours - theirs (allowed) | ours <= theirs | <= 0.5x wall |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        out.append(f"| {r.model} | {r.attack} ({r.norm}) | {r.eps:g} | {r.steps} | {r.alpha:.4g} | {100 * r.clean:.2f} "
                   f"| {pct(r.ours)} | {pct(r.theirs)} | {1e3 * statistics.median(r.t_ours):.1f} "
                   f"| {1e3 * statistics.median(r.t_theirs):.1f} | {r.ratio:.2f} | {r.cpu_ratio:.2f} "
                   f"| {r.rows_ours} / {r.rows_theirs} = {r.rows_ours / max(r.rows_theirs, 1):.2f} "
                   f"| {r.gap_points:+.1f} ({r.noise_points:.1f}) "
                   f"| {'yes' if r.strong_ok else '**NO**'} | {'yes' if r.fast_ok else '**NO**'} |")
    return "\n".join(out)


# -- AutoAttack ----------------------------------------------------------------------------------

def import_our_autoattack():
    """perturbkit's AutoAttack class, or None (with the reason printed) while it does not exist."""
    try:
        from perturbkit.attacks.autoattack import AutoAttack
    except ImportError as e:
        print(f"AutoAttack comparison skipped: perturbkit.attacks.autoattack is not available ({e})",
              file=sys.stderr)
        return None
    return AutoAttack


def torchattacks_autoattack(ta, module: nn.Module, eps: float, seed: int, steps: Optional[int] = None):
    """``torchattacks.AutoAttack(module, norm="Linf", eps=eps, version="standard", n_classes=10,
    seed=seed)``, or with ``steps`` the same four attacks built by hand with that many
    iterations for APGD-CE, APGD-T and FAB-T.  (torchattacks' AutoAttack leaves these at their
    defaults, 10 iterations; the reference AutoAttack of Croce & Hein uses 100.)"""
    if steps is None:
        return ta.AutoAttack(module, norm="Linf", eps=eps, version="standard", n_classes=10, seed=seed)
    return ta.MultiAttack([
        ta.APGD(module, norm="Linf", eps=eps, steps=steps, n_restarts=1, loss="ce", seed=seed),
        ta.APGDT(module, norm="Linf", eps=eps, steps=steps, n_restarts=1, n_classes=10, seed=seed),
        ta.FAB(module, norm="Linf", eps=eps, steps=steps, n_restarts=1, multi_targeted=True, n_classes=10,
               seed=seed),
        ta.Square(module, norm="Linf", eps=eps, n_queries=5000, n_restarts=1, p_init=0.8, seed=seed),
    ])


def _stages(atk) -> list:
    inner = getattr(atk, "_autoattack", atk)
    return list(inner.attacks)


def compare_autoattack(ta, model: str = "digits-cnn-adv", eps: float = 0.2, n: Optional[int] = None,
                       seed: int = 0, stages: bool = True) -> Optional[str]:
    """Robust accuracy and time of perturbkit's and torchattacks' standard AutoAttack (APGD-CE,
    APGD-T, FAB-T, Square) at Linf ``eps`` on ``model``, all points, one run each (AutoAttack
    runs are long enough not to need a warm-up):

    * ``perturbkit.attacks.autoattack.AutoAttack(threat, version="standard", seed=seed)``;
    * ``torchattacks.AutoAttack(model, norm="Linf", eps=eps, version="standard", n_classes=10,
      seed=seed)`` as shipped (10 iterations for APGD-CE, APGD-T and FAB-T);
    * torchattacks' four attacks with the reference budget (100 iterations), for a time
      comparison at equal work.

    With ``stages``, also each component attack on the points the earlier components of the
    same library left.  Returns markdown, or None when perturbkit's AutoAttack is missing."""
    AutoAttack = import_our_autoattack()
    if AutoAttack is None:
        return None
    net = load_model(model)
    module = AsModule(net).eval()
    x, y = load_data(n)
    threat = ThreatModel(eps=eps, norm="inf", domain=(0.0, 1.0))
    clean = correct(net, x, y)

    contenders = [
        ("perturbkit AutoAttack (100 it.)", "ours", AutoAttack(threat, version="standard", seed=seed)),
        ("perturbkit AutoAttack fast (APGD-CE, APGD-T 3 targets, 50 it.)", "ours",
         AutoAttack(threat, version="fast", seed=seed)),
        ("torchattacks.AutoAttack as shipped (10 it.)", "ta", torchattacks_autoattack(ta, module, eps, seed)),
        ("torchattacks, reference budget (100 it.)", "ta", torchattacks_autoattack(ta, module, eps, seed, 100)),
    ]
    results = []
    for label, kind, atk in contenders:
        print(f"  {label} on {model}, {len(x)} points ...", file=sys.stderr, flush=True)
        if kind == "ours":
            t, c, res = timed(lambda: atk(net, x, y))
            robust, xa = res.robust.cpu(), res.x_adv
        else:
            torch.manual_seed(seed)
            t, c, xa = timed(lambda: atk(x, y))
            robust = correct(net, xa, y) & clean
        results.append((label, robust, t, c, bool(threat.contains(x, xa, tol=1e-5).all())))
    ref_robust = results[0][1]
    t0 = results[0][2]
    lines = ["| attack | model | eps (Linf) | points | clean % | robust % | wall s | CPU s "
             "| perturbkit / this (wall) | robust here, broken by perturbkit | broken here, robust for perturbkit "
             "| in ball |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for label, robust, t, c, ok in results:
        lines.append(f"| {label} | {model} | {eps:g} | {len(x)} | {100 * clean.float().mean().item():.2f} "
                     f"| {100 * robust.float().mean().item():.2f} | {t:.2f} | {c:.2f} | {t0 / t:.2f} "
                     f"| {int((robust & ~ref_robust).sum())} | {int((~robust & ref_robust).sum())} "
                     f"| {'yes' if ok else '**NO**'} |")
    if stages:
        print("  AutoAttack stage by stage ...", file=sys.stderr, flush=True)
        stage_lists = [(label, kind, atk.stages() if kind == "ours" else _stages(atk))
                       for label, kind, atk in contenders]
        lines += ["", "Stage by stage (each stage on the points the earlier stages of the same attack left; "
                  "robust points after the stage, wall / CPU seconds of the stage):", "",
                  "| stage | " + " | ".join(label for label, _, _ in stage_lists) + " |",
                  "| --- |" + " --- |" * len(stage_lists)]
        robs = [clean.clone() for _ in stage_lists]
        for k in range(max(len(s) for _, _, s in stage_lists)):
            cells = []
            for (label, kind, sts), rob in zip(stage_lists, robs):
                if k >= len(sts) or not bool(rob.any()):
                    cells.append("-")
                    continue
                att, idx = sts[k], torch.nonzero(rob).flatten()
                if kind == "ours":
                    t, c, res = timed(lambda: att(net, x[idx], y[idx]))
                    broken = res.success
                else:
                    torch.manual_seed(seed)
                    t, c, xa = timed(lambda: att(x[idx], y[idx]))
                    broken = ~correct(net, xa, y[idx])
                rob[idx[broken]] = False
                name = getattr(att, "name", None) if kind == "ours" else getattr(att, "attack", type(att).__name__)
                cells.append(f"{name}: {int(rob.sum())} ({100 * rob.float().mean().item():.2f} %), {t:.2f} / {c:.2f} s")
            lines.append(f"| {k + 1} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- profiling -----------------------------------------------------------------------------------

def as_sequential(net: pk.Network) -> nn.Module:
    """The digits models (Conv / Relu / Flatten / Gemm chains) as a plain nn.Sequential with the
    same weights, to measure what the graph interpreter costs."""
    g = net.graph
    layers: list[nn.Module] = []
    for node in g.nodes:
        c = [g.constants[i] for i in node.inputs if i in g.constants]
        if node.op_type == "Conv":
            W = c[0]
            pads = list(node.attrs.get("pads", [0, 0, 0, 0]))
            m = nn.Conv2d(W.shape[1], W.shape[0], tuple(W.shape[2:]), stride=tuple(node.attrs.get("strides", [1, 1])),
                          padding=tuple(pads[:2]))
            m.weight.data, m.bias.data = W.float().clone(), c[1].float().clone()
            layers.append(m)
        elif node.op_type == "Gemm":
            W = c[0] if node.attrs.get("transB", 0) else c[0].T
            m = nn.Linear(W.shape[1], W.shape[0])
            m.weight.data, m.bias.data = W.float().clone(), c[1].float().clone()
            layers.append(m)
        elif node.op_type == "Relu":
            layers.append(nn.ReLU())
        elif node.op_type in ("Flatten", "Reshape"):
            layers.append(nn.Flatten())
        else:
            raise NotImplementedError(node.op_type)
    seq = nn.Sequential(*layers).eval()
    for p in seq.parameters():
        p.requires_grad_(False)
    return seq


def _median_time(fn: Callable[[], object], reps: int = 200) -> float:
    """Median CPU time of this process (one thread: the time of the call, little disturbed by
    other processes on the machine)."""
    for _ in range(5):
        fn()
    ts = []
    for _ in range(reps):
        t = time.process_time()
        fn()
        ts.append(time.process_time() - t)
    return statistics.median(ts)


def profile(ta, model: str = "digits-cnn-adv", eps: float = 0.2, steps: int = 40) -> str:
    """Costs of the pieces of one PGD step and of one whole attack, in microseconds."""
    from perturbkit.attacks.base import Classifier, run_loss, sanity_flags
    from perturbkit.attacks.losses import ce, fooled

    net = load_model(model)
    seq = as_sequential(net)
    x, y = load_data()
    with torch.no_grad():
        assert torch.allclose(seq(x), net(x), atol=1e-5), "as_sequential differs from the Network"
    module = AsModule(net).eval()
    f = Classifier(net)
    xa = x.clone()
    lines = [f"Profile on {model} ({len(x)} points, Linf eps {eps}, {steps} steps), CPU time of the process "
             "(1 thread), median of 200 calls (5 for whole attacks), microseconds:", "", "| piece | us |", "| --- | --- |"]

    def grad_step(fwd):
        xg = xa.detach().requires_grad_(True)
        loss = nn.functional.cross_entropy(fwd(xg), y)
        return torch.autograd.grad(loss, xg)[0]

    t_net_fwd = _median_time(lambda: net(x))
    t_seq_fwd = _median_time(lambda: seq(x))
    with torch.no_grad():
        t_net_fwd_ng = _median_time(lambda: net(x))
        t_seq_fwd_ng = _median_time(lambda: seq(x))
    t_net_step = _median_time(lambda: grad_step(net))
    t_mod_step = _median_time(lambda: grad_step(module))
    t_seq_step = _median_time(lambda: grad_step(seq))
    with torch.backends.mkldnn.flags(enabled=False):
        t_net_step_nomkl = _median_time(lambda: grad_step(net))

    def chunked_step(rows):
        out = []
        for i in range(0, len(x), rows):
            xg = xa[i:i + rows].detach().requires_grad_(True)
            loss = nn.functional.cross_entropy(net(xg), y[i:i + rows], reduction="sum")
            out.append(torch.autograd.grad(loss, xg)[0])
        return torch.cat(out)

    t_chunks = {rows: _median_time(lambda: chunked_step(rows)) for rows in (225, 150, 64)}
    t_run_loss = _median_time(lambda: run_loss(f, ce, xa, y, None))
    z, l, g = run_loss(f, ce, xa, y, None)

    # the bookkeeping of one iteration of PGD.perturb after run_loss (best iterate and loss,
    # done count, Linf step and projection), with nobody fooled (the worst case)
    tm = ThreatModel(eps=eps)
    B = len(x)
    kb, kl = x.clone(), torch.full((B,), -math.inf)
    lo, hi = (x - eps).clamp_min(0), (x + eps).clamp_max(1)
    view = (-1,) + (1,) * (x.dim() - 1)

    def bookkeeping():
        lf = l.masked_fill(fooled(z, y, None) & False, math.inf)
        kb2 = torch.where((lf > kl).view(view), xa, kb)
        kl2 = torch.maximum(kl, lf)
        int((kl2 == math.inf).sum())
        return kb2, torch.add(xa, g.sign(), alpha=0.0125).clamp_(lo, hi)

    t_book = _median_time(bookkeeping)
    f_autograd = Classifier(net)
    f_autograd.program = None  # what PERTURBKIT_GRADIENTS=autograd gives
    t_run_loss_autograd = _median_time(lambda: run_loss(f_autograd, ce, xa, y, None))

    def ta_update():  # torchattacks' update after the gradient
        adv = xa.detach() + 0.0125 * g.sign()
        delta = torch.clamp(adv - x, min=-eps, max=eps)
        return torch.clamp(x + delta, min=0, max=1).detach()

    t_ta_update = _median_time(ta_update)
    t_flags = _median_time(lambda: sanity_flags(f, x, y, f(x).detach()), reps=50)
    t_interp = _median_time(lambda: net.run(net.internal(x)), reps=200)

    res = PGD(tm, steps=steps)(net, x, y)
    t_pgd = _median_time(lambda: PGD(tm, steps=steps)(net, x, y), reps=5)
    os.environ["PERTURBKIT_GRADIENTS"] = "autograd"
    try:
        t_pgd_autograd = _median_time(lambda: PGD(tm, steps=steps)(net, x, y), reps=5)
    finally:
        del os.environ["PERTURBKIT_GRADIENTS"]
    atk = ta.PGD(module, eps=eps, alpha=2.5 * eps / steps, steps=steps)
    t_ta = _median_time(lambda: atk(x, y), reps=5)
    atk_seq = ta.PGD(seq, eps=eps, alpha=2.5 * eps / steps, steps=steps)
    t_ta_seq = _median_time(lambda: atk_seq(x, y), reps=5)
    t_pgd_seq = _median_time(lambda: PGD(tm, steps=steps)(seq, x, y), reps=5)

    # counts of gradient evaluations in our PGD (early stopping shrinks the batch)
    calls = {"n": 0, "rows": 0}

    def counting(v):
        calls["n"] += 1
        calls["rows"] += v.shape[0]
        return net(v)

    PGD(tm, steps=steps)(counting, x, y)
    rows = [
        ("Network forward, with grad tracking (interpreter)", t_net_fwd),
        ("same weights as nn.Sequential forward, with grad tracking", t_seq_fwd),
        ("Network forward, no_grad", t_net_fwd_ng),
        ("nn.Sequential forward, no_grad", t_seq_fwd_ng),
        ("Network.run only (no batch/shape checks)", t_interp),
        ("gradient step (fwd + CE + backward): Network", t_net_step),
        ("gradient step: Network wrapped in nn.Module (what torchattacks sees)", t_mod_step),
        ("gradient step: nn.Sequential", t_seq_step),
        ("gradient step: Network, oneDNN (mkldnn) disabled", t_net_step_nomkl),
    ] + [(f"gradient of the {len(x)} rows in chunks of {rows} rows: Network", t) for rows, t in t_chunks.items()] + [
        ("perturbkit run_loss (Classifier + CE + gradient by the GradientProgram, in chunks)", t_run_loss),
        ("perturbkit run_loss with autograd instead of the GradientProgram, in chunks", t_run_loss_autograd),
        ("PGD.perturb bookkeeping per step (nobody fooled)", t_book),
        ("torchattacks update per step (sign, clamp, clamp)", t_ta_update),
        ("clean forward of all points + base class sanity_flags (1 forward + 1 gradient of 16 points)", t_flags),
        (f"whole perturbkit PGD-{steps} on the Network ({calls['n']} model calls, {calls['rows']} rows; "
         f"robust {100 * res.robust.float().mean().item():.2f} %)", t_pgd),
        (f"whole perturbkit PGD-{steps} on the Network with autograd gradients (PERTURBKIT_GRADIENTS=autograd)",
         t_pgd_autograd),
        (f"whole torchattacks PGD-{steps} on the Network ({steps} calls, {steps * len(x)} rows)", t_ta),
        (f"whole perturbkit PGD-{steps} on the nn.Sequential", t_pgd_seq),
        (f"whole torchattacks PGD-{steps} on the nn.Sequential", t_ta_seq),
    ]
    lines += [f"| {k} | {1e6 * v:.0f} |" for k, v in rows]
    return "\n".join(lines)


# -- main ----------------------------------------------------------------------------------------

def environment(ta) -> str:
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:
        cpus = []
    return (f"python {platform.python_version()}, torch {torch.__version__}, torchattacks {ta.__version__}, "
            f"perturbkit {pk.__version__}; torch threads {torch.get_num_threads()}; CPU affinity {cpus} of "
            f"{os.cpu_count()} cores; {platform.processor() or platform.machine()}")


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=("pgd", "autoattack", "all", "none"), default="all",
                    help="which comparison to run (none: only --profile)")
    ap.add_argument("--reps", type=int, default=5, help="seeds / timed runs per PGD configuration (default 5)")
    ap.add_argument("--n", type=int, default=None, help="use only the first N test points (default: all 450)")
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument("--no-stages", action="store_true", help="AutoAttack: skip the stage-by-stage breakdown")
    ap.add_argument("--profile", action="store_true", help="also print where the time of PGD goes")
    ap.add_argument("--markdown", type=Path, default=None, help="also write the tables to this file")
    args = ap.parse_args(argv)
    ta = import_torchattacks()
    torch.set_num_threads(1)

    cmd = "python " + shlex.join([os.path.relpath(__file__, Path.cwd())] + sys.argv[1:] if argv is None else
                                 [os.path.relpath(__file__, Path.cwd())] + argv)
    parts = [f"Command: `{cmd}`", "", f"Environment: {environment(ta)}", ""]
    failed = False
    if args.only in ("pgd", "all"):
        print("PGD ...", file=sys.stderr)
        rows = compare_pgd(ta, args.reps, models=args.models, n=args.n)
        failed |= not all(r.strong_ok and r.fast_ok and r.in_ball for r in rows)
        parts += [f"### PGD: perturbkit vs torchattacks ({rows[0].n} test points, robust accuracy mean over "
                  f"{args.reps} seeds (range), time median of {args.reps} runs, 1 thread)", "", pgd_table(rows), ""]
        if not all(r.in_ball for r in rows):
            parts.append("**Some adversarial points left the threat model** (rows: "
                         + ", ".join(f"{r.model} {r.attack} {r.eps}" for r in rows if not r.in_ball) + ")\n")
    if args.only in ("autoattack", "all"):
        print("AutoAttack ...", file=sys.stderr)
        table = compare_autoattack(ta, n=args.n, stages=not args.no_stages)
        if table is None:
            parts += ["### AutoAttack: skipped (perturbkit.attacks.autoattack is not available yet)", ""]
        else:
            parts += ["### AutoAttack (standard) at Linf eps 0.2: perturbkit vs torchattacks (1 thread, one run each)",
                      "", table, ""]
    if args.profile:
        print("profile ...", file=sys.stderr)
        parts += ["### Profile", "", profile(ta), ""]
    text = "\n".join(parts)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
