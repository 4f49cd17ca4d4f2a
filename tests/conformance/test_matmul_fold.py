"""``ops.linear._matmul`` folds the leading dims one operand broadcasts along into the rows
of fewer matrix products: same values and shapes as ``@``."""
import pytest
import torch

from perturbkit.ops.linear import _matmul

SHAPES = [
    ((1, 512, 1, 4, 8, 8), (1, 1, 1, 4, 8, 8)),   # coefficient rows against a per-sample constant
    ((1, 1, 1, 4, 8, 8), (1, 512, 1, 4, 8, 8)),   # the constant on the left
    ((2, 16, 3, 4, 5), (2, 1, 3, 5, 7)),
    ((2, 1, 3, 4, 5), (2, 16, 3, 5, 7)),
    ((1, 9, 4, 2, 3), (1, 1, 1, 3, 2)),           # two broadcast dims folded together
    ((3, 2, 4), (3, 4, 5)),                       # nothing to fold
    ((4, 7, 3), (3, 2)),                          # a matrix on the right
]


@pytest.mark.parametrize("sx,sy", SHAPES)
def test_fold_equals_matmul(sx, sy):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(sx, generator=g, dtype=torch.float64)
    y = torch.randn(sy, generator=g, dtype=torch.float64)
    got, want = _matmul(x, y), x @ y
    assert got.shape == want.shape
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-12)
