"""Tracing and the walk: ``nn.Module`` -> ``torch.fx`` graph -> :class:`~perturbkit.graph.ir.Graph`.

:func:`graph_from_module` traces the module, evaluates every fx node with PyTorch on the
example values, folds what does not depend on the input, dispatches the rest through the
tables of :mod:`perturbkit.graph.torch_fx.tables`, checks each converted node and finally
the whole graph against PyTorch, and turns every failure into one line that says where.
"""
from __future__ import annotations

import operator
from typing import Any, Callable, Optional

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from perturbkit.errors import ModelError, PerturbkitError, UnsupportedOperatorError
from perturbkit.graph.ir import Graph, Node
from perturbkit.graph.network import Network
from perturbkit.graph.torch_fx.arithmetic import Refused
from perturbkit.graph.torch_fx.builder import Builder, Call, Var, describe_error, differ, target_name
from perturbkit.graph.torch_fx.tables import (FUNCTIONS, METHODS, MODULES, SHAPE_ATTRS, SHAPE_METHODS,
                                              VALUE_FREE_FUNCTIONS, VALUE_FREE_METHODS, supported_torch)

__all__ = ["graph_from_module"]


# --------------------------------------------------------------------------------------
# the walk
# --------------------------------------------------------------------------------------
#: PyTorch's named multi-value results (``torch.return_types.max`` ...): tuples with named fields
_STRUCTSEQS = tuple(t for t in vars(torch.return_types).values() if isinstance(t, type) and issubclass(t, tuple))


def _map(a: Any, fn: Callable[[Any], Any]) -> Any:
    if isinstance(a, tuple) and not hasattr(a, "_fields"):
        mapped = tuple(_map(x, fn) for x in a)
        if type(a) is not tuple and isinstance(a, _STRUCTSEQS):  # torch.max(x, 1): keep .values
            return type(a)(mapped)
        return mapped
    if isinstance(a, list):
        return [_map(x, fn) for x in a]
    if isinstance(a, dict):
        return {k: _map(v, fn) for k, v in a.items()}
    if isinstance(a, slice):
        return slice(_map(a.start, fn), _map(a.stop, fn), _map(a.step, fn))
    return fn(a)


def _has_var(a: Any) -> bool:
    found = []
    _map(a, lambda v: found.append(v) if isinstance(v, Var) else None)
    return bool(found)


def _unsupported_call(b: Builder, n: fx.Node, mod: Optional[nn.Module]) -> UnsupportedOperatorError:
    s = supported_torch()
    if n.op == "call_module":
        what, kind = f"module {type(mod).__name__} ('{n.target}')", "modules"
    elif n.op == "call_method":
        what, kind = f"tensor method '.{n.target}()'", "methods"
    else:
        what, kind = f"function {target_name(n.target)}", "functions"
    return UnsupportedOperatorError(
        f"cannot convert {what} at fx node '{n.name}' in {b.source}: not supported on perturbed values; "
        f"supported {kind}: {', '.join(s[kind])}")


def _convert_call(b: Builder, gm: fx.GraphModule, n: fx.Node, env: dict[fx.Node, Any]) -> Any:
    args = _map(n.args, lambda a: env[a] if isinstance(a, fx.Node) else a)
    kwargs = _map(dict(n.kwargs), lambda a: env[a] if isinstance(a, fx.Node) else a)
    refused: list[Refused] = []
    _map((args, kwargs), lambda v: refused.append(v) if isinstance(v, Refused) else None)
    if refused and not (n.op == "call_function" and n.target in (operator.getitem, getattr)):  # selecting is fine
        raise UnsupportedOperatorError(f"{refused[0].why} at {b.where()}")
    mod = gm.get_submodule(n.target) if n.op == "call_module" else None
    concrete = lambda v: v.value.clone() if isinstance(v, Var) else v  # noqa: E731 - in-place ops must not touch examples
    cargs, ckwargs = _map(args, concrete), _map(kwargs, concrete)
    try:
        if n.op == "call_function":
            value = n.target(*cargs, **ckwargs)
        elif n.op == "call_method":
            value = getattr(cargs[0], n.target)(*cargs[1:], **ckwargs)
        else:
            value = mod(*cargs, **ckwargs)
    except Exception as e:  # noqa: BLE001 - re-raised with the location
        raise ModelError(f"while running {b.where()} on the example input: {describe_error(e)}") from None

    if not (_has_var(args) or _has_var(kwargs)):  # does not depend on the input: fold
        if isinstance(value, torch.Tensor):
            value = value.detach()
            b.folded[id(value)] = (value, n.name)
        return value
    if n.op == "call_method" and n.target in SHAPE_METHODS or \
            n.op == "call_function" and n.target is getattr and args[1] in SHAPE_ATTRS or \
            n.op == "call_function" and n.target in VALUE_FREE_FUNCTIONS or \
            n.op == "call_method" and n.target in VALUE_FREE_METHODS:
        return value.detach() if isinstance(value, torch.Tensor) else value

    if n.op == "call_module":
        conv = next((MODULES[c] for c in type(mod).__mro__ if c in MODULES), None)
    elif n.op == "call_method":
        conv = METHODS.get(n.target)
    else:
        conv = FUNCTIONS.get(n.target) if _hashable(n.target) else None
    if conv is None:
        raise _unsupported_call(b, n, mod)
    try:
        result = conv(b, Call(n, tuple(args), kwargs, value, mod))
    except PerturbkitError:
        raise
    except Exception as e:  # noqa: BLE001 - an argument combination the converter does not handle
        raise UnsupportedOperatorError(f"cannot convert {b.where()}: {describe_error(e)}") from None
    result = _checked(b, result, value)
    if _in_place(n, mod, args, kwargs) and isinstance(n.args[0], fx.Node) and isinstance(result, Var):
        env[n.args[0]] = result  # later readers of the mutated tensor see the new value
    return result


# positional index of the ``inplace`` flag of functional activations
_INPLACE_ARG = {F.relu: 1, F.relu6: 1, F.leaky_relu: 2, F.hardtanh: 3, F.dropout: 3, F.dropout1d: 3,
                F.dropout2d: 3, F.dropout3d: 3, F.alpha_dropout: 3, F.silu: 1, F.elu: 2, F.selu: 1,
                F.hardsigmoid: 1, F.hardswish: 1}


def _in_place(n: fx.Node, mod: Optional[nn.Module], args: tuple, kwargs: dict) -> bool:
    """Whether the call overwrites its first argument (``relu_``, ``inplace=True``, ...)."""
    if n.op == "call_module":
        return bool(getattr(mod, "inplace", False))
    if n.op == "call_method":
        return n.target.endswith("_") and not n.target.endswith("__")
    if getattr(n.target, "__name__", "").endswith("_") and not n.target.__name__.endswith("__"):
        return True
    if kwargs.get("inplace"):
        return True
    i = _INPLACE_ARG.get(n.target) if _hashable(n.target) else None
    return i is not None and len(args) > i and bool(args[i])


def _hashable(x: Any) -> bool:
    try:
        hash(x)
    except TypeError:
        return False
    return True


def _checked(b: Builder, result: Any, value: Any) -> Any:
    """Compare the converted value(s) with PyTorch's; keep PyTorch's as the example."""
    if isinstance(result, Var):
        if not isinstance(value, torch.Tensor):
            raise ModelError(f"internal error converting {b.where()}: expected a tensor result")
        why = differ(result.value, value)
        if why is not None:
            raise ModelError(f"converting {b.where()} gives a graph that disagrees with PyTorch ({why}); "
                             "please report this with the module")
        return Var(result.name, value.detach())
    if isinstance(result, (tuple, list)) and isinstance(value, (tuple, list)) and len(result) == len(value):
        return type(result)(_checked(b, r, v) for r, v in zip(result, value))
    return result


class _Tracer(fx.Tracer):
    """fx's tracer, with every module the tables convert kept as a leaf (a call_module node).

    fx's default leaves are the modules of ``torch.nn``; a subclass defined elsewhere is a leaf
    too when it keeps the converted class's ``forward``.  Attention and Transformer modules must
    be leaves: their ``forward`` branches on masks and fast paths, which fx cannot trace."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if super().is_leaf_module(m, module_qualified_name):
            return True
        cls = next((c for c in type(m).__mro__ if c in MODULES), None)
        return cls is not None and type(m).forward is cls.forward


def _trace(module: nn.Module, source: str) -> fx.GraphModule:
    if any(c in MODULES for c in type(module).__mro__):
        module = nn.Sequential(module)  # a bare layer: trace it as a leaf of a container
    try:
        tracer = _Tracer()
        graph = tracer.trace(module)
        return fx.GraphModule(tracer.root, graph, type(module).__name__)
    except Exception as e:  # noqa: BLE001 - any tracing failure becomes one clear line
        raise ModelError(f"cannot trace {source} with torch.fx ({describe_error(e)}); "
                         "export it with torch.onnx.export and load the .onnx file instead") from None


def _check_signature(gm: fx.GraphModule, source: str) -> None:
    required = [n.target for n in gm.graph.nodes if n.op == "placeholder" and not n.args]
    if not any(n.op == "placeholder" for n in gm.graph.nodes):
        raise ModelError(f"{source}.forward takes no input")
    if len(required) > 1:
        raise ModelError(f"{source}.forward takes {len(required)} tensor arguments ({', '.join(map(str, required))}); "
                         "perturbkit supports exactly one input")


def _live(nodes: list[Node], out: str) -> list[Node]:
    need, keep = {out}, []
    for n in reversed(nodes):
        if n.output in need:
            keep.append(n)
            need.update(n.inputs)
    return keep[::-1]


def _convert(module: nn.Module, gm: fx.GraphModule, x: torch.Tensor, source: str) -> Graph:
    names: dict[int, str] = {}
    for qual, t in list(module.named_parameters()) + list(module.named_buffers()):
        names.setdefault(id(t), qual)
    b = Builder(source=source, param_names=names)
    env: dict[fx.Node, Any] = {}
    input_var: Optional[Var] = None
    output: Any = None
    for n in gm.graph.nodes:
        b.fx_node = n
        if n.op == "placeholder":
            if input_var is None:
                input_var = Var(b.fresh(n.name), x)
                b.shapes[input_var.name] = input_var.shape
                env[n] = input_var
            else:
                env[n] = n.args[0]  # an optional argument: its default (see _check_signature)
        elif n.op == "get_attr":
            obj: Any = gm
            for part in str(n.target).split("."):
                obj = getattr(obj, part)
            env[n] = obj  # kept as is: parameters are recognised (and detached) when registered
        elif n.op == "output":
            output = _map(n.args[0], lambda a: env[a] if isinstance(a, fx.Node) else a)
        else:
            env[n] = _convert_call(b, gm, n, env)
    b.fx_node = None
    if isinstance(output, (tuple, list)) and len(output) == 1:
        output = output[0]
    if isinstance(output, Refused):
        raise UnsupportedOperatorError(f"{output.why} (the output of {source})")
    if not isinstance(output, Var):
        if isinstance(output, (tuple, list, dict)):
            raise ModelError(f"{source} returns {type(output).__name__} of several values; "
                             "perturbkit supports exactly one output tensor")
        raise ModelError(f"the output of {source} does not depend on its input")
    if output is input_var or output.name == input_var.name:
        output = b.emit("Identity", [output])
    nodes = _live(b.nodes, output.name)
    live = {i for nd in nodes for i in nd.inputs}
    shapes = {input_var.name: input_var.shape, **{nd.output: nd.out_shape for nd in nodes}}
    return Graph(nodes=tuple(nodes), input_name=input_var.name, output_name=output.name, shapes=shapes,
                 constants={k: v for k, v in b.constants.items() if k in live}, source=source)


def _check_token_input(gm: fx.GraphModule, x: torch.Tensor, source: str) -> None:
    """An integer example input is allowed only as token ids read by embeddings."""
    if x.is_floating_point():
        return
    place = next(n for n in gm.graph.nodes if n.op == "placeholder")
    users = list(place.users)
    ok = x.dtype in (torch.int32, torch.int64) and users and all(
        u.op == "call_module" and isinstance(gm.get_submodule(u.target), nn.Embedding) and u.args[0] is place
        or u.op == "call_function" and u.target is F.embedding and u.args[0] is place for u in users)
    if not ok:
        raise ModelError(f"the example input must be a floating-point tensor, got {x.dtype} (integer inputs are "
                         f"accepted only as token ids read by nn.Embedding / F.embedding) in {source}")


def _check_graph(graph: Graph, x: torch.Tensor, ref: torch.Tensor) -> None:
    if not x.is_floating_point():  # token ids: run as Network.__call__ does, as floats
        x = x.to(ref.dtype)
    got = Network(graph).run(x)[graph.output_name]
    why = differ(got, ref)
    if why is not None:
        raise ModelError(f"the graph converted from {graph.source} disagrees with the module on the example "
                         f"input ({why}); please report this with the module")


def graph_from_module(module: nn.Module, example_input: torch.Tensor, *, source: Optional[str] = None) -> Graph:
    """Trace ``module`` with torch.fx and convert it to the IR.

    Args:
        module: the network; put in eval mode while converting, its training flags restored after.
        example_input: one input as the module sees it, batch dimension included, e.g.
            ``(1, 3, 32, 32)``; its shape is the graph's declared input shape.  Floating point,
            or integer token ids when only embeddings (``nn.Embedding``, ``F.embedding``) read it.
        source: name used in error messages (default: the module's class name).

    Returns:
        a :class:`Graph` whose nodes use ONNX op types and the attributes an ONNX import of
        the same network gives; parameters and buffers are constants (detached copies).

    Raises:
        ModelError: fx cannot trace the module, or the module cannot run on ``example_input``.
        UnsupportedOperatorError: a module, function or method that has no conversion
            (the message names the fx node, its target and what is supported).
    """
    if not isinstance(module, nn.Module):
        raise ModelError(f"expected a torch.nn.Module, got {type(module).__name__}")
    if not isinstance(example_input, torch.Tensor):
        raise ModelError(f"expected the example input as a torch.Tensor, got {type(example_input).__name__}")
    source = source or type(module).__name__
    modes = {m: m.training for m in module.modules()}
    fast_path = torch.backends.mha.get_fastpath_enabled()
    x = example_input.detach().clone()
    try:
        module.eval()
        # the reference is PyTorch's documented computation of attention modules, which the
        # conversion follows (and the ONNX export too), not the fused inference fast path
        torch.backends.mha.set_fastpath_enabled(False)
        with torch.no_grad():
            gm = _trace(module, source)
            _check_signature(gm, source)
            _check_token_input(gm, x, source)
            try:
                ref = module(x.clone())
            except Exception as e:  # noqa: BLE001
                raise ModelError(f"{source} fails on the example input of shape {tuple(x.shape)}: "
                                 f"{describe_error(e)}") from None
            graph = _convert(module, gm, x, source)
            if isinstance(ref, torch.Tensor):
                _check_graph(graph, x, ref)
    finally:
        torch.backends.mha.set_fastpath_enabled(fast_path)
        for m, mode in modes.items():
            m.training = mode
    return graph
