"""``verify(network, property, timeout=...) -> Result``: the verifier's entry point.

Order of work, for each case of the property (an input box with its output clauses):

1. falsification (sampling, then PGD on each clause's violation; :mod:`.falsify`), every
   candidate executed through the network (ONNX Runtime for ONNX models) before "sat";
2. one CROWN bound on the whole box: the case may already be proved;
3. branch and bound, with the strategy :func:`choose_strategy` picks (or the one
   ``VerifyConfig.strategy`` forces):

   * ``"input"``: input splitting (:mod:`.bab`) when the network has few inputs
     (``VerifyConfig.max_split_inputs``), or has no ReLU to split (sigmoid/tanh networks:
     complete only in the limit of small boxes; one alpha-CROWN bound is tried first when
     the inputs are many);
   * ``"relu"``: ReLU splitting with beta-CROWN (:mod:`.relu_split`) for ReLU networks
     with many inputs (images); complete: every domain ends proved or fully split, where
     the bound is exact.

The property is ``sat`` as soon as one case has a confirmed counterexample, ``unsat`` when
every case is proved, ``timeout`` at the deadline, and ``unknown`` when the search gives up
(a cap on domains or memory; ``Result.stats["reason"]`` says which).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Union

import numpy as np
import torch

from perturbkit.bounds.alpha_crown import AlphaConfig, alpha_crown
from perturbkit.bounds.crown import crown
from perturbkit.bounds.engine import make_context
from perturbkit.errors import InputError
from perturbkit.graph.network import Network
from perturbkit.ops.registry import rule_for
from perturbkit.sets.box import Box
from perturbkit.verify import check
from perturbkit.verify.bab import BabConfig, input_split, rows_of
from perturbkit.verify.falsify import FalsifyConfig, clause_max, search
from perturbkit.verify.relu_split import ReluSplitConfig, relu_split
from perturbkit.verify.result import Result
from perturbkit.verify.spec import Case, Property, check_sizes


@dataclass(frozen=True)
class VerifyConfig:
    """Verifier settings; see the module docstring for the order of work."""

    falsify: FalsifyConfig = field(default_factory=FalsifyConfig)
    bab: BabConfig = field(default_factory=BabConfig)
    relu: ReluSplitConfig = field(default_factory=ReluSplitConfig)
    max_split_inputs: int = 16
    alpha_iterations: int = 30
    seed: int = 0
    #: "auto" (:func:`choose_strategy`), "input" or "relu"
    strategy: str = "auto"

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise InputError(f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")


STRATEGIES = ("auto", "input", "relu")


def has_relu(network: Network) -> bool:
    return any(n.op_type in ("Relu", "LeakyRelu") for n in network.graph.nodes)


def choose_strategy(network: Network, config: "VerifyConfig") -> str:
    """``"input"`` for few inputs (``max_split_inputs``) or no ReLU to split, else ``"relu"``."""
    if config.strategy != "auto":
        return config.strategy
    if network.n_inputs <= config.max_split_inputs or not has_relu(network):
        return "input"
    return "relu"


def verify(network: Network, prop: Union[Property, str], *, timeout: float = 60.0,
           config: VerifyConfig = VerifyConfig(), progress: Optional[Callable[[dict], None]] = None) -> Result:
    """Decide a VNN-LIB property on a network (see the module docstring).

    Args:
        network: a :class:`Network` (ONNX models are checked with ONNX Runtime).
        prop: a parsed :class:`Property` or a path to a ``.vnnlib`` file.
        timeout: wall-clock seconds, > 0.
        progress: called with a dict (strategy, domains, open, worst, rate, ...) while
            branch and bound runs (``perturbkit verify --verbose`` prints it).
    Returns:
        :class:`Result` (``verdict`` ``sat``/``unsat``/``unknown``/``timeout``).
    """
    t0 = time.monotonic()
    if not (isinstance(timeout, (int, float)) and timeout > 0 and timeout == timeout):
        raise InputError(f"timeout must be > 0 seconds, got {timeout}")
    if isinstance(prop, str):
        from perturbkit.verify.vnnlib import parse_vnnlib

        prop = parse_vnnlib(prop)
    check_sizes(prop, network.n_inputs, network.n_outputs)
    for node in network.graph.nodes:  # e.g. a Softmax admitted by load(..., forward_only=True)
        if rule_for(node, network.source).kind == "forward":
            rule_for(node, network.source).interval(node)  # raises: no bound rule, with the node
    deadline = t0 + timeout
    gen = torch.Generator().manual_seed(config.seed)
    strategy = choose_strategy(network, config)
    if strategy == "relu" and not has_relu(network):
        raise InputError("--strategy relu: the network has no ReLU or LeakyReLU to split")
    stats: dict = {"boxes": 0, "batches": 0, "falsify_hits": 0, "strategy": strategy}
    cases = prop.groups()

    def done(verdict: str, ce=None) -> Result:
        return Result(verdict, ce, time.monotonic() - t0, stats)

    # 1. falsification on every case first: cheap, and sat answers end everything
    for case in cases:
        if time.monotonic() > deadline:
            return done("timeout")
        ce = _falsify(network, case, config, gen, deadline)
        if ce is not None:
            stats["falsify_hits"] += 1
            return done("sat", ce)
    # 2./3. prove each case
    verdicts = []
    for case in cases:
        if time.monotonic() > deadline:
            return done("timeout")
        if _one_shot(network, case, config):
            verdicts.append("unsat")
            continue

        def is_ce(x: torch.Tensor, case=case) -> bool:
            return check.confirm(network, case, x.double().numpy()) is not None

        if strategy == "relu":
            out = relu_split(network, case, deadline=deadline, config=config.relu, is_candidate=is_ce,
                             progress=None if progress is None else (lambda info: progress({"strategy": "relu", **info})))
        else:
            if network.n_inputs > config.max_split_inputs and config.alpha_iterations \
                    and _one_shot(network, case, config, alpha=True):
                verdicts.append("unsat")
                continue

            def report(done_, open_):
                if progress is not None:
                    progress({"strategy": "input", "domains": done_, "open": open_})

            out = input_split(network, case, deadline=deadline, config=config.bab, is_candidate=is_ce,
                              progress=report)
        stats["boxes"] += out.boxes
        stats["batches"] += out.batches
        if out.reason:
            stats["reason"] = out.reason
        if out.evaluated:
            stats["children_bounded"] = stats.get("children_bounded", 0) + out.evaluated
        if out.verdict == "sat":
            return done("sat", check.confirm(network, case, out.candidate))
        if out.verdict == "timeout":
            return done("timeout")
        verdicts.append(out.verdict)
    return done("unsat" if all(v == "unsat" for v in verdicts) else "unknown")


def _falsify(net: Network, case: Case, config: VerifyConfig, gen: torch.Generator,
             deadline: float) -> Optional[tuple]:
    C, d, owner, n_clauses = rows_of(case, torch.float64)
    lo = torch.from_numpy(np.array(case.box.lower))
    hi = torch.from_numpy(np.array(case.box.upper))
    x = search(net, lo, hi, C, d, owner, n_clauses, config.falsify, gen, deadline)
    if x is None:
        return None
    return check.confirm(net, case, x.numpy())


def _one_shot(net: Network, case: Case, config: VerifyConfig, alpha: bool = False) -> bool:
    """One CROWN (or alpha-CROWN) bound on the whole box proves every clause?"""
    C, d, owner, n_clauses = rows_of(case, config.bab.dtype)
    lo = torch.from_numpy(np.array(case.box.lower)).to(config.bab.dtype).reshape(1, *net.sample_shape)
    hi = torch.from_numpy(np.array(case.box.upper)).to(config.bab.dtype).reshape(1, *net.sample_shape)
    ctx = make_context(net, Box(lo, hi))
    if alpha:
        lb, _, _ = alpha_crown(ctx, C.unsqueeze(0), AlphaConfig(iterations=config.alpha_iterations, lower_only=True))
        lb = lb.detach()
    else:
        with torch.no_grad():
            lb, _ = crown(ctx, C.unsqueeze(0))
    per_clause = clause_max(lb - d, owner, n_clauses)[0]
    return bool((per_clause > 0).all())
