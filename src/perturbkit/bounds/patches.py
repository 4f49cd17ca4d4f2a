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

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from perturbkit.bounds.engine import Context, ElementLines, backward, element_lines, relaxation_of
from perturbkit.bounds.precision import relax as precise_relax
from perturbkit.ops.pool import spread_tiles
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
    #: ``data`` is also pending elsewhere (both summands of a residual join): never updated in place
    shared: bool = False

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
        # a strided view of every window on the grid the corners lie on, indexed at the
        # G corners (much faster than indexing every entry; only the windows asked for)
        y0, x0 = self.oy + top, self.ox + left
        ymin, xmin = int(y0.min()), int(x0.min())
        sy, sx = _grid_step(y0 - ymin), _grid_step(x0 - xmin)
        view = mp[:, :, ymin:, xmin:]
        Hv, Wv = view.shape[2], view.shape[3]
        st = view.stride()
        win = view.as_strided((B, (Hv - ph) // sy + 1, (Wv - pw) // sx + 1, Cm, ph, pw),
                              (st[0], sy * st[2], sx * st[3], st[1], st[2], st[3]))
        return win[:, (y0 - ymin) // sy, (x0 - xmin) // sx].unsqueeze(2)  # (B, G, 1, C', ph, pw)

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


def _grid_step(d: Tensor) -> int:
    """The largest step of a grid holding every offset of ``d`` (>= 0, one of them 0)."""
    step = 0
    for v in torch.unique(d).tolist():
        step = math.gcd(step, int(v))
    return max(step, 1)


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


def _is_map_add(ctx: Context, node) -> bool:
    """An Add of two runtime maps of the output's shape (a residual join)."""
    if node.op_type != "Add" or len(node.inputs) != 2 or any(i in ctx.consts for i in node.inputs):
        return False
    return _map_shape(node.out_shape) is not None and all(tuple(s) == tuple(node.out_shape) for s in node.in_shapes)


def _is_map_batchnorm(ctx: Context, node) -> bool:
    """A BatchNormalization (inference, constant statistics) of a runtime map (one not folded
    into a Conv: e.g. after a residual Add)."""
    return (node.op_type == "BatchNormalization" and not int(node.attrs.get("training_mode", 0))
            and node.inputs[0] not in ctx.consts and all(i in ctx.consts for i in node.inputs[1:])
            and _map_shape(node.out_shape) is not None and tuple(node.in_shapes[0]) == tuple(node.out_shape))


def supports_start(ctx: Context, name: str) -> bool:
    """Whether intermediate bounds of value ``name`` can start in patch mode: the output of a
    2-D Conv, of a residual Add of two maps or of a BatchNormalization of a map."""
    if name not in ctx.position:
        return False
    node = ctx.graph.nodes[ctx.position[name]]
    return _is_conv2d(ctx, node) or _is_map_add(ctx, node) or _is_map_batchnorm(ctx, node)


def supports_alpha(ctx: Context, name: str) -> bool:
    """Whether the patch walk from ``name`` reaches the input without a dense hand-over
    (alpha-CROWN's patch-form slopes need the whole walk in patch form, along a chain)."""
    if name not in ctx.position or not _is_conv2d(ctx, ctx.graph.nodes[ctx.position[name]]):
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


def _step(ctx: Context, node, shape: tuple[int, int, int]) -> Optional[str]:
    """How the walk crosses ``node``, whose output is the map ``shape`` (C, H, W) the patch
    lies on: 'activation', 'identity', 'batchnorm' (elementwise on the same map), 'conv',
    'pool', 'add' (a residual join), or None (a dense hand-over).  One table for the walk
    (:func:`_walk`) and its dry run (:func:`_extent`)."""
    same_map = bool(node.in_shapes) and _map_shape(node.in_shapes[0]) == shape
    if rule_for(node, ctx.graph.source).kind == "activation" and same_map:
        return "activation"
    if node.op_type in ("Identity", "Dropout") and same_map and len(node.inputs) == 1:
        return "identity"
    if _is_map_batchnorm(ctx, node) and same_map:
        return "batchnorm"
    if _is_conv2d(ctx, node):
        return "conv"
    if _pool_geometry(node) is not None and _map_shape(node.out_shape) == shape:
        return "pool"
    if _is_map_add(ctx, node) and _map_shape(node.out_shape) == shape:
        return "add"
    return None


def extent(ctx: Context, name: str) -> Optional[int]:
    """The largest patch ``C * ph * pw`` the walk from ``name`` meets (one position), or None
    when the walk would hand over to the dense pass: sizes the chunks of
    :func:`perturbkit.bounds.engine.tighten`.  Depends on the graph only (kept across calls)."""
    key = ("patch_extent", name)
    cache = ctx.net.derived
    if key not in cache:
        cache[key] = _extent(ctx, name)
    return cache[key]


def _extent(ctx: Context, name: str) -> Optional[int]:
    g = ctx.graph
    node = g.nodes[ctx.position[name]]
    win: dict[str, tuple[int, int, int, int]] = {}  # value -> window y0, y1, x0, x1 (start at position 0)

    def push(value: str, w: tuple[int, int, int, int]) -> None:
        v = win.get(value)
        win[value] = w if v is None else (min(v[0], w[0]), max(v[1], w[1]), min(v[2], w[2]), max(v[3], w[3]))

    def grown(w, kernel, strides, dil, pads):
        (kh, kw), (sh, sw), (dh, dw) = kernel, strides, dil
        return (w[0] * sh - pads[0], (w[1] - 1) * sh - pads[0] + (kh - 1) * dh + 1,
                w[2] * sw - pads[1], (w[3] - 1) * sw - pads[1] + (kw - 1) * dw + 1)

    push(name, (0, 1, 0, 1))
    biggest = 0
    while win:
        value = max(win, key=lambda v: ctx.position.get(v, -1))
        w = win.pop(value)
        shape = _map_shape(g.shapes[value]) if value in g.shapes else None
        if shape is None:
            return None
        biggest = max(biggest, shape[0] * (w[1] - w[0]) * (w[3] - w[2]))
        if value == g.input_name:
            continue
        node = g.nodes[ctx.position[value]]
        step = _step(ctx, node, shape)
        if step in ("activation", "identity", "batchnorm"):
            push(node.inputs[0], w)
        elif step == "conv":
            geo = rule_for(node, g.source).local_geometry(node, ctx.consts[node.inputs[1]])
            push(node.inputs[0], grown(w, ctx.consts[node.inputs[1]].shape[-2:], geo["strides"], geo["dilations"],
                                       geo["pads_begin"]))
        elif step == "pool":
            pool = _pool_geometry(node)
            push(node.inputs[0], grown(w, pool["kernel"], pool["strides"], pool["dilations"], pool["pads_begin"]))
        elif step == "add":
            push(node.inputs[0], w)
            push(node.inputs[1], w)
        else:
            return None
    return biggest


def lower_upper(ctx: Context, name: str, idx: Tensor, alphas: Optional[dict[str, Tensor]] = None,
                sides: tuple[str, ...] = ("lower", "upper")) -> tuple[Tensor, ...]:
    """CROWN lower and upper bounds of the flat elements ``idx`` (K,) of a Conv (or residual
    Add) output ``v`` -> a (B, K) tensor for each of ``sides`` ('lower', 'upper'; CROWN
    only: alpha-CROWN computes both).

    Layout: groups of ``R'`` channels asked for at one position (``R = m R'`` rows, the
    ``m`` sides of each), so the relaxation lines and the input set are gathered once per
    group; a position asking for more channels spans several groups, and the last group of
    a position repeats one of its channels (:func:`_group_size` picks ``R'`` for the fewest
    rows plus a cost per group; the caller, :func:`perturbkit.bounds.engine.tighten`, orders
    the elements so that a chunk's positions ask for about as many channels each).  The
    bounds do not depend on the layout.
    alpha-CROWN keeps one group per element (its slopes are per element).

    ``alphas`` (alpha-CROWN): activation node name -> free slopes in patch form
    (B, K, 2, C, ph, pw); missing entries are created (CROWN's slopes, requiring grad).
    """
    g = ctx.graph
    node = g.nodes[ctx.position[name]]
    C, H, W = _map_shape(node.out_shape)
    K = idx.numel()
    dev = idx.device
    pos = idx % (H * W)
    chan = idx // (H * W)
    if alphas is None:
        where, inv, counts = torch.unique(pos, return_inverse=True, return_counts=True)
        order = torch.argsort(inv * C + chan)  # by position, then channel
        first = torch.cumsum(counts, 0) - counts
        rank = torch.empty_like(inv)
        rank[order] = torch.arange(K, device=dev) - first[inv[order]]
        size = _group_size(counts)  # a position's channels in groups of `size` rows
        per = (counts + size - 1) // size
        group = (torch.cumsum(per, 0) - per)[inv] + rank // size  # (K,) the group of each element
        slot = rank % size
        where = torch.repeat_interleave(where, per)
        ch = torch.full((where.numel(), size), -1, dtype=chan.dtype, device=dev)
        ch[group, slot] = chan
        ch = torch.where(ch < 0, ch[:, :1], ch)  # (G, R'): padded with the group's first channel
    else:
        where, ch = pos, chan.view(K, 1)
    i, j = where // W, where % W
    Gn, Rh = ch.shape
    if _is_conv2d(ctx, node):
        rule = rule_for(node, g.source)
        Wt = ctx.consts[node.inputs[1]]
        b = ctx.consts[node.inputs[2]] if len(node.inputs) > 2 else None
        geo = rule.local_geometry(node, Wt)
        Cin, Hi, Wi = _map_shape(node.in_shapes[0])
        Wd = _dilate(Wt, geo["dilations"])
        groups = geo["groups"]
        if groups == 1:
            rows = Wd[ch]  # (G, R', Cin, kh, kw)
        else:  # output channel c reads only its group's input channels
            cin_g = Cin // groups
            rows = Wd.new_zeros(Gn, Rh, Cin, *Wd.shape[-2:])
            grp = ch // (C // groups)
            gi = torch.arange(Gn, device=dev).view(Gn, 1)
            ri = torch.arange(Rh, device=dev).view(1, Rh)
            for k in range(cin_g):
                rows[gi, ri, grp * cin_g + k] = Wd[ch, k]
        oy, ox = i * geo["strides"][0] - geo["pads_begin"][0], j * geo["strides"][1] - geo["pads_begin"][1]
        bias = torch.zeros(Gn, Rh, dtype=ctx.dtype, device=ctx.device) if b is None else b[ch]
        start, maps = node.inputs[0], (Cin, Hi, Wi)
    else:  # (a residual Add, a BatchNormalization) the identity patch on the value itself
        rows = torch.zeros(Gn, Rh, C, 1, 1, dtype=ctx.dtype, device=ctx.device)
        rows.scatter_(2, ch.view(Gn, Rh, 1, 1, 1), 1.0)
        oy, ox = i, j
        bias = torch.zeros(Gn, Rh, dtype=ctx.dtype, device=ctx.device)
        start, maps = name, (C, H, W)
    signs = [1.0 if side == "lower" else -1.0 for side in sides]  # minimise +v, -v
    m = len(signs)
    if m == 1:  # (rows is a new tensor)
        data = (rows if signs[0] == 1.0 else rows.neg_()).reshape(1, Gn, Rh, *rows.shape[2:])
        bias = (signs[0] * bias).reshape(1, Gn, Rh)
    else:
        data = torch.stack([sg * rows for sg in signs], 2).reshape(1, Gn, m * Rh, *rows.shape[2:])  # interleaved
        bias = torch.stack([sg * bias for sg in signs], -1).reshape(1, Gn, m * Rh)
    P = Patches(data, oy, ox, *maps)
    if start != name:
        P.data.mul_(P.valid().to(P.data.dtype))
    r = _walk(ctx, start, P, bias, alphas).reshape(-1, Gn, Rh, m)  # (B, G, R', m)
    r = r[:, group, slot] if alphas is None else r[:, :, 0]  # (B, K, m)
    return tuple(sg * r[..., k] for k, sg in enumerate(signs))


#: cost of one group (its gathered relaxation lines and input set) in rows of coefficients
_GROUP_COST = 2.0


def _group_size(counts: Tensor) -> int:
    """Rows per group for positions asking for ``counts`` (P,) channels each: a position
    spans ``ceil(c / size)`` groups, its last one padded; the size minimises rows plus
    :data:`_GROUP_COST` per group (one group per position wastes rows where the counts vary)."""
    top = int(counts.max())
    sizes = torch.arange(1, top + 1, device=counts.device)
    groups = ((counts.view(-1, 1) + sizes - 1) // sizes).sum(0)  # (top,)
    cost = groups * (sizes + _GROUP_COST)
    return int(torch.argmin(cost)) + 1


def _walk(ctx: Context, value: str, P: Patches, bias: Tensor,
          alphas: Optional[dict[str, Tensor]] = None) -> Tensor:
    """Lower bounds (B, G, R) of the patch coefficients ``P`` at ``value`` plus ``bias``.

    The walk follows the graph backwards in reverse topological order: the coefficients on
    a value are complete once every later node has been crossed, so a residual Add sends its
    patch down both branches and the two are summed where the branches meet
    (:func:`_sum_patches`).  At a node patch mode does not handle, every pending patch is
    scattered densely and the general backward pass takes over from there at once."""
    g = ctx.graph
    B = ctx.batch
    inplace = not torch.is_grad_enabled()
    pending: dict[str, Patches] = {value: P}
    pos = ctx.position
    while pending:
        value = max(pending, key=lambda v: pos.get(v, -1))
        P = pending.pop(value)
        if value == g.input_name:  # (position -1: the last one)
            bias = bias + _concretize(ctx, P)
            continue
        node = g.nodes[pos[value]]
        rule = rule_for(node, g.source)
        step = _step(ctx, node, (P.C, P.H, P.W))
        if alphas is not None and step not in ("activation", "conv"):
            step = None  # (alpha-CROWN walks chains of activations and convolutions only)
        if alphas is not None and step is not None and ctx.consumer_count.get(value, 0) != 1:
            step = None
        if alphas is not None and step == "activation" and rule.alpha_range(node) is not None:
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
            _push(pending, node.inputs[0], Patches(Ap * rel.lower.slope + An * rel.upper.slope, P.oy, P.ox,
                                                   P.C, P.H, P.W), inplace)
            continue
        if step == "activation":
            new, b = _through_lines(P, element_lines(ctx, node), inplace)
            bias = bias + b
            _push(pending, node.inputs[0], Patches(new, P.oy, P.ox, P.C, P.H, P.W), inplace)
            continue
        if step == "conv":
            Wt = ctx.consts[node.inputs[1]]
            geo = rule.local_geometry(node, Wt)
            Bp, G, R, Co, ph, pw = P.data.shape
            if len(node.inputs) > 2:
                bias = bias + P.data.sum((-2, -1)) @ ctx.consts[node.inputs[2]]
            x = _local_transpose(ctx, node.name, P.data.reshape(Bp * G * R, Co, ph, pw), Wt, geo)
            Ci, Hi, Wi = _map_shape(node.in_shapes[0])
            Q = Patches(x.reshape(Bp, G, R, Ci, *x.shape[-2:]), P.oy * geo["strides"][0] - geo["pads_begin"][0],
                        P.ox * geo["strides"][1] - geo["pads_begin"][1], Ci, Hi, Wi)
            valid = Q.valid().to(Q.data.dtype)
            Q.data = Q.data.mul_(valid) if inplace else Q.data * valid
            _push(pending, node.inputs[0], Q, inplace)
            continue
        if step == "pool":
            pool = _pool_geometry(node)
            if node.op_type == "MaxPool":
                Q, bias = _maxpool_back(ctx, node, P, bias, pool)
            else:
                Q = _avgpool_back(node, P, pool, inplace)
            _push(pending, node.inputs[0], Q, inplace)
            continue
        if step == "identity":
            _push(pending, node.inputs[0], P, inplace)
            continue
        if step == "batchnorm":
            gain, shift = rule.gain_shift(node, (None, *[ctx.consts[i] for i in node.inputs[1:]]))
            bias = bias + P.data.sum((-2, -1)) @ shift.reshape(-1)
            _push(pending, node.inputs[0], Patches(P.data * gain.reshape(-1, 1, 1), P.oy, P.ox, P.C, P.H, P.W),
                  inplace)
            continue
        if step == "add":
            # a residual join: the same coefficients on both summands (read-only from here on)
            shared = Patches(P.data, P.oy, P.ox, P.C, P.H, P.W, shared=True)
            _push(pending, node.inputs[0], shared, inplace)
            _push(pending, node.inputs[1], shared, inplace)
            continue
        # anything else: continue densely with the general backward pass, from every pending value
        if alphas is not None:
            raise RuntimeError("internal: alpha-CROWN patch walk reached a dense hand-over "
                               "(supports_alpha should have excluded this start)")
        G, R = P.data.shape[1:3]
        extra = {v: _dense(ctx, Q, v) for v, Q in pending.items()}
        r = backward(ctx, value, _dense(ctx, P, value), bias=bias.expand(B, G, R).reshape(B, G * R), extra=extra)
        return r.reshape(B, G, R)
    return bias.expand(B, *bias.shape[1:])


def _through_lines(P: Patches, lines: ElementLines, inplace: bool) -> tuple[Tensor, Tensor]:
    """Patch coefficients ``A`` through an elementwise relaxation -> (``A+ sl + A- su``, the
    bias ``<A+, il> + <A-, iu>`` (B, G, R)).

    Written as ``A su + A+ (sl - su)`` and ``<A, iu> + <A+, il - iu>``: one product with the
    gathered upper slopes, then the difference terms, which are zero where the two lines
    agree (ReLU: every stable element), at only the patch entries that lie on an element
    where they differ (:class:`perturbkit.bounds.engine.ElementLines`), or densely from
    gathered maps.  ``A`` is updated in place when ``inplace`` and it is not shared."""
    B = lines.su.shape[0]
    Bp, G, R = P.data.shape[:3]
    own = inplace and not P.shared and Bp >= B
    shp = (B, P.C, P.H, P.W)
    if lines.idx is None:
        g = P.gather(torch.cat([t.reshape(shp) for t in [lines.su] + lines.maps], 1)).split(P.C, dim=3)
        Ap = P.data.clamp(min=0)
        bias = P.data.new_zeros(())
        if len(g) > 2:  # <A+, il - iu> (+ <A, iu>)
            bias = (Ap.flatten(3) @ g[2].flatten(3).transpose(-1, -2)).squeeze(-1)
            if lines.has_iu:
                bias = bias + (P.data.flatten(3) @ g[3].flatten(3).transpose(-1, -2)).squeeze(-1)
        new = P.data.mul_(g[0]) if own else P.data * g[0]
        Ap = Ap.mul_(g[1]) if Ap.shape[0] == new.shape[0] else Ap * g[1]
        return new.add_(Ap), bias
    # the (group, element) pairs with the element inside the group's window
    ph, pw = P.ph, P.pw
    hw = P.H * P.W
    c, y, x = lines.idx // hw, (lines.idx % hw) // P.W, lines.idx % P.W
    dy = y.view(1, -1) - P.oy.view(-1, 1)  # (G, nu)
    dx = x.view(1, -1) - P.ox.view(-1, 1)
    gi, ui = ((dy >= 0) & (dy < ph) & (dx >= 0) & (dx < pw)).nonzero(as_tuple=True)
    off = (c[ui] * ph + dy[gi, ui]) * pw + dx[gi, ui]
    A = P.data.reshape(Bp, G, R, -1).permute(1, 3, 0, 2)  # (G, L, B', R) view
    sel = A[gi, off]  # (np, B', R): the entries where the lines differ
    pos = sel.clamp(min=0)
    su = P.gather(lines.su.reshape(shp))
    new = P.data.mul_(su) if own else P.data * su
    Bn = new.shape[0]
    col = lambda t: t[:, ui].t().unsqueeze(-1)  # noqa: E731  (B, nu) -> (np, B, 1)
    new.reshape(Bn, G, R, -1).permute(1, 3, 0, 2).index_put_((gi, off), pos * col(lines.d), accumulate=True)
    if lines.e is None and lines.i is None:
        return new, P.data.new_zeros(())
    terms = pos * col(lines.e) if lines.e is not None else 0.0
    if lines.i is not None:
        terms = terms + sel * col(lines.i)
    Bb = max(Bp, B)
    bias = P.data.new_zeros(G, Bb, R).index_add_(0, gi, terms.expand(-1, Bb, R))
    return new, bias.permute(1, 0, 2)


def _dense(ctx: Context, P: Patches, value: str) -> Tensor:
    """Patches at ``value`` as dense coefficients (B, G*R, *declared shape)."""
    A = P.dense()
    return A.expand(ctx.batch, *A.shape[1:]).reshape(ctx.batch, A.shape[1], *ctx.graph.shapes[value])


def _push(pending: dict[str, Patches], value: str, P: Patches, inplace: bool) -> None:
    """Add patch coefficients ``P`` to those already pending on ``value``."""
    Q = pending.get(value)
    pending[value] = P if Q is None else _sum_patches(Q, P, inplace)


def _sum_patches(P: Patches, Q: Patches, inplace: bool = False) -> Patches:
    """``P + Q`` on one map: the union of the two windows of every group.  When ``inplace``
    and one operand is not shared and its windows hold the other's at the same relative
    offset in every group (a residual block's body around its identity shortcut), the other
    is added into it; otherwise into new tensors: windows whose relative offset is the same
    in every group (the usual case: both branches have the same total stride and padding)
    by slicing, other ones by an indexed scatter."""
    for big, small in ((P, Q), (Q, P)):
        if not inplace or big.shared or big.data.shape[0] < small.data.shape[0]:
            continue
        dy, dx = small.oy - big.oy, small.ox - big.ox
        y0, x0 = int(dy[0]), int(dx[0])
        if (y0 >= 0 and x0 >= 0 and y0 + small.ph <= big.ph and x0 + small.pw <= big.pw
                and bool((dy == y0).all()) and bool((dx == x0).all())):
            big.data[..., y0:y0 + small.ph, x0:x0 + small.pw] += small.data
            return big
    dev = P.data.device
    oy, ox = torch.minimum(P.oy, Q.oy), torch.minimum(P.ox, Q.ox)
    ph = int(torch.maximum(P.oy + P.ph, Q.oy + Q.ph).sub(oy).max())
    pw = int(torch.maximum(P.ox + P.pw, Q.ox + Q.pw).sub(ox).max())
    Bp = max(P.data.shape[0], Q.data.shape[0])
    _, G, R, C = P.data.shape[:4]
    out = P.data.new_zeros(Bp, G, R, C, ph, pw)
    for T in (P, Q):
        dy, dx = T.oy - oy, T.ox - ox
        if bool((dy == dy[0]).all()) and bool((dx == dx[0]).all()):
            y0, x0 = int(dy[0]), int(dx[0])
            out[..., y0:y0 + T.ph, x0:x0 + T.pw] += T.data
        else:
            rows = (dy.view(G, 1) + torch.arange(T.ph, device=dev)).view(G, T.ph, 1)
            cols = (dx.view(G, 1) + torch.arange(T.pw, device=dev)).view(G, 1, T.pw)
            out_v = out.permute(1, 4, 5, 0, 2, 3)  # (G, ph, pw, B', R, C)
            src = T.data.expand(Bp, *T.data.shape[1:]).permute(1, 4, 5, 0, 2, 3)
            out_v.index_put_((torch.arange(G, device=dev).view(G, 1, 1), rows, cols), src, accumulate=True)
    return Patches(out, oy, ox, C, P.H, P.W)


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
    if list(pool["strides"]) == [kh, kw] and list(pool["dilations"]) == [1, 1]:  # windows tile the input
        x = spread_tiles(P.data * (1.0 / (kh * kw)), (kh, kw), (ph2, pw2))
    else:
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


def _conv_transpose(P: Tensor, Wt: Tensor, geo: dict) -> Tensor:
    """``conv_transpose2d`` of patches (N, Co, ph, pw) -> (N, Ci, ph', pw'), by the
    convolution routine except for a 1x1 kernel: a matrix product, placed on the stride's
    grid (the routine is several times slower there on CPU, with a stride most of all)."""
    N, Co, ph, pw = P.shape
    (sh, sw), groups = geo["strides"], geo["groups"]
    Ci = Wt.shape[1]
    if groups == 1 and tuple(Wt.shape[-2:]) == (1, 1):
        Y = torch.matmul(Wt.reshape(Co, Ci).t(), P.reshape(N, Co, ph * pw)).view(N, Ci, ph, pw)
        if (sh, sw) == (1, 1):
            return Y
        out = P.new_zeros(N, Ci, (ph - 1) * sh + 1, (pw - 1) * sw + 1)
        out[:, :, ::sh, ::sw] = Y
        return out
    return _in_blocks(P, lambda p: F.conv_transpose2d(p, Wt, stride=geo["strides"], dilation=geo["dilations"],
                                                   groups=groups))


#: row blocks of the convolution routine: it prepares a kernel for every new input shape
#: (about 1 ms each, once per process), so rows go through in blocks of these sizes only,
#: the last one padded with zero rows; per row the blocks run as fast as one large call
_ROW_BLOCK, _MIN_BLOCK = 256, 32


def _in_blocks(P: Tensor, f) -> Tensor:
    """``f`` (rows (n, ...) -> rows (n, ...)) of ``P`` (N, ...) in row blocks of
    ``_ROW_BLOCK`` and smaller powers of two down to ``_MIN_BLOCK`` -> (N, ...)."""
    N = P.shape[0]
    if N == 0:
        return f(P)
    sizes = [_ROW_BLOCK] * (N // _ROW_BLOCK)
    rest = -(-(N % _ROW_BLOCK) // _MIN_BLOCK) * _MIN_BLOCK  # (<= _ROW_BLOCK)
    b = _ROW_BLOCK
    while rest:
        if rest >= b:
            sizes.append(b)
            rest -= b
        b //= 2
    out = None
    start = 0
    for b in sizes:
        p = P[start:start + b]
        n = p.shape[0]
        if n < b:
            p = torch.cat([p, p.new_zeros(b - n, *p.shape[1:])])
        y = f(p)
        if out is None:
            if len(sizes) == 1 and n == b:
                return y
            out = y.new_empty(N, *y.shape[1:])
        out[start:start + n] = y[:n]
        start += n
    return out


def _local_transpose(ctx: Context, key: str, P: Tensor, Wt: Tensor, geo: dict) -> Tensor:
    """Transposed convolution of a batch of small patches (N, Co, ph, pw) -> (N, Ci, ph', pw').

    For small patches a dense matrix (Co*ph*pw, Ci*ph'*pw'), built once by transposed
    convolution of the identity, is much faster than the convolution routine."""
    N, Co, ph, pw = P.shape
    ph2 = (ph - 1) * geo["strides"][0] + (Wt.shape[-2] - 1) * geo["dilations"][0] + 1
    pw2 = (pw - 1) * geo["strides"][1] + (Wt.shape[-1] - 1) * geo["dilations"][1] + 1
    Ci = Wt.shape[1] * geo["groups"]
    m = Co * ph * pw
    # the matrix holds every (patch entry, input entry) pair, most of them zero for large
    # patches: worth it while the waste is below what the convolution routine loses on few
    # input channels and on strides (measured, one thread: bench/conv_transpose_choice.py)
    work = Co * Wt.shape[1] * Wt.shape[-2] * Wt.shape[-1] * ph * pw
    limit = min(50.0, max(4.0, 26.0 / Ci)) * (2.0 if max(geo["strides"]) > 1 else 1.0)
    if m * Ci * ph2 * pw2 > min(_MAX_LOCAL_MATRIX, limit * work) or 4 * N < m:
        return _conv_transpose(P, Wt, geo)
    mkey = (key, ph, pw, P.dtype, P.device)
    cache = ctx.net.derived  # depends on the weights only: kept across calls
    M = cache.get(mkey)
    if M is None:
        M = _transpose_matrix(Wt.to(P.dtype), ph, pw, geo)
        cache[mkey] = M
    return (P.reshape(N, m) @ M).reshape(N, Ci, ph2, pw2)


def _transpose_matrix(Wt: Tensor, ph: int, pw: int, geo: dict) -> Tensor:
    """The matrix (Co*ph*pw, Ci*ph'*pw') of the transposed convolution of (Co, ph, pw) patches:
    entry ((o, a, b), (c, a s + i d, b s' + j d')) is ``Wt[o, c - g(o) Ci/groups, i, j]``
    (``g(o)`` the group of output channel ``o``), written directly (one indexed copy)."""
    Co, Cig, kh, kw = Wt.shape
    (sh, sw), (dh, dw), groups = geo["strides"], geo["dilations"], geo["groups"]
    ph2, pw2 = (ph - 1) * sh + (kh - 1) * dh + 1, (pw - 1) * sw + (kw - 1) * dw + 1
    dev = Wt.device
    o = torch.arange(Co, device=dev).view(Co, 1, 1, 1, 1, 1)
    a = torch.arange(ph, device=dev).view(1, ph, 1, 1, 1, 1)
    b = torch.arange(pw, device=dev).view(1, 1, pw, 1, 1, 1)
    c = torch.arange(Cig, device=dev).view(1, 1, 1, Cig, 1, 1) + (o // (Co // groups)) * Cig
    i = torch.arange(kh, device=dev).view(1, 1, 1, 1, kh, 1)
    j = torch.arange(kw, device=dev).view(1, 1, 1, 1, 1, kw)
    shape = (Co, ph, pw, Cig, kh, kw)
    rows = ((o * ph + a) * pw + b).expand(shape)
    cols = ((c * ph2 + a * sh + i * dh) * pw2 + b * sw + j * dw).expand(shape)
    vals = Wt.view(Co, 1, 1, Cig, kh, kw).expand(shape)
    M = Wt.new_zeros(Co * ph * pw, Cig * groups * ph2 * pw2)
    M[rows.reshape(-1), cols.reshape(-1)] = vals.reshape(-1)
    return M


def _concretize(ctx: Context, P: Patches) -> Tensor:
    """min over the input set of <A, x> for every patch -> (B, G, R).  Consumes ``P.data``."""
    B = ctx.batch
    Bp, G, R = P.data.shape[:3]
    A = P.data.reshape(Bp, G, R, -1)

    def gather(*ts: Tensor) -> list[Tensor]:  # one gather for several (B, n) tensors
        maps = torch.cat([t.reshape(B, P.C, P.H, P.W) for t in ts], 1)
        return [g.reshape(B, G, -1) for g in P.gather(maps).split(P.C, dim=3)]

    return ctx.input_set.min_linear_local(A, gather, consume=not torch.is_grad_enabled())
