"""Pattern fusions: decomposed spellings of one operator folded back into that operator.

Exporters and hand-written modules spell some functions out in primitive operators (GELU
as ``0.5 * x * (1 + erf(x / sqrt(2)))``, SiLU as ``x * sigmoid(x)``).  Bounding the
spelled-out form relaxes each piece on its own (a product of two perturbed values), which is
much looser than one relaxation of the whole function, so :func:`fuse` rewrites each
recognised pattern into the single operator before lowering (:mod:`perturbkit.graph.lower`).

A fusion is a function ``(graph, node, index) -> Optional[Fusion]`` tried at every node
(``index``: the graph's helper maps); it matches only when every matched value other than
the final one has no other consumer, and every constant in the pattern has the exact value
the function needs (up to :data:`ULPS` float32 ulps: exporters store ``sqrt(2)``,
``sqrt(2 / pi)``, ... rounded to float32).  ``FUSIONS`` is the table, tried in order:

* ``LayerNormalization`` (attrs ``axis``, ``epsilon``; inputs X, Scale, B) from
  ``(x - mean(x)) / sqrt(mean((x - mean(x))^2) + eps) * scale + bias`` over trailing axes
  (ReduceMean, Sub, Pow 2 or a self-product, ReduceMean, Add eps, Sqrt, Div; or the
  division written as a product with Reciprocal(Sqrt) or Pow(-0.5)); scale and bias
  optional (ones and zeros then);
* ``Gelu`` (attr ``approximate``): ``0.5 x (1 + erf(x / sqrt(2)))`` ("none") and
  ``0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))`` ("tanh");
* ``Swish`` (attr ``alpha``): ``x * sigmoid(alpha x)`` (SiLU: alpha 1);
* ``MaskedSoftmax`` (attr ``axis``; inputs x, a constant additive mask): ``Softmax(x + M)`` or
  ``Softmax(Where(C, x, F))`` (``masked_fill``) where some mask entries are at most
  :data:`perturbkit.ops.softmax.MASKED` (``-inf`` in exported attention masks): bounded with
  those entries dropped exactly, where the plain decomposition would meet ``-inf - -inf``;
* ``Conv`` from ``BatchNormalization(Conv(x))`` (inference mode, constant parameters): the
  statistics folded into the weight and bias, as the ONNX exporter does;
* ``MatMul`` of softmax weights (last axis) by values gets ``stochastic_rows=1``: its
  interval is intersected with the range of convex combinations of the values' rows.

GELU and Swish are recognised by value, not by spelling: the final node's value and the
gate's argument are expanded into polynomials in their atoms (:mod:`perturbkit.graph.polynomial`),
so every order and grouping the exporters emit is matched; the polynomials must equal the
function's (coefficients to ``ULPS``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable, Mapping, Optional

import torch

from perturbkit.graph.ir import Graph, Node, frozen_attrs
from perturbkit.graph.polynomial import Expansion, Poly, atoms, scalar
from perturbkit.ops.reduce import reduce_axes


@dataclass(frozen=True)
class Index:
    """Lookups a pattern needs: producer of each value and the number of its consumers."""

    graph: Graph
    producer: dict[str, Node]
    n_consumers: dict[str, int]

    def single_use(self, value: str) -> bool:
        return self.n_consumers.get(value, 0) == 1 and value != self.graph.output_name


@dataclass(frozen=True)
class Fusion:
    """``replaced``: names of the nodes the pattern matched (the final one included);
    ``node``: the fused node, producing the final node's output; ``constants``: new
    constants it reads (e.g. LayerNormalization's unit scale when the pattern has none)."""

    replaced: frozenset[str]
    node: Node
    constants: Mapping[str, torch.Tensor] = field(default_factory=lambda: MappingProxyType({}))


Pattern = Callable[[Graph, Node, Index], Optional[Fusion]]

#: tolerance on the pattern constants, in float32 ulps (relative 2**-23 each)
ULPS = 4.0


def _index(graph: Graph) -> Index:
    count: dict[str, int] = {}
    for n in graph.nodes:
        for i in n.inputs:
            count[i] = count.get(i, 0) + 1
    return Index(graph, graph.producer(), count)


def fuse(graph: Graph) -> Graph:
    """The graph with every matched pattern replaced by its fused node."""
    if not FUSIONS:
        return graph
    idx = _index(graph)
    replaced: set[str] = set()
    fused: dict[str, Node] = {}  # name of the final node -> fused node
    new_consts: dict[str, torch.Tensor] = {}
    for node in reversed(graph.nodes):
        if node.name in replaced:
            continue
        for pattern in FUSIONS:
            f = pattern(graph, node, idx)
            if f is not None and not (f.replaced & replaced):
                replaced |= f.replaced
                fused[node.name] = f.node
                new_consts.update(f.constants)
                break
    if not fused:
        return graph
    nodes = tuple(fused.get(n.name, n) for n in graph.nodes if n.name not in replaced or n.name in fused)
    used = {i for n in nodes for i in n.inputs}
    outs = {n.output for n in nodes}
    consts = {**graph.constants, **new_consts}
    return Graph(nodes=nodes, input_name=graph.input_name, output_name=graph.output_name,
                 shapes={k: v for k, v in graph.shapes.items() if k in outs or k == graph.input_name},
                 constants={k: v for k, v in consts.items() if k in used}, source=graph.source)


# -- helpers ---------------------------------------------------------------------------------
def _close(value: float, target: float) -> bool:
    return abs(value - target) <= ULPS * 2.0 ** -23 * abs(target)


def _closed(idx: Index, nodes: list[Node], final: Node) -> bool:
    """Every matched value but the final one is read by matched nodes only."""
    names = {n.name for n in nodes} | {final.name}
    consumers = idx.graph.consumers()
    for n in nodes:
        if n.name == final.name:
            continue
        if n.output == idx.graph.output_name or any(c.name not in names for c in consumers.get(n.output, [])):
            return False
    return True


def _shape(graph: Graph, value: str) -> tuple[int, ...]:
    return tuple(graph.constants[value].shape) if value in graph.constants else tuple(graph.shapes[value])


def _fused(final: Node, op_type: str, inputs: tuple[str, ...], attrs: dict, graph: Graph,
           nodes: list[Node], consts: Optional[dict[str, torch.Tensor]] = None) -> Fusion:
    consts = consts or {}
    in_shapes = tuple(tuple(consts[i].shape) if i in consts else _shape(graph, i) for i in inputs)
    node = Node(name=final.name, op_type=op_type, inputs=inputs, output=final.output, attrs=frozen_attrs(attrs),
                in_shapes=in_shapes, out_shape=final.out_shape)
    return Fusion(frozenset(n.name for n in nodes) | {final.name}, node, MappingProxyType(consts))


def _same(p: Poly, q: Poly) -> bool:
    return p.keys() == q.keys() and all(_close(p[m], q[m]) for m in q)


def _gate(idx: Index, node: Node, gates: tuple[str, ...]):
    """``node`` written as ``x * (c0 + c1 * g)`` polynomially, ``g`` the output of one of
    ``gates``: returns ``(x, gate node, poly, expansion)`` or None."""
    if node.op_type not in ("Mul", "Add"):
        return None
    ex = Expansion(idx)
    p = ex.expand(node.output, root=True)
    if not p or len(atoms(p)) > 2:
        return None
    gate = [idx.producer[a] for a in atoms(p) if a in idx.producer and idx.producer[a].op_type in gates]
    rest = [a for a in atoms(p) if a not in {g.output for g in gate}]
    if len(gate) != 1 or len(rest) > 1:
        return None
    x = rest[0] if rest else gate[0].inputs[0]
    return x, gate[0], p, ex


def _argument(idx: Index, gate: Node) -> tuple[Optional[Poly], list[Node]]:
    ex = Expansion(idx)
    return ex.expand(gate.inputs[0]), ex.nodes


_GELU_TANH_A = math.sqrt(2.0 / math.pi)
_GELU_TANH_B = 0.044715


def _fuse_gelu(graph: Graph, node: Node, idx: Index) -> Optional[Fusion]:
    m = _gate(idx, node, ("Erf", "Tanh"))
    if m is None:
        return None
    x, gate, p, ex = m
    xg = tuple(sorted(((x, 1), (gate.output, 1))))
    if not _same(p, {((x, 1),): 0.5, xg: 0.5}) or x in graph.constants or _shape(graph, x) != node.out_shape:
        return None
    arg, arg_nodes = _argument(idx, gate)
    if gate.op_type == "Erf":
        want, approximate = {((x, 1),): 1.0 / math.sqrt(2.0)}, "none"
    else:
        want, approximate = {((x, 1),): _GELU_TANH_A, ((x, 3),): _GELU_TANH_A * _GELU_TANH_B}, "tanh"
    nodes = ex.nodes + [gate] + arg_nodes
    if arg is None or not _same(arg, want) or not _closed(idx, nodes, node):
        return None
    return _fused(node, "Gelu", (x,), {"approximate": approximate}, graph, nodes)


def _fuse_swish(graph: Graph, node: Node, idx: Index) -> Optional[Fusion]:
    m = _gate(idx, node, ("Sigmoid",))
    if m is None:
        return None
    x, gate, p, ex = m
    if not _same(p, {tuple(sorted(((x, 1), (gate.output, 1)))): 1.0}) or x in graph.constants:
        return None
    arg, arg_nodes = _argument(idx, gate)
    nodes = ex.nodes + [gate] + arg_nodes
    if arg is None or set(arg) != {((x, 1),)} or _shape(graph, x) != node.out_shape or not _closed(idx, nodes, node):
        return None
    return _fused(node, "Swish", (x,), {"alpha": float(arg[((x, 1),)])}, graph, nodes)


# -- LayerNormalization ------------------------------------------------------------------------
def _op(idx: Index, value: str, *ops: str) -> Optional[Node]:
    n = idx.producer.get(value)
    return n if n is not None and n.op_type in ops else None


def _with_const(idx: Index, node: Node) -> Optional[tuple[str, str]]:
    """``(runtime input, constant input)`` of a binary node with exactly one constant."""
    a, b = node.inputs
    ca, cb = a in idx.graph.constants, b in idx.graph.constants
    return (b, a) if ca and not cb else (a, b) if cb and not ca else None


def _mean_of(idx: Index, value: str, x: Optional[str] = None) -> Optional[tuple[Node, list[int]]]:
    """``value = ReduceMean(x, axes, keepdims=1)``: the node and its axes."""
    n = _op(idx, value, "ReduceMean")
    if n is None or (x is not None and n.inputs[0] != x) or not int(n.attrs.get("keepdims", 1)):
        return None
    axes = reduce_axes(n)
    return (n, axes) if axes else None


def _centred(idx: Index, value: str) -> Optional[tuple[str, list[int], list[Node]]]:
    """``value = x - ReduceMean(x)``: ``(x, axes, nodes)``."""
    sub = _op(idx, value, "Sub")
    if sub is None:
        return None
    x = sub.inputs[0]
    m = _mean_of(idx, sub.inputs[1], x)
    return None if m is None else (x, m[1], [sub, m[0]])


def _inverse_std(idx: Index, node: Node, d: str) -> Optional[tuple[str, list[Node]]]:
    """``node`` is ``d / sqrt(e)``, ``d * Reciprocal(Sqrt(e))`` or ``d * Pow(e, -0.5)``: ``(e, nodes)``."""
    if node.op_type == "Div" and node.inputs[0] == d:
        s = _op(idx, node.inputs[1], "Sqrt", "Pow")
        if s is not None and (s.op_type == "Sqrt" or scalar(idx, s.inputs[1]) == 0.5):
            return s.inputs[0], [s]
        return None
    if node.op_type != "Mul" or d not in node.inputs:
        return None
    other = node.inputs[1] if node.inputs[0] == d else node.inputs[0]
    p = _op(idx, other, "Pow")
    if p is not None and scalar(idx, p.inputs[1]) == -0.5:
        return p.inputs[0], [p]
    r = _op(idx, other, "Reciprocal")
    s = _op(idx, r.inputs[0], "Sqrt") if r is not None else None
    return (s.inputs[0], [r, s]) if s is not None else None


def _variance(idx: Index, value: str, x: str, axes: list[int], d: str) -> Optional[tuple[float, list[Node]]]:
    """``value = ReduceMean((x - mean x)^2) + eps`` over ``axes``: ``(eps, nodes)``."""
    add = _op(idx, value, "Add")
    split = _with_const(idx, add) if add is not None else None
    eps = scalar(idx, split[1]) if split is not None else None
    if eps is None or eps < 0:
        return None
    v = _mean_of(idx, split[0])
    if v is None or v[1] != axes:
        return None
    sq = idx.producer.get(v[0].inputs[0])
    if sq is None or not ((sq.op_type == "Pow" and scalar(idx, sq.inputs[1]) == 2.0)
                          or (sq.op_type == "Mul" and sq.inputs[0] == sq.inputs[1])):
        return None
    nodes = [add, v[0], sq]
    if sq.inputs[0] != d:  # the centring may be computed a second time
        c = _centred(idx, sq.inputs[0])
        if c is None or c[0] != x or c[1] != axes:
            return None
        nodes += c[2]
    return eps, nodes


def _param(t: torch.Tensor, norm_shape: tuple[int, ...]) -> Optional[torch.Tensor]:
    """A scale/bias constant as a tensor of the normalised shape, if it only varies there."""
    n = len(norm_shape)
    if t.dim() > n:
        if any(d != 1 for d in t.shape[:t.dim() - n]):
            return None
        t = t.reshape(t.shape[t.dim() - n:])
    if not t.is_floating_point():
        return None
    try:
        return t.expand(norm_shape).clone()
    except RuntimeError:
        return None


def _fresh(graph: Graph, base: str) -> str:
    name, k = base, 1
    while name in graph.constants or name in graph.shapes:
        k += 1
        name = f"{base}.{k}"
    return name


def _fuse_layer_norm(graph: Graph, node: Node, idx: Index) -> Optional[Fusion]:
    if node.op_type not in ("Add", "Mul", "Div"):
        return None
    nodes: list[Node] = []
    params: dict[str, str] = {}
    top = node
    for role, op in (("bias", "Add"), ("scale", "Mul")):  # the optional affine tail, peeled off
        split = _with_const(idx, top) if top.op_type == op else None
        inner = _op(idx, split[0], "Mul", "Div") if split is not None else None
        if inner is not None:
            params[role] = split[1]
            nodes.append(top)
            top = inner
    if top is not node:
        nodes.append(top)
    d = next((i for i in top.inputs if _centred(idx, i) is not None), None)
    if d is None:
        return None
    x, axes, c_nodes = _centred(idx, d)
    inv = _inverse_std(idx, top, d)
    var = _variance(idx, inv[0], x, axes, d) if inv is not None else None
    if var is None or x in graph.constants:
        return None
    shape = _shape(graph, x)
    r = len(shape)
    if axes != list(range(r - len(axes), r)) or node.out_shape != shape:
        return None
    nodes += c_nodes + inv[1] + var[1]
    if not _closed(idx, nodes, node):
        return None
    norm = shape[r - len(axes):]
    dtype = next((graph.constants[v].dtype for v in params.values()), torch.float32)
    values = {"scale": torch.ones(norm, dtype=dtype), "bias": torch.zeros(norm, dtype=dtype)}
    for role, value in params.items():
        t = _param(graph.constants[value], norm)
        if t is None:
            return None
        values[role] = t
    names = {role: _fresh(graph, f"{node.output}/{role}") for role in values}
    consts = {names[role]: values[role] for role in values}
    attrs = {"axis": -len(axes), "epsilon": var[0]}
    return _fused(node, "LayerNormalization", (x, names["scale"], names["bias"]), attrs, graph, nodes, consts)


# -- masked softmax ---------------------------------------------------------------------------
def _fuse_masked_softmax(graph: Graph, node: Node, idx: Index) -> Optional[Fusion]:
    from perturbkit.ops.softmax import MASKED

    if node.op_type != "Softmax":
        return None
    inner = _op(idx, node.inputs[0], "Add", "Where")
    if inner is None or not idx.single_use(inner.output):
        return None
    shape = _shape(graph, inner.output)
    if inner.op_type == "Add":
        split = _with_const(idx, inner)
        if split is None:
            return None
        x, m = split[0], graph.constants[split[1]]
        mask = torch.broadcast_to(m.to(torch.float64), shape) if m.is_floating_point() else None
    else:  # Where(C, a, b): one branch the runtime value, the other a constant fill
        c, a, b = inner.inputs
        if c not in graph.constants or (a in graph.constants) == (b in graph.constants):
            return None
        cond = torch.broadcast_to(graph.constants[c].bool(), shape)
        x, fill = (a, graph.constants[b]) if b in graph.constants else (b, graph.constants[a])
        filled = ~cond if b in graph.constants else cond  # where the fill is taken
        fill = torch.broadcast_to(fill.to(torch.float64), shape)
        mask = torch.where(filled, torch.where(fill <= MASKED, -math.inf, math.nan), 0.0)
        if bool(torch.isnan(mask).any()):  # a fill that is not a mask: Where stays affine
            return None
    if mask is None or _shape(graph, x) != shape or not bool((mask <= MASKED).any()):
        return None
    name = _fresh(graph, f"{node.output}/mask")
    return _fused(node, "MaskedSoftmax", (x, name), dict(node.attrs), graph, [inner], {name: mask})


# -- attention weights times values ---------------------------------------------------------------
def _mark_stochastic_rows(graph: Graph, node: Node, idx: Index) -> Optional[Fusion]:
    """``MatMul(softmax(s, axis=-1), v)``: the left rows are probability vectors (an attribute
    the interval of BilinearMatMul uses); Identity/Dropout in between are looked through."""
    if node.op_type != "MatMul" or node.attrs.get("stochastic_rows") or len(_shape(graph, node.inputs[0])) < 2:
        return None
    p = _op(idx, node.inputs[0], "Softmax", "MaskedSoftmax", "Identity", "Dropout")
    while p is not None and p.op_type in ("Identity", "Dropout"):
        p = _op(idx, p.inputs[0], "Softmax", "MaskedSoftmax", "Identity", "Dropout")
    if p is None:
        return None
    rank = len(_shape(graph, p.inputs[0]))
    if int(p.attrs.get("axis", -1)) % rank != rank - 1:
        return None
    return _fused(node, "MatMul", node.inputs, {**node.attrs, "stochastic_rows": 1}, graph, [])


# -- BatchNormalization after a convolution ------------------------------------------------------
def _fold_conv_batchnorm(graph: Graph, node: Node, idx: Index) -> Optional[Fusion]:
    from perturbkit.ops.batchnorm import gain_shift

    """``BatchNormalization(Conv(x, W, b))`` in inference mode, the Conv's output read by
    nothing else: one Conv with ``W' = W * g`` (per output channel) and ``b' = (b - mean) * g + B``,
    ``g = scale / sqrt(var + eps)``; folded in float64, stored in ``W``'s dtype.  The ONNX
    exporter folds it this way in eval mode (the map: :func:`perturbkit.ops.batchnorm.gain_shift`), so both front ends meet the same graph (and the
    patch-mode walk of :mod:`perturbkit.bounds.patches` has one node less to cross)."""
    from perturbkit.ops.batchnorm import gain_shift

    if node.op_type != "BatchNormalization" or int(node.attrs.get("training_mode", 0)) or len(node.inputs) != 5:
        return None
    conv = _op(idx, node.inputs[0], "Conv")
    if conv is None or not idx.single_use(conv.output) or conv.inputs[0] in graph.constants:
        return None
    params = node.inputs[1:]
    if any(p not in graph.constants for p in params) or any(i not in graph.constants for i in conv.inputs[1:]):
        return None
    W = graph.constants[conv.inputs[1]]
    if not W.is_floating_point() or W.dim() < 3:
        return None
    scale, shift, mean, var = (graph.constants[p].to(torch.float64).reshape(-1) for p in params)
    co = W.shape[0]
    if any(t.numel() != co for t in (scale, shift, mean, var)):
        return None
    g, h = gain_shift(scale, shift, mean, var, float(node.attrs.get("epsilon", 1e-5)))
    b = (graph.constants[conv.inputs[2]].to(torch.float64).reshape(-1) if len(conv.inputs) > 2
         else torch.zeros(co, dtype=torch.float64))
    w_new = (W.to(torch.float64) * g.reshape(-1, *([1] * (W.dim() - 1)))).to(W.dtype)
    b_new = (b * g + h).to(W.dtype)
    names = (_fresh(graph, f"{node.output}/weight"), _fresh(graph, f"{node.output}/bias"))
    return _fused(node, "Conv", (conv.inputs[0], *names), dict(conv.attrs), graph, [conv],
                  {names[0]: w_new, names[1]: b_new})


#: the fusion table (tried in order at every node, from the graph output backwards)
FUSIONS: list[Pattern] = [_fold_conv_batchnorm, _fuse_layer_norm, _fuse_gelu, _fuse_swish, _fuse_masked_softmax, _mark_stochastic_rows]
