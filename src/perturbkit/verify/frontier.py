"""The branch-and-bound loop and its frontier, shared by every splitting strategy.

A *domain* is one sub-problem of a case: what a strategy needs to bound it (a sub-box, the
signs of split neurons, warm-start parameters, the best bounds its ancestors found), held
as one row of several tensors with a leading domain dimension (a ``dict[str, Tensor]``).
The :class:`Frontier` holds the open domains; :func:`branch_and_bound` is the one loop:

    pop a batch -> strategy.bound (one batched bound call) -> drop the proved domains
    -> strategy.probe (candidate counterexamples, executed) -> strategy.split -> push

Strategies (:class:`.bab.InputSplit`, :class:`.relu_split.ReluSplit`) say how to bound, probe and split;
the loop owns the deadline, the batch size (sized to the time left from the cost per domain
measured so far), the memory cap of the frontier and progress reports.

Frontier orders:

* ``"depth"``: a stack of chunks, popped from the top (depth-first: memory stays at depth x
  batch, deep sub-boxes with counterexamples are reached early; input splitting);
* ``"best"``: best-first, the domains with the lowest key (their lower bound) first: the
  bound of the whole case is the worst domain's, so that is the one to improve (ReLU
  splitting).  While the frontier holds more than its memory budget, the domains with the
  *highest* keys are taken instead (the closest to being proved, so the frontier shrinks).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol

import numpy as np
import torch

Tensor = torch.Tensor
Domains = dict  # str -> Tensor (N, ...)


def take(d: Domains, sel) -> Domains:
    return {k: v[sel] for k, v in d.items()}


def cat(parts: list) -> Domains:
    if len(parts) == 1:
        return parts[0]
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def size(d: Domains) -> int:
    return next(iter(d.values())).shape[0]


class Frontier:
    """Open domains, in ``"depth"`` or ``"best"`` order (see the module docstring).

    Args:
        order: ``"depth"`` or ``"best"``.
        budget_bytes: memory the frontier may hold before it shrinks (``"best"``).
    """

    def __init__(self, order: str = "best", budget_bytes: int = 2 * 2**30):
        if order not in ("depth", "best"):
            raise ValueError(f"frontier order must be 'depth' or 'best', got {order!r}")
        self.order = order
        self.budget = budget_bytes
        self._stack: list[Domains] = []
        self._pool: Optional[Domains] = None  # best: capacity rows, with keys (+inf: free)
        self._keys: Optional[Tensor] = None
        self._n = 0
        self.row_bytes = 0

    def __len__(self) -> int:
        return self._n

    @property
    def nbytes(self) -> int:
        return self._n * self.row_bytes

    def over_budget(self) -> bool:
        return self.nbytes > self.budget

    def worst(self) -> float:
        """The lowest key held (``"best"``; -inf for ``"depth"`` or when empty)."""
        if self.order != "best" or not self._n:
            return -math.inf
        return float(self._keys.min())

    def push(self, d: Domains, keys: Optional[Tensor] = None) -> None:
        n = size(d)
        if n == 0:
            return
        if not self.row_bytes:
            self.row_bytes = sum(v[:1].numel() * v.element_size() for v in d.values())
        self._n += n
        if self.order == "depth":
            self._stack.append(d)
            return
        keys = keys.to(torch.float64)
        if self._pool is None:
            cap = max(1024, 2 * n)
            self._pool = {k: torch.empty((cap, *v.shape[1:]), dtype=v.dtype, device=v.device) for k, v in d.items()}
            self._keys = torch.full((cap,), math.inf, dtype=torch.float64)
        free = torch.nonzero(torch.isinf(self._keys) & (self._keys > 0)).flatten()
        if free.numel() < n:  # grow: double the capacity
            cap = self._keys.numel()
            new = max(2 * cap, cap + n)
            for k, v in self._pool.items():
                grown = torch.empty((new, *v.shape[1:]), dtype=v.dtype, device=v.device)
                grown[:cap] = v
                self._pool[k] = grown
            self._keys = torch.cat([self._keys, torch.full((new - cap,), math.inf, dtype=torch.float64)])
            free = torch.nonzero(torch.isinf(self._keys) & (self._keys > 0)).flatten()
        slots = free[:n]
        for k, v in d.items():
            self._pool[k][slots] = v
        # a key of +inf would read as a free slot: proved domains are not pushed, so clamp
        self._keys[slots] = keys.clamp(max=1e300)

    def pop(self, k: int) -> Domains:
        """Up to ``k`` domains (see the module docstring for which)."""
        k = min(k, self._n)
        if self.order == "depth":
            parts, got = [], 0
            while self._stack and got < k:
                d = self._stack.pop()
                n = size(d)
                t = min(k - got, n)
                if t < n:
                    self._stack.append(take(d, slice(0, n - t)))
                    d = take(d, slice(n - t, n))
                parts.append(d)
                got += t
            self._n -= got
            return cat(parts)
        keys = self._keys
        largest = self.over_budget()
        masked = keys if not largest else torch.where(torch.isinf(keys), torch.full_like(keys, -math.inf), keys)
        slots = torch.topk(masked, k, largest=largest).indices
        out = {name: v[slots] for name, v in self._pool.items()}
        keys[slots] = math.inf
        self._n -= k
        return out


@dataclass
class BabOutcome:
    verdict: str  # "unsat", "sat", "timeout", "unknown"
    candidate: Optional[np.ndarray] = None
    boxes: int = 0  # domains bounded
    batches: int = 0
    #: further bounds computed while splitting (e.g. the children of every candidate neuron)
    evaluated: int = 0
    #: fraction of the input box proved so far (input splitting)
    proved: float = 0.0
    #: why "unknown" (e.g. the frontier outgrew its memory)
    reason: str = ""
    stats: dict = field(default_factory=dict)


@dataclass
class Bounded:
    """What a strategy's bound call says of a batch: which domains stay open, and anything
    its probe and split steps read (strategy-specific, indexed like the batch)."""

    open: Tensor  # (N,) bool
    data: dict


def _rows(v, sel: Tensor, N: int):
    """A batch-indexed value (tensor, or dict of them) restricted to the rows ``sel``."""
    if isinstance(v, Tensor) and v.dim() and v.shape[0] == N:
        return v[sel]
    if isinstance(v, dict):
        return {k: _rows(x, sel, N) for k, x in v.items()}
    return v


class Strategy(Protocol):
    order: str

    def bound(self, domains: Domains) -> Bounded: ...

    def probe(self, domains: Domains, bounded: Bounded, batches: int, deadline: float) -> Optional[np.ndarray]: ...

    def split(self, domains: Domains, bounded: Bounded) -> tuple[Domains, Optional[Tensor], int]: ...


def branch_and_bound(strategy: Strategy, frontier: Frontier, *, deadline: float, batch: int,
                     max_domains: int = 50_000_000, hard_budget: float = 1.5,
                     progress: Callable[[BabOutcome, Frontier, float], None] | None = None) -> BabOutcome:
    """Run the loop until the frontier is empty ("unsat"), a counterexample is confirmed
    ("sat"), the deadline passes ("timeout") or a cap is hit ("unknown").

    ``strategy.bound`` gets the popped batch and returns a :class:`Bounded`; the open
    domains go to ``strategy.probe`` (a confirmed counterexample, or None) and
    ``strategy.split`` (children, their keys, and how many more bounds it computed on the
    way, e.g. for the children of candidate splits: ``BabOutcome.evaluated``).  ``progress(outcome, frontier,
    rate)`` after every batch (rate: domains per second).
    """
    out = BabOutcome("unsat")
    per_domain: Optional[float] = None
    t_start = time.monotonic()
    while len(frontier):
        now = time.monotonic()
        if now > deadline:
            out.verdict = "timeout"
            return out
        if out.boxes > max_domains:
            out.verdict, out.reason = "unknown", f"more than {max_domains} domains"
            return out
        if frontier.nbytes > hard_budget * frontier.budget:
            out.verdict = "unknown"
            out.reason = f"the frontier outgrew its memory budget ({frontier.budget / 2**30:.1f} GB)"
            return out
        # a batch small enough to end before the deadline
        k = batch if per_domain is None else max(1, min(batch, int(0.8 * (deadline - now) / per_domain)))
        t_batch = time.monotonic()
        doms = frontier.pop(k)
        N = size(doms)
        b = strategy.bound(doms)
        out.boxes += N
        out.batches += 1
        sel = torch.nonzero(b.open).flatten()
        if sel.numel():
            opened = take(doms, sel)
            b_open = Bounded(b.open[sel], {key: _rows(v, sel, N) for key, v in b.data.items()})
            x = strategy.probe(opened, b_open, out.batches, deadline)
            if x is not None:
                out.verdict, out.candidate = "sat", x
                return out
            children, keys, extra = strategy.split(opened, b_open)
            out.evaluated += extra
            frontier.push(children, keys)
        spent = (time.monotonic() - t_batch) / N
        per_domain = spent if per_domain is None else 0.7 * per_domain + 0.3 * spent
        if progress:
            progress(out, frontier, out.boxes / max(1e-9, time.monotonic() - t_start))
    return out
