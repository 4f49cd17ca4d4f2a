"""Patch mode (perturbkit.bounds.patches) against the dense backward pass: the same CROWN
bounds, to rounding, on convolution chains with every geometry the mode handles, and on
nets where it has to hand over to the dense pass (residual adds, BatchNorm, pooling)."""
import pytest
import torch
import torch.nn as nn

import perturbkit as pk
from perturbkit.bounds import engine
from nets import to_network


def _bounds(net, s, patches: bool, monkeypatch, method="crown"):
    orig = engine.make_context

    def make(n, st):
        ctx = orig(n, st)
        ctx.use_patches = patches
        return ctx

    monkeypatch.setattr(engine, "make_context", make)
    import perturbkit.api as api

    monkeypatch.setattr(api, "make_context", make)
    return pk.bounds(net, s, method=method)


GEOMETRIES = [
    dict(kernel_size=3, stride=1, padding=1),
    dict(kernel_size=4, stride=2, padding=1),
    dict(kernel_size=3, stride=2, padding=0),
    dict(kernel_size=3, stride=1, padding=2, dilation=2),
    dict(kernel_size=3, stride=1, padding=1, groups=2),
    dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 0)),
    dict(kernel_size=3, stride=1, padding="same"),
]


@pytest.mark.parametrize("geo", GEOMETRIES, ids=lambda g: "-".join(f"{k}{v}" for k, v in g.items()))
@pytest.mark.parametrize("norm", ["inf", 2])
def test_conv_chain_patches_equal_dense(geo, norm, monkeypatch):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(2, 4, **geo), nn.ReLU(), nn.Conv2d(4, 4, **geo), nn.ReLU(),
                      nn.Conv2d(4, 2, 3, padding=1), nn.ReLU(), nn.Flatten())
    x0 = torch.zeros(1, 2, 9, 9)
    n_out = m(x0).numel()
    m = nn.Sequential(*m, nn.Linear(n_out, 3))
    net = to_network(m, x0)
    x = torch.rand(2, 2, 9, 9, dtype=torch.float64)
    s = pk.sets.LpBall(x, 0.05 if norm == "inf" else 0.3, norm=norm)
    from perturbkit.bounds import patches

    calls = []
    orig = patches.lower_upper
    monkeypatch.setattr(patches, "lower_upper", lambda *a, **k: calls.append(1) or orig(*a, **k))
    a = _bounds(net, s, True, monkeypatch)
    assert calls, "patch mode was not used"
    b = _bounds(net, s, False, monkeypatch)
    torch.testing.assert_close(a.lower, b.lower, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(a.upper, b.upper, rtol=1e-9, atol=1e-9)


def test_asymmetric_pad_and_handover(monkeypatch):
    """An explicit asymmetric Pad before a conv, a residual Add, BatchNorm and pooling make
    the patch walk hand over to the dense pass."""
    from nets import network

    net, module, shape = network("residual")
    x = torch.rand(2, *shape[1:], dtype=torch.float64)
    s = pk.sets.LpBall(x, 0.1)
    a = _bounds(net, s, True, monkeypatch)
    b = _bounds(net, s, False, monkeypatch)
    torch.testing.assert_close(a.lower, b.lower, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(a.upper, b.upper, rtol=1e-9, atol=1e-9)
    m = nn.Sequential(nn.ZeroPad2d((1, 0, 2, 0)), nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Conv2d(3, 3, 3, stride=2),
                      nn.ReLU(), nn.Flatten(), nn.Linear(27, 2))
    net = to_network(m, torch.zeros(1, 1, 8, 8))
    s = pk.sets.LpBall(torch.rand(3, 1, 8, 8, dtype=torch.float64), 0.1)
    a = _bounds(net, s, True, monkeypatch)
    b = _bounds(net, s, False, monkeypatch)
    torch.testing.assert_close(a.lower, b.lower, rtol=1e-9, atol=1e-9)


def test_many_specs_first_layer_transpose_matches_autograd():
    """The conv transpose used for many specs and few input channels (matmul + fold) equals
    the gradient of the convolution, with asymmetric pads, stride and dilation."""
    from perturbkit.graph.ir import Node
    from perturbkit.ops.registry import RULES

    rule = RULES["Conv"]
    W = torch.randn(5, 3, 3, 2, dtype=torch.float64)
    attrs = {"pads": [1, 0, 2, 1], "strides": [2, 1], "dilations": [1, 2], "kernel_shape": [3, 2]}
    node = Node("c", "Conv", ("x", "W"), "y", attrs, ((1, 3, 9, 8), tuple(W.shape)))
    out_shape = rule.infer_shape(node, torch.zeros(1, 3, 9, 8, dtype=torch.float64), W)
    node = Node("c", "Conv", ("x", "W"), "y", attrs, ((1, 3, 9, 8), tuple(W.shape)), out_shape)
    A = torch.randn(40, *out_shape, dtype=torch.float64)
    x = torch.zeros(40, 1, 3, 9, 8, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(rule.forward(node, x, W), x, A)
    got = rule.backward(node, A, None, W)[0]
    torch.testing.assert_close(got, g, rtol=1e-12, atol=1e-12)


POOLS = [
    lambda: nn.MaxPool2d(2),
    lambda: nn.MaxPool2d(3, stride=2, padding=1),
    lambda: nn.MaxPool2d(3, stride=1),
    lambda: nn.MaxPool2d(2, stride=1, dilation=2),
    lambda: nn.AvgPool2d(2),
    lambda: nn.AvgPool2d(3, stride=2),
    lambda: nn.AvgPool2d(3, stride=1, padding=1),  # padded: hands over to the dense pass
    lambda: nn.MaxPool2d(3),
    lambda: nn.MaxPool2d((2, 3)),
]


@pytest.mark.parametrize("pool", [nn.MaxPool2d(2), nn.MaxPool2d((3, 2)), nn.AvgPool2d(2), nn.AvgPool2d((2, 3))])
def test_tiling_pools_with_rows_left_over(pool, monkeypatch):
    """Pooling windows that tile the input (stride = kernel) but leave its last rows and
    columns out (11 x 11 maps): patch mode gives the dense pass's bounds, which hold on
    sampled inputs."""
    torch.manual_seed(5)
    m = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), pool, nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten())
    x0 = torch.zeros(1, 2, 13, 13)
    m = nn.Sequential(*m, nn.Linear(m(x0).numel(), 3)).eval()
    net = to_network(m, x0)
    x = torch.rand(2, 2, 13, 13, dtype=torch.float64)
    s = pk.sets.LpBall(x, 0.1)
    a = _bounds(net, s, True, monkeypatch)
    b = _bounds(net, s, False, monkeypatch)
    torch.testing.assert_close(a.lower, b.lower, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(a.upper, b.upper, rtol=1e-9, atol=1e-9)
    md = __import__("copy").deepcopy(m).double()
    xs = (x.unsqueeze(1) + (torch.rand(2, 256, 2, 13, 13, dtype=torch.float64) * 2 - 1) * 0.1).reshape(-1, 2, 13, 13)
    y = md(xs).reshape(2, 256, 3)
    assert bool((y >= a.lower.unsqueeze(1) - 1e-9).all() and (y <= a.upper.unsqueeze(1) + 1e-9).all())


@pytest.mark.parametrize("k", range(len(POOLS)))
@pytest.mark.parametrize("norm", ["inf", 2])
def test_pooling_in_patch_mode_equals_dense(k, norm, monkeypatch):
    """Patch mode through MaxPool (the coefficients move to each window's selected element)
    and AveragePool gives the dense pass's CROWN bounds; sampled outputs stay inside them."""
    torch.manual_seed(k)
    m = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), POOLS[k](), nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
                      nn.Conv2d(4, 2, 3, stride=2), nn.ReLU(), nn.Flatten())
    x0 = torch.zeros(1, 2, 12, 12)
    m = nn.Sequential(*m, nn.Linear(m(x0).numel(), 3))
    net = to_network(m, x0)
    md = __import__("copy").deepcopy(m).double()
    x = torch.rand(2, 2, 12, 12, dtype=torch.float64)
    s = pk.sets.LpBall(x, 0.05 if norm == "inf" else 0.4, norm=norm)
    from perturbkit.bounds import patches

    calls = []
    for fn in ("_maxpool_back", "_avgpool_back"):
        orig = getattr(patches, fn)
        monkeypatch.setattr(patches, fn, lambda *a, _o=orig: calls.append(1) or _o(*a))
    a = _bounds(net, s, True, monkeypatch)
    assert bool(calls) == (k != 6), "the pooling did not (or, padded AveragePool, did) stay in patch mode"
    b = _bounds(net, s, False, monkeypatch)
    torch.testing.assert_close(a.lower, b.lower, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(a.upper, b.upper, rtol=1e-9, atol=1e-9)
    g = torch.Generator().manual_seed(0)
    for i in range(2):
        d = torch.rand(400, 2, 12, 12, generator=g, dtype=torch.float64) * 2 - 1
        if norm == "inf":
            d = d * 0.05
        else:
            d = d / d.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * 0.4 * torch.rand(400, 1, 1, 1, generator=g, dtype=torch.float64)
        with torch.no_grad():
            y = md(x[i] + d)
        assert bool((y >= a.lower[i] - 1e-9).all() and (y <= a.upper[i] + 1e-9).all())


class _Res(nn.Module):
    """conv-BN-ReLU-conv-BN plus a shortcut, ReLU; ``shift`` pads the body's second conv
    asymmetrically with a Pad node (the walk hands over to the dense pass there while the
    shortcut's patch is still pending), ``bn_after_add`` puts a BatchNorm on the sum."""

    def __init__(self, cin, cout, stride=1, shift=False, bn_after_add=False):
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1)
        self.b1 = nn.BatchNorm2d(cout)
        self.pad = nn.ZeroPad2d((1, 1, 2, 0)) if shift else nn.Identity()
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 0 if shift else 1)
        self.b2 = nn.BatchNorm2d(cout)
        self.short = nn.Identity() if stride == 1 and cin == cout else nn.Conv2d(cin, cout, 1, stride)
        self.b3 = nn.BatchNorm2d(cout) if bn_after_add else nn.Identity()

    def forward(self, x):
        y = self.b2(self.c2(self.pad(torch.relu(self.b1(self.c1(x))))))
        return torch.relu(self.b3(y + self.short(x)))


class _MixedStrides(nn.Module):
    """Two branches of different strides onto one map (2x2 stride 2 and 5x5 stride 1 on 8x8):
    their windows' offsets differ by a different amount at every position."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(4, 4, 2, 2)
        self.b = nn.Conv2d(4, 4, 5, 1)

    def forward(self, x):
        return torch.relu(self.a(x) + self.b(x))


RESIDUALS = {
    "identity_shortcut": lambda: nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), _Res(4, 4), _Res(4, 4)),
    "strided_shortcut": lambda: nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), _Res(4, 6, 2)),
    "input_shortcut": lambda: nn.Sequential(_Res(2, 2), nn.Conv2d(2, 3, 3), nn.ReLU()),
    "bn_after_add": lambda: nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), _Res(4, 4, bn_after_add=True)),
    "shifted_join": lambda: nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), _Res(4, 4, shift=True)),
    "pool_then_block": lambda: nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), _Res(4, 4)),
    "mixed_strides": lambda: nn.Sequential(nn.Conv2d(2, 4, 3, padding=0, stride=1), nn.ReLU(), _MixedStrides()),
}
#: blocks whose walk meets a node patch mode does not handle (a Pad): it hands over densely
HANDS_OVER = {"shifted_join"}


@pytest.mark.parametrize("name,method", [(n, "crown") for n in sorted(RESIDUALS)]
                         + [(n, "alpha-crown") for n in ("strided_shortcut", "pool_then_block", "mixed_strides")])
def test_residual_blocks_in_patch_mode_equal_dense(name, method, monkeypatch):
    """A residual Add sends the patch down both branches and the two meet again (summed, also
    when their windows are offset differently per position); CROWN and alpha-CROWN bounds
    equal the dense pass's, and sampled outputs stay inside them.  Blocks made only of Conv,
    BatchNorm (folded into it or on a sum), ReLU, Identity, MaxPool and Add never hand over to the dense pass."""
    torch.manual_seed(sum(map(ord, name)))
    body = RESIDUALS[name]()
    for mod in body.modules():
        if isinstance(mod, nn.BatchNorm2d):
            with torch.no_grad():
                mod.running_mean.normal_(0, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.normal_(0, 0.1)
    x0 = torch.zeros(1, 2, 10, 10)
    m = nn.Sequential(body, nn.Flatten(), nn.Linear(body.eval()(x0).numel(), 3)).eval()
    net = to_network(m, x0)
    md = __import__("copy").deepcopy(m).double()
    x = torch.rand(2, 2, 10, 10, dtype=torch.float64) * 2 - 1
    s = pk.sets.LpBall(x, 0.1)
    from perturbkit.bounds import patches

    handovers, sums, starts = [], [], []
    orig_b, orig_s, orig_lu = patches.backward, patches._sum_patches, patches.lower_upper
    monkeypatch.setattr(patches, "backward", lambda *a, **k: handovers.append(1) or orig_b(*a, **k))
    monkeypatch.setattr(patches, "_sum_patches", lambda *a: sums.append(1) or orig_s(*a))
    monkeypatch.setattr(patches, "lower_upper", lambda ctx, name, *a, **k: starts.append(name) or orig_lu(ctx, name, *a, **k))
    a = _bounds(net, s, True, monkeypatch, method=method)
    if method == "crown":
        ops = {n.op_type for n in net.graph.nodes if n.output in starts}
        assert ops & {"Add", "BatchNormalization"}, f"no residual Add (or BatchNorm on it) was a start: {ops}"
        if name in HANDS_OVER:
            assert handovers, "the walk did not hand over at the Pad"
        else:
            assert sums, "no two branches met in patch mode"
            assert not handovers, "the walk handed over to the dense pass"
    b = _bounds(net, s, False, monkeypatch, method=method)
    torch.testing.assert_close(a.lower, b.lower, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(a.upper, b.upper, rtol=1e-7, atol=1e-7)
    g = torch.Generator().manual_seed(0)
    for i in range(2):
        d = (torch.rand(300, 2, 10, 10, generator=g, dtype=torch.float64) * 2 - 1) * 0.1
        with torch.no_grad():
            y = md(x[i] + d)
        assert bool((y >= a.lower[i] - 1e-9).all() and (y <= a.upper[i] + 1e-9).all())


SPARSE_NETS = {
    "relu_chain": lambda: nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),
                                        nn.ReLU(), nn.Conv2d(4, 3, 3, stride=2), nn.ReLU()),
    "sigmoid_chain": lambda: nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.Sigmoid(), nn.Conv2d(4, 4, 3),
                                           nn.Tanh(), nn.Conv2d(4, 3, 3), nn.ReLU()),
    "residual": lambda: nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), _Res(4, 4), _Res(4, 6, 2)),
}


def _sparse_case(name: str, seed: int, eps: float):
    """A SPARSE_NETS body with a linear head, an Linf ball around a batch of two inputs, the inputs."""
    torch.manual_seed(seed)
    body = SPARSE_NETS[name]()
    x0 = torch.zeros(1, 2, 10, 10)
    m = nn.Sequential(body, nn.Flatten(), nn.Linear(body.eval()(x0).numel(), 3)).eval()
    x = torch.rand(2, 2, 10, 10, dtype=torch.float64) * 2 - 1
    return to_network(m, x0), pk.sets.LpBall(x, eps), x


@pytest.mark.parametrize("name", sorted(SPARSE_NETS))
def test_sparse_relaxation_equals_dense(name, monkeypatch):
    """Relaxation lines applied only at the coefficients on elements where lower and upper
    lines differ (engine.ElementLines with an index), in patch mode and in the dense
    backward pass, give the bounds of the dense form, on a batch of two inputs (lines
    differing in one entry only), with and without intercepts."""
    net, s, _ = _sparse_case(name, sum(map(ord, name)), 0.1)
    made = []
    orig = engine.ElementLines
    monkeypatch.setattr(engine, "ElementLines", lambda *a, **k: made.append(k.get("idx") is not None) or orig(*a, **k))
    got = {}
    for patch_mode in (True, False):
        for share in (1.0, 0.0):
            made.clear()
            monkeypatch.setattr(engine, "SPARSE_SHARE", share)
            got[patch_mode, share] = _bounds(net, s, patch_mode, monkeypatch)
            assert made, "no relaxation was applied"
            if share == 1.0:
                assert all(made), "a relaxation was applied densely"
            elif name == "sigmoid_chain":
                assert not any(made[:1]), "the sigmoid's lines (different everywhere) were applied sparsely"
    ref = got[False, 0.0]
    for b in got.values():
        torch.testing.assert_close(b.lower, ref.lower, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(b.upper, ref.upper, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("patch_mode", [True, False])
def test_upper_bounds_first_before_relu(patch_mode, monkeypatch):
    """Before a ReLU, CROWN computes upper bounds first and lower bounds only where the upper
    one is above 0: the final bounds are those of computing both everywhere, every upper
    intermediate bound too, and every lower one where the ReLU is not stably inactive; the
    intermediate intervals hold on sampled inputs."""
    import importlib

    from perturbkit.bounds.crown import crown
    from perturbkit.bounds.engine import make_context

    crown_mod = importlib.import_module("perturbkit.bounds.crown")
    net, s, x = _sparse_case("residual", 3, 0.05)
    firsts = []
    orig = engine.tighten

    def spy(*a, **k):
        firsts.append(k.get("upper_first", False))
        return orig(*a, **k)

    monkeypatch.setattr(crown_mod, "tighten", spy)
    runs = {}
    for skip in (True, False):
        if not skip:
            monkeypatch.setattr(crown_mod, "_constant_below_zero", lambda *a: False)
        ctx = make_context(net, s)
        ctx.use_patches = patch_mode
        runs[skip] = (crown(ctx, None), ctx.intervals)
    assert any(firsts), "no value was bounded upper bounds first"
    (lo_a, hi_a), itv_a = runs[True]
    (lo_b, hi_b), itv_b = runs[False]
    torch.testing.assert_close(lo_a, lo_b, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(hi_a, hi_b, rtol=1e-9, atol=1e-9)
    skipped = 0
    for v, a in itv_a.items():
        b = itv_b[v]
        torch.testing.assert_close(a.hi, b.hi, rtol=1e-9, atol=1e-9)
        live = b.hi > 0
        torch.testing.assert_close(a.lo[live], b.lo[live], rtol=1e-9, atol=1e-9)
        assert (a.lo <= b.lo + 1e-9).all()
        skipped += int(((a.lo < b.lo - 1e-9) & ~live).sum())
    assert skipped, "no lower bound was skipped"
    # sampled inputs stay inside every intermediate interval
    g = torch.Generator().manual_seed(0)
    d = (torch.rand(200, 2, 10, 10, generator=g, dtype=torch.float64) * 2 - 1) * 0.05
    for i in range(2):
        vals = net.run(net.internal(x[i] + d))
        for v, a in itv_a.items():
            y = vals[v].reshape(200, -1)
            assert (y >= a.lo[i].reshape(1, -1) - 1e-6).all() and (y <= a.hi[i].reshape(1, -1) + 1e-6).all(), v


@pytest.mark.parametrize("Ci,k,stride,dil,ph", [(3, 3, 1, 1, 14), (2, 3, 2, 1, 12), (3, 2, 1, 2, 13), (4, 1, 2, 1, 5),
                                                (6, 1, 1, 1, 4), (3, 3, 1, 1, 4), (8, 3, 2, 1, 6)])
def test_conv_transpose_paths_equal_the_routine(Ci, k, stride, dil, ph):
    """patches._conv_transpose (a matrix product for 1x1 kernels, else the convolution
    routine) equals conv_transpose2d."""
    from perturbkit.bounds import patches

    torch.manual_seed(Ci * 100 + ph)
    P = torch.randn(5, 7, ph, ph + 1, dtype=torch.float64)
    W = torch.randn(7, Ci, k, k, dtype=torch.float64)
    geo = {"strides": [stride, stride], "dilations": [dil, dil], "groups": 1}
    ref = torch.nn.functional.conv_transpose2d(P, W, stride=stride, dilation=dil)
    torch.testing.assert_close(patches._conv_transpose(P, W, geo), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("N", [1, 31, 32, 33, 255, 256, 257, 480, 481, 1311])
def test_row_blocks(N):
    """Transposed convolutions of patches run in row blocks of a few fixed sizes (the last one
    padded with zero rows): the same result as one call."""
    from perturbkit.bounds import patches

    P = torch.randn(N, 3, 4, 4, dtype=torch.float64)
    W = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    sizes = []
    got = patches._in_blocks(P, lambda p: sizes.append(p.shape[0]) or torch.nn.functional.conv_transpose2d(p, W))
    torch.testing.assert_close(got, torch.nn.functional.conv_transpose2d(P, W), rtol=1e-12, atol=1e-12)
    assert set(sizes) <= {patches._ROW_BLOCK, 128, 64, patches._MIN_BLOCK}
    assert sum(sizes) - N < patches._MIN_BLOCK


@pytest.mark.parametrize("geo", [dict(strides=[1, 1], dilations=[1, 1], groups=1),
                                 dict(strides=[2, 1], dilations=[1, 2], groups=1),
                                 dict(strides=[2, 2], dilations=[2, 2], groups=2)])
def test_transpose_matrix_is_the_transposed_convolution(geo):
    """The local transpose matrix, written entry by entry, equals the transposed convolution
    of the identity (every patch entry alone)."""
    from perturbkit.bounds import patches

    torch.manual_seed(0)
    W = torch.randn(4, 6 // geo["groups"], 3, 2, dtype=torch.float64)
    ph, pw = 3, 4
    m = 4 * ph * pw
    eye = torch.eye(m, dtype=torch.float64).reshape(m, 4, ph, pw)
    ref = torch.nn.functional.conv_transpose2d(eye, W, stride=geo["strides"], dilation=geo["dilations"],
                                               groups=geo["groups"]).reshape(m, -1)
    torch.testing.assert_close(patches._transpose_matrix(W, ph, pw, geo), ref, rtol=0, atol=0)
