"""Square Attack: a query-efficient black-box attack by random search (Linf and L2).

Andriushchenko, Croce, Flammarion & Hein 2020, "Square attack: a query-efficient black-box
adversarial attack via random search" (ECCV).  Only the model's outputs are used (no
gradients, every call under ``torch.no_grad``); every evaluation of a point is one query.

* **Initialisation.** Linf: vertical stripes, ``x + eps * s`` with one random sign ``s`` per
  (channel, column), clipped to the domain.  L2: a grid of ``h // 5``-sided tiles, each a
  pair of opposite "pseudo-Gaussian" bumps (randomly transposed) with a random sign per
  (image, channel), rescaled to L2 norm ``eps``.
* **Schedule.** ``p`` (the fraction of pixels a square covers) starts at ``p_init`` and halves
  after iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000, the iteration being
  rescaled to a budget of 10000 queries (``it * 10000 // queries``), as in the paper's code.
  The side is ``s = round(sqrt(p * H * W))`` (at least 1 for Linf, 3 and odd for L2).
* **Updates.** Linf: one random ``s x s`` window per image set to ``x +- eps`` with an
  independent sign per channel (resampled, as in the paper, if it would not change the
  current best point).  L2: a window of new pseudo-Gaussian mass per channel, the mass of a
  second random window moved into it, so the perturbation keeps norm ``eps``.
* **Acceptance.** A candidate replaces the best point only if it improves the loss
  (``margin``, default, or ``ce``) or fools the model, and a point that is fooled stops
  (no more queries).
* **Budget.** At most ``queries`` evaluations per point and restart (the initial point
  counts as one); restarts run on the points not yet fooled.  ``last_queries`` holds the
  number spent on each point of the last call.

L1 is not supported (the paper's Square attack is for Linf and L2).

Shapes: images ``x`` (B, C, H, W) (or (B, H, W), treated as one channel); windows (B, C, s, s).
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from perturbkit.attacks.base import Attack, Classifier, ThreatModel
from perturbkit.attacks.losses import ce, fooled, margin
from perturbkit.errors import InputError

Tensor = torch.Tensor

#: iterations (on a 10000-query scale) after which p halves (Andriushchenko et al., App. A)
_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
_LOSSES: dict[str, Callable[..., Tensor]] = {"margin": margin, "ce": ce}


def p_schedule(p_init: float, it: int, queries: int) -> float:
    """Fraction of pixels changed at iteration ``it`` of a ``queries`` budget (piecewise constant)."""
    it = int(it / queries * 10000)
    return p_init / 2 ** sum(it > h for h in _HALVINGS)


def _randint(high: int, size: tuple[int, ...], generator: torch.Generator) -> Tensor:
    """Uniform integers in [0, high] (inclusive)."""
    return torch.randint(0, high + 1, size, generator=generator)


def _signs(size: tuple[int, ...], generator: torch.Generator, dtype: torch.dtype) -> Tensor:
    return torch.randint(0, 2, size, generator=generator).to(dtype) * 2 - 1


def _window_index(B: int, H: int, W: int, s: int, generator: torch.Generator, device) -> tuple[Tensor, Tensor, Tensor]:
    """A random ``s x s`` window per image: batch, row and column index tensors that
    broadcast to (B, s, s) for ``t[b, :, r, c]`` (which then has shape (B, s, s, C))."""
    top = _randint(H - s, (B,), generator).to(device)
    left = _randint(W - s, (B,), generator).to(device)
    ar = torch.arange(s, device=device)
    b = torch.arange(B, device=device)[:, None, None]
    return b, (top[:, None] + ar)[:, :, None], (left[:, None] + ar)[:, None, :]


def _pseudo_gaussian_rect(h: int, w: int) -> Tensor:
    """Concentric rectangles of weight ``1 / (k + 1)^2`` around the centre, unit L2 norm: (h, w)."""
    d = torch.zeros(h, w, dtype=torch.float64)
    ch, cw = h // 2, w // 2
    for k in range(max(ch + 1, cw + 1)):
        d[max(ch - k, 0):min(ch - k + 2 * k + 1, h), max(cw - k, 0):min(cw - k + 2 * k + 1, w)] += 1.0 / (k + 1) ** 2
    return d / d.norm().clamp_min(1e-30)


def meta_pseudo_gaussian(s: int, generator: torch.Generator) -> Tensor:
    """The paper's L2 update shape: a positive bump on one half and a negative one on the
    other, unit L2 norm, transposed with probability 1/2: (s, s) float64."""
    if s < 2:
        return torch.ones(s, s, dtype=torch.float64)
    d = torch.cat((_pseudo_gaussian_rect(s // 2, s), -_pseudo_gaussian_rect(s - s // 2, s)), 0)
    d = d / d.norm()
    if bool(torch.rand((), generator=generator) > 0.5):
        d = d.t()
    return d


def _l2(t: Tensor) -> Tensor:
    """L2 norm over all dims but the first, kept for broadcasting: (B, 1, 1, 1)."""
    return t.flatten(1).norm(dim=1).reshape(-1, *([1] * (t.dim() - 1)))


class Square(Attack):
    """Square Attack (see the module docstring).

    Args:
        threat: the threat model (Linf or L2).
        queries: query budget per point and restart (the paper: 10000; AutoAttack: 5000).
        p_init: initial fraction of pixels a square covers (the paper's Linf default: 0.05 on
            ImageNet, 0.8 in AutoAttack).
        restarts: runs on the points not yet fooled, each with a fresh budget.
        loss: ``margin`` (default) or ``ce``; maximised, only improvements accepted.
        seed: seeds all the randomness (via the base class's generator).
    """

    name = "square"
    white_box = False

    def __init__(self, threat: ThreatModel, *, queries: int = 5000, p_init: float = 0.8, restarts: int = 1,
                 loss: str = "margin", seed: int = 0):
        super().__init__(threat, seed=seed)
        if threat.p not in (math.inf, 2.0):
            raise InputError("square: the L1 threat model is not supported; use norm inf or 2")
        if int(queries) != queries or int(queries) < 1:
            raise InputError(f"square: queries must be an integer >= 1, got {queries}")
        if int(restarts) != restarts or int(restarts) < 1:
            raise InputError(f"square: restarts must be an integer >= 1, got {restarts}")
        if not 0 < p_init <= 1:
            raise InputError(f"square: p_init must be in (0, 1], got {p_init}")
        if loss not in _LOSSES:
            raise InputError(f"square: unknown loss {loss!r}; use {' or '.join(_LOSSES)}")
        self.queries, self.restarts, self.p_init = int(queries), int(restarts), float(p_init)
        self.loss_name, self.loss = loss, _LOSSES[loss]
        self.last_queries: Optional[Tensor] = None

    # -- initialisations -------------------------------------------------------------------
    def _init_linf(self, x: Tensor, g: torch.Generator) -> Tensor:
        B, C, _, W = x.shape
        return self.threat.clip(x + self.threat.eps * _signs((B, C, 1, W), g, x.dtype).to(x.device))

    def _init_l2(self, x: Tensor, g: torch.Generator) -> Tensor:
        B, C, H, W = x.shape
        s = max(min(H, W) // 5, 1)
        delta = torch.zeros(B, C, H, W, dtype=torch.float64)
        top0, left0 = (H - 5 * s) // 2 if H >= 5 * s else 0, (W - 5 * s) // 2 if W >= 5 * s else 0
        for i in range(H // s):
            for j in range(W // s):
                r, c = top0 + i * s, left0 + j * s
                if r + s > H or c + s > W:
                    continue
                bump = meta_pseudo_gaussian(s, g)
                delta[:, :, r:r + s, c:c + s] += bump * _signs((B, C, 1, 1), g, torch.float64)
        delta = delta.to(x.dtype).to(x.device)
        return self.threat.clip(x + delta / _l2(delta).clamp_min(1e-12) * self.threat.eps)

    # -- one candidate per point -------------------------------------------------------------
    def _propose_linf(self, x: Tensor, best: Tensor, p: float, g: torch.Generator) -> Tensor:
        B, C, H, W = x.shape
        eps = self.threat.eps
        s = min(max(int(round(math.sqrt(p * H * W))), 1), max(min(H, W) - 1, 1))
        b, r, c = _window_index(B, H, W, s, g, x.device)
        xw, bw = x[b, :, r, c], best[b, :, r, c]  # (B, s, s, C)
        new = torch.empty_like(bw)
        todo = torch.ones(B, dtype=torch.bool, device=x.device)
        for _ in range(20):  # the paper resamples until the window changes the best point
            sgn = _signs((B, 1, 1, C), g, x.dtype).to(x.device)
            cand = self.threat.clip(xw + eps * sgn)
            new = torch.where(todo[:, None, None, None], cand, new)
            todo = todo & ((new - bw).abs() < 1e-7).flatten(1).all(1)
            if not bool(todo.any()):
                break
        out = best.clone()
        out[b, :, r, c] = new
        return out

    def _propose_l2(self, x: Tensor, best: Tensor, p: float, g: torch.Generator) -> Tensor:
        B, C, H, W = x.shape
        eps = self.threat.eps
        s = max(int(round(math.sqrt(p * H * W))), 3)
        s = min(s + 1 if s % 2 == 0 else s, H, W)
        delta = best - x
        b, r1, c1 = _window_index(B, H, W, s, g, x.device)
        _, r2, c2 = _window_index(B, H, W, s, g, x.device)
        in1 = torch.zeros(B, 1, H, W, dtype=torch.bool, device=x.device)
        in1[b, 0, r1, c1] = True
        in2 = torch.zeros_like(in1)
        in2[b, 0, r2, c2] = True
        w1 = delta[b, :, r1, c1]  # (B, s, s, C)
        norm_w1 = w1.pow(2).sum((1, 2), keepdim=True).sqrt()
        norm_img = _l2(delta).reshape(B, 1, 1, 1)
        norm_both = (delta * (in1 | in2)).pow(2).sum((2, 3)).sqrt().reshape(B, 1, 1, C)
        bump = meta_pseudo_gaussian(s, g).to(x.dtype).to(x.device)[None, :, :, None]
        new = bump * _signs((B, 1, 1, C), g, x.dtype).to(x.device) + w1 / (1e-10 + norm_w1)
        budget = ((eps ** 2 - norm_img ** 2).clamp_min(0) / C + norm_both ** 2).sqrt()
        new = new / new.pow(2).sum((1, 2), keepdim=True).sqrt().clamp_min(1e-12) * budget
        delta = delta.masked_fill(in2, 0.0)
        delta[b, :, r1, c1] = new
        return self.threat.clip(x + delta / _l2(delta).clamp_min(1e-12) * eps)

    # -- the search ----------------------------------------------------------------------------
    def _score(self, f: Classifier, x: Tensor, y: Tensor, t: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        """Loss to maximise (B,) and success (B,) from one query per point."""
        with torch.no_grad():
            z = f(x)
        return self.loss(z, y, t), fooled(z, y, t)

    def _run(self, f: Classifier, x: Tensor, y: Tensor, t: Optional[Tensor],
             g: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """One restart: (best points, fooled, queries spent), all over the batch given."""
        linf = self.threat.p == math.inf
        best = self._init_linf(x, g) if linf else self._init_l2(x, g)
        best_loss, done = self._score(f, best, y, t)
        used = torch.ones(x.shape[0], dtype=torch.long, device=x.device)
        propose = self._propose_linf if linf else self._propose_l2
        for it in range(self.queries - 1):
            idx = torch.nonzero(~done).flatten()
            if not idx.numel():
                break
            ti = None if t is None else t[idx]
            cand = propose(x[idx], best[idx], p_schedule(self.p_init, it, self.queries), g)
            loss, hit = self._score(f, cand, y[idx], ti)
            used[idx] += 1
            better = (loss > best_loss[idx]) | hit  # a fooling candidate is kept even if its ce is lower
            best[idx[better]] = cand[better]
            best_loss[idx[better]] = loss[better]
            done[idx[hit]] = True
        return best, done, used

    def perturb(self, f: Classifier, x: Tensor, y: Tensor, target: Optional[Tensor],
                generator: torch.Generator) -> Tensor:
        shape = x.shape
        if x.dim() == 3:
            x = x.unsqueeze(1)
        if x.dim() != 4:
            raise InputError(f"square: inputs must be images (B, C, H, W), got shape {tuple(shape)}")
        B = x.shape[0]
        best = x.clone()
        self.last_queries = torch.zeros(B, dtype=torch.long, device=x.device)
        if self.threat.eps == 0:
            return best.reshape(shape)
        done = torch.zeros(B, dtype=torch.bool, device=x.device)
        for _ in range(self.restarts):
            idx = torch.nonzero(~done).flatten()
            if not idx.numel():
                break
            b, d, q = self._run(f, x[idx], y[idx], None if target is None else target[idx], generator)
            best[idx] = b
            done[idx] = d
            self.last_queries[idx] += q
        return best.reshape(shape)
