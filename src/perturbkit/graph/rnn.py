"""Recurrent layers (ONNX ``LSTM``, ``GRU``, ``RNN``) unrolled into primitive IR nodes.

Both front ends call :func:`unroll` with ONNX-layout weights, so an ``nn.LSTM`` traced by
the PyTorch front end and its ONNX export become the same graph (and so get the same
bounds).  Shapes are static: the recurrence is unrolled for the sequence length of the
declared input.  The emitted vocabulary is Slice, Reshape, Concat, MatMul (constant
weights), Add, Sub, Mul (the gating products multiply two runtime values), Sigmoid, Tanh
and Relu.

The equations are those of the ONNX operator specifications (opset 14+), per direction,
``x_t W^T + b`` being computed for all time steps by one MatMul before the loop:

* LSTM (gates ``i, o, f, c``; ``f, g, h`` the three activations, default Sigmoid/Tanh/Tanh):
  ``i = f(x W_i^T + H R_i^T + P_i * C + b_i)``, ``f_t = f(x W_f^T + H R_f^T + P_f * C + b_f)``,
  ``c = g(x W_c^T + H R_c^T + b_c)``, ``C' = f_t * C + i * c``,
  ``o = f(x W_o^T + H R_o^T + P_o * C' + b_o)``, ``H' = o * h(C')``;
* GRU (gates ``z, r, h``; default Sigmoid/Tanh):
  ``z = f(x W_z^T + H R_z^T + b_z)``, ``r = f(x W_r^T + H R_r^T + b_r)``,
  ``h = g(x W_h^T + (r * H) R_h^T + Rb_h + Wb_h)`` (``linear_before_reset=0``) or
  ``h = g(x W_h^T + r * (H R_h^T + Rb_h) + Wb_h)`` (``=1``), ``H' = h - z * (h - H)``;
* RNN (default Tanh): ``H' = f(x W^T + H R^T + b)``.

Shapes (``layout`` 0 / 1; ``D`` = number of directions, ``G`` = gates, ``n`` = hidden size):
    X ``(seq, batch, in)`` / ``(batch, seq, in)``; W ``(D, G n, in)``; R ``(D, G n, n)``;
    B ``(D, 2 G n)``; P ``(D, 3 n)``; initial_h, initial_c ``(D, batch, n)`` / ``(batch, D, n)``;
    Y ``(seq, D, batch, n)`` / ``(batch, seq, D, n)``; Y_h, Y_c like initial_h.
    Inside the loop a state has the shape of one time step of X with ``n`` features:
    ``(1, batch, n)`` / ``(batch, 1, n)``, which is also Y_h's shape for one direction.

Constants are computed on the spot and zeros are skipped, so absent initial states and biases
add no nodes (step 0 of a zero state has no recurrent terms).  The ONNX importer's hook is
:mod:`perturbkit.graph.rnn_onnx`; the torch converter is :mod:`perturbkit.graph.torch_fx.recurrent`.

References: Hochreiter & Schmidhuber 1997 (LSTM); Cho et al. 2014 (GRU); the ONNX operator
specifications LSTM, GRU and RNN.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Protocol, Sequence, Union

import torch

from perturbkit.errors import ModelError, UnsupportedOperatorError
from perturbkit.graph.ir import Shape
from perturbkit.ops.util import broadcast_shapes

Tensor = torch.Tensor
#: a runtime value (its name) or a constant (its tensor, declared shape, no leading dims)
Value = Union[str, Tensor]


class Emit(Protocol):
    """Where :func:`unroll` puts its nodes (the ONNX importer and the torch builder adapt to it)."""

    def node(self, op_type: str, inputs: Sequence[str], attrs: Optional[Mapping[str, Any]] = None,
             *, hint: str = "") -> str:
        """Emit one node; returns its output value name (its shape follows from its rule)."""

    def const(self, tensor: Tensor, hint: str) -> str:
        """Register a constant; returns its name."""

    def shape(self, value: str) -> Shape:
        """Declared shape of a value."""


# activation name (ONNX, case-insensitive) -> IR op type and its function on constants
ACTIVATIONS: dict[str, tuple[str, Callable[[Tensor], Tensor]]] = {
    "sigmoid": ("Sigmoid", torch.sigmoid),
    "tanh": ("Tanh", torch.tanh),
    "relu": ("Relu", torch.relu),
}
#: kind -> (number of gates, default activations)
KINDS: dict[str, tuple[int, tuple[str, ...]]] = {
    "LSTM": (4, ("Sigmoid", "Tanh", "Tanh")),
    "GRU": (3, ("Sigmoid", "Tanh")),
    "RNN": (1, ("Tanh",)),
}
DIRECTIONS = {"forward": (False,), "reverse": (True,), "bidirectional": (False, True)}


@dataclass(frozen=True)
class Recurrence:
    """What is unrolled (the ONNX attributes).

    ``activations``: ONNX names, per direction in order (forward first); empty = defaults.
    ``where``: location for error messages (node, file)."""

    kind: str
    hidden_size: int
    direction: str = "forward"
    layout: int = 0
    activations: tuple[str, ...] = ()
    linear_before_reset: bool = False
    where: str = ""


@dataclass(frozen=True)
class Weights:
    """Constant operands in ONNX layout (see the module docstring); None = absent (zeros)."""

    W: Tensor
    R: Tensor
    B: Optional[Tensor] = None
    P: Optional[Tensor] = None
    initial_h: Optional[Tensor] = None
    initial_c: Optional[Tensor] = None


def _zero(v: Value) -> bool:
    return isinstance(v, Tensor) and not bool(torch.any(v))


class _Ops:
    """Node arithmetic that computes on constants and skips zeros (so absent initial states
    and biases add no nodes)."""

    def __init__(self, emit: Emit):
        self.emit = emit
        self._consts: dict[int, tuple[Tensor, str]] = {}

    def name(self, v: Value) -> str:
        if isinstance(v, str):
            return v
        hit = self._consts.get(id(v))
        if hit is None or hit[0] is not v:
            hit = self._consts[id(v)] = (v, self.emit.const(v, "const"))
        return hit[1]

    def shape(self, v: Value) -> Shape:
        return tuple(v.shape) if isinstance(v, Tensor) else tuple(self.emit.shape(v))

    def _absorbs(self, a: Value, zero: Value) -> bool:
        """``zero`` is a zero constant that broadcasting against ``a`` leaves ``a``'s shape."""
        return _zero(zero) and broadcast_shapes(self.shape(a), self.shape(zero)) == self.shape(a)

    def node(self, op: str, vs: Sequence[Value], attrs: Optional[dict] = None, hint: str = "") -> str:
        return self.emit.node(op, [self.name(v) for v in vs], attrs or {}, hint=hint or op.lower())

    def add(self, a: Value, b: Value, hint: str = "") -> Value:
        if isinstance(a, Tensor) and isinstance(b, Tensor):
            return a + b
        return a if self._absorbs(a, b) else b if self._absorbs(b, a) else self.node("Add", [a, b], hint=hint)

    def sub(self, a: Value, b: Value, hint: str = "") -> Value:
        if isinstance(a, Tensor) and isinstance(b, Tensor):
            return a - b
        return a if self._absorbs(a, b) else self.node("Sub", [a, b], hint=hint)

    def mul(self, a: Value, b: Value, hint: str = "") -> Value:
        if isinstance(a, Tensor) and isinstance(b, Tensor):
            return a * b
        if _zero(a) or _zero(b):
            dtype = (a if isinstance(a, Tensor) else b).dtype
            return torch.zeros(broadcast_shapes(self.shape(a), self.shape(b)), dtype=dtype)
        return self.node("Mul", [a, b], hint=hint)

    def matmul(self, a: Value, W: Tensor, hint: str = "") -> Value:
        if isinstance(a, Tensor):
            return a @ W
        return self.node("MatMul", [a, W], hint=hint)

    def act(self, activation: str, a: Value, hint: str = "") -> Value:
        op, fn = ACTIVATIONS[activation.lower()]
        return fn(a) if isinstance(a, Tensor) else self.node(op, [a], hint=hint)

    def slice(self, a: Value, axes: Sequence[int], starts: Sequence[int], ends: Sequence[int], hint: str = "") -> Value:
        if isinstance(a, Tensor):
            for ax, s, e in zip(axes, starts, ends):
                a = a.narrow(ax, s, e - s)
            return a
        attrs = {"starts": list(starts), "ends": list(ends), "axes": list(axes), "steps": [1] * len(axes)}
        return self.node("Slice", [a], attrs, hint=hint)

    def concat(self, vs: Sequence[Value], axis: int, hint: str = "") -> Value:
        if len(vs) == 1:
            return vs[0]
        if all(isinstance(v, Tensor) for v in vs):
            return torch.cat(list(vs), dim=axis)
        return self.node("Concat", list(vs), {"axis": axis}, hint=hint)

    def reshape(self, a: Value, shape: Sequence[int], hint: str = "") -> Value:
        if isinstance(a, Tensor):
            return a.reshape(*shape)
        return self.node("Reshape", [a], {"shape": [int(d) for d in shape]}, hint=hint)


@dataclass(frozen=True)
class _Direction:
    """Constants of one direction, prepared once: ``Rt`` = R^T split by gate groups."""

    reverse: bool
    n: int
    acts: tuple[str, ...]
    Rt: Tensor                     # (n, G n)
    Rt_zr: Optional[Tensor]        # GRU: (n, 2n)
    Rt_h: Optional[Tensor]         # GRU: (n, n)
    Rb_h: Optional[Tensor]         # GRU, linear_before_reset: (n,)
    P: Optional[Tensor]            # LSTM: (3n,) or None when absent / zero
    lbr: bool


Pre = Callable[[int, int], Value]  # gate columns [lo, hi) of x_t W^T + b at this step


def _lstm_step(o: _Ops, pre: Pre, h: Value, c: Value, d: _Direction, tag: str) -> tuple[Value, Value]:
    n = d.n
    f_act, g_act, h_act = d.acts
    g = None if _zero(h) else o.add(pre(0, 4 * n), o.matmul(h, d.Rt, f"{tag}hR"), f"{tag}gates")
    gate = (lambda lo, hi: pre(lo, hi)) if g is None else (lambda lo, hi: o.slice(g, [2], [lo], [hi], f"{tag}g{lo}"))
    first = _zero(c)  # f_t * C vanishes: f_t is not computed
    if d.P is None:
        s = o.act(f_act, gate(0, 3 * n), f"{tag}iof")
        part = (lambda k, nm: o.slice(s, [2], [k * n], [(k + 1) * n], f"{tag}{nm}"))
        i, out = part(0, "i"), part(1, "o")
        f = None if first else part(2, "f")
    else:
        i = o.act(f_act, o.add(gate(0, n), o.mul(c, d.P[:n]), f"{tag}ipre"), f"{tag}i")
        f = None if first else o.act(f_act, o.add(gate(2 * n, 3 * n), o.mul(c, d.P[2 * n:]), f"{tag}fpre"),
                                      f"{tag}f")
    cc = o.act(g_act, gate(3 * n, 4 * n), f"{tag}c")
    ic = o.mul(i, cc, f"{tag}ic")
    c_new = ic if f is None else o.add(o.mul(f, c, f"{tag}fC"), ic, f"{tag}C")
    if d.P is not None:
        out = o.act(f_act, o.add(gate(n, 2 * n), o.mul(c_new, d.P[n:2 * n]), f"{tag}opre"), f"{tag}o")
    return o.mul(out, o.act(h_act, c_new, f"{tag}hC"), f"{tag}H"), c_new


def _gru_step(o: _Ops, pre: Pre, h: Value, c: Value, d: _Direction, tag: str) -> tuple[Value, Value]:
    n = d.n
    f_act, g_act = d.acts
    zr = o.act(f_act, o.add(pre(0, 2 * n), o.matmul(h, d.Rt_zr, f"{tag}hR"), f"{tag}zrpre"), f"{tag}zr")
    z = o.slice(zr, [2], [0], [n], f"{tag}z")
    r = (lambda: o.slice(zr, [2], [n], [2 * n], f"{tag}r"))
    if d.lbr:
        hr = o.add(o.matmul(h, d.Rt_h, f"{tag}hRh"), d.Rb_h, f"{tag}hRhb")
        gated = hr if _zero(hr) else o.mul(r(), hr, f"{tag}rh")
    else:
        gated = o.matmul(h if _zero(h) else o.mul(r(), h, f"{tag}rH"), d.Rt_h, f"{tag}rHR")
    hh = o.act(g_act, o.add(pre(2 * n, 3 * n), gated, f"{tag}hpre"), f"{tag}h")
    return o.sub(hh, o.mul(z, o.sub(hh, h, f"{tag}dh"), f"{tag}zdh"), f"{tag}H"), c


def _rnn_step(o: _Ops, pre: Pre, h: Value, c: Value, d: _Direction, tag: str) -> tuple[Value, Value]:
    return o.act(d.acts[0], o.add(pre(0, d.n), o.matmul(h, d.Rt, f"{tag}hR"), f"{tag}pre"), f"{tag}H"), c


STEPS: dict[str, Callable[..., tuple[Value, Value]]] = {"LSTM": _lstm_step, "GRU": _gru_step, "RNN": _rnn_step}


def _fail(spec: Recurrence, what: str, error: type = UnsupportedOperatorError) -> Exception:
    return error(f"{spec.kind} {what} at {spec.where}" if spec.where else f"{spec.kind} {what}")


def _activations(spec: Recurrence, n_dirs: int) -> list[tuple[str, ...]]:
    _, defaults = KINDS[spec.kind]
    acts = tuple(spec.activations) or defaults * n_dirs
    k = len(defaults)
    if len(acts) == k and n_dirs == 2:
        acts = acts * 2
    if len(acts) != k * n_dirs:
        raise _fail(spec, f"expects {k * n_dirs} activations, got {len(acts)} ({', '.join(acts)})", ModelError)
    for a in acts:
        if a.lower() not in ACTIVATIONS:
            raise _fail(spec, f"with activation '{a}' is not supported; supported: "
                              f"{', '.join(ACTIVATIONS[k][0] for k in ACTIVATIONS)}")
    return [acts[k * j:k * (j + 1)] for j in range(n_dirs)]


def unroll(emit: Emit, x: Value, spec: Recurrence, weights: Weights) -> dict[str, Value]:
    """Unroll one recurrent layer on the runtime value ``x`` (see the module docstring).

    Returns ``{"Y": ..., "Y_h": ...}`` (and ``"Y_c"`` for an LSTM): value names, or tensors
    where an output does not depend on ``x`` (never for a runtime ``x``).
    Raises UnsupportedOperatorError / ModelError naming ``spec.where``."""
    if spec.kind not in KINDS:
        raise _fail(spec, f"is not a recurrent kind; supported: {', '.join(KINDS)}")
    if spec.direction not in DIRECTIONS:
        raise _fail(spec, f"with direction '{spec.direction}' is not supported; supported: {', '.join(DIRECTIONS)}")
    if spec.layout not in (0, 1):
        raise _fail(spec, f"with layout {spec.layout} is not supported; supported: 0, 1")
    o = _Ops(emit)
    xs = o.shape(x)
    if len(xs) != 3:
        raise _fail(spec, f"input of shape {xs} is not supported; expected rank 3", ModelError)
    t_ax = spec.layout  # the sequence axis; the batch axis is the other of (0, 1)
    seq, batch, n_in = xs[t_ax], xs[1 - t_ax], xs[2]
    n, dirs = int(spec.hidden_size), DIRECTIONS[spec.direction]
    G, D = KINDS[spec.kind][0], len(dirs)
    state_shape = (1, batch, n) if t_ax == 0 else (batch, 1, n)
    init_shape = (D, batch, n) if t_ax == 0 else (batch, D, n)
    W, R = weights.W, weights.R
    expected = {"W": (D, G * n, n_in), "R": (D, G * n, n), "B": (D, 2 * G * n), "initial_h": init_shape,
                **({"P": (D, 3 * n), "initial_c": init_shape} if spec.kind == "LSTM" else {})}
    for what, shape in expected.items():
        t = getattr(weights, what)
        if t is not None and tuple(t.shape) != shape:
            raise _fail(spec, f"{what} has shape {tuple(t.shape)}, expected {shape}", ModelError)
    acts = _activations(spec, D)
    dt = W.dtype
    B = weights.B if weights.B is not None else torch.zeros(D, 2 * G * n, dtype=dt)
    lbr, gru = spec.kind == "GRU" and bool(spec.linear_before_reset), spec.kind == "GRU"
    directions, biases = [], []
    for j, reverse in enumerate(dirs):
        Wb, Rb = B[j, :G * n], B[j, G * n:]
        biases.append(Wb + (torch.cat([Rb[:2 * n], torch.zeros(n, dtype=dt)]) if lbr else Rb))
        Rt = R[j].t().contiguous()
        P = weights.P[j] if "P" in expected and weights.P is not None and bool(torch.any(weights.P[j])) else None
        directions.append(_Direction(
            reverse=reverse, n=n, acts=acts[j], Rt=Rt, P=P, lbr=lbr, Rb_h=Rb[2 * n:].clone() if lbr else None,
            Rt_zr=Rt[:, :2 * n].contiguous() if gru else None, Rt_h=Rt[:, 2 * n:].contiguous() if gru else None))

    # x_t W^T + b for every step and direction: one MatMul, one Add
    Wt = torch.cat([W[j].t() for j in range(D)], dim=1).contiguous()
    xw = o.add(o.matmul(x, Wt, "xW"), torch.cat(biases), "xWb")

    def initial(t: Optional[Tensor], j: int) -> Tensor:
        if t is None:
            return torch.zeros(state_shape, dtype=dt)
        return t.narrow(t_ax, j, 1).to(dt)

    step_fn = STEPS[spec.kind]
    ys: list[list[Value]] = [[None] * D for _ in range(seq)]  # type: ignore[list-item]
    last_h, last_c = [], []
    for j, d in enumerate(directions):
        h, c = initial(weights.initial_h, j), initial(weights.initial_c, j)
        for t in (reversed(range(seq)) if d.reverse else range(seq)):
            tag = f"{'b' if d.reverse else ''}t{t}."
            col = j * G * n

            def pre(lo: int, hi: int, t: int = t, col: int = col, tag: str = tag) -> Value:
                return o.slice(xw, [t_ax, 2], [t, col + lo], [t + 1, col + hi], f"{tag}x{lo}")

            h, c = step_fn(o, pre, h, c, d, tag)
            ys[t][j] = h
        last_h.append(h)
        last_c.append(c)

    Y = o.concat([ys[t][j] for t in range(seq) for j in range(D)], t_ax, "Yseq")
    Y = o.reshape(Y, (seq, D, batch, n) if t_ax == 0 else (batch, seq, D, n), "Y")
    out = {"Y": Y, "Y_h": o.concat(last_h, t_ax, "Y_h")}
    if spec.kind == "LSTM":
        out["Y_c"] = o.concat(last_c, t_ax, "Y_c")
    return out
