"""Checkpoint writes on a background thread, in order, so that training of round t+1 overlaps round t's writes.

Re-exported by :mod:`flatfl.checkpoint`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from flatfl.statedict import StateDict


class BackgroundWriter:
    """Runs checkpoint writes on one background thread, in submission order.

    Training of round t+1 overlaps the (fsynced) writes of round t. Writes stay ordered, so
    the commit protocol (round file, metrics line, then state) holds; ``close()`` waits for
    all of them, and an exception raised by a write is re-raised on the next ``submit`` or
    on ``close``. Callers pass tensors that are not modified afterwards (CPU snapshots).
    """

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="flatfl-ckpt", initializer=_lower_priority)
        self._pending: list[Future] = []

    def submit(self, fn: Callable[[], None]) -> None:
        self._raise_failed()
        self._pending.append(self._pool.submit(fn))

    def _raise_failed(self) -> None:
        still = []
        for f in self._pending:
            if f.done():
                f.result()  # re-raises a failed write
            else:
                still.append(f)
        self._pending = still

    def cancel_pending(self) -> None:
        """Drop the writes not yet begun (on interrupt: stop at the round being written)."""
        for f in self._pending:
            f.cancel()
        self._pending = [f for f in self._pending if not f.cancelled()]

    def close(self) -> None:
        try:
            for f in self._pending:
                f.result()
        finally:
            self._pending = []
            self._pool.shutdown(wait=True)


def _lower_priority() -> None:
    """Nice the writer thread (Linux: per thread) so it yields the cores to training threads.

    On a small machine the writes' CPU time (serialisation, syscalls, fsync) would otherwise
    preempt PyTorch's intra-op threads and stall every op's barrier.
    """
    try:
        import threading

        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (AttributeError, OSError):  # not Linux, or not permitted: run at normal priority
        pass


def cpu_snapshot(sd: StateDict) -> StateDict:
    """Detached CPU copies, safe to hand to a :class:`BackgroundWriter`."""
    return {k: v.detach().to("cpu", copy=True) for k, v in sd.items()}
