"""ReLU-splitting branch and bound decides tiny networks whose answer is known exactly.

The exact minimum of a margin ``c . f(x)`` over a box is found by enumerating every
activation pattern of the (few) hidden ReLUs: on a pattern the network is affine, and the
pattern's region is a polytope, so one LP per pattern (scipy's HiGHS).  Properties are then
placed just above and just below that minimum (sat and unsat by a small gap the root bound
cannot close), and the verifier, forced to ReLU splitting, must say so; every sat answer
comes with a counterexample that the network confirms."""
import itertools
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

import perturbkit as pk
from perturbkit.verify import VerifyConfig, verify
from perturbkit.verify.frontier import Frontier
from perturbkit.verify.relu_split import ReluSplitConfig, relu_split
from perturbkit.verify.spec import Case, Clause, InputBox, OutputSpec, Property

scipy_opt = pytest.importorskip("scipy.optimize")

N_IN = 20


def _mlp(seed: int):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(N_IN, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3)).double().eval()
    return m


def _exact_min(m, c: np.ndarray, lo: np.ndarray, hi: np.ndarray, d: np.ndarray | None = None) -> float:
    """min over the box of c . f(x) (c: (3,)), or with rows c (R, 3) and offsets d (R,) of
    max_i (c_i . f(x) - d_i), by one LP per activation pattern."""
    if c.ndim == 1:
        return _exact_min(m, c[None], lo, hi, np.zeros(1))
    R = c.shape[0]
    W1, b1 = m[0].weight.detach().numpy(), m[0].bias.detach().numpy()
    W2, b2 = m[2].weight.detach().numpy(), m[2].bias.detach().numpy()
    W3, b3 = m[4].weight.detach().numpy(), m[4].bias.detach().numpy()
    best = np.inf
    for p1 in itertools.product([0, 1], repeat=W1.shape[0]):
        D1 = np.diag(p1)
        # layer-1 pattern: s_i (W1 x + b1)_i >= 0
        s1 = np.where(np.array(p1) > 0, 1.0, -1.0)
        A1 = -(s1[:, None] * W1)
        c1 = s1 * b1
        M2 = W2 @ D1 @ W1
        k2 = W2 @ D1 @ b1 + b2
        for p2 in itertools.product([0, 1], repeat=W2.shape[0]):
            D2 = np.diag(p2)
            s2 = np.where(np.array(p2) > 0, 1.0, -1.0)
            # variables (x, t): min t with c_i f(x) - d_i <= t on the pattern's polytope
            A = np.vstack([np.hstack([A1, np.zeros((A1.shape[0], 1))]),
                           np.hstack([-(s2[:, None] * M2), np.zeros((M2.shape[0], 1))]),
                           np.hstack([c @ W3 @ D2 @ M2, -np.ones((R, 1))])])
            b = np.concatenate([c1, s2 * k2, d - c @ (W3 @ D2 @ k2 + b3)])
            obj = np.zeros(lo.size + 1)
            obj[-1] = 1.0
            r = scipy_opt.linprog(obj, A_ub=A, b_ub=b, bounds=list(zip(lo, hi)) + [(None, None)], method="highs")
            if r.status == 0:
                best = min(best, r.fun)
    return float(best)


def _case(lo, hi, c, d) -> Case:
    return Case(InputBox(lo, hi), OutputSpec((Clause(c.reshape(1, -1), np.array([d])),)))


@pytest.mark.parametrize("seed", range(4))
def test_verdicts_match_pattern_enumeration(seed):
    m = _mlp(seed)
    net = pk.load(m, torch.zeros(1, N_IN, dtype=torch.float64))
    rng = np.random.default_rng(seed)
    centre = rng.uniform(-0.5, 0.5, N_IN)
    lo, hi = centre - 0.3, centre + 0.3
    c = np.array([1.0, -1.0, 0.0])
    exact = _exact_min(m, c, lo, hi)
    cfg = ReluSplitConfig(dtype=torch.float64, batch=64, root_iterations=5)
    gap = 1e-3 * (1 + abs(exact))
    bab_domains = 0
    for d, want in ((exact - gap, "unsat"), (exact + gap, "sat")):
        # the property "c . f(x) <= d" is the violation
        case = _case(lo, hi, c, d)

        def is_ce(x, case=case):
            y = m(x.double().reshape(1, -1)).detach().numpy().reshape(-1)
            return bool(case.output.satisfied(y))

        import time
        out = relu_split(net, case, deadline=time.monotonic() + 60, config=cfg, is_candidate=is_ce)
        assert out.verdict == want, (seed, exact, d, out)
        if want == "sat":
            x = torch.from_numpy(out.candidate).reshape(1, -1)
            assert float(c @ m(x).detach().numpy().reshape(-1)) <= d
            assert np.all(out.candidate >= lo - 1e-12) and np.all(out.candidate <= hi + 1e-12)
        else:
            bab_domains += out.boxes
    # the unsat answers needed branching (the root bound alone does not prove them)
    assert bab_domains > 0


@pytest.mark.parametrize("seed", range(2))
def test_two_clauses_of_different_lengths(seed):
    """A case with a one-row clause and a two-row clause (one frontier, padded rows): unsat
    when neither can hold, sat when the two-row one can (its point satisfies both rows)."""
    import time

    m = _mlp(20 + seed)
    net = pk.load(m, torch.zeros(1, N_IN, dtype=torch.float64))
    lo, hi = -0.3 * np.ones(N_IN), 0.3 * np.ones(N_IN)
    c1 = np.array([1.0, -1.0, 0.0])
    m1 = _exact_min(m, c1, lo, hi)
    rows2 = np.array([[0.0, 1.0, -1.0], [1.0, 0.0, -1.0]])
    off = np.array([0.0, 0.05])
    t2 = _exact_min(m, rows2, lo, hi, off)  # min over x of max_i (rows2_i f(x) - off_i)
    cfg = ReluSplitConfig(dtype=torch.float64, batch=64, root_iterations=5)
    for shift, want in ((-1e-3, "unsat"), (1e-3, "sat")):
        g = shift * (1 + abs(t2))
        clause1 = Clause(c1.reshape(1, -1), np.array([m1 - 1e-3 * (1 + abs(m1))]))  # never holds
        clause2 = Clause(rows2, off + t2 + g)
        case = Case(InputBox(lo, hi), OutputSpec((clause1, clause2)))

        def is_ce(x, case=case):
            return bool(case.output.satisfied(m(x.double().reshape(1, -1)).detach().numpy().reshape(-1)))

        out = relu_split(net, case, deadline=time.monotonic() + 60, config=cfg, is_candidate=is_ce)
        assert out.verdict == want, (seed, shift, out)
        if want == "sat":
            y = m(torch.from_numpy(out.candidate).reshape(1, -1)).detach().numpy().reshape(-1)
            assert clause2.satisfied(y)


def test_verify_with_forced_relu_strategy_and_progress():
    m = _mlp(11)
    net = pk.load(m, torch.zeros(1, N_IN, dtype=torch.float64))
    lo, hi = -0.3 * np.ones(N_IN), 0.3 * np.ones(N_IN)
    c = np.array([1.0, -1.0, 0.0])
    exact = _exact_min(m, c, lo, hi)
    prop = Property(N_IN, 3, (_case(lo, hi, c, exact - 1e-3 * (1 + abs(exact))),))
    seen = []
    res = verify(net, prop, timeout=60, config=VerifyConfig(strategy="relu"), progress=seen.append)
    assert res.verdict == "unsat"
    assert res.stats["strategy"] == "relu"
    if res.stats["boxes"]:
        assert seen and {"domains", "open", "worst", "rate"} <= set(seen[-1])


def test_strategy_choice():
    from perturbkit.verify.runner import choose_strategy

    big = pk.load(_mlp(0), torch.zeros(1, N_IN, dtype=torch.float64))
    small = pk.load(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double(), torch.zeros(1, 3, dtype=torch.float64))
    smooth = pk.load(nn.Sequential(nn.Linear(N_IN, 4), nn.Tanh(), nn.Linear(4, 2)).double(),
                     torch.zeros(1, N_IN, dtype=torch.float64))
    assert choose_strategy(big, VerifyConfig()) == "relu"
    assert choose_strategy(small, VerifyConfig()) == "input"
    assert choose_strategy(smooth, VerifyConfig()) == "input"
    assert choose_strategy(big, VerifyConfig(strategy="input")) == "input"
    with pytest.raises(ValueError, match="strategy must be one of"):
        VerifyConfig(strategy="milp-please")
    prop = Property(N_IN, 2, (_case(-np.ones(N_IN), np.ones(N_IN), np.array([1.0, -1.0]), -100.0),))
    with pytest.raises(ValueError, match="no ReLU"):
        verify(smooth, prop, timeout=5, config=VerifyConfig(strategy="relu"))


def test_frontier_best_first_and_budget():
    fr = Frontier("best", budget_bytes=10**9)
    keys = torch.tensor([0.5, -3.0, 2.0, -1.0, 0.0], dtype=torch.float64)
    fr.push({"v": torch.arange(5)}, keys)
    assert len(fr) == 5 and fr.worst() == -3.0
    assert fr.pop(2)["v"].tolist() == [1, 3]  # the lowest keys first
    fr.push({"v": torch.tensor([7])}, torch.tensor([-9.0]))
    assert fr.pop(1)["v"].tolist() == [7]
    fr.budget = 1  # over budget: the highest keys first (the frontier shrinks)
    assert fr.pop(1)["v"].tolist() == [2]
    assert len(fr) == 2
    many = Frontier("best")
    many.push({"v": torch.arange(5000)}, torch.linspace(1, 0, 5000))  # grows past its first capacity
    assert many.pop(3)["v"].tolist() == [4999, 4998, 4997]
    depth = Frontier("depth")
    depth.push({"v": torch.arange(3)})
    depth.push({"v": torch.arange(3, 5)})
    assert depth.pop(3)["v"].tolist() == [3, 4, 2]


class _ReluThenSigmoid(nn.Module):
    def forward(self, x):
        return (torch.sigmoid(4 * torch.relu(x[:, :1])) - torch.sigmoid(4 * x[:, 1:2]))


def test_exact_leaves_only_for_piecewise_linear_networks():
    """A fully split domain is affine only when ReLUs are the only nonlinearity: with a
    sigmoid the search says "unknown" (or proves it), never guesses."""
    import time

    from perturbkit.verify.relu_split import ReluSplit, prepare_root

    net = pk.load(_ReluThenSigmoid(), torch.zeros(1, N_IN, dtype=torch.float64))
    lo, hi = -np.ones(N_IN), np.ones(N_IN)
    # min over the box is sigmoid(0) - sigmoid(4) = -0.482: "y <= -0.49" never holds
    case = Case(InputBox(lo, hi), OutputSpec((Clause(np.array([[1.0]]), np.array([-0.49])),)))
    cfg = ReluSplitConfig(dtype=torch.float64, root_iterations=0, beta=replace(ReluSplitConfig().beta, iterations=2))
    out = relu_split(net, case, deadline=time.monotonic() + 30, config=cfg)
    assert out.verdict in ("unsat", "unknown")
    if out.verdict == "unknown":
        assert "other nonlinearities" in out.reason
    C = torch.tensor([[1.0]], dtype=torch.float64)
    root = prepare_root(net, torch.from_numpy(lo), torch.from_numpy(hi), C, cfg)
    one = torch.zeros(1, 1, 1, dtype=torch.float64)
    assert not ReluSplit(net, root, C[None], one[0], one[0], torch.from_numpy(lo), torch.from_numpy(hi), cfg,
                         None).piecewise_linear
    relu_net = pk.load(_mlp(0), torch.zeros(1, N_IN, dtype=torch.float64))
    root = prepare_root(relu_net, torch.from_numpy(lo), torch.from_numpy(hi), torch.ones(1, 3, dtype=torch.float64), cfg)
    assert ReluSplit(relu_net, root, torch.ones(1, 1, 3, dtype=torch.float64), one[0], one[0], torch.from_numpy(lo),
                     torch.from_numpy(hi), cfg, None).piecewise_linear


@pytest.mark.parametrize("act", [nn.Tanh, nn.Sigmoid])
def test_smooth_networks_with_many_inputs_are_answered(act):
    """No ReLU to split: input splitting after alpha-CROWN; an easy true property is
    proved and a false one is broken (the counterexample executes to a violation)."""
    torch.manual_seed(3)
    m = nn.Sequential(nn.Linear(N_IN, 8), act(), nn.Linear(8, 2)).double().eval()
    net = pk.load(m, torch.zeros(1, N_IN, dtype=torch.float64))
    lo, hi = -0.05 * np.ones(N_IN), 0.05 * np.ones(N_IN)
    x = torch.from_numpy((lo + hi) / 2).reshape(1, -1)
    y0 = m(x).detach().numpy().reshape(-1)
    c = np.array([1.0, -1.0])
    v0 = float(c @ y0)
    for d, want in ((v0 - 1.0, "unsat"), (v0 + 1e-3, "sat")):
        prop = Property(N_IN, 2, (_case(lo, hi, c, d),))
        res = verify(net, prop, timeout=60)
        assert res.verdict == want
        assert res.stats["strategy"] == "input"
        if want == "sat":
            xs, ys = res.counterexample
            assert float(c @ m(torch.from_numpy(xs).reshape(1, -1)).detach().numpy().reshape(-1)) <= d
