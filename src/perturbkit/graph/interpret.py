"""Execute the IR: each node's ``forward`` rule in topological order."""
from __future__ import annotations

import torch

from perturbkit.errors import ModelError, PerturbkitError
from perturbkit.ops.registry import rule_for


def execute(net, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Run ``net`` on ``x`` of shape ``(*lead, *declared_input_shape)``.

    Returns a dict value name -> tensor ``(*lead, *declared_shape)`` for every runtime value.
    Errors say which node failed ("while executing node ...").
    """
    g = net.graph
    consts = net.constants(x.dtype, x.device)
    env: dict[str, torch.Tensor] = {g.input_name: x}
    for node in g.nodes:
        args = [consts[i] if i in consts else env[i] for i in node.inputs]
        env[node.output] = run_node(node, rule_for(node, g.source), args, g.source)
    return env


def run_node(node, rule, args: list, source: str = "") -> torch.Tensor:
    """``rule.forward(node, *args)``; an error other than perturbkit's own says which node failed."""
    try:
        return rule.forward(node, *args)
    except PerturbkitError:
        raise
    except Exception as e:  # noqa: BLE001 - re-raised with the location
        raise ModelError(f"while executing {node.where(source)}: {type(e).__name__}: {e}") from e
