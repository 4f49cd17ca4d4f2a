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
        rule = rule_for(node, g.source)
        args = [consts[i] if i in consts else env[i] for i in node.inputs]
        try:
            env[node.output] = rule.forward(node, *args)
        except PerturbkitError:
            raise
        except Exception as e:  # noqa: BLE001 - re-raised with the location
            raise ModelError(f"while executing {node.where(g.source)}: {type(e).__name__}: {e}") from e
    return env
