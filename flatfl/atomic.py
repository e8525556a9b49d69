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


def file_kind(path: Path | str) -> str:
    """What ``path`` is, for a message: "a folder", "a file", "a FIFO" (a named pipe), "a character device"
    (/dev/null), "a block device", "a socket", "a broken symbolic link", or "nothing" (it does not exist)."""
    import stat

    try:
        mode = os.stat(path).st_mode
    except OSError:
        return "a broken symbolic link" if os.path.islink(path) else "nothing"
    for test, kind in ((stat.S_ISDIR, "a folder"), (stat.S_ISREG, "a file"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):  # fmt: skip
        if test(mode):
            return kind
    return "not a regular file"


def unreadable_part(path: Path | str) -> Path | None:
    """The part of ``path`` this process may not read: a folder on the way it may not enter (no x permission),
    or ``path`` itself when it may not read it (a file without r, a folder without r or x); None when every
    part is readable (a refused access was then a write)."""
    path = Path(os.path.abspath(path))
    for folder in reversed(path.parents):
        if folder.is_dir() and not os.access(folder, os.X_OK):
            return folder
    try:
        is_dir = path.is_dir()
        exists = is_dir or path.exists()
    except OSError:
        return path
    if is_dir and not os.access(path, os.R_OK | os.X_OK):
        return path
    if exists and not is_dir and not os.access(path, os.R_OK):
        return path
    return None


def access_error_text(exc: OSError) -> str:
    """The one line (without ``flatfl: error:``) for a filesystem error the OS raised outside the atomic
    writers: a permission error on a path this process may not read is said as a read ("cannot read ...;
    fix the permissions of X"), any other as the write it was (full disk, file-size limit, read-only)."""
    where = f"{exc.filename}: " if exc.filename else ""
    if exc.errno in (errno.EACCES, errno.EPERM) and exc.filename:
        part = unreadable_part(exc.filename)
        if part is not None:
            itself = part == Path(os.path.abspath(exc.filename))
            whose = "its permissions" if itself else f"the permissions of the folder {part}"
            return f"{where}cannot read ({exc.strerror}); fix {whose}, then run the command again"
    return f"{where}cannot write ({exc.strerror}); {write_fix(exc.errno)}, then run the command again"


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
