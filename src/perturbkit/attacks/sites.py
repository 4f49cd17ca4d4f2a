"""Where an activation attack perturbs: a named value of a perturbkit Network (the graph is
re-executed from that node on, earlier values read from one clean run) or the output of a
named submodule of an nn.Module (a forward hook).  Both give ``run(x, delta)``.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, Optional, Sequence

import torch

from perturbkit.attacks.base import Classifier
from perturbkit.graph.interpret import run_node
from perturbkit.errors import InputError, ModelError, PerturbkitError

Tensor = torch.Tensor


def _names(names: Sequence[str], limit: int = 40) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


class NetworkSite:
    """A named value of a perturbkit Network: run the graph with that value replaced.

    ``prepare(x)`` runs the clean graph once and keeps every value; ``run(rows, a)`` then
    executes only the nodes after the perturbed one (the others' values are read from the
    clean run), with the same operator rules as :func:`perturbkit.graph.interpret.execute`.
    """

    def __init__(self, net, node: str):
        from perturbkit.ops.registry import rule_for

        g = net.graph
        found = [i for i, n in enumerate(g.nodes) if node in (n.name, n.output)]
        if not found:
            raise InputError(f"no node '{node}' in {net.source or 'the network'}; nodes: "
                             f"{_names([n.name for n in g.nodes])}")
        self.net, self.pos = net, found[0]
        self.value = g.nodes[self.pos].output
        self.rules = [rule_for(n, g.source) for n in g.nodes]
        declared = tuple(g.shapes[self.value])
        self.act_shape = declared[1:] if declared and declared[0] == 1 else declared
        self.cache: dict[str, Tensor] = {}
        self.B = 0

    @contextlib.contextmanager
    def attacking(self) -> Iterator[None]:
        yield

    def prepare(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Clean activation (B, *act_shape) and outputs (B, m)."""
        net = self.net
        self.B = net.batch(x)
        with torch.no_grad():
            self.cache = net.run(net.internal(x, self.B))
        self.x_dtype = x.dtype
        return self.cache[self.value].reshape(self.B, *self.act_shape), self._out(self.cache, self.B)

    def _out(self, env: dict[str, Tensor], n: int) -> Tensor:
        return env[self.net.graph.output_name].reshape(n, -1)

    def run(self, rows: Tensor, a: Tensor) -> Tensor:
        """Outputs (n, m) of the samples ``rows`` (n,) with the activation replaced by ``a``."""
        g = self.net.graph
        consts = self.net.constants(self.x_dtype, a.device)
        n = rows.numel()
        env = {self.value: a.reshape(n, *g.shapes[self.value])}
        for node, rule in zip(g.nodes[self.pos + 1:], self.rules[self.pos + 1:]):
            args = [consts[i] if i in consts else (env[i] if i in env else self.cache[i][rows]) for i in node.inputs]
            env[node.output] = run_node(node, rule, args, g.source)
        return self._out(env if g.output_name in env else {g.output_name: self.cache[g.output_name][rows]}, n)


class ModuleSite:
    """A named submodule of an ``nn.Module``: a forward hook replaces its output."""

    def __init__(self, model: torch.nn.Module, node: str):
        modules = dict(model.named_modules())
        modules.pop("", None)
        if node not in modules:
            raise InputError(f"no submodule '{node}' in {type(model).__name__}; submodules: "
                             f"{_names(list(modules)) or '(none)'}")
        self.model, self.module, self.node = model, modules[node], node
        self.replace: Optional[Tensor] = None
        self.seen: list[Tensor] = []
        self.act_shape: tuple[int, ...] = ()

    def _hook(self, module, inputs, output):
        if not isinstance(output, Tensor):
            raise ModelError(f"submodule '{self.node}' returns a {type(output).__name__}; perturb a submodule "
                             "that returns one tensor")
        self.seen.append(output)
        if len(self.seen) > 1:
            raise InputError(f"submodule '{self.node}' runs more than once per forward pass; perturb one used once")
        return None if self.replace is None else self.replace.reshape(output.shape)

    @contextlib.contextmanager
    def attacking(self) -> Iterator[None]:
        handle = self.module.register_forward_hook(self._hook)
        try:
            with Classifier(self.model).attacking():
                yield
        finally:
            handle.remove()

    def _forward(self, x: Tensor, a: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        self.seen, self.replace = [], a
        try:
            z = self.model(x)
        finally:
            self.replace = None
        if not self.seen:
            raise InputError(f"submodule '{self.node}' did not run in the forward pass")
        if not isinstance(z, Tensor):
            raise ModelError(f"the model returned a {type(z).__name__}, expected a tensor")
        return self.seen[0], z.reshape(z.shape[0], -1)

    def prepare(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self.x = x
        with torch.no_grad():
            try:
                a, y = self._forward(x, None)
            except PerturbkitError:
                raise
            except Exception as e:  # noqa: BLE001 - re-raised with the location
                raise ModelError(f"while running {type(self.model).__name__} on inputs of shape {tuple(x.shape)}: "
                                 f"{type(e).__name__}: {e}") from e
        self.act_shape = tuple(a.shape[1:])
        return a.detach(), y

    def run(self, rows: Tensor, a: Tensor) -> Tensor:
        return self._forward(self.x[rows], a)[1]


def make_site(model: Any, node: str):
    """The activation site ``node`` of ``model`` (Network, .onnx path, bundled name or nn.Module)."""
    from perturbkit.graph.network import Network

    if not isinstance(node, str) or not node:
        raise InputError(f"node must be a non-empty name, got {node!r}")
    if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
        from perturbkit.api import load
        from perturbkit.models import resolve_model

        model = load(str(resolve_model(str(model))))
    if isinstance(model, Network):
        return NetworkSite(model, node)
    if isinstance(model, torch.nn.Module):
        return ModuleSite(model, node)
    raise ModelError(f"activation attacks need a perturbkit Network, an .onnx path or an nn.Module with named "
                     f"submodules, got a {type(model).__name__}")
