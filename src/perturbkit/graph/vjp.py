"""Input gradients of a :class:`~perturbkit.graph.network.Network` without autograd.

Attacks need ``d <v, f(x)> / dx`` for a batch of inputs thousands of times, on networks
that are often small.  PyTorch's autograd pays for recording a graph on every call, and
oneDNN's transposed convolution is several times slower than the forward convolution for
layers with few channels (an image's first layers).  :class:`GradientProgram` runs the
network's forward rules once (the same tensor operations as the interpreter, so the
outputs are identical), keeps what each node's derivative needs, and pulls a cotangent
back node by node (reverse topological order):

* affine nodes with one runtime input (Gemm, MatMul, Conv, Reshape, Flatten, BatchNorm,
  Pad, Slice, Transpose, pooling by averaging, ...) and Add/Sub/Concat of runtime values:
  the rule's own ``backward`` (the transpose of its linear part, the same function CROWN
  uses), so no operator needs a second implementation;
* Gemm / MatMul with a constant matrix: one product with that matrix, cached contiguous;
* Conv on the CPU with few channels, strided or with few input channels
  (:func:`~perturbkit.graph.conv_transpose.takes_fast_transpose`): the transpose as a
  dense product with the kernel (giving every kernel tap's contribution) followed by a
  sparse 0/1 scatter-add of the taps onto the input positions
  (:class:`~perturbkit.graph.conv_transpose.ConvTranspose`);
* Relu / LeakyRelu: the mask of the pre-activation (autograd's convention: Relu's
  derivative at 0 is 0, LeakyRelu's is 1);
* every other node (Sigmoid, MaxPool, Mul of two runtime values, execute-only ops, ...):
  autograd on that node alone (its forward records the node's own small graph), so the
  program covers every graph autograd covers.

The result equals autograd's gradient of the same forward function up to float rounding
(tested on every operator's conformance cases, the bundled models and the shared
VNN-COMP networks' kinds of layers in ``tests/graph/test_vjp.py``).

Shapes: ``x`` is the network's internal input ``(B, *declared_input_shape)``; the
cotangent and the output ``(B, *declared_output_shape)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from perturbkit.errors import ModelError, PerturbkitError
from perturbkit.graph.conv_transpose import ConvTranspose, takes_fast_transpose
from perturbkit.graph.interpret import run_node
from perturbkit.graph.ir import Node
from perturbkit.ops.base import AffineRule
from perturbkit.ops.registry import rule_for
from perturbkit.ops.reshape import ReshapeLike

Tensor = torch.Tensor


#: affine ops that are linear jointly in several runtime inputs (others with two runtime
#: inputs, e.g. Mul, are products and take the autograd path)
_JOINTLY_LINEAR = frozenset({"Add", "Sub", "Concat"})


@dataclass
class _Step:
    node: Node
    rule: object
    kind: str                   # "constant", "relu", "leaky", "reshape", "dense", "conv", "affine", "autograd"
    runtime: tuple[bool, ...]   # per input: a runtime (input-dependent, floating) value
    index: int = 0              # position in the program


class Tape:
    """What a forward pass left for its pull-back: the saved inputs of each step (and, made
    on first use, Relu pre-activations in the column layout of :class:`_Cols`)."""

    __slots__ = ("saved", "batch", "dtype", "device", "cols")

    def __init__(self, batch: int, dtype: torch.dtype, device: torch.device):
        self.saved: dict[int, list] = {}
        self.cols: dict[int, Tensor] = {}
        self.batch, self.dtype, self.device = batch, dtype, device


class _Cols:
    """A cotangent ``(B, *shape)`` stored transposed, as a contiguous ``(prod(shape), B)``
    matrix: the layout a sparse matrix product takes and gives.  Between two sparse Conv
    steps (with Relus in between) the cotangent stays in it, so no transposes are made."""

    __slots__ = ("m", "shape")

    def __init__(self, m: Tensor, shape: tuple[int, ...]):
        self.m, self.shape = m, shape

    def rows(self) -> Tensor:
        return self.m.t().reshape(self.m.shape[1], *self.shape)


def _rows(A) -> Tensor:
    return A.rows() if isinstance(A, _Cols) else A


class GradientProgram:
    """Forward pass and reverse-mode pull-back of a Network (see the module docstring).

    Build once per network (:meth:`for_network` caches it on the network); then
    ``z, tape = prog.forward(x)`` and ``dx = prog.pullback(tape, dz)``, as often as needed
    (a tape may be pulled back several times, e.g. once per logit).
    """

    def __init__(self, net):
        self.net = net
        g = net.graph
        self.graph = g
        consts = g.constants
        runtime_vals = {g.input_name}
        steps: list[_Step] = []
        for node in g.nodes:
            rule = rule_for(node, g.source)
            runtime = tuple(i in runtime_vals for i in node.inputs)
            if any(runtime):
                runtime_vals.add(node.output)
            n_rt = sum(runtime)
            if not n_rt:
                kind = "constant"
            elif node.op_type == "Relu":
                kind = "relu"
            elif node.op_type == "LeakyRelu":
                kind = "leaky"
            elif isinstance(rule, ReshapeLike) and runtime[0] and n_rt == 1:
                kind = "reshape"
            elif _dense_operand(node, runtime, consts) is not None:
                kind = "dense"
            elif isinstance(rule, AffineRule) and (n_rt == 1 or node.op_type in _JOINTLY_LINEAR) \
                    and all(i in consts for i, r in zip(node.inputs, runtime) if not r):
                kind = "conv" if node.op_type == "Conv" else "affine"
            else:
                kind = "autograd"
            steps.append(_Step(node, rule, kind, runtime, index=len(steps)))
        self.steps = steps
        #: value name -> indices of the steps that read it
        self._consumers: dict[str, list[int]] = {}
        for st in steps:
            for i in set(st.node.inputs):
                self._consumers.setdefault(i, []).append(st.index)
        self._conv: dict[tuple, Optional[ConvTranspose]] = {}
        self._dense: dict[tuple, Tensor] = {}
        self._gemm: dict[tuple, tuple] = {}

    @staticmethod
    def for_network(net) -> "GradientProgram":
        """The network's program, built on first use and kept in ``net.derived``."""
        prog = net.derived.get("gradient_program")
        if prog is None:
            prog = net.derived["gradient_program"] = GradientProgram(net)
        return prog

    # -- forward ------------------------------------------------------------------------
    def forward(self, x: Tensor) -> tuple[Tensor, Tape]:
        """Output ``(B, *declared_output_shape)`` at ``x`` ``(B, *declared_input_shape)``."""
        g = self.graph
        consts = self.net.constants(x.dtype, x.device)
        env: dict[str, Tensor] = {g.input_name: x}
        tape = Tape(x.shape[0], x.dtype, x.device)
        with torch.no_grad():
            for k, st in enumerate(self.steps):
                node = st.node
                kind = st.kind
                # the three commonest nodes without the rule's argument handling (the same
                # tensor operations as the rule's forward, so the outputs are identical)
                if kind == "relu":
                    xr = env[node.inputs[0]]
                    tape.saved[k] = [xr]
                    env[node.output] = torch.relu(xr)
                    continue
                if kind == "reshape":
                    xr = env[node.inputs[0]]
                    env[node.output] = xr.reshape(xr.shape[0], *node.out_shape)
                    continue
                if kind == "dense" and node.op_type == "Gemm":
                    W, b = self._gemm_operands(st, consts)
                    env[node.output] = st.rule.apply(env[node.inputs[0]], W, b)
                    continue
                args = [consts[i] if i in consts else env[i] for i in node.inputs]
                if kind == "autograd":  # record this node's autograd graph for the pull-back
                    args = [a.detach().requires_grad_(True) if r and a.is_floating_point() else a
                            for a, r in zip(args, st.runtime)]
                    with torch.enable_grad():
                        out = run_node(node, st.rule, args, g.source)
                    tape.saved[k] = [args, out]
                    env[node.output] = out.detach()
                    continue
                env[node.output] = run_node(node, st.rule, args, g.source)
                if kind == "leaky":
                    tape.saved[k] = args
        return env[g.output_name], tape

    # -- pull-back ----------------------------------------------------------------------
    def pullback(self, tape: Tape, dz: Tensor) -> Tensor:
        """``d <dz, f(x)> / dx`` for the ``x`` of ``tape``: ``(B, *declared_input_shape)``."""
        g = self.graph
        consts = self.net.constants(tape.dtype, tape.device)
        cot: dict[str, Tensor] = {g.output_name: dz}
        for k in range(len(self.steps) - 1, -1, -1):
            st = self.steps[k]
            node = st.node
            A = cot.pop(node.output, None)
            if A is None or st.kind == "constant":
                continue
            try:
                outs = self._step_back(st, A, tape, k, consts)
            except PerturbkitError:
                raise
            except Exception as e:  # noqa: BLE001 - re-raised with the location
                raise ModelError(f"while differentiating {node.where(g.source)}: {type(e).__name__}: {e}") from e
            for name, r, Ai in zip(node.inputs, st.runtime, outs):
                if not r or Ai is None:
                    continue
                prev = cot.get(name)
                cot[name] = Ai if prev is None else _rows(prev) + _rows(Ai)
        dx = cot.get(g.input_name)
        if dx is None:  # the output does not depend on the input
            dx = torch.zeros(tape.batch, *g.input_shape, dtype=tape.dtype, device=tape.device)
        return _rows(dx)

    def _step_back(self, st: _Step, A, tape: Tape, k: int, consts) -> list:
        node = st.node
        saved = tape.saved.get(k)
        if st.kind == "relu":
            if isinstance(A, _Cols):
                pre = tape.cols.get(k)
                if pre is None:
                    pre = tape.cols[k] = saved[0].reshape(tape.batch, -1).t().contiguous()
                return [_Cols(torch.ops.aten.threshold_backward(A.m, pre, 0), A.shape)] + [None] * (len(node.inputs) - 1)
            return [torch.ops.aten.threshold_backward(A, saved[0], 0)] + [None] * (len(node.inputs) - 1)
        if st.kind == "conv":
            plan = self._conv_plan(st, consts[node.inputs[1]], tape)
            if plan is not None:
                At = A.m if isinstance(A, _Cols) else A.reshape(tape.batch, -1).t().contiguous()
                return [_Cols(plan(At), tuple(node.in_shapes[0]))] + [None] * (len(node.inputs) - 1)
        if st.kind == "reshape":
            if isinstance(A, _Cols):  # a reshape keeps the flattened order: the columns stay
                return [_Cols(A.m, tuple(node.in_shapes[0]))] + [None] * (len(node.inputs) - 1)
            return [A.reshape(A.shape[0], *node.in_shapes[0])] + [None] * (len(node.inputs) - 1)
        A = _rows(A)
        if st.kind == "leaky":
            a = float(node.attrs.get("alpha", 0.01))
            return [torch.where(saved[0] >= 0, A, a * A)] + [None] * (len(node.inputs) - 1)
        if st.kind == "dense":
            W = self._dense_matrix(st, consts)
            lead = A.shape[:A.dim() - len(node.out_shape)]
            Ax = A.reshape(-1, W.shape[0]) @ W
            return [Ax.reshape(*lead, *node.in_shapes[0])] + [None] * (len(node.inputs) - 1)
        if st.kind in ("affine", "conv"):
            xs = [None if r else consts[i] for i, r in zip(node.inputs, st.runtime)]
            return list(st.rule.backward(node, A, *xs))
        # autograd on this node alone, through the graph its forward recorded (kept for
        # further pull-backs of the same tape)
        args, out = saved
        if not out.requires_grad:
            return [None] * len(args)
        wrt = [a for a in args if isinstance(a, Tensor) and a.requires_grad]
        grads = torch.autograd.grad(out, wrt, A, allow_unused=True, retain_graph=True)
        it = iter(grads)
        return [next(it) if isinstance(a, Tensor) and a.requires_grad else None for a in args]

    def _gemm_operands(self, st: _Step, consts) -> tuple:
        """A Gemm node's weight and bias as its rule prepares them (per dtype and device)."""
        node = st.node
        some = consts[node.inputs[1]]
        key = (st.index, some.dtype, some.device)
        got = self._gemm.get(key)
        if got is None:
            xs = [None if r else consts[i] for i, r in zip(node.inputs, st.runtime)]
            got = self._gemm[key] = (st.rule._weight(node, xs), st.rule._bias(node, xs))
        return got

    def _dense_matrix(self, st: _Step, consts) -> Tensor:
        """Gemm / MatMul with a constant matrix: ``W_eff (n, k)``, contiguous, with the node's
        linear part ``x @ W_eff^T`` on the last axis (per dtype and device)."""
        node = st.node
        some = consts[node.inputs[1]]
        key = (st.index, some.dtype, some.device)
        W = self._dense.get(key)
        if W is None:
            W = self._dense[key] = _dense_operand(node, st.runtime, consts).contiguous()
        return W

    def _conv_plan(self, st: _Step, W: Tensor, tape: Tape) -> Optional["ConvTranspose"]:
        """The Conv node's fast transpose for this dtype and device, or None where the rule's
        transposed convolution is used (see :func:`takes_fast_transpose`)."""
        key = (st.index, tape.dtype, tape.device)
        if key not in self._conv:
            plan = None
            if self._takes_fast(st, tape.dtype, tape.device):
                plan = ConvTranspose(st.node, W.to(tape.dtype), int(st.node.attrs.get("group", 1)))
            self._conv[key] = plan
        return self._conv[key]

    def _takes_fast(self, st: _Step, dtype: torch.dtype, device: torch.device) -> bool:
        W = self.graph.constants[st.node.inputs[1]]
        return takes_fast_transpose(st.node, W, dtype, device, columns_in=self._columns_in(st, dtype, device))

    def _columns_in(self, st: _Step, dtype: torch.dtype, device: torch.device) -> bool:
        """Whether the cotangent of this Conv step's output arrives in the column layout: its
        only reader, through Relus and reshapes with one reader each, is a Conv that takes
        the fast transpose.  Decided from the graph alone (no timing), so runs repeat."""
        v = st.node.output
        while True:
            readers = self._consumers.get(v, [])
            if len(readers) != 1 or v == self.graph.output_name:
                return False
            nxt = self.steps[readers[0]]
            if nxt.kind in ("relu", "reshape") and nxt.node.inputs[0] == v:
                v = nxt.node.output
                continue
            return (nxt.kind == "conv" and nxt.node.inputs[0] == v and nxt.node.inputs.count(v) == 1
                    and self._takes_fast(nxt, dtype, device))


def _dense_operand(node: Node, runtime: tuple[bool, ...], consts) -> Optional[Tensor]:
    """For a Gemm (no transA) or a MatMul ``X @ W`` with a constant 2-D ``W``, acting on the
    last axis of its runtime input: ``W_eff (n, k)`` with linear part ``x @ W_eff^T``; else None."""
    if node.op_type not in ("Gemm", "MatMul") or len(node.inputs) < 2 or not runtime[0] or any(runtime[1:]) \
            or any(i not in consts for i in node.inputs[1:]):
        return None
    W = consts[node.inputs[1]]
    if W.dim() != 2 or len(node.in_shapes[0]) < (1 if node.op_type == "Gemm" else 2):
        return None
    if node.op_type == "Gemm" and not node.attrs.get("transA", 0):
        return (W if node.attrs.get("transB", 0) else W.t()) * float(node.attrs.get("alpha", 1.0))
    if node.op_type == "MatMul" and len(node.inputs) == 2:
        return W.t()
    return None


def input_gradient(net, x: Tensor, dz: Tensor) -> tuple[Tensor, Tensor]:
    """Convenience: ``(f(x), d <dz, f(x)> / dx)`` for user-shaped ``x`` (B, *sample_shape)
    and ``dz`` (B, *output_sample_shape)."""
    prog = GradientProgram.for_network(net)
    b = net.batch(x)
    z, tape = prog.forward(net.internal(x, b))
    dx = prog.pullback(tape, dz.reshape(z.shape))
    return z.reshape(b, *net.output_sample_shape), dx.reshape(x.shape)


__all__ = ["GradientProgram", "Tape", "input_gradient"]
