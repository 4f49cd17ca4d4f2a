"""Converters for recurrent layers: ``nn.LSTM``, ``nn.GRU`` and ``nn.RNN`` (tanh or relu).

Each layer's torch weights are put in ONNX layout and unrolled by
:func:`perturbkit.graph.rnn.unroll`, the function the ONNX importer calls for ONNX's
``LSTM``/``GRU``/``RNN`` nodes, and the layers are chained the way ``torch.onnx.export``
chains them (batch-first input transposed, sequence-first ONNX layout, ``Y`` squeezed or
transposed and reshaped into the next layer's input), so a module and its ONNX export give
the same graph.  The module's value is ``(output, (h_n, c_n))`` (LSTM) or
``(output, h_n)``, each usable through indexing in the traced model.

Torch gate order -> ONNX gate order: LSTM ``(i, f, g, o) -> (i, o, f, c)``; GRU
``(r, z, n) -> (z, r, h)`` with ``linear_before_reset=1`` (torch applies the reset gate after
the recurrent product, bias included).

Shapes: input ``(batch, seq, in)`` (batch_first), ``(seq, batch, in)``, or unbatched
``(seq, in)``; output ``(..., D * hidden)``; ``h_n``, ``c_n`` ``(layers * D, batch, hidden)``
(``(layers * D, hidden)`` unbatched); a given initial state has that shape too.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import torch
import torch.nn as nn

from perturbkit.graph.ir import Shape
from perturbkit.graph.rnn import Recurrence, Weights, unroll
from perturbkit.graph.torch_fx.builder import Builder, Call, Var, unsupported

#: module class -> ONNX kind, and where each ONNX gate block is in torch's weights
_KINDS: dict[type, str] = {nn.LSTM: "LSTM", nn.GRU: "GRU", nn.RNN: "RNN"}
_ONNX_ORDER: dict[str, tuple[int, ...]] = {"LSTM": (0, 3, 1, 2), "GRU": (1, 0, 2), "RNN": (0,)}
_RNN_ACTIVATIONS = {"tanh": "Tanh", "relu": "Relu"}


class _BuilderEmit:
    """The :class:`~perturbkit.graph.rnn.Emit` interface on a :class:`Builder`."""

    def __init__(self, b: Builder):
        self.b = b
        self.vars: dict[str, Var] = {}
        self.consts: dict[str, torch.Tensor] = {}

    def var(self, v: Var) -> str:
        self.vars[v.name] = v
        return v.name

    def node(self, op_type: str, inputs: Sequence[str], attrs: Optional[Mapping[str, Any]] = None,
             *, hint: str = "") -> str:
        args = [self.vars[i] if i in self.vars else self.consts[i] for i in inputs]
        return self.var(self.b.emit(op_type, args, dict(attrs or {})))

    def const(self, tensor: torch.Tensor, hint: str) -> str:
        name = f"<{hint} {len(self.consts)}>"  # a key of this adapter; the builder names the constant
        self.consts[name] = tensor
        return name

    def shape(self, value: str) -> Shape:
        return self.vars[value].shape if value in self.vars else tuple(self.consts[value].shape)


def _onnx_blocks(t: torch.Tensor, kind: str) -> torch.Tensor:
    """Gate blocks of a torch weight or bias (stacked on dim 0) in ONNX order."""
    blocks = t.detach().chunk(len(_ONNX_ORDER[kind]), dim=0)
    return torch.cat([blocks[k] for k in _ONNX_ORDER[kind]], dim=0)


def _layer_weights(m: nn.RNNBase, kind: str, layer: int, h0: Optional[torch.Tensor],
                   c0: Optional[torch.Tensor]) -> Weights:
    D = 2 if m.bidirectional else 1
    sfx = [""] + (["_reverse"] if D == 2 else [])

    def get(param: str) -> list[torch.Tensor]:  # one per direction, e.g. weight_ih_l0, weight_ih_l0_reverse
        return [_onnx_blocks(getattr(m, f"{param}_l{layer}{s}"), kind) for s in sfx]

    W, R = torch.stack(get("weight_ih")), torch.stack(get("weight_hh"))
    B = torch.stack([torch.cat([i, h]) for i, h in zip(get("bias_ih"), get("bias_hh"))]) if m.bias else None
    rows = slice(layer * D, (layer + 1) * D)
    return Weights(W=W, R=R, B=B, initial_h=None if h0 is None else h0[rows].detach().to(W.dtype),
                   initial_c=None if c0 is None else c0[rows].detach().to(W.dtype))


def _initial_state(b: Builder, kind: str, hx: Any) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    if hx is None:
        return None, None
    parts = tuple(hx) if kind == "LSTM" else (hx, None)
    if len(parts) != 2 or any(isinstance(p, Var) for p in parts):
        raise unsupported(b, f"nn.{kind} with an initial state that depends on the network input is not "
                             "supported; give a constant state or none")
    return parts[0], parts[1]


def recurrent_module(b: Builder, c: Call) -> Any:
    """``nn.LSTM``/``nn.GRU``/``nn.RNN`` called on a runtime sequence (and a constant state)."""
    m = c.module
    kind = next(k for cls, k in _KINDS.items() if isinstance(m, cls))
    x = c.arg(0, "input")
    if not isinstance(x, Var):
        raise unsupported(b, f"nn.{kind} on a {type(x).__name__} (e.g. a PackedSequence) is not supported; "
                             "give a padded tensor")
    if kind == "LSTM" and m.proj_size > 0:
        raise unsupported(b, f"nn.LSTM with proj_size={m.proj_size} is not supported")
    if kind == "RNN" and m.nonlinearity not in _RNN_ACTIVATIONS:
        raise unsupported(b, f"nn.RNN with nonlinearity '{m.nonlinearity}' is not supported; supported: tanh, relu")
    if x.rank not in (2, 3):
        raise unsupported(b, f"nn.{kind} on an input of rank {x.rank} is not supported; expected 2 or 3")
    h0, c0 = _initial_state(b, kind, c.arg(1, "hx"))
    unbatched = x.rank == 2
    if unbatched:  # (seq, in): a batch of one, the state (layers * D, hidden) likewise
        h0, c0 = (None if s is None else s.unsqueeze(1) for s in (h0, c0))
    e = _BuilderEmit(b)
    seq = e.var(x)
    if unbatched:
        seq = e.node("Unsqueeze", [seq], {"axes": [1]})
    elif m.batch_first:
        seq = e.node("Transpose", [seq], {"perm": [1, 0, 2]})
    D = 2 if m.bidirectional else 1
    acts = (_RNN_ACTIVATIONS[m.nonlinearity],) * D if kind == "RNN" else ()
    spec = Recurrence(kind=kind, hidden_size=m.hidden_size, direction="bidirectional" if D == 2 else "forward",
                      layout=0, activations=acts, linear_before_reset=kind == "GRU", where=b.where())
    h_n, c_n = [], []
    for layer in range(m.num_layers):
        out = unroll(e, seq, spec, _layer_weights(m, kind, layer, h0, c0))
        h_n.append(out["Y_h"])
        c_n.append(out.get("Y_c"))
        if D == 1:  # (seq, 1, batch, hidden) -> (seq, batch, hidden)
            seq = e.node("Squeeze", [out["Y"]], {"axes": [1]})
        else:  # (seq, 2, batch, hidden) -> (seq, batch, 2 * hidden)
            n_seq, _, batch, n = e.shape(out["Y"])
            seq = e.node("Reshape", [e.node("Transpose", [out["Y"]], {"perm": [0, 2, 1, 3]})],
                         {"shape": [n_seq, batch, D * n]})
    if unbatched:
        seq = e.node("Squeeze", [seq], {"axes": [1]})
    elif m.batch_first:
        seq = e.node("Transpose", [seq], {"perm": [1, 0, 2]})

    def state(parts: list[str]) -> Var:
        s = parts[0] if len(parts) == 1 else e.node("Concat", parts, {"axis": 0})
        return e.vars[e.node("Squeeze", [s], {"axes": [1]}) if unbatched else s]

    output = e.vars[seq]
    if kind == "LSTM":
        return output, (state(h_n), state(c_n))
    return output, state(h_n)
