"""The ONNX importer's hook for ``LSTM``, ``GRU`` and ``RNN`` nodes: read the node's
inputs and attributes, refuse what :mod:`perturbkit.graph.rnn` does not unroll (non-constant
weights or states, ``clip``, ``input_forget=1``, ``sequence_lens`` other than the sequence
length, activations other than Sigmoid/Tanh/Relu), unroll it, and give each used output of
the node (Y, Y_h, Y_c) the node's output name.  Omitted optional inputs (``""``, also in the
middle of the input list) are absent operands.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Mapping, Optional, Sequence

import torch

from perturbkit.errors import ModelError, UnsupportedOperatorError
from perturbkit.graph.ir import Node, Shape
from perturbkit.graph.rnn import KINDS, Recurrence, Weights, unroll

Tensor = torch.Tensor

#: ONNX input positions of the optional operands, per kind (X, W, R come first)
_ONNX_INPUTS: dict[str, tuple[str, ...]] = {
    "LSTM": ("X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P"),
    "GRU": ("X", "W", "R", "B", "sequence_lens", "initial_h"),
    "RNN": ("X", "W", "R", "B", "sequence_lens", "initial_h"),
}
_ONNX_OUTPUTS = ("Y", "Y_h", "Y_c")
#: the ONNX op types :func:`expand_onnx` unrolls
RECURRENT_OPS = frozenset(_ONNX_INPUTS)


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def expand_onnx(op: str, name: str, inputs: Sequence[str], outputs: Sequence[str], attrs: Mapping[str, Any],
                shapes: dict[str, Shape], consts: dict[str, Tensor], used_names: set[str],
                source: str) -> list[Node]:
    """An ONNX ``LSTM``/``GRU``/``RNN`` node as unrolled IR nodes.

    ``inputs``/``outputs`` as in the file (``""`` = omitted).  New values and constants go
    into ``shapes``/``consts``, new node names into ``used_names``; each used output of the
    ONNX node is produced by one of the returned nodes (or becomes a constant)."""
    from perturbkit.graph.lower import Emitter

    where = f"node '{name}' ({op}) in {source}" if source else f"node '{name}' ({op})"
    roles = _ONNX_INPUTS[op]
    if len(inputs) > len(roles):
        raise ModelError(f"{op} takes at most {len(roles)} inputs, got {len(inputs)} at {where}")
    given = {role: i for role, i in zip(roles, inputs) if i}
    for role, value in given.items():
        if value not in consts and value not in shapes:
            raise ModelError(f"{where} reads '{value}', which no earlier node produces")
    if "X" not in given or "W" not in given or "R" not in given:
        raise ModelError(f"{op} needs the inputs X, W and R at {where}")
    operands: dict[str, Optional[Tensor]] = {}
    for role in roles[1:]:
        if role in given and given[role] not in consts:
            raise UnsupportedOperatorError(f"{op} with a non-constant '{role}' input is not supported at {where}; "
                                           "it must be a constant")
        operands[role] = consts[given[role]] if role in given else None
    if attrs.get("clip") is not None:
        raise UnsupportedOperatorError(f"{op} with 'clip' is not supported at {where}")
    if int(attrs.get("input_forget", 0)):
        raise UnsupportedOperatorError(f"{op} with input_forget=1 is not supported at {where}")
    W = operands["W"]
    spec = Recurrence(kind=op, hidden_size=int(attrs.get("hidden_size", W.shape[-2] // KINDS[op][0])),
                      direction=_text(attrs.get("direction", "forward")), layout=int(attrs.get("layout", 0)),
                      activations=tuple(_text(a) for a in attrs.get("activations", ())),
                      linear_before_reset=bool(int(attrs.get("linear_before_reset", 0))), where=where)
    x = given["X"]
    x_shape = tuple(consts[x].shape) if x in consts else shapes[x]
    lens = operands["sequence_lens"]
    if lens is not None and len(x_shape) == 3 and bool(torch.any(lens.reshape(-1) != x_shape[spec.layout])):
        raise UnsupportedOperatorError(
            f"{op} with sequence_lens {lens.reshape(-1).tolist()} other than the sequence length "
            f"{x_shape[spec.layout]} is not supported at {where}")
    floats = {k: (v.to(W.dtype) if v is not None else None) for k, v in operands.items() if k != "sequence_lens"}
    weights = Weights(W=W, R=floats["R"], B=floats["B"], P=floats.get("P"), initial_h=floats["initial_h"],
                      initial_c=floats.get("initial_c"))

    first = next((v for v in outputs if v), name)
    names = set(used_names) | set(shapes) | set(consts)
    em = Emitter(Node(name=name, op_type=op, inputs=tuple(inputs), output=first), shapes, consts, names, source)
    result = unroll(em, consts[x] if x in consts else x, spec, weights)
    renamed: dict[str, str] = {}
    for role, value in zip(_ONNX_OUTPUTS, outputs):
        if not value:
            continue
        if role not in result:
            raise ModelError(f"{op} has no output {role} (output '{value}') at {where}")
        produced = result[role]
        if isinstance(produced, Tensor):
            consts[value] = produced
        elif produced in renamed:  # one value is two outputs
            em.node("Identity", [renamed[produced]], hint=role, output=value)
        else:
            _rename(em.nodes, shapes, produced, value)
            renamed[produced] = value
    used_names.update(n.name for n in em.nodes)
    return em.nodes


def _rename(nodes: list[Node], shapes: dict[str, Shape], old: str, new: str) -> None:
    """Let the node producing ``old`` produce ``new`` instead (readers follow)."""
    for k, n in enumerate(nodes):
        if n.output == old or old in n.inputs:
            nodes[k] = replace(n, output=new if n.output == old else n.output,
                               inputs=tuple(new if i == old else i for i in n.inputs))
    shapes[new] = shapes.pop(old)
