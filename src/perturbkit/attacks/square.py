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
  current best point; the windows and signs of a block of iterations are drawn at once,
  see :class:`_LinfProposals`).  L2: a window of new pseudo-Gaussian mass per channel, the mass of a
  second random window moved into it, so the perturbation keeps norm ``eps``.
* **Acceptance.** A candidate replaces the best point only if it improves the loss
  (``margin``, default, or ``ce``) or fools the model, and a point that is fooled stops
  (no more queries: the batch of points still searching shrinks).
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


#: a Linf window "does not change" the best point when every value moves by less than this
_TOL = 1e-7
#: draws of a window's signs before giving up on changing the best point (Linf)
_RESAMPLE = 20
#: bound on the elements of the pre-drawn window masks of one block of Linf iterations
_BLOCK_ELEMS = 1 << 22


def _linf_side(p: float, H: int, W: int) -> int:
    """The side of the Linf square for the fraction ``p``: at least 1, at most ``min(H, W) - 1``."""
    return min(max(int(round(math.sqrt(p * H * W))), 1), max(min(H, W) - 1, 1))


class _LinfProposals:
    """The Linf candidates of the search (the paper's update), with the randomness drawn in
    blocks of iterations instead of a few small draws per iteration.

    The candidate of an image keeps its best point except on one uniformly placed ``s x s``
    window, set to ``x + eps * sgn_c`` (clipped) with a sign per channel.  The paper redraws
    the signs until the window changes the best point; that gives a uniform draw among the
    sign vectors that change it.  When ``x + eps`` and ``x - eps`` (clipped) differ by more
    than twice the tolerance everywhere, at most one sign vector leaves a window unchanged
    (the window's current signs), so the same law is: draw ``sgn``; if it changes nothing,
    use ``sgn xor m`` with ``m`` a uniform nonzero mask of channels.  Otherwise (an eps below
    the tolerance) the rows still unchanged get fresh draws, up to ``_RESAMPLE`` in all, as
    in the paper's loop.

    The windows and signs of a block of iterations are drawn at once, per row of the current
    active set (:meth:`keep` shrinks it); the candidates are built with masks (no indexing).
    """

    def __init__(self, x: Tensor, threat: ThreatModel, sides: list[int], g: torch.Generator):
        B, C, H, W = x.shape
        self.g, self.sides = g, sides
        self.shape = (C, H, W)
        self.xp = threat.clip(x + threat.eps)  # every value of the search is one of these two
        self.xm = threat.clip(x - threat.eps)
        # at most one unchanged sign vector per window: every value tells the two signs apart
        self.simple = bool(((self.xp - self.xm).abs() > 2 * _TOL).all())
        self.block = max(1, min(256, _BLOCK_ELEMS // max(1, B * H * W)))
        self.start = 0  # first iteration of the current block
        self.masks: Optional[Tensor] = None

    def _draw(self, it: int) -> None:
        """Windows and signs of iterations ``it .. it + block - 1`` for the current rows."""
        B = self.xp.shape[0]
        C, H, W = self.shape
        dev = self.xp.device
        K = max(0, min(self.block, len(self.sides) - it))
        s = torch.tensor(self.sides[it:it + K], dtype=torch.float64).reshape(K, 1)
        u = torch.rand((K, B, 2), generator=self.g, dtype=torch.float64)
        top = (u[..., 0] * (H - s + 1)).floor().clamp_max(H - s).to(dev)
        left = (u[..., 1] * (W - s + 1)).floor().clamp_max(W - s).to(dev)
        s = s.to(dev)
        ar_h = torch.arange(H, device=dev, dtype=torch.float64)
        ar_w = torch.arange(W, device=dev, dtype=torch.float64)
        rows = ((ar_h >= top[..., None]) & (ar_h < (top + s)[..., None])).to(torch.uint8)  # (K, B, H)
        cols = ((ar_w >= left[..., None]) & (ar_w < (left + s)[..., None])).to(torch.uint8)  # (K, B, W)
        # (a product of uint8 is about twice as fast as & of bools here)
        self.masks = (rows[..., :, None] * cols[..., None, :]).view(torch.bool).unsqueeze(2)  # (K, B, 1, H, W)
        self.signs = torch.randint(0, 2, (K, B, C, 1, 1), generator=self.g).bool().to(dev)
        if C <= 16:  # a uniform nonzero mask
            m = torch.randint(1, 2 ** C, (K, B, 1), generator=self.g)
            m = ((m >> torch.arange(C)) & 1).bool()
        else:  # uniform bits, the all-zero mask (probability 2^-C) made nonzero
            m = torch.randint(0, 2, (K, B, C), generator=self.g).bool()
            m[..., 0] |= ~m.any(-1)
        self.flips = m.reshape(K, B, C, 1, 1).to(dev)
        self.start = it

    def keep(self, rows: Tensor) -> None:
        """Only the rows ``rows`` (bool) stay active."""
        self.xp, self.xm = self.xp[rows], self.xm[rows]
        if self.masks is not None:
            self.masks, self.signs, self.flips = self.masks[:, rows], self.signs[:, rows], self.flips[:, rows]

    @staticmethod
    def _unchanged(cand: Tensor, best: Tensor) -> Tensor:
        return (cand - best).abs().flatten(1).amax(1) < _TOL

    def __call__(self, best: Tensor, it: int) -> Tensor:
        """The candidates of iteration ``it`` (0-based) from the current best points."""
        k = it - self.start
        if self.masks is None or k >= self.masks.shape[0]:
            self._draw(it)
            k = 0
        mask, sgn = self.masks[k], self.signs[k]
        cand = torch.where(mask, torch.where(sgn, self.xp, self.xm), best)
        same = self._unchanged(cand, best)  # the signs change nothing: other signs
        sgn = sgn ^ (self.flips[k] & same[:, None, None, None])
        cand = torch.where(mask, torch.where(sgn, self.xp, self.xm), best)
        if not self.simple:
            self._resample(cand, best, mask)
        return cand

    def _resample(self, cand: Tensor, best: Tensor, mask: Tensor) -> None:
        """The paper's loop (fresh signs while the window changes nothing), in place on ``cand``."""
        C = self.shape[0]
        same = self._unchanged(cand, best)
        for _ in range(_RESAMPLE - 2):
            rows = torch.nonzero(same).flatten()
            if not rows.numel():
                return
            sgn = torch.randint(0, 2, (rows.numel(), C, 1, 1), generator=self.g).bool().to(cand.device)
            new = torch.where(mask[rows], torch.where(sgn, self.xp[rows], self.xm[rows]), best[rows])
            cand[rows] = new
            same[rows] = self._unchanged(new, best[rows])


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
        """Loss to maximise (B,) and success (B,) from one query per point (under no_grad)."""
        z = f(x)
        return self.loss(z, y, t), fooled(z, y, t)

    def _run(self, f: Classifier, x: Tensor, y: Tensor, t: Optional[Tensor],
             g: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """One restart: (best points, fooled, queries spent), all over the batch given.

        The points still searching (``act``) are kept as their own tensors, shrunk only when
        a point is fooled; their candidates, losses and bests are updated with ``where``."""
        linf = self.threat.p == math.inf
        best = self._init_linf(x, g) if linf else self._init_l2(x, g)
        best_loss, done = self._score(f, best, y, t)
        used = torch.ones(x.shape[0], dtype=torch.long, device=x.device)
        n_it = self.queries - 1
        ps = [p_schedule(self.p_init, it, self.queries) for it in range(n_it)]
        act = torch.nonzero(~done).flatten()
        xa, ba, la, ya = x[act], best[act], best_loss[act], y[act]
        ta = None if t is None else t[act]
        H, W = x.shape[2], x.shape[3]
        prop = _LinfProposals(xa, self.threat, [_linf_side(p, H, W) for p in ps], g) if linf else None
        it = 0
        while it < n_it and act.numel():
            cand = prop(ba, it) if linf else self._propose_l2(xa, ba, ps[it], g)
            loss, hit = self._score(f, cand, ya, ta)
            better = (loss > la) | hit  # a fooling candidate is kept even if its ce is lower
            ba = torch.where(better.reshape(-1, 1, 1, 1), cand, ba)
            la = torch.where(better, loss, la)
            it += 1
            if bool(hit.any()):  # fooled: the point stops (no more queries)
                gone = act[hit]
                best[gone], best_loss[gone], done[gone], used[gone] = ba[hit], la[hit], True, 1 + it
                keep = ~hit
                act, xa, ba, la, ya = act[keep], xa[keep], ba[keep], la[keep], ya[keep]
                ta = None if ta is None else ta[keep]
                if prop is not None:
                    prop.keep(keep)
        best[act], best_loss[act], used[act] = ba, la, 1 + it
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
            with torch.no_grad():
                b, d, q = self._run(f, x[idx], y[idx], None if target is None else target[idx], generator)
            best[idx] = b
            done[idx] = d
            self.last_queries[idx] += q
        return best.reshape(shape)
