"""Conformance cases of the broadcasting and selection rules (``perturbkit.ops.broadcast``).

Appended to :data:`tests.conformance.cases.CASES`.  Expand's ``shape`` and Tile's
``repeats`` are absorbed into attributes at import (``ATTR_INPUTS`` in ``cases.py``);
Where's condition stays input 0, a constant boolean tensor (written to the one-node ONNX
model as a boolean initializer).
"""
from __future__ import annotations

import torch

from .cases import _c, _ints, rnd

_gen = torch.Generator().manual_seed(20240617)


def _mask(*shape: int) -> torch.Tensor:
    """Pinned random boolean condition with both values present."""
    m = torch.rand(*shape, generator=_gen) < 0.5
    m.view(-1)[0], m.view(-1)[-1] = True, False
    return m


SHAPE_CASES = [
    # ---- Expand: numpy broadcast to attrs['shape'] ---------------------------------------------
    _c("expand_rank_up", "Expand", [(3, 1)], {"shape": _ints(2, 3, 4)}),
    _c("expand_both_ways", "Expand", [(2, 1, 4)], {"shape": _ints(3, 1)}),
    _c("expand_noop_short", "Expand", [(2, 3)], {"shape": _ints(1)}),
    # ---- Tile: repeats per axis ----------------------------------------------------------------
    _c("tile_2d", "Tile", [(2, 3)], {"repeats": _ints(2, 1)}),
    _c("tile_3d", "Tile", [(1, 2, 3)], {"repeats": _ints(3, 2, 2)}),
    _c("tile_ones", "Tile", [(2, 2)], {"repeats": _ints(1, 1)}),
    # ---- Where with a constant condition ---------------------------------------------------------
    _c("where_both_runtime", "Where", [(2, 3), (2, 3), (2, 3)], consts={0: _mask(2, 3)}),
    _c("where_bcast_cond", "Where", [(3,), (2, 3), (2, 3)], consts={0: _mask(3)}),
    _c("where_const_a", "Where", [(2, 3), (2, 3), (2, 3)], consts={0: _mask(2, 3), 1: rnd(2, 3)}),
    _c("where_masked_fill", "Where", [(1, 4), (), (2, 4)], consts={0: _mask(1, 4), 1: torch.tensor(-1e4, dtype=torch.float64)}),
    _c("where_const_b_bcast", "Where", [(2, 1, 3), (4, 3), (1,)], consts={0: _mask(2, 1, 3), 2: rnd(1)}),
    _c("where_runtime_bcast", "Where", [(2, 3), (3,), (2, 1)], consts={0: _mask(2, 3)}),
]
