"""Patch mode for intermediate CROWN bounds of convolutional layers.

The coefficients of one output neuron of a convolution, pushed back through convolutions
and elementwise relaxations, are non-zero only on its receptive field.  Instead of dense
``(B, S, C, H, W)`` tensors (mostly zeros) we keep, per specification, a small patch
``(C, ph, pw)`` and the position of its top-left corner in the ``(C, H, W)`` feature map
(the "patches" idea of Xu et al. 2020, written here from the geometry of convolution).

The walk goes from the start convolution towards the input along a chain in which every
value has a single consumer; it handles 2-D Conv and elementwise activations.  At any other
operator the patches are scattered into a dense tensor and the general backward pass
(:func:`perturbkit.bounds.engine.backward`) takes over, so the result is the same as the
dense computation, only cheaper.

Shapes: ``data`` is ``(B', S, C, ph, pw)`` with ``B'`` 1 (batch independent) or B;
``oy``/``ox`` are ``(S,)`` int64 (may be negative: patches can overhang the map, and
entries outside the map are kept at zero).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from perturbkit.bounds.engine import Context, backward, relaxation_of
from perturbkit.ops.registry import rule_for

Tensor = torch.Tensor


@dataclass
class Patches:
    data: Tensor  # (B', S, C, ph, pw)
    oy: Tensor  # (S,)
    ox: Tensor  # (S,)
    C: int
    H: int
    W: int

    def grid(self) -> tuple[Tensor, Tensor, Tensor]:
        """Map coordinates of every patch entry: yy (S, ph, 1), xx (S, 1, pw), valid (S, ph, pw)."""
        ph, pw = self.data.shape[-2:]
        dev = self.data.device
        yy = self.oy.view(-1, 1, 1) + torch.arange(ph, device=dev).view(1, ph, 1)
        xx = self.ox.view(-1, 1, 1) + torch.arange(pw, device=dev).view(1, 1, pw)
        valid = ((yy >= 0) & (yy < self.H)) & ((xx >= 0) & (xx < self.W))
        return yy, xx, valid

    def gather(self, m: Tensor) -> Tensor:
        """Values of the maps ``m`` (B, C', H, W) under every patch -> (B, S, C', ph, pw), 0 outside.

        ``C'`` may be a multiple of ``C`` (several maps stacked along channels)."""
        ph, pw = self.data.shape[-2:]
        B, Cm = m.shape[:2]
        top = max(0, -int(self.oy.min()))
        left = max(0, -int(self.ox.min()))
        bottom = max(0, int(self.oy.max()) + ph - self.H)
        right = max(0, int(self.ox.max()) + pw - self.W)
        mp = F.pad(m, (left, right, top, bottom))
        cols = F.unfold(mp, (ph, pw))  # (B, C'*ph*pw, L)
        Lw = mp.shape[-1] - pw + 1
        pos = (self.oy + top) * Lw + (self.ox + left)
        rows = cols.transpose(1, 2).contiguous().index_select(1, pos)  # (B, S, C'*ph*pw)
        return rows.reshape(B, -1, Cm, ph, pw)

    def dense(self) -> Tensor:
        """Scatter into dense coefficients (B', S, C, H, W)."""
        Bp, S, C, ph, pw = self.data.shape
        yy, xx, valid = self.grid()
        yy = yy.expand(S, ph, pw)
        xx = xx.expand(S, ph, pw)
        out = torch.zeros(Bp, S, self.H, self.W, C, dtype=self.data.dtype, device=self.data.device)
        ss = torch.arange(S, device=self.data.device).view(S, 1, 1).expand(S, ph, pw)
        v = valid
        vals = self.data.permute(0, 1, 3, 4, 2)[:, v]  # (B', nvalid, C)
        out.index_put_((torch.arange(Bp, device=out.device).view(Bp, 1), ss[v].unsqueeze(0), yy[v].unsqueeze(0),
                        xx[v].unsqueeze(0)), vals, accumulate=True)
        return out.permute(0, 1, 4, 2, 3)


def _map_shape(shape) -> Optional[tuple[int, int, int]]:
    """(C, H, W) for a declared shape (1, C, H, W), else None."""
    if len(shape) == 4 and shape[0] == 1:
        return tuple(shape[1:])
    return None


def _dilate(W: Tensor, dil: list[int]) -> Tensor:
    if dil == [1, 1]:
        return W
    kh, kw = W.shape[-2:]
    out = W.new_zeros(*W.shape[:-2], (kh - 1) * dil[0] + 1, (kw - 1) * dil[1] + 1)
    out[..., ::dil[0], ::dil[1]] = W
    return out


def supports_start(ctx: Context, name: str) -> bool:
    """Whether intermediate bounds of value ``name`` can start in patch mode."""
    node = ctx.graph.nodes[ctx.position[name]] if name in ctx.position else None
    if node is None or node.op_type != "Conv" or len(node.inputs) < 2 or node.inputs[1] not in ctx.consts:
        return False
    rule = rule_for(node, ctx.graph.source)
    geo = rule.local_geometry(node, ctx.consts[node.inputs[1]])
    return (geo["nd"] == 2 and _map_shape(node.in_shapes[0]) is not None
            and _map_shape(node.out_shape) is not None and node.inputs[0] not in ctx.consts)


def lower_bounds(ctx: Context, name: str, idx: Tensor, sign: Tensor) -> Tensor:
    """Lower bound of ``sign_k * v[idx_k]`` for a Conv output ``v`` -> (B, S).

    ``idx``: (S,) flat indices into the per-sample value; ``sign``: (S,) +1/-1.
    """
    g = ctx.graph
    node = g.nodes[ctx.position[name]]
    rule = rule_for(node, g.source)
    Wt = ctx.consts[node.inputs[1]]
    b = ctx.consts[node.inputs[2]] if len(node.inputs) > 2 else None
    geo = rule.local_geometry(node, Wt)
    Co, Ho, Wo = _map_shape(node.out_shape)
    c = idx // (Ho * Wo)
    i = (idx // Wo) % Ho
    j = idx % Wo
    Wd = _dilate(Wt, geo["dilations"])
    groups = geo["groups"]
    Cin = _map_shape(node.in_shapes[0])[0]
    if groups == 1:
        data = Wd[c]
    else:  # channel c reads only its group's input channels
        cin_g = Cin // groups
        data = Wd.new_zeros(idx.numel(), Cin, *Wd.shape[-2:])
        grp = c // (Co // groups)
        rows = torch.arange(idx.numel(), device=idx.device)
        for k in range(cin_g):
            data[rows, grp * cin_g + k] = Wd[c, k]
    data = data * sign.view(-1, 1, 1, 1).to(data.dtype)
    bias = torch.zeros(1, idx.numel(), dtype=ctx.dtype, device=ctx.device)
    if b is not None:
        bias = bias + (b[c] * sign.to(b.dtype)).unsqueeze(0)
    _, Hi, Wi = _map_shape(node.in_shapes[0])
    P = Patches(data.unsqueeze(0), i * geo["strides"][0] - geo["pads_begin"][0],
                j * geo["strides"][1] - geo["pads_begin"][1], Cin, Hi, Wi)
    P.data = P.data * P.grid()[2].unsqueeze(1).to(P.data.dtype)
    return _walk(ctx, node.inputs[0], P, bias)


def _walk(ctx: Context, value: str, P: Patches, bias: Tensor) -> Tensor:
    g = ctx.graph
    consumers = ctx.consumer_count
    B = ctx.batch
    while True:
        if value == g.input_name:
            return bias + _concretize(ctx, P)
        node = g.nodes[ctx.position[value]]
        rule = rule_for(node, g.source)
        ok = consumers.get(value, 0) == 1
        if ok and rule.kind == "activation" and _map_shape(node.in_shapes[0]) == (P.C, P.H, P.W):
            rel = relaxation_of(ctx, node)
            shp = (B, P.C, P.H, P.W)
            lines = [t.expand(B, 1, P.C, P.H, P.W).reshape(shp) for t in
                     (rel.lower.slope, rel.upper.slope, rel.lower.intercept, rel.upper.intercept)]
            sl, su, bl, bu = P.gather(torch.cat(lines, 1)).split(P.C, dim=2)
            Ap, An = P.data.clamp(min=0), P.data.clamp(max=0)
            bias = bias + (Ap * bl + An * bu).flatten(2).sum(-1)
            P = Patches(Ap * sl + An * su, P.oy, P.ox, P.C, P.H, P.W)
            value = node.inputs[0]
            continue
        if ok and node.op_type == "Conv" and len(node.inputs) >= 2 and node.inputs[1] in ctx.consts \
                and _map_shape(node.in_shapes[0]) is not None and node.inputs[0] not in ctx.consts:
            Wt = ctx.consts[node.inputs[1]]
            geo = rule.local_geometry(node, Wt)
            if geo["nd"] == 2:
                Bp, S, Co, ph, pw = P.data.shape
                x = _local_transpose(ctx, node.name, P.data.reshape(Bp * S, Co, ph, pw), Wt, geo)
                if len(node.inputs) > 2:
                    bias = bias + P.data.sum((-2, -1)) @ ctx.consts[node.inputs[2]]
                Ci, Hi, Wi = _map_shape(node.in_shapes[0])
                P = Patches(x.reshape(Bp, S, Ci, *x.shape[-2:]), P.oy * geo["strides"][0] - geo["pads_begin"][0],
                            P.ox * geo["strides"][1] - geo["pads_begin"][1], Ci, Hi, Wi)
                P.data = P.data * P.grid()[2].unsqueeze(1).to(P.data.dtype)
                value = node.inputs[0]
                continue
        # anything else: continue densely with the general backward pass
        A = P.dense()
        shape = g.shapes[value]
        S = A.shape[1]
        A = A.expand(B, *A.shape[1:]).reshape(B, S, *shape)
        return backward(ctx, value, A, bias=bias.expand(B, S))


_MAX_LOCAL_MATRIX = 2**24  # entries of a precomputed local transpose matrix


def _local_transpose(ctx: Context, key: str, P: Tensor, Wt: Tensor, geo: dict) -> Tensor:
    """Transposed convolution of a batch of small patches (N, Co, ph, pw) -> (N, Ci, ph', pw').

    For small patches a dense matrix (Co*ph*pw, Ci*ph'*pw'), built once by transposed
    convolution of the identity, is much faster than the convolution routine."""
    N, Co, ph, pw = P.shape
    ph2 = (ph - 1) * geo["strides"][0] + (Wt.shape[-2] - 1) * geo["dilations"][0] + 1
    pw2 = (pw - 1) * geo["strides"][1] + (Wt.shape[-1] - 1) * geo["dilations"][1] + 1
    Ci = Wt.shape[1] * geo["groups"]
    m = Co * ph * pw
    if m * Ci * ph2 * pw2 > _MAX_LOCAL_MATRIX or N < m:
        return F.conv_transpose2d(P, Wt, stride=geo["strides"], dilation=geo["dilations"], groups=geo["groups"])
    cache = ctx.local_mats
    mkey = (key, ph, pw)
    M = cache.get(mkey)
    if M is None:
        eye = torch.eye(m, dtype=P.dtype, device=P.device).reshape(m, Co, ph, pw)
        M = F.conv_transpose2d(eye, Wt, stride=geo["strides"], dilation=geo["dilations"],
                               groups=geo["groups"]).reshape(m, -1)
        cache[mkey] = M
    return (P.reshape(N, m) @ M).reshape(N, Ci, ph2, pw2)


def _concretize(ctx: Context, P: Patches) -> Tensor:
    B = ctx.batch
    shp = (B, P.C, P.H, P.W)
    data = P.data.expand(B, *P.data.shape[1:])
    Bn, S = data.shape[:2]
    return ctx.input_set.min_linear_local(data.reshape(B, S, -1),
                                          lambda t: P.gather(t.reshape(shp)).reshape(B, S, -1))
