"""Campaign instances as Ray tasks on an existing cluster (``pip install perturbkit[ray]``).

:func:`connect` calls ``ray.init(address=...)`` (``"auto"``, ``"HOST:PORT"``,
``"ray://HOST:10001"``, or ``"local"`` to start a Ray instance on this machine; an already
initialised Ray in this process is used as it is); :func:`run_ray` submits one task per
instance (one CPU each) and hands the results to ``on_result`` as :func:`ray.wait` returns
them.

The network and property files travel as bytes through Ray's object store (each distinct
file once), so the cluster's nodes need perturbkit installed but no shared file system; a
worker keeps them in a content-addressed folder under its temp directory.  A task whose
worker dies is retried once by Ray, then recorded as ``error``.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Callable

from perturbkit.errors import InputError
from perturbkit.verify.instance import InstanceResult, one_line, verify_instance

INSTALL_HINT = "pip install 'perturbkit[ray]'"


def require_ray():
    """The ``ray`` module, or an InputError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise InputError(f"--ray needs Ray, which is not installed here ({INSTALL_HINT})") from None
    return ray


def _local_copy(data: bytes, name: str) -> str:
    """A file holding ``data``, named ``name``, in a folder named after its hash (written once,
    atomically, so concurrent tasks on one node can share it)."""
    digest = hashlib.sha256(data).hexdigest()[:24]
    folder = Path(tempfile.gettempdir()) / f"perturbkit-ray-{getattr(os, 'getuid', lambda: 0)()}" / digest
    path = folder / name
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    return str(path)


def ray_task(onnx_data: bytes, onnx_name: str, vnnlib_data: bytes, vnnlib_name: str,
             timeout: float, grace: float, vnnlib_label: str, strategy: str = "auto") -> InstanceResult:
    """What one Ray task runs: :func:`verify_instance` on local copies of the two files."""
    try:
        onnx_path = _local_copy(onnx_data, onnx_name)
        vnnlib_path = _local_copy(vnnlib_data, vnnlib_name)
    except OSError as exc:
        return InstanceResult("error", message=f"cannot store the instance's files on the worker: {one_line(exc)}")
    return verify_instance(onnx_path, vnnlib_path, timeout, grace=grace, vnnlib_name=vnnlib_label, strategy=strategy)


def connect(address: str) -> bool:
    """Initialise Ray for ``address`` unless it already is; True when this call started it
    (then :func:`disconnect` ends it).  A failure is an InputError."""
    ray = require_ray()
    if ray.is_initialized():
        return False
    kwargs = {"include_dashboard": False} if address == "local" else {}
    try:
        ray.init(address=address, logging_level="WARNING", log_to_driver=False, **kwargs)
    except Exception as exc:  # noqa: BLE001 - ConnectionError, RuntimeError, ValueError, ...
        raise InputError(f"--ray {address}: cannot connect to a Ray cluster: {one_line(exc)}") from None
    return True


def disconnect() -> None:
    require_ray().shutdown()


def run_ray(jobs, *, grace: float, on_result: Callable[[object, InstanceResult], None],
            strategy: str = "auto") -> None:
    """Verify ``jobs`` (campaign Instances) as Ray tasks on the connected cluster;
    ``on_result(job, result)`` per task as it finishes."""
    ray = require_ray()
    remote = ray.remote(num_cpus=1, max_retries=1)(ray_task)
    blobs: dict[str, object] = {}
    refs: dict = {}
    try:
        for job in jobs:
            for path in (job.onnx_path, job.vnnlib_path):
                if path not in blobs:
                    blobs[path] = ray.put(Path(path).read_bytes())
            ref = remote.remote(blobs[job.onnx_path], Path(job.onnx_path).name, blobs[job.vnnlib_path],
                                Path(job.vnnlib_path).name, job.timeout, grace, job.vnnlib_path, strategy)
            refs[ref] = job
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                job = refs.pop(ref)
                try:
                    res = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - WorkerCrashedError, RayTaskError, ...
                    res = InstanceResult("error", message=f"Ray task failed: {one_line(exc)}")
                on_result(job, res)
    except BaseException:
        for ref in refs:
            try:
                ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - finished or already gone
                pass
        raise
