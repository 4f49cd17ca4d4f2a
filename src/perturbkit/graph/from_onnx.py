"""ONNX importer: an ``.onnx`` file (or ``onnx.ModelProto``) -> :class:`Graph`.

What it does, in order:
1. reads the model (errors name the file), takes initializers as constants;
2. walks the nodes in topological order; configuration inputs (Reshape's shape, Clip's
   min/max, Pad's pads, Slice's starts/ends/axes/steps, Squeeze/Unsqueeze/Reduce axes,
   Gather's indices) are moved into ``attrs``;
3. folds every node whose inputs are all constant (Shape of a runtime value is constant:
   shapes are static), so subgraphs such as Shape -> Gather -> Unsqueeze -> Concat vanish;
   the exporters' shape arithmetic (Mod, Range, Equal, Where, ConstantOfShape, Cast, ...)
   follows ONNX semantics exactly (:mod:`perturbkit.graph.onnx_fold`);
4. lowers multi-output nodes on runtime values (the IR has one output per node): Split
   becomes one Slice per output, LSTM/GRU/RNN are unrolled (:mod:`perturbkit.graph.rnn`);
5. infers each remaining node's declared output shape with its rule;
6. drops nodes the output does not depend on.

Anything without a rule is refused with one line naming the op, the node and the file.
"""
from __future__ import annotations

import os
from typing import Any, Union

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from perturbkit.errors import ModelError, UnsupportedOperatorError
from perturbkit.graph.ir import Graph, Node, frozen_attrs
from perturbkit.graph.onnx_fold import FOLD, split_sizes
from perturbkit.graph.rnn_onnx import RECURRENT_OPS, expand_onnx
from perturbkit.ops.forward_only import FORWARD_ONLY
from perturbkit.ops.registry import RULES, rule_for, supported
from perturbkit.ops.reshape import ReshapeLike

# input index -> attribute name, for inputs that only configure an operator
_ABSORB: dict[str, dict[int, str]] = {
    "Reshape": {1: "shape"},
    "Clip": {1: "min", 2: "max"},
    "Pad": {1: "pads", 2: "constant_value", 3: "axes"},
    "Slice": {1: "starts", 2: "ends", 3: "axes", 4: "steps"},
    "Squeeze": {1: "axes"},
    "Unsqueeze": {1: "axes"},
    "ReduceSum": {1: "axes"},
    "ReduceMean": {1: "axes"},
    "ReduceMax": {1: "axes"},
    "ReduceMin": {1: "axes"},
    "Gather": {1: "indices"},
    "Dropout": {1: "ratio", 2: "training_mode"},
    "Expand": {1: "shape"},
    "Tile": {1: "repeats"},
    "Split": {1: "split"},
}
#: configuration inputs that may also be runtime values (then they stay inputs)
_RUNTIME_CONFIG = {("Gather", 1)}
_SCALAR_ATTRS = {"min", "max", "constant_value", "ratio", "training_mode"}
_TENSOR_ATTRS = {"indices"}


def _to_tensor(arr: np.ndarray) -> torch.Tensor:
    arr = np.array(arr)
    if arr.dtype == np.float16:
        arr = arr.astype(np.float32)
    return torch.from_numpy(arr.copy())


def _attr_value(a: onnx.AttributeProto) -> Any:
    v = onnx.helper.get_attribute_value(a)
    if isinstance(v, onnx.TensorProto):
        return _to_tensor(numpy_helper.to_array(v))
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, list) and v and isinstance(v[0], bytes):
        return [x.decode() for x in v]
    return v


def _absorbed(name: str, t: torch.Tensor) -> Any:
    if name in _TENSOR_ATTRS:
        return t.to(torch.int64)
    if name in _SCALAR_ATTRS:
        return t.reshape(-1)[0].item() if t.numel() else None
    return [int(v) for v in t.reshape(-1).tolist()]


def _read(model_or_path: Union[str, os.PathLike, onnx.ModelProto]) -> tuple[onnx.ModelProto, str]:
    if isinstance(model_or_path, onnx.ModelProto):
        return model_or_path, "<onnx model>"
    path = os.fspath(model_or_path)
    if not os.path.exists(path):
        raise ModelError(f"cannot read {path}: no such file")
    try:
        model = onnx.load(path)
    except Exception as e:  # noqa: BLE001
        raise ModelError(f"cannot read {path}: not a valid ONNX file ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'parse error'})") from None
    if len(model.graph.node) == 0 and len(model.graph.output) == 0:
        raise ModelError(f"cannot read {path}: not a valid ONNX file (no graph)")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "validation failed"
        raise ModelError(f"invalid ONNX model {path}: {first}") from None
    return model, path


def _declared(vi: onnx.ValueInfoProto) -> tuple[int, ...]:
    dims = vi.type.tensor_type.shape.dim
    return tuple(int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in dims)


def graph_from_onnx(model_or_path: Union[str, os.PathLike, onnx.ModelProto], *, forward_only: bool = False) -> Graph:
    """Import an ONNX model into the IR (see module docstring).

    ``forward_only``: also admit operators on runtime values that perturbkit can execute but
    not bound (:mod:`perturbkit.ops.forward_only`): enough for attacks."""
    model, source = _read(model_or_path)
    g = model.graph
    consts: dict[str, torch.Tensor] = {}
    for init in g.initializer:
        consts[init.name] = _to_tensor(numpy_helper.to_array(init))
    inputs = [vi for vi in g.input if vi.name not in consts]
    if len(inputs) != 1:
        raise ModelError(f"{source} has {len(inputs)} runtime inputs ({', '.join(v.name for v in inputs)}); "
                         "perturbkit supports exactly one")
    if len(g.output) != 1:
        raise ModelError(f"{source} has {len(g.output)} outputs; perturbkit supports exactly one")
    in_name = inputs[0].name
    shapes: dict[str, tuple[int, ...]] = {in_name: _declared(inputs[0])}
    nodes: list[Node] = []
    used_names: set[str] = set()
    extra: dict[str, str] = {}

    for idx, proto in enumerate(g.node):
        op = proto.op_type
        if proto.domain not in ("", "ai.onnx"):
            raise UnsupportedOperatorError(
                f"operator '{proto.domain}.{op}' (custom domain) at node '{proto.name or idx}' in {source} is not supported")
        name = proto.name or f"{op}_{idx}"
        while name in used_names:
            name += "_"
        used_names.add(name)
        attrs: dict[str, Any] = {a.name: _attr_value(a) for a in proto.attribute}
        if op == "Pad" and "value" in attrs:
            attrs["constant_value"] = attrs.pop("value")
        if op in RECURRENT_OPS:  # LSTM, GRU, RNN: unrolled (graph/rnn_onnx.py)
            nodes += expand_onnx(op, name, list(proto.input), list(proto.output), attrs, shapes, consts,
                                 used_names, source)
            continue
        out = proto.output[0]
        absorb = _ABSORB.get(op, {})
        ins: list[str] = []
        for i, inp in enumerate(proto.input):
            if i in absorb:
                if inp == "":
                    continue
                if inp not in consts and (op, i) in _RUNTIME_CONFIG:
                    ins.append(inp)  # e.g. an embedding: Gather(table, ids) with runtime ids
                    continue
                if inp not in consts:
                    raise UnsupportedOperatorError(
                        f"{op} with a non-constant '{absorb[i]}' input is not supported at node '{name}' ({op}) in {source}")
                attrs[absorb[i]] = _absorbed(absorb[i], consts[inp])
            else:
                ins.append(inp)
        while ins and ins[-1] == "":
            ins.pop()
        for inp in ins:
            if inp == "":
                raise UnsupportedOperatorError(f"an omitted optional input in the middle at node '{name}' ({op}) in {source}")
            if inp not in consts and inp not in shapes:
                raise ModelError(f"node '{name}' ({op}) in {source} reads '{inp}', which no earlier node produces")
        if op == "Split":  # several outputs: one Slice (or folded constant) per output
            node = Node(name=name, op_type=op, inputs=tuple(ins), output=out, attrs=frozen_attrs(attrs))
            nodes += _split(node, list(proto.output), shapes, consts, used_names, source)
            continue
        for extra_out in proto.output[1:]:
            if extra_out:  # secondary outputs (Dropout mask, ...) must stay unused
                extra[extra_out] = name

        # constant folding
        if op == "Constant":
            consts[out] = _constant_value(attrs, name, source)
            continue
        if op in ("Shape", "Size"):  # declared shapes are static
            s = torch.tensor(list(consts[ins[0]].shape) if ins[0] in consts else list(shapes[ins[0]]), dtype=torch.int64)
            start, end = attrs.get("start", 0), attrs.get("end", None)
            consts[out] = s[start:end] if op == "Shape" else s.prod()
            continue
        in_shapes = tuple(tuple(consts[i].shape) if i in consts else shapes[i] for i in ins)
        node = Node(name=name, op_type=op, inputs=tuple(ins), output=out, attrs=frozen_attrs(attrs),
                    in_shapes=in_shapes)
        if all(i in consts for i in ins):
            args = [consts[i] for i in ins]
            try:
                if op in FOLD:
                    consts[out] = FOLD[op](node, *args)
                else:
                    rule = rule_for(node, source)
                    node = _with_shape(node, rule, args)
                    # reshapes of constants: the tensor in its inferred shape (rank 0 included)
                    consts[out] = (args[0].reshape(node.out_shape) if isinstance(rule, ReshapeLike)
                                   else rule.forward(node, *args))
            except ModelError as e:
                raise _located(e, source) from None
            except Exception as e:  # noqa: BLE001
                raise ModelError(f"cannot fold constant {node.where(source)}: {type(e).__name__}: {e}") from None
            continue
        rule = _runtime_rule(node, forward_only, source)
        dummy = [consts[i] if i in consts else torch.zeros(shapes[i]) for i in ins]
        try:
            node = _with_shape(node, rule, dummy)
        except ModelError as e:
            raise _located(e, source) from None
        except Exception as e:  # noqa: BLE001
            raise ModelError(f"shape inference failed at {node.where(source)}: {type(e).__name__}: {e}") from None
        shapes[out] = node.out_shape
        nodes.append(node)

    out_name = g.output[0].name
    if out_name in consts:
        raise ModelError(f"the output of {source} does not depend on its input")
    if out_name not in shapes:
        raise ModelError(f"the output '{out_name}' of {source} is not produced by any node")
    nodes = _live(nodes, out_name)
    for n in nodes:
        for i in n.inputs:
            if i in extra:
                raise UnsupportedOperatorError(
                    f"node '{n.name}' reads the secondary output '{i}' of node '{extra[i]}' in {source}; "
                    "only the first output of a node is supported")
    live_consts = {i for n in nodes for i in n.inputs if i in consts}
    return Graph(nodes=tuple(nodes), input_name=in_name, output_name=out_name,
                 shapes=dict(shapes), constants={k: consts[k] for k in live_consts}, source=source)


def _runtime_rule(node: Node, forward_only: bool, source: str):
    """The rule for a node with a runtime input, or the one-line refusal saying why not."""
    if node.op_type in RULES or (forward_only and node.op_type in FORWARD_ONLY):
        return rule_for(node, source)
    if node.op_type in FORWARD_ONLY:
        raise UnsupportedOperatorError(
            f"no bound rule for '{node.op_type}' at {node.where(source)}; perturbkit can only execute it "
            f"(load(..., forward_only=True), for attacks); supported: {', '.join(supported())}")
    if node.op_type in FOLD:
        raise UnsupportedOperatorError(
            f"no rule for '{node.op_type}' on a perturbed value at {node.where(source)}; it is only supported on "
            f"constants; supported on perturbed values: {', '.join(supported())}")
    raise UnsupportedOperatorError(
        f"no rule for '{node.op_type}' at {node.where(source)}; supported: {', '.join(supported())}")


def _located(e: ModelError, source: str) -> ModelError:
    """``e`` with the model file appended when its message does not name it yet."""
    msg = str(e)
    return e if not source or source in msg else type(e)(f"{msg} in {source}")


def _split(node: Node, outputs: list[str], shapes: dict[str, tuple[int, ...]], consts: dict[str, torch.Tensor],
           used_names: set[str], source: str) -> list[Node]:
    """ONNX Split as one Slice per output along ``axis`` (sizes: :func:`onnx_fold.split_sizes`).

    A constant input is split into constants; a runtime one gives the Slice nodes, named
    ``<split node>/<k>``.  Omitted (empty) outputs are skipped."""
    x = node.inputs[0]
    shape = tuple(consts[x].shape) if x in consts else shapes[x]
    r = len(shape)
    axis = int(node.attrs.get("axis", 0))
    axis = axis + r if axis < 0 else axis
    if not 0 <= axis < r:
        raise ModelError(f"Split axis {node.attrs.get('axis', 0)} out of range for rank {r} at {node.where(source)}")
    try:
        sizes = split_sizes(node, shape[axis], len(outputs))
    except ModelError as e:
        raise _located(e, source) from None
    slice_rule = RULES["Slice"]
    made: list[Node] = []
    start = 0
    for k, (value, size) in enumerate(zip(outputs, sizes)):
        attrs = {"starts": [start], "ends": [start + size], "axes": [axis]}
        start += size
        if not value:
            continue
        name = f"{node.name}/{k}"
        while name in used_names:
            name += "_"
        used_names.add(name)
        part = Node(name=name, op_type="Slice", inputs=(x,), output=value, attrs=frozen_attrs(attrs),
                    in_shapes=(shape,))
        part = _with_shape(part, slice_rule, [consts.get(x, torch.zeros(shape))])
        if x in consts:
            consts[value] = slice_rule.forward(part, consts[x])
        else:
            shapes[value] = part.out_shape
            made.append(part)
    return made


def _with_shape(node: Node, rule, args) -> Node:
    out_shape = tuple(int(d) for d in rule.infer_shape(node, *args))
    return Node(name=node.name, op_type=node.op_type, inputs=node.inputs, output=node.output,
                attrs=node.attrs, in_shapes=node.in_shapes, out_shape=out_shape)


def _constant_value(attrs: dict[str, Any], name: str, source: str) -> torch.Tensor:
    if "value" in attrs:
        return attrs["value"]
    if "value_float" in attrs:
        return torch.tensor(attrs["value_float"], dtype=torch.float32)
    if "value_floats" in attrs:
        return torch.tensor(attrs["value_floats"], dtype=torch.float32)
    if "value_int" in attrs:
        return torch.tensor(attrs["value_int"], dtype=torch.int64)
    if "value_ints" in attrs:
        return torch.tensor(attrs["value_ints"], dtype=torch.int64)
    raise UnsupportedOperatorError(f"Constant node '{name}' in {source} has no supported value attribute")


def _live(nodes: list[Node], out_name: str) -> list[Node]:
    need = {out_name}
    keep: list[Node] = []
    for n in reversed(nodes):
        if n.output in need:
            keep.append(n)
            need.update(n.inputs)
    return keep[::-1]
