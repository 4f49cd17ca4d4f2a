"""Patch mode for intermediate CROWN bounds of convolutional layers.

The coefficients of one output neuron of a convolution, pushed back through convolutions
and elementwise relaxations, are non-zero only on its receptive field.  Instead of dense
``(B, S, C, H, W)`` tensors (mostly zeros) we keep, per specification, a small patch
``(C, ph, pw)`` and the position of its top-left corner in the ``(C, H, W)`` feature map
(the "patches" idea of Xu et al. 2020, written here from the geometry of convolution).

The walk goes from the start convolution towards the input along a chain in which every
value has a single consumer; it handles 2-D Conv, elementwise activations, 2-D MaxPool (its
relaxation selects one element of every window: the coefficients move to that element, a
scatter inside the grown patch) and 2-D AveragePool without padding (a depthwise transposed
convolution with weights ``1 / (kh kw)``).  At any other
operator the patches are scattered into a dense tensor and the general backward pass
(:func:`perturbkit.bounds.engine.backward`) takes over, so the result is the same as the
dense computation, only cheaper.

Layout: specifications come in groups of ``R`` sharing one position (the lower and the
upper bound of one neuron: ``R = 2``), so per-position tensors (relaxation lines, the
input set's centre and radius) are gathered once per group and broadcast.

Shapes: ``data`` is ``(B', G, R, C, ph, pw)`` with ``B'`` 1 (batch independent) or B and
``G`` groups; ``oy``/``ox`` are ``(G,)`` int64 (may be negative: patches can overhang the
map, and entries outside the map are kept at zero).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from perturbkit.bounds.engine import Context, backward, relaxation_of
from perturbkit.bounds.precision import relax as precise_relax
from perturbkit.ops.registry import rule_for

Tensor = torch.Tensor


@dataclass
class Patches:
    data: Tensor  # (B', G, R, C, ph, pw)
    oy: Tensor  # (G,)
    ox: Tensor  # (G,)
    C: int
    H: int
    W: int

    @property
    def ph(self) -> int:
        return self.data.shape[-2]

    @property
    def pw(self) -> int:
        return self.data.shape[-1]

    def valid(self) -> Tensor:
        """(G, 1, 1, ph, pw) mask of patch entries inside the map."""
        dev = self.data.device
        yy = self.oy.view(-1, 1, 1) + torch.arange(self.ph, device=dev).view(1, -1, 1)
        xx = self.ox.view(-1, 1, 1) + torch.arange(self.pw, device=dev).view(1, 1, -1)
        v = ((yy >= 0) & (yy < self.H)) & ((xx >= 0) & (xx < self.W))
        return v.unsqueeze(1).unsqueeze(1)

    def gather(self, m: Tensor) -> Tensor:
        """Values of maps ``m`` (B, C', H, W) under every group's patch -> (B, G, 1, C', ph, pw),
        0 outside the map; ``C'`` may be a multiple of ``C`` (maps stacked along channels)."""
        ph, pw = self.ph, self.pw
        B, Cm = m.shape[:2]
        top = max(0, -int(self.oy.min()))
        left = max(0, -int(self.ox.min()))
        bottom = max(0, int(self.oy.max()) + ph - self.H)
        right = max(0, int(self.ox.max()) + pw - self.W)
        mp = F.pad(m, (left, right, top, bottom))
        dev = m.device
        yy = (self.oy + top).view(-1, 1, 1) + torch.arange(ph, device=dev).view(1, -1, 1)  # (G, ph, 1)
        xx = (self.ox + left).view(-1, 1, 1) + torch.arange(pw, device=dev).view(1, 1, -1)  # (G, 1, pw)
        # only the G windows asked for (an unfold of the whole map costs every position)
        rows = mp[:, :, yy, xx]  # (B, C', G, ph, pw)
        return rows.permute(0, 2, 1, 3, 4).unsqueeze(2)

    def dense(self) -> Tensor:
        """Scatter into dense coefficients (B', G*R, C, H, W)."""
        Bp, G, R, C, ph, pw = self.data.shape
        top = max(0, -int(self.oy.min()))
        left = max(0, -int(self.ox.min()))
        Hp = max(self.H + top, int(self.oy.max()) + top + ph)
        Wp = max(self.W + left, int(self.ox.max()) + left + pw)
        out = self.data.new_zeros(Bp, G, R, C, Hp, Wp)
        dev = self.data.device
        rows = (self.oy + top).view(G, 1) + torch.arange(ph, device=dev).view(1, ph)  # (G, ph)
        cols = (self.ox + left).view(G, 1) + torch.arange(pw, device=dev).view(1, pw)  # (G, pw)
        g = torch.arange(G, device=dev)
        # out[:, g, :, :, rows[g], cols[g]] = data[:, g]  (patches of one group never overlap)
        idx_g = g.view(G, 1, 1)
        out_v = out.permute(1, 4, 5, 0, 2, 3)  # (G, Hp, Wp, B', R, C)
        out_v[idx_g, rows.view(G, ph, 1), cols.view(G, 1, pw)] = self.data.permute(1, 4, 5, 0, 2, 3)
        out = out[..., top:top + self.H, left:left + self.W]
        return out.reshape(Bp, G * R, C, self.H, self.W)


def _map_shape(shape) -> Optional[tuple[int, int, int]]:
    """(C, H, W) for a declared shape (1, C, H, W), else None."""
    if len(shape) == 4 and shape[0] == 1:
        return tuple(shape[1:])
    return None


def _dilate(W: Tensor, dil: list[int]) -> Tensor:
    if list(dil) == [1, 1]:
        return W
    kh, kw = W.shape[-2:]
    out = W.new_zeros(*W.shape[:-2], (kh - 1) * dil[0] + 1, (kw - 1) * dil[1] + 1)
    out[..., ::dil[0], ::dil[1]] = W
    return out


def _is_conv2d(ctx: Context, node) -> bool:
    if node.op_type != "Conv" or len(node.inputs) < 2 or node.inputs[1] not in ctx.consts:
        return False
    if node.inputs[0] in ctx.consts or _map_shape(node.in_shapes[0]) is None or _map_shape(node.out_shape) is None:
        return False
    return rule_for(node).local_geometry(node, ctx.consts[node.inputs[1]])["nd"] == 2


def supports_start(ctx: Context, name: str) -> bool:
    """Whether intermediate bounds of value ``name`` can start in patch mode."""
    return name in ctx.position and _is_conv2d(ctx, ctx.graph.nodes[ctx.position[name]])


def supports_alpha(ctx: Context, name: str) -> bool:
    """Whether the patch walk from ``name`` reaches the input without a dense hand-over
    (alpha-CROWN's patch-form slopes need the whole walk in patch form)."""
    if not supports_start(ctx, name):
        return False
    g = ctx.graph
    value = g.nodes[ctx.position[name]].inputs[0]
    while value != g.input_name:
        if ctx.consumer_count.get(value, 0) != 1 or value not in ctx.position:
            return False
        node = g.nodes[ctx.position[value]]
        kind = rule_for(node, g.source).kind
        if not (kind == "activation" or _is_conv2d(ctx, node)):
            return False
        value = node.inputs[0]
    return True


def lower_upper(ctx: Context, name: str, idx: Tensor,
                alphas: Optional[dict[str, Tensor]] = None) -> tuple[Tensor, Tensor]:
    """CROWN lower and upper bounds of the flat elements ``idx`` (K,) of a Conv output ``v``
    -> two (B, K) tensors.

    ``alphas`` (alpha-CROWN): activation node name -> free slopes in patch form
    (B, K, 2, C, ph, pw); missing entries are created (CROWN's slopes, requiring grad).
    """
    g = ctx.graph
    node = g.nodes[ctx.position[name]]
    rule = rule_for(node, g.source)
    Wt = ctx.consts[node.inputs[1]]
    b = ctx.consts[node.inputs[2]] if len(node.inputs) > 2 else None
    geo = rule.local_geometry(node, Wt)
    Co, Ho, Wo = _map_shape(node.out_shape)
    Cin, Hi, Wi = _map_shape(node.in_shapes[0])
    c = idx // (Ho * Wo)
    i = (idx // Wo) % Ho
    j = idx % Wo
    Wd = _dilate(Wt, geo["dilations"])
    groups = geo["groups"]
    K = idx.numel()
    if groups == 1:
        rows = Wd[c]
    else:  # output channel c reads only its group's input channels
        cin_g = Cin // groups
        rows = Wd.new_zeros(K, Cin, *Wd.shape[-2:])
        grp = c // (Co // groups)
        ar = torch.arange(K, device=idx.device)
        for k in range(cin_g):
            rows[ar, grp * cin_g + k] = Wd[c, k]
    data = torch.stack([rows, -rows], 1).unsqueeze(0)  # (1, K, 2, Cin, kh, kw): +v and -v
    P = Patches(data, i * geo["strides"][0] - geo["pads_begin"][0], j * geo["strides"][1] - geo["pads_begin"][1],
                Cin, Hi, Wi)
    P.data.mul_(P.valid().to(P.data.dtype))
    bias = torch.zeros(1, K, 2, dtype=ctx.dtype, device=ctx.device)
    if b is not None:
        bias = bias + torch.stack([b[c], -b[c]], 1).unsqueeze(0)
    r = _walk(ctx, node.inputs[0], P, bias, alphas)  # (B, K, 2)
    return r[:, :, 0], -r[:, :, 1]


def _walk(ctx: Context, value: str, P: Patches, bias: Tensor,
          alphas: Optional[dict[str, Tensor]] = None) -> Tensor:
    """Lower bounds (B, G, R) of the patch coefficients at ``value`` plus ``bias``."""
    g = ctx.graph
    B = ctx.batch
    inplace = not torch.is_grad_enabled()
    while True:
        if value == g.input_name:
            return bias + _concretize(ctx, P)
        node = g.nodes[ctx.position[value]]
        rule = rule_for(node, g.source)
        single = ctx.consumer_count.get(value, 0) == 1
        if (alphas is not None and single and rule.kind == "activation" and rule.alpha_range(node) is not None
                and _map_shape(node.in_shapes[0]) == (P.C, P.H, P.W)):
            # alpha-CROWN: relax in patch space with per-specification slopes
            x = ctx.intervals[node.inputs[0]]
            shp = (B, P.C, P.H, P.W)
            lo_g, hi_g = P.gather(torch.cat([x.lo.reshape(shp), x.hi.reshape(shp)], 1)).split(P.C, dim=3)
            consts = [ctx.consts[i] for i in node.inputs[1:]]
            if node.name not in alphas:
                a0 = rule.alpha_init(node, lo_g, hi_g, *consts)
                alphas[node.name] = a0.expand(B, *P.data.shape[1:]).clone().requires_grad_(True)
            rel = precise_relax(rule, node, lo_g, hi_g, consts, alphas[node.name])
            Ap = P.data.clamp(min=0)
            An = P.data - Ap
            for part, line in ((Ap, rel.lower), (An, rel.upper)):
                if line.intercept.dim() > 0 or bool(line.intercept):
                    bias = bias + (part * line.intercept).flatten(3).sum(-1)
            P = Patches(Ap * rel.lower.slope + An * rel.upper.slope, P.oy, P.ox, P.C, P.H, P.W)
            value = node.inputs[0]
            continue
        if single and rule.kind == "activation" and _map_shape(node.in_shapes[0]) == (P.C, P.H, P.W):
            rel = relaxation_of(ctx, node)
            shp = (B, P.C, P.H, P.W)
            parts = [rel.lower.slope, rel.upper.slope]
            zl = not bool(rel.lower.intercept.any())
            zu = not bool(rel.upper.intercept.any())
            parts += ([] if zl else [rel.lower.intercept]) + ([] if zu else [rel.upper.intercept])
            maps = torch.cat([t.expand(B, 1, P.C, P.H, P.W).reshape(shp) for t in parts], 1)
            gathered = P.gather(maps).split(P.C, dim=3)  # each (B, G, 1, C, ph, pw)
            Ap = P.data.clamp(min=0)
            An = P.data - Ap
            k = 2
            if not zl:
                bias = bias + (Ap * gathered[k]).flatten(3).sum(-1)
                k += 1
            if not zu:
                bias = bias + (An * gathered[k]).flatten(3).sum(-1)
            if inplace and Ap.shape[0] == B:  # in place: fewer large temporaries
                new = Ap.mul_(gathered[0]).add_(An.mul_(gathered[1]))
            else:
                new = (Ap * gathered[0]).add_(An * gathered[1])
            P = Patches(new, P.oy, P.ox, P.C, P.H, P.W)
            value = node.inputs[0]
            continue
        if single and _is_conv2d(ctx, node):
            Wt = ctx.consts[node.inputs[1]]
            geo = rule.local_geometry(node, Wt)
            Bp, G, R, Co, ph, pw = P.data.shape
            if len(node.inputs) > 2:
                bias = bias + P.data.sum((-2, -1)) @ ctx.consts[node.inputs[2]]
            x = _local_transpose(ctx, node.name, P.data.reshape(Bp * G * R, Co, ph, pw), Wt, geo)
            Ci, Hi, Wi = _map_shape(node.in_shapes[0])
            P = Patches(x.reshape(Bp, G, R, Ci, *x.shape[-2:]), P.oy * geo["strides"][0] - geo["pads_begin"][0],
                        P.ox * geo["strides"][1] - geo["pads_begin"][1], Ci, Hi, Wi)
            valid = P.valid().to(P.data.dtype)
            P.data = P.data.mul_(valid) if inplace else P.data * valid
            value = node.inputs[0]
            continue
        pool = _pool_geometry(node) if single else None
        if pool is not None and _map_shape(node.out_shape) == (P.C, P.H, P.W):
            if node.op_type == "MaxPool":
                P, bias = _maxpool_back(ctx, node, P, bias, pool)
            else:
                P = _avgpool_back(node, P, pool, inplace)
            value = node.inputs[0]
            continue
        # anything else: continue densely with the general backward pass
        Bp, G, R = P.data.shape[:3]
        A = P.dense()
        A = A.expand(B, *A.shape[1:]).reshape(B, G * R, *g.shapes[value])
        if alphas is not None:
            raise RuntimeError("internal: alpha-CROWN patch walk reached a dense hand-over "
                               "(supports_alpha should have excluded this start)")
        return backward(ctx, value, A, bias=bias.expand(B, G, R).reshape(B, G * R)).reshape(B, G, R)


def _pool_geometry(node) -> Optional[dict]:
    """Kernel, strides, dilations and leading pads of a 2-D MaxPool or AveragePool that patch
    mode handles (AveragePool: no padding and no ceil mode, so every window has the same
    divisor), else None."""
    if node.op_type not in ("MaxPool", "AveragePool"):
        return None
    from perturbkit.ops.conv import conv_pads
    from perturbkit.ops.util import int_list

    kernel = list(int_list(node.attrs["kernel_shape"]))
    if len(kernel) != 2 or _map_shape(node.in_shapes[0]) is None or _map_shape(node.out_shape) is None:
        return None
    strides = list(int_list(node.attrs.get("strides", [1, 1])))
    dil = list(int_list(node.attrs.get("dilations", [1, 1])))
    pads = list(conv_pads(node, tuple(node.in_shapes[0][2:]), tuple(kernel)))
    if node.op_type == "AveragePool" and (any(pads) or dil != [1, 1] or int(node.attrs.get("ceil_mode", 0))):
        return None
    return {"kernel": kernel, "strides": strides, "dilations": dil, "pads_begin": pads[:2]}


def _grown(P: Patches, pool: dict) -> tuple[int, int, Tensor, Tensor]:
    """Patch size and corner on the pooling input of a patch on its output."""
    (kh, kw), (sh, sw), (dh, dw) = pool["kernel"], pool["strides"], pool["dilations"]
    ph2 = (P.ph - 1) * sh + (kh - 1) * dh + 1
    pw2 = (P.pw - 1) * sw + (kw - 1) * dw + 1
    return ph2, pw2, P.oy * sh - pool["pads_begin"][0], P.ox * sw - pool["pads_begin"][1]


def _avgpool_back(node, P: Patches, pool: dict, inplace: bool) -> Patches:
    """``AveragePool`` transposed on patches: every coefficient spreads ``1 / (kh kw)`` over its window."""
    Bp, G, R, C, ph, pw = P.data.shape
    kh, kw = pool["kernel"]
    ph2, pw2, oy2, ox2 = _grown(P, pool)
    w = P.data.new_full((C, 1, kh, kw), 1.0 / (kh * kw))
    x = F.conv_transpose2d(P.data.reshape(Bp * G * R, C, ph, pw), w, stride=pool["strides"], groups=C)
    Ci, Hi, Wi = _map_shape(node.in_shapes[0])
    out = Patches(x.reshape(Bp, G, R, C, ph2, pw2), oy2, ox2, Ci, Hi, Wi)
    valid = out.valid().to(out.data.dtype)
    out.data = out.data.mul_(valid) if inplace else out.data * valid
    return out


def _maxpool_back(ctx: Context, node, P: Patches, bias: Tensor, pool: dict) -> tuple[Patches, Tensor]:
    """``MaxPool`` relaxed (:class:`perturbkit.ops.pool.MaxPool`: one selected element per
    window, a lower line of slope 1 on it, an upper line of slope 1 or a constant) and
    transposed on patches: each coefficient goes to its window's selected element."""
    B = ctx.batch
    rel = relaxation_of(ctx, node)
    Ci, Hi, Wi = _map_shape(node.in_shapes[0])
    C, Ho, Wo = P.C, P.H, P.W
    sel = rel.lower.index.reshape(B, C, Ho, Wo) % (Hi * Wi)  # flat spatial input index of the selected element
    shp = (B, C, Ho, Wo)
    maps = torch.cat([rel.lower.slope.reshape(shp), rel.upper.slope.reshape(shp),
                      rel.lower.intercept.reshape(shp).clamp(min=torch.finfo(P.data.dtype).min),
                      rel.upper.intercept.reshape(shp), (sel // Wi).to(P.data.dtype), (sel % Wi).to(P.data.dtype)], 1)
    sl_lo, sl_up, ic_lo, ic_up, iy, ix = P.gather(maps).split(C, dim=3)  # each (B, G, 1, C, ph, pw)
    Ap = P.data.clamp(min=0)
    An = P.data - Ap
    bias = bias + (Ap * ic_lo).flatten(3).sum(-1) + (An * ic_up).flatten(3).sum(-1)
    val = (Ap * sl_lo).add_(An * sl_up)  # (B, G, R, C, ph, pw)
    ph2, pw2, oy2, ox2 = _grown(P, pool)
    G = P.data.shape[1]
    ry = iy - oy2.view(1, G, 1, 1, 1, 1).to(iy.dtype)
    rx = ix - ox2.view(1, G, 1, 1, 1, 1).to(ix.dtype)
    tgt = (ry * pw2 + rx).round().long().clamp_(0, ph2 * pw2 - 1)  # outside the map: val is 0 there
    R = P.data.shape[2]
    tgt = tgt.expand(B, G, R, C, P.ph, P.pw).reshape(B, G, R, C, -1)
    new = val.new_zeros(B, G, R, C, ph2 * pw2).scatter_add_(-1, tgt, val.reshape(B, G, R, C, -1))
    out = Patches(new.reshape(B, G, R, C, ph2, pw2), oy2, ox2, Ci, Hi, Wi)
    out.data.mul_(out.valid().to(out.data.dtype))
    return out, bias


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
    mkey = (key, ph, pw, P.dtype, P.device)
    cache = ctx.net.derived  # depends on the weights only: kept across calls
    M = cache.get(mkey)
    if M is None:
        eye = torch.eye(m, dtype=P.dtype, device=P.device).reshape(m, Co, ph, pw)
        M = F.conv_transpose2d(eye, Wt, stride=geo["strides"], dilation=geo["dilations"],
                               groups=geo["groups"]).reshape(m, -1)
        cache[mkey] = M
    return (P.reshape(N, m) @ M).reshape(N, Ci, ph2, pw2)


def _concretize(ctx: Context, P: Patches) -> Tensor:
    """min over the input set of <A, x> for every patch -> (B, G, R).  Consumes ``P.data``."""
    B = ctx.batch
    Bp, G, R = P.data.shape[:3]
    A = P.data.reshape(Bp, G, R, -1)

    def gather(*ts: Tensor) -> list[Tensor]:  # one gather for several (B, n) tensors
        maps = torch.cat([t.reshape(B, P.C, P.H, P.W) for t in ts], 1)
        return [g.reshape(B, G, -1) for g in P.gather(maps).split(P.C, dim=3)]

    return ctx.input_set.min_linear_local(A, gather, consume=not torch.is_grad_enabled())
