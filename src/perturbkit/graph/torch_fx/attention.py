"""Converters for attention: ``F.scaled_dot_product_attention``, ``nn.MultiheadAttention``,
``nn.TransformerEncoderLayer`` and ``nn.TransformerEncoder``, plus ``nn.LayerNorm`` and
``nn.Embedding`` (the other layers of a Transformer).

The modules are *leaf modules*: fx does not trace into them (their ``forward`` branches on
masks, fast paths and nested tensors); each is converted as a whole by following the
reference computation of ``torch.nn.functional.multi_head_attention_forward`` and of the
encoder layer's ``forward`` step by step, with the node structure ``torch.onnx.export``
(opset 17, ``dynamo=False``) gives the same module: projections ``MatMul`` + ``Add`` (or
``Gemm``), heads split by ``Reshape``/``Transpose``, scores ``q @ k^T`` as a ``MatMul`` of
two runtime values, the scale as a ``Mul`` by a constant, a constant mask as an ``Add``,
``Softmax`` over the last axis, ``attn @ v`` as a second ``MatMul`` of two runtime values,
heads merged and the output projection (Vaswani et al. 2017, "Attention is all you need").

Masks must be constants.  A boolean mask becomes an additive float mask whose masked
entries are :data:`MASKED` ``= -1e30`` (PyTorch and the ONNX export use ``-inf``); either way
``Softmax(scores + mask)`` is fused into ``MaskedSoftmax`` (:mod:`perturbkit.graph.fuse`),
which drops the masked entries exactly, so both front ends give the same graph and the same
bounds.  A row with *every* key masked (PyTorch gives NaN there) is refused.

Shapes (declared, as everywhere in the front end): ``(N, L, E)`` with ``batch_first`` else
``(L, N, E)``; ``N`` is the example's batch (usually 1), the runtime batch stays in front.
Heads ``H``, head size ``d = E / H``, key length ``S``.
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from perturbkit.graph.ir import Node, frozen_attrs
from perturbkit.graph.torch_fx.builder import Builder, Call, Var, as_const, as_var, operand, unsupported
from perturbkit.ops.registry import rule_for

Value = Union[Var, torch.Tensor]  # a runtime value, or a constant
#: the additive value of a masked score (see the module docstring)
MASKED = -1e30


# --------------------------------------------------------------------------------------
# emitting, or folding constants through the same rules
# --------------------------------------------------------------------------------------
def _op(b: Builder, op: str, inputs: Sequence[Any], attrs: Optional[dict[str, Any]] = None) -> Value:
    """Emit ``op``; when no input depends on the network input, evaluate it now with the
    op's rule (a constant, as the fx walk folds constant calls)."""
    if any(isinstance(x, Var) for x in inputs):
        return b.emit(op, list(inputs), attrs)
    like = next((x for x in inputs if isinstance(x, torch.Tensor) and x.is_floating_point()), None)
    xs = [torch.tensor(float(x), dtype=like.dtype) if like is not None and not isinstance(x, torch.Tensor)
          else operand(x) for x in inputs]
    node = Node(name="folded", op_type=op, inputs=tuple(f"c{i}" for i in range(len(xs))), output="folded",
                attrs=frozen_attrs(attrs or {}), in_shapes=tuple(tuple(x.shape) for x in xs))
    rule = rule_for(node, b.source)
    node = replace(node, out_shape=tuple(int(d) for d in rule.infer_shape(node, *xs)))
    return rule.forward(node, *xs).detach()


def _shape(x: Value) -> tuple[int, ...]:
    return tuple(x.shape)


def _transpose(b: Builder, x: Value, perm: Sequence[int]) -> Value:
    return _op(b, "Transpose", [x], {"perm": [int(p) for p in perm]})


def _reshape(b: Builder, x: Value, shape: Sequence[int]) -> Value:
    return _op(b, "Reshape", [x], {"shape": [int(d) for d in shape]})


def _linear(b: Builder, x: Value, W: torch.Tensor, bias: Optional[torch.Tensor]) -> Value:
    """``x @ W^T + bias`` as an ONNX export writes it: Gemm on a matrix, else MatMul + Add."""
    if len(_shape(x)) == 2:
        return _op(b, "Gemm", [x, W] + ([bias] if bias is not None else []), {"alpha": 1.0, "beta": 1.0, "transB": 1})
    y = _op(b, "MatMul", [x, W.detach().t()])
    return y if bias is None else _op(b, "Add", [y, bias])


def _value(b: Builder, x: Any, what: str) -> Value:
    if isinstance(x, Var):
        return x
    if isinstance(x, torch.Tensor) and x.is_floating_point():
        return x.detach()
    raise unsupported(b, f"the {what} must be a floating-point tensor")


def _mask(b: Builder, mask: Any, what: str, dtype: torch.dtype) -> Optional[torch.Tensor]:
    """A constant mask as an additive float mask (bool: :data:`MASKED` where True), like
    ``F._canonical_mask`` with ``-inf`` replaced by :data:`MASKED`."""
    if mask is None:
        return None
    if isinstance(mask, Var):
        raise unsupported(b, f"{what} depends on the network input; masks must be constant")
    if not isinstance(mask, torch.Tensor):
        raise unsupported(b, f"a {what} of type {type(mask).__name__} is not supported; give a tensor")
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype).masked_fill_(mask, MASKED)
    if not mask.is_floating_point():
        raise unsupported(b, f"a {what} of dtype {mask.dtype} is not supported; use bool or float")
    return _finite(mask.detach().to(dtype))


def _finite(mask: torch.Tensor) -> torch.Tensor:
    """``-inf`` entries of an additive mask -> :data:`MASKED`."""
    return torch.where(torch.isneginf(mask), torch.full_like(mask, MASKED), mask)


# --------------------------------------------------------------------------------------
# scaled dot-product attention
# --------------------------------------------------------------------------------------
def attention_core(b: Builder, q: Value, k: Value, v: Value, bias: Optional[torch.Tensor],
                   scale: float) -> Value:
    """``softmax(q k^T * scale + bias) v`` as ONNX's SDPA export: ``q`` and ``k^T`` each scaled
    by ``sqrt(scale)`` before the product.

    Shapes: q ``(*, L, d)``, k and v ``(*, S, d)``, bias broadcasting to ``(*, L, S)``; out ``(*, L, d)``.
    """
    r = len(_shape(k))
    perm = list(range(r))
    perm[-1], perm[-2] = perm[-2], perm[-1]
    kT = _transpose(b, k, perm)
    if scale > 0:
        s = math.sqrt(scale)
        scores = _op(b, "MatMul", [_op(b, "Mul", [q, s]), _op(b, "Mul", [kT, s])])
    else:
        scores = _op(b, "Mul", [_op(b, "MatMul", [q, kT]), float(scale)])
    if bias is not None:
        scores = _op(b, "Add", [scores, bias])
    weights = _op(b, "Softmax", [scores], {"axis": -1})
    return _op(b, "MatMul", [weights, v])


def _causal(L: int, S: int, dtype: torch.dtype) -> torch.Tensor:
    """``(L, S)``: 0 on and below the diagonal, :data:`MASKED` above (SDPA's ``is_causal``)."""
    keep = torch.ones(L, S, dtype=torch.bool).tril(0)
    return torch.zeros(L, S, dtype=dtype).masked_fill_(~keep, MASKED)


def sdpa_fn(b: Builder, c: Call) -> Var:
    """``F.scaled_dot_product_attention(q, k, v, attn_mask, dropout_p, is_causal, scale, enable_gqa)``."""
    q = _value(b, c.arg(0, "query"), "query")
    k = _value(b, c.arg(1, "key"), "key")
    v = _value(b, c.arg(2, "value"), "value")
    dropout_p = float(c.arg(4, "dropout_p", 0.0))
    if dropout_p > 0:
        raise unsupported(b, f"F.scaled_dot_product_attention with dropout_p={dropout_p} is random "
                             "(it applies dropout even in eval mode); pass dropout_p=0")
    if c.arg(7, "enable_gqa", False) and _shape(q)[:-2] != _shape(k)[:-2]:
        raise unsupported(b, "F.scaled_dot_product_attention with enable_gqa=True and grouped heads is not supported")
    L, S, d = _shape(q)[-2], _shape(k)[-2], _shape(q)[-1]
    dtype = c.value.dtype
    scale = c.arg(6, "scale")
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    mask = c.arg(3, "attn_mask")
    bias = _causal(L, S, dtype) if c.arg(5, "is_causal", False) else None
    if mask is not None:
        if isinstance(mask, torch.Tensor) and mask.dtype == torch.bool:
            mask = ~mask  # SDPA's bool masks say where to attend
        mask = _mask(b, mask, "the attn_mask of F.scaled_dot_product_attention", dtype)
        bias = mask if bias is None else bias + mask
    return attention_core(b, q, k, v, bias, scale)


# --------------------------------------------------------------------------------------
# nn.MultiheadAttention
# --------------------------------------------------------------------------------------
def _check_mha(b: Builder, m: nn.MultiheadAttention) -> None:
    if m.bias_k is not None or m.bias_v is not None:
        raise unsupported(b, "nn.MultiheadAttention with add_bias_kv=True is not supported")
    if m.add_zero_attn:
        raise unsupported(b, "nn.MultiheadAttention with add_zero_attn=True is not supported")
    if m.training and m.dropout > 0:
        raise unsupported(b, "nn.MultiheadAttention with dropout in training mode is random; put it in eval mode")


def _projections(b: Builder, m: nn.MultiheadAttention, q: Value, k: Value, v: Value) -> tuple[Value, Value, Value]:
    """The in-projections, packed as in ``F._in_projection_packed`` when q, k, v coincide."""
    E = m.embed_dim
    bias = m.in_proj_bias
    if not m._qkv_same_embed_dim:
        bq, bk, bv = (None, None, None) if bias is None else bias.chunk(3)
        return (_linear(b, q, m.q_proj_weight, bq), _linear(b, k, m.k_proj_weight, bk),
                _linear(b, v, m.v_proj_weight, bv))
    W = m.in_proj_weight
    if k is v:
        n_fused = 3 if q is k else 2
        fused = _linear(b, k, W[(3 - n_fused) * E:], None if bias is None else bias[(3 - n_fused) * E:])
        r = len(_shape(fused))
        parts = [_op(b, "Slice", [fused], {"starts": [i * E], "ends": [(i + 1) * E], "axes": [r - 1], "steps": [1]})
                 for i in range(n_fused)]
        if n_fused == 3:
            return parts[0], parts[1], parts[2]
        return _linear(b, q, W[:E], None if bias is None else bias[:E]), parts[0], parts[1]
    Wq, Wk, Wv = W.chunk(3)
    bq, bk, bv = (None, None, None) if bias is None else bias.chunk(3)
    return _linear(b, q, Wq, bq), _linear(b, k, Wk, bk), _linear(b, v, Wv, bv)


def multihead_attention(b: Builder, m: nn.MultiheadAttention, query: Any, key: Any, value: Any, *,
                        key_padding_mask: Any = None, need_weights: bool = True, attn_mask: Any = None,
                        average_attn_weights: bool = True, is_causal: bool = False) -> tuple[Var, Optional[Value]]:
    """``m(query, key, value, ...)`` (eval mode): ``(output, weights or None)``.

    Shapes: query ``(N, L, E)`` (``(L, N, E)`` without ``batch_first``, ``(L, E)`` unbatched), key and
    value ``(N, S, E)``; output like query; weights ``(N, L, S)`` averaged over heads, else ``(N, H, L, S)``.
    """
    _check_mha(b, m)
    same_kv, same_qk = key is value, query is key
    q, k, v = (_value(b, x, what) for x, what in ((query, "query"), (key, "key"), (value, "value")))
    if same_kv:
        v = k
    if same_qk:
        k = q
    batched = len(_shape(q)) == 3
    if batched and m.batch_first:
        q = _transpose(b, q, [1, 0, 2])
        k = q if same_qk else _transpose(b, k, [1, 0, 2])
        v = k if same_kv else _transpose(b, v, [1, 0, 2])
    elif not batched:
        q = _op(b, "Unsqueeze", [q], {"axes": [1]})
        k = q if same_qk else _op(b, "Unsqueeze", [k], {"axes": [1]})
        v = k if same_kv else _op(b, "Unsqueeze", [v], {"axes": [1]})
    L, N, E = _shape(q)
    S = _shape(k)[0]
    H = m.num_heads
    d = E // H
    dtype = q.value.dtype if isinstance(q, Var) else q.dtype

    kpm = _mask(b, key_padding_mask, "the key_padding_mask of nn.MultiheadAttention", dtype)
    if kpm is not None and not batched:
        kpm = kpm.unsqueeze(0)
    if is_causal and kpm is None and not need_weights:  # PyTorch then ignores attn_mask (a hint)
        mask = None
    else:
        mask = _mask(b, attn_mask, "the attn_mask of nn.MultiheadAttention", dtype)
        is_causal = is_causal and kpm is None
    if mask is not None and mask.dim() == 2:
        mask = mask.unsqueeze(0)  # (1, L, S) or (N*H, L, S)
    if kpm is not None:
        kpm = kpm.reshape(N, 1, 1, S).expand(-1, H, -1, -1).reshape(N * H, 1, S)
        mask = kpm if mask is None else mask + kpm

    q, k, v = _projections(b, m, q, k, v)
    W_out, b_out = m.out_proj.weight, m.out_proj.bias
    weights: Optional[Value] = None
    if need_weights:  # the batched-matrix path of F.multi_head_attention_forward
        qh = _transpose(b, _reshape(b, q, [L, N * H, d]), [1, 0, 2])           # (N*H, L, d)
        kT = _transpose(b, _reshape(b, k, [S, N * H, d]), [1, 2, 0])           # (N*H, d, S)
        vh = _transpose(b, _reshape(b, v, [S, N * H, d]), [1, 0, 2])           # (N*H, S, d)
        scores = _op(b, "MatMul", [_op(b, "Mul", [qh, math.sqrt(1.0 / d)]), kT])
        if mask is not None:
            scores = _op(b, "Add", [scores, mask])
        attn = _op(b, "Softmax", [scores], {"axis": -1})
        out = _op(b, "MatMul", [attn, vh])                                      # (N*H, L, d)
        out = _reshape(b, _transpose(b, out, [1, 0, 2]), [L * N, E])
        weights = _reshape(b, attn, [N, H, L, S])
        if average_attn_weights:
            weights = _op(b, "ReduceMean", [weights], {"axes": [1], "keepdims": 0})
    else:  # the SDPA path: (N, H, L, d) heads
        heads = [_transpose(b, _reshape(b, x, [n, N, H, d]), [1, 2, 0, 3]) for x, n in ((q, L), (k, S), (v, S))]
        if mask is not None:
            mask = mask.unsqueeze(0) if mask.shape[0] == 1 else mask.reshape(N, H, -1, S)
        bias = _causal(L, S, dtype) if is_causal else mask
        out = attention_core(b, heads[0], heads[1], heads[2], bias, 1.0 / math.sqrt(d))
        out = _reshape(b, _transpose(b, out, [2, 0, 1, 3]), [L * N, E])
    out = _reshape(b, _linear(b, out, W_out, b_out), [L, N, E])
    if batched and m.batch_first:
        out = _transpose(b, out, [1, 0, 2])
    elif not batched:
        out = _op(b, "Squeeze", [out], {"axes": [1]})
        if weights is not None:
            weights = _op(b, "Squeeze", [weights], {"axes": [0]})
    return as_var(b, out, "attention output"), weights


def mha_module(b: Builder, c: Call) -> tuple[Var, Optional[Value]]:
    return multihead_attention(
        b, c.module, c.arg(0, "query"), c.arg(1, "key"), c.arg(2, "value"),
        key_padding_mask=c.arg(3, "key_padding_mask"), need_weights=bool(c.arg(4, "need_weights", True)),
        attn_mask=c.arg(5, "attn_mask"), average_attn_weights=bool(c.arg(6, "average_attn_weights", True)),
        is_causal=bool(c.arg(7, "is_causal", False)))


# --------------------------------------------------------------------------------------
# LayerNorm and Embedding
# --------------------------------------------------------------------------------------
def layer_norm(b: Builder, x: Any, normalized_shape: Sequence[int], weight: Any, bias: Any, eps: float) -> Var:
    """ONNX ``LayerNormalization`` (opset 17): ``axis`` = first normalised axis (negative), Scale, B."""
    x = as_var(b, x)
    ns = (int(normalized_shape),) if isinstance(normalized_shape, int) else tuple(int(d) for d in normalized_shape)
    if x.shape[len(x.shape) - len(ns):] != ns:
        raise unsupported(b, f"layer_norm over {ns} of a value of shape {x.shape}")
    scale = torch.ones(ns, dtype=x.value.dtype) if weight is None else as_const(b, weight, "layer norm weight")
    shift = torch.zeros(ns, dtype=x.value.dtype) if bias is None else as_const(b, bias, "layer norm bias")
    return b.emit("LayerNormalization", [x, scale, shift], {"axis": -len(ns), "epsilon": float(eps)})


def layer_norm_module(b: Builder, c: Call) -> Var:
    m = c.module
    return layer_norm(b, c.args[0], m.normalized_shape, m.weight, m.bias, m.eps)


def layer_norm_fn(b: Builder, c: Call) -> Var:
    return layer_norm(b, c.arg(0, "input"), c.arg(1, "normalized_shape"), c.arg(2, "weight"), c.arg(3, "bias"),
                      c.arg(4, "eps", 1e-5))


def _embedding(b: Builder, ids: Any, table: Any, max_norm: Any) -> Var:
    if max_norm is not None:
        raise unsupported(b, "nn.Embedding with max_norm renormalises the table on every lookup; it is not supported")
    ids = as_var(b, ids, "token ids")
    if ids.value.is_floating_point():
        raise unsupported(b, "embedding ids must be an integer tensor (give an integer example input)")
    table = as_const(b, table, "embedding table")
    return b.emit("Gather", [table, ids], {"axis": 0})


def embedding_module(b: Builder, c: Call) -> Var:
    return _embedding(b, c.args[0], c.module.weight, c.module.max_norm)


def embedding_fn(b: Builder, c: Call) -> Var:
    return _embedding(b, c.arg(0, "input"), c.arg(1, "weight"), c.arg(3, "max_norm"))


# --------------------------------------------------------------------------------------
# nn.TransformerEncoderLayer and nn.TransformerEncoder
# --------------------------------------------------------------------------------------
def _activation(b: Builder, act: Any, x: Var) -> Var:
    """The feed-forward activation of an encoder layer: relu or gelu (string, function or module)."""
    if act is F.relu or isinstance(act, nn.ReLU):
        return b.emit("Relu", [x])
    if act is F.gelu:
        return b.emit("Gelu", [x], {"approximate": "none"})
    if isinstance(act, nn.GELU):
        return b.emit("Gelu", [x], {"approximate": act.approximate})
    if act is F.silu or isinstance(act, nn.SiLU):
        return b.emit("Swish", [x], {"alpha": 1.0})
    name = type(act).__name__ if isinstance(act, nn.Module) else getattr(act, "__name__", repr(act))
    raise unsupported(b, f"nn.TransformerEncoderLayer with activation {name} is not supported; "
                         "supported: relu, gelu, silu (string, F.* function or nn module)")


def _norm(b: Builder, m: nn.Module, x: Var) -> Var:
    if not isinstance(m, nn.LayerNorm):
        raise unsupported(b, f"a Transformer norm of type {type(m).__name__} is not supported; use nn.LayerNorm")
    return layer_norm(b, x, m.normalized_shape, m.weight, m.bias, m.eps)


def encoder_layer(b: Builder, m: nn.TransformerEncoderLayer, x: Any, src_mask: Any = None,
                  src_key_padding_mask: Any = None, is_causal: bool = False) -> Var:
    """``m(x, src_mask, src_key_padding_mask, is_causal)`` in eval mode (dropout is the identity):
    ``x + SA(LN1(x))``, ``x + FF(LN2(x))`` with ``norm_first``, else ``LN1(x + SA(x))``, ``LN2(x + FF(x))``.

    Shapes: x ``(N, L, E)`` with ``batch_first`` else ``(L, N, E)``; the output has x's shape.
    """
    if type(m).forward is not nn.TransformerEncoderLayer.forward:
        raise unsupported(b, f"{type(m).__name__} overrides TransformerEncoderLayer.forward; it is not supported")
    if m.training and float(m.dropout.p) > 0:
        raise unsupported(b, "nn.TransformerEncoderLayer with dropout in training mode is random; put it in eval mode")
    x = as_var(b, x)

    def sa(h: Var) -> Var:
        return multihead_attention(b, m.self_attn, h, h, h, key_padding_mask=src_key_padding_mask, need_weights=False,
                                   attn_mask=src_mask, is_causal=is_causal)[0]

    def ff(h: Var) -> Var:
        h = as_var(b, _linear(b, h, m.linear1.weight, m.linear1.bias))
        return as_var(b, _linear(b, _activation(b, m.activation, h), m.linear2.weight, m.linear2.bias))

    if m.norm_first:
        x = b.emit("Add", [x, sa(_norm(b, m.norm1, x))])
        return b.emit("Add", [x, ff(_norm(b, m.norm2, x))])
    x = _norm(b, m.norm1, b.emit("Add", [x, sa(x)]))
    return _norm(b, m.norm2, b.emit("Add", [x, ff(x)]))


def encoder_layer_module(b: Builder, c: Call) -> Var:
    return encoder_layer(b, c.module, c.arg(0, "src"), c.arg(1, "src_mask"), c.arg(2, "src_key_padding_mask"),
                         bool(c.arg(3, "is_causal", False)))


def encoder_module(b: Builder, c: Call) -> Var:
    """``nn.TransformerEncoder``: its layers in turn, then the final norm (nested tensors are a
    fast path only; ``is_causal=None`` detection changes nothing: a detected mask *is* causal)."""
    m = c.module
    mask, kpm = c.arg(1, "mask"), c.arg(2, "src_key_padding_mask")
    is_causal = c.arg(3, "is_causal") is True
    x = as_var(b, c.arg(0, "src"))
    for layer in m.layers:
        if not isinstance(layer, nn.TransformerEncoderLayer):
            raise unsupported(b, f"nn.TransformerEncoder with a layer of type {type(layer).__name__} is not supported")
        x = encoder_layer(b, layer, x, mask, kpm, is_causal)
    return x if m.norm is None else _norm(b, m.norm, x)
