"""The process pool of ``prepare`` and ``stats``: forked workers, one thread each, that exit with their parent."""
from __future__ import annotations

import os
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import get_context

import torch

_shared = None      # ``shared`` of the running pool_map, in a pool worker (set by _start_worker)


def worker_count(workers: int | None) -> int:
    """``workers``, or every core when it is None or 0."""
    return max(1, workers or os.cpu_count() or 1)


def pool_map(fn, shared, tasks: list, workers: int):
    """Yield ``fn(shared, task)`` for every task, in the order they finish.

    With ``workers`` > 1 and more than one task, the calls run in a pool of forked processes. ``shared``
    (a file list, a store reader) reaches each worker once, through the fork, instead of with every task.
    """
    if workers == 1 or len(tasks) <= 1:
        yield from (fn(shared, task) for task in tasks)
        return
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("fork"), initializer=_start_worker,
                             initargs=(os.getpid(), shared)) as pool:
        pending = {pool.submit(_call, fn, task) for task in tasks}
        try:
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                yield from (future.result() for future in finished)
        finally:                                # an error or Ctrl-C: drop what has not started
            for future in pending:
                future.cancel()


def _call(fn, task):
    return fn(_shared, task)


def _start_worker(parent: int, shared) -> None:
    global _shared
    _shared = shared
    torch.set_num_threads(1)
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()


def _exit_with_parent(parent: int) -> None:
    """End this worker when the parent is gone (killed): an orphaned worker would otherwise wait on the task
    queue forever, or race a resumed ``prepare`` on the same chunk's temporary files."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)
