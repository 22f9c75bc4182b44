"""The process pool of ``prepare`` and ``stats``: forked workers, one thread each, that exit with their parent."""
from __future__ import annotations

import contextlib
import mmap
import os
import queue
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import numpy as np
import torch

POLL = 0.05         # seconds between two reads of the workers' item counts (pool_map's ``progress``)

_shared = None      # ``shared`` of the running pool_map, in a pool worker (set by _start_worker)
_counts = None      # the running pool_map's items done per task, shared memory (in a pool worker)
_advance = None     # what advance() calls while a task runs: adds to its count, or the caller's progress


def worker_count(workers: int | None) -> int:
    """``workers``, or every core when it is None or 0."""
    return max(1, workers or os.cpu_count() or 1)


def advance(items: int = 1) -> None:
    """Count ``items`` of the running task as done, for pool_map's ``progress`` (nothing outside a pool_map)."""
    if _advance is not None:
        _advance(items)


def pool_map(fn, shared, tasks: list, workers: int, progress=None):
    """Yield ``fn(shared, task)`` for every task, in the order they finish.

    With ``workers`` > 1 and more than one task, the calls run in a pool of forked processes. ``shared``
    (a file list, a store reader) reaches each worker once, through the fork, instead of with every task.

    ``progress(items)``, when given, is called here with the count of items done since its last call, as the
    tasks count them with :func:`advance` (a task of a thousand files reports file by file, not at its end):
    at once when the task runs in this process; from a worker through a shared-memory count per task that
    this process reads every ``POLL`` seconds (no message per item). A task's items are all counted before
    its result is yielded.
    """
    if workers == 1 or len(tasks) <= 1:
        yield from _in_process(fn, shared, tasks, progress)
        return
    # one int64 a task, written only by the worker running it: an anonymous shared mapping the fork inherits
    counts = np.frombuffer(mmap.mmap(-1, 8 * len(tasks)), dtype=np.int64)
    reported = 0
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("fork"), initializer=_start_worker,
                             initargs=(os.getpid(), shared, counts)) as pool:
        futures = [pool.submit(_call, fn, task, slot) for slot, task in enumerate(tasks)]
        finished = queue.SimpleQueue()                  # one queue to wait on, however many tasks are pending
        for future in futures:
            future.add_done_callback(finished.put)
        try:
            for _ in futures:
                future = None
                while future is None:
                    with contextlib.suppress(queue.Empty):
                        future = finished.get(timeout=POLL if progress else None)
                    if progress is not None and (now := int(counts.sum())) > reported:
                        progress(now - reported)
                        reported = now
                yield future.result()
        finally:                                # an error or Ctrl-C: drop what has not started
            for future in futures:
                future.cancel()


class CallerError(BaseException):
    """An exception of a caller's callback (a progress bar), carried through the handlers of the code that
    calls it -- whose ``except OSError`` must not take a broken pipe of the bar for a failed write of its own --
    to be raised again, unchanged, where the callback was given: ``raise carried.args[0]``."""


def carry(callback):
    """``callback`` with its exceptions wrapped in :class:`CallerError`."""
    def call(*args):
        try:
            return callback(*args)
        except BaseException as exc:
            raise CallerError(exc) from None
    return call


def _in_process(fn, shared, tasks, progress):
    global _advance
    for task in tasks:
        _advance = carry(progress) if progress is not None else None
        try:
            result = fn(shared, task)
        except CallerError as carried:
            raise carried.args[0] from None
        finally:
            _advance = None
        yield result


def _call(fn, task, slot: int):
    global _advance

    def count(items: int) -> None:
        _counts[slot] += items

    _advance = count
    try:
        return fn(_shared, task)
    finally:
        _advance = None


def _start_worker(parent: int, shared, counts) -> None:
    global _shared, _counts
    _shared, _counts = shared, counts
    torch.set_num_threads(1)
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()


def _exit_with_parent(parent: int) -> None:
    """End this worker when the parent is gone (killed): an orphaned worker would otherwise wait on the task
    queue forever, or race a resumed ``prepare`` on the same chunk's temporary files."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)
