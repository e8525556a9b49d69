"""Atomic file writes: a reader sees the previous file or the new one, never a torn file.

Every write goes to a temporary file in the same directory, is fsynced, then renamed over the target
(``os.replace`` is atomic on POSIX). Files get the permissions ``open()`` would give (``0o666 & ~umask``),
not the 0600 of ``tempfile.mkstemp``. A write the OS refuses is one :class:`UserError` line
(:func:`os_error`). Each write passes two ``FLATFL_FAULT_AT`` points, ``<file>:write`` and ``<file>:commit``
(:mod:`flatfl.faults`). Re-exported by :mod:`flatfl.checkpoint`.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from flatfl.errors import UserError
from flatfl.faults import fault_point
from flatfl.run_files import CLIENT_STATE_DIR, METRICS_FILE, PARTITION_JSON, RUN_JSON, STATE_FILE


def _umask() -> int:
    """The process umask, read without changing it (Linux), else by setting and restoring it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def os_error(path: Path, exc: OSError) -> UserError:
    """One line for a filesystem error: the path and the OS's reason (read-only, full, ...); ``--resume`` is
    named only for a run's own files (a report's or a landscape's are written again by their command)."""
    reason = exc.strerror or str(exc)
    path = Path(path)
    run_file = path.parent.name == CLIENT_STATE_DIR or path.name in (RUN_JSON, PARTITION_JSON, STATE_FILE, METRICS_FILE)
    run_file = run_file or (path.suffix == ".safetensors" and path.name.startswith(("round_", "clients_")))
    then = "then --resume the run" if run_file else "then run the command again"
    return UserError(f"{path}: cannot write ({reason}); {write_fix(exc.errno)}, {then}")


def write_fix(err: int | None) -> str:
    """What to do about a write the OS refused: a file-size limit (``ulimit -f``, EFBIG) is not a full disk."""
    if err == errno.EFBIG:
        return "a file-size limit (ulimit -f) stopped it: raise the limit or free the quota"
    return "free space or fix permissions"


def _kind(path: Path) -> str:
    """The write point's name in ``FLATFL_FAULT_AT``: round, clients, state, client_state, metrics, run.json,
    partition.json."""
    name = path.name
    if path.parent.name == CLIENT_STATE_DIR:
        return "client_state"
    if name.startswith(("round_", "clients_")):
        return name.split("_", 1)[0]
    return name.removesuffix(".safetensors").removesuffix(".jsonl")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise os_error(path, exc) from exc
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600
        with os.fdopen(fd, "wb") as fh:
            fault_point(f"{_kind(path)}:write", lambda: fh.write(data[: len(data) // 2]) and fh.flush())
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise os_error(path, exc) from exc
        raise
    fault_point(f"{_kind(path)}:commit")


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())
