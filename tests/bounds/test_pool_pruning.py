"""CROWN leaves out the intermediate bounds that no MaxPool can read (crown._read_through):
elements of a conv output, before its ReLU, whose every pooling window already has an
element with a larger lower bound.  The bounds must be exactly those of the full
computation, in patch mode and densely, and the pruning must really leave elements out."""
import pytest
import torch
import torch.nn as nn

import perturbkit as pk
from perturbkit.bounds import crown, engine
from perturbkit.ops.pool import MaxPool
from nets import to_network


class _Shared(nn.Module):
    """A ReLU output read by a MaxPool and by a convolution: nothing may be left out there."""

    def __init__(self):
        super().__init__()
        self.c0 = nn.Conv2d(2, 4, 3, padding=1)
        self.c1 = nn.Conv2d(4, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(4 * 4 * 4 + 4 * 8 * 8, 3)

    def forward(self, x):
        y = torch.relu(self.c1(torch.relu(self.c0(x))))
        return self.head(torch.cat([nn.functional.max_pool2d(y, 2).flatten(1), self.c2(y).flatten(1)], 1))


def _stem():  # the first convolution's bounds are exact already (the linear prefix): a ReLU layer first
    return [nn.Conv2d(2, 4, 3, padding=1), nn.ReLU()]


NETS = {
    "tiling": lambda: nn.Sequential(*_stem(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                    nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                    nn.Flatten(), nn.Linear(6 * 2 * 2, 3)),
    "overlapping": lambda: nn.Sequential(*_stem(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                                         nn.MaxPool2d(3, stride=2, padding=1), nn.Conv2d(4, 4, 3), nn.ReLU(),
                                         nn.MaxPool2d(2, stride=1), nn.Flatten(), nn.Linear(4, 3)),
    "odd_size": lambda: nn.Sequential(*_stem(), nn.Conv2d(4, 4, 2), nn.ReLU(), nn.MaxPool2d(2),  # row 7 is never read
                                      nn.Flatten(), nn.Linear(4 * 3 * 3, 3)),
    "shared": _Shared,
    # a MaxPool reading a conv output directly (MaxPool.unstable through crown._unstable_mask)
    "direct": lambda: nn.Sequential(*_stem(), nn.Conv2d(4, 4, 3, padding=1), nn.MaxPool2d(2), nn.ReLU(),
                                    nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)),
}


def _run(net, s, *, patches: bool, prune: bool, monkeypatch):
    orig_make = engine.make_context
    seen: dict[str, int] = {}

    def make(n, st):
        ctx = orig_make(n, st)
        ctx.use_patches = patches
        return ctx

    orig_ib = crown.intermediate_bounds

    def ib(ctx, **kw):
        got = orig_ib(ctx, **kw)
        seen.update({k: v.numel() for k, v in got.items()})
        return got

    import perturbkit.api as api

    with monkeypatch.context() as m:
        m.setattr(engine, "make_context", make)
        m.setattr(api, "make_context", make)
        m.setattr(crown, "intermediate_bounds", ib)
        if not prune:
            m.setattr(crown, "_read_through", lambda *a: None)
            m.setattr(MaxPool, "unstable", lambda self, node, lo, hi: torch.ones_like(lo, dtype=torch.bool))
        b = pk.bounds(net, s, method="crown")
    return b, sum(seen.values())


@pytest.mark.parametrize("name", list(NETS))
@pytest.mark.parametrize("patches", [True, False], ids=["patches", "dense"])
def test_pruned_bounds_are_the_full_bounds(name, patches, monkeypatch):
    torch.manual_seed(3)
    mod = NETS[name]().eval()
    x0 = torch.rand(2, 2, 8, 8, dtype=torch.float64)
    net = to_network(mod, x0[:1].float())
    s = pk.sets.LpBall(x0, 0.04)
    full, n_full = _run(net, s, patches=patches, prune=False, monkeypatch=monkeypatch)
    pruned, n_pruned = _run(net, s, patches=patches, prune=True, monkeypatch=monkeypatch)
    torch.testing.assert_close(pruned.lower, full.lower, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(pruned.upper, full.upper, rtol=1e-12, atol=1e-12)
    if name == "shared":
        assert n_pruned == n_full
    else:
        assert n_pruned < n_full, "no element was left out"
    # and sound: sampled outputs inside
    xs = x0.unsqueeze(0) + 0.04 * (2 * torch.rand(256, *x0.shape, dtype=torch.float64) - 1)
    mod = mod.double()
    with torch.no_grad():
        ys = torch.stack([mod(x) for x in xs])
    assert bool((ys >= pruned.lower - 1e-9).all()) and bool((ys <= pruned.upper + 1e-9).all())
