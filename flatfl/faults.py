"""A test-only hook that kills the process at a named write point, deterministically.

``FLATFL_FAULT_AT=<point>:<n>`` makes the n-th (1-based) passage through ``<point>`` end the
process at once with ``os._exit(KILLED)`` -- no ``finally``, no flush, as a SIGKILL would.
Points (the write helpers of ``flatfl.atomic`` and ``flatfl.metrics_file``) are ``<file>:write``
(the temporary file half written, not yet renamed; for ``metrics`` half a line appended) and ``<file>:commit`` (the
file complete, the next write not begun), where ``<file>`` is ``run.json``,
``partition.json``, ``round``, ``clients``, ``state`` or ``metrics``; ``overwrite:begin``,
``overwrite:move`` (after each file of the previous run is moved aside), ``overwrite:moved``,
``overwrite:restore`` (after each file moved back when it is undone) and ``overwrite:discard`` (the
previous run renamed for deletion) are the steps of ``--overwrite`` (:mod:`flatfl.rundir`),
``prune:delete`` those of ``flatfl prune``.
Unset, the hook costs a dictionary lookup. ``tests/test_faults.py`` kills a run at every point and resumes it.
"""

from __future__ import annotations

import os
from collections.abc import Callable

ENV = "FLATFL_FAULT_AT"
KILLED = 137  # the status a shell reports for SIGKILL
_seen: dict[str, int] = {}


def _target() -> tuple[str, int] | None:
    spec = os.environ.get(ENV)
    if not spec:
        return None
    point, _, n = spec.rpartition(":")
    return point, int(n)


def fault_point(point: str, before_exit: Callable[[], object] | None = None) -> None:
    """Count a passage through ``point``; at the chosen one run ``before_exit`` and die."""
    target = _target()
    if target is None or target[0] != point:
        return
    _seen[point] = _seen.get(point, 0) + 1
    if _seen[point] == target[1]:
        if before_exit is not None:
            before_exit()
        os._exit(KILLED)
