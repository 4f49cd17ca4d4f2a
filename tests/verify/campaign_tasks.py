"""Worker tasks for tests/verify/test_campaign.py (importable by the campaign's worker processes)."""
from __future__ import annotations

import os
import time

from perturbkit.verify.instance import verify_instance


def crash_on_tiny(onnx_path: str, vnnlib_path: str, timeout: float, **kwargs):
    """Like verify_instance, but the worker process dies on the test_tiny network."""
    if os.path.basename(onnx_path) == "test_tiny.onnx":
        os._exit(3)
    return verify_instance(onnx_path, vnnlib_path, timeout, **kwargs)


def stall_on_prop_4(onnx_path: str, vnnlib_path: str, timeout: float, **kwargs):
    """Like verify_instance, but property 4 takes a minute (a deterministic slow instance)."""
    if os.path.basename(vnnlib_path) == "prop_4.vnnlib":
        time.sleep(60)
    return verify_instance(onnx_path, vnnlib_path, timeout, **kwargs)
