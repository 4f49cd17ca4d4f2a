"""The local backend of campaigns: instances verified in a pool of worker processes.

:func:`run_local` keeps at most ``workers`` instances in flight in a
:class:`concurrent.futures.ProcessPoolExecutor` whose workers use one torch thread and
leave Ctrl-C to the parent.  When a worker process dies (a crash, the out-of-memory
killer) the pool is replaced; the instances that were in flight are retried one at a time,
and one that kills its worker again is recorded as ``error``.  Interrupted, it terminates
its own workers (by process id) before the interrupt goes on.
"""
from __future__ import annotations

import multiprocessing
import signal
from collections import Counter, deque
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Callable

from perturbkit.verify.instance import InstanceResult, one_line, verify_instance

#: how many times an instance may be running when its worker process dies
MAX_CRASHES = 2


def _init_worker() -> None:
    """Pool worker set-up: one torch thread; Ctrl-C is the parent's to handle."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import torch

    torch.set_num_threads(1)


def _mp_context():
    """Worker processes forked from a fork server that has imported torch and perturbkit once
    (no thread pools, so forking is safe, and new workers start in milliseconds, not seconds);
    spawn where there is no fork server (Windows)."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "perturbkit.verify.instance", "perturbkit.verify.runner"])
    return ctx


def run_local(jobs: list, *, workers: int, grace: float,
              on_result: Callable[[object, InstanceResult], None], task: Callable = verify_instance) -> None:
    """Verify ``jobs`` (campaign Instances) in ``workers`` processes; ``on_result(job, result)``
    as each one ends.

    At most ``workers`` instances are in flight, so when a worker process dies the suspects
    are known: each is retried alone, and recorded as ``error`` if it dies again.
    """
    queue = deque(jobs)
    crashes: Counter = Counter()
    ctx = _mp_context()
    fruitless = 0  # pools in a row that broke before finishing or blaming anything
    while queue:
        if fruitless >= MAX_CRASHES + 1:
            while queue:
                on_result(queue.popleft(), InstanceResult(
                    "error", message="the worker processes keep dying before they run anything"))
            return
        size = min(workers, len(queue))
        pool = ProcessPoolExecutor(max_workers=size, mp_context=ctx, initializer=_init_worker)
        running: dict = {}
        clean = False
        progress_before = (sum(crashes.values()), len(queue))
        try:
            broken = False
            while (queue and not broken) or running:
                while queue and not broken and len(running) < size:
                    # an instance whose worker died before runs alone, and alone it stays
                    if running and (crashes[queue[0].key] or any(crashes[j.key] for j in running.values())):
                        break
                    job = queue[0]
                    try:
                        fut = pool.submit(task, job.onnx_path, job.vnnlib_path, job.timeout, grace=grace)
                    except BrokenProcessPool:  # a worker died before we saw its future fail
                        broken = True
                        break
                    running[fut] = queue.popleft()
                if not running:
                    break
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in done:
                    job = running.pop(fut)
                    try:
                        res = fut.result()
                    except BrokenProcessPool:
                        broken = True
                        crashes[job.key] += 1
                        if crashes[job.key] < MAX_CRASHES:
                            queue.appendleft(job)
                            continue
                        res = InstanceResult("error", message=f"the worker process died ({crashes[job.key]} "
                                             "times) while verifying this instance")
                    except Exception as exc:  # noqa: BLE001 - e.g. a result that fails to unpickle
                        res = InstanceResult("error", message=one_line(exc))
                    on_result(job, res)
            clean = True
            fruitless = fruitless + 1 if (sum(crashes.values()), len(queue)) == progress_before else 0
        finally:
            if not clean:  # interrupted: stop the workers now (they are ours, by process id)
                for proc in list((getattr(pool, "_processes", None) or {}).values()):
                    if proc.is_alive():
                        proc.terminate()
            pool.shutdown(wait=clean, cancel_futures=True)
