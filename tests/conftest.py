import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
SHARED = ROOT.parent / "shared" / "benchmarks"
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

# One intra-op thread per test process: the suite runs on 2 cores with 2 xdist workers, and
# oversubscribed torch threads spin against each other (minutes instead of seconds).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _pinned_threads():
    torch.manual_seed(0)
    yield


def shared_or_skip(*parts: str) -> Path:
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"{p} not available")
    return p
