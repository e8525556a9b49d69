"""A run's data, loaded once per command instead of once per checkpoint.

``flatfl report`` measures several checkpoints of each run, and every one of them resolves its
analysis data through :meth:`flatfl.runs.run.Run.dataset` (or a user-data run's named data).
Inside ``with shared_data():`` the first load of a data identity is kept and every later one
returns the same objects; outside it nothing is kept (each call loads afresh, as before), so a
library caller holds no data set longer than it asked for.

The identity is everything the load depends on: a flatfl data set's whole
:class:`~flatfl.config.DataConfig` (name, split seed and test fraction, the partition settings and
the partition file's SHA-256 that some loaders read, CIFAR-100's label set) plus its data root
resolved to an absolute path; a user-data run's data name and batch size. Every load (a miss) is
timed as the ``data`` stage of the active :mod:`flatfl.runs.timing` timer; every reuse is tallied
as ``data reused``.

Loaded tensors are shared between the callers of one scope: consumers index them (a copy) or read
them, never write into them.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

from flatfl.runs.timing import count, stage

T = TypeVar("T")

_ACTIVE: ContextVar[dict[Hashable, Any] | None] = ContextVar("flatfl_shared_data", default=None)


@contextmanager
def shared_data() -> Iterator[dict[Hashable, Any]]:
    """Inside the block, each data identity is loaded once (an enclosing scope is reused, not replaced)."""
    if _ACTIVE.get() is not None:
        yield _ACTIVE.get()  # type: ignore[misc]
        return
    memo: dict[Hashable, Any] = {}
    token = _ACTIVE.set(memo)
    try:
        yield memo
    finally:
        _ACTIVE.reset(token)
        memo.clear()


def cached(key: Hashable, load: Callable[[], T], name: str = "data") -> T:
    """``load()`` once per ``key`` inside :func:`shared_data` (every call outside it), timed as stage ``name``."""
    memo = _ACTIVE.get()
    if memo is not None and key in memo:
        count(f"{name} reused")
        return memo[key]
    with stage(name):
        value = load()
    if memo is not None:
        memo[key] = value
    return value
