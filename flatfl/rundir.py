"""One trainer per run directory, and no run lost to a failed start, a kill or ``--overwrite``.

:class:`RunDir` is what ``flatfl train`` holds while it writes ``--out``:

* an exclusive ``fcntl.flock`` on ``DIR/.flatfl.lock`` (which holds the owner's PID and what it is doing
  while it runs): a second train, resume or overwrite of the same directory stops with one line naming
  that PID. The kernel drops the lock when the process dies, so a kill leaves nothing stale.
* ``--overwrite`` moves the old run's files into ``DIR/.flatfl-replaced/`` and deletes them
  only once the new run's round 0 is committed (``state.safetensors`` written). Opening a
  directory finishes or undoes such a replacement: a kill before the new commit gives the old
  run back; after it, the old files go. Both steps start with one atomic rename (to
  ``.flatfl-replaced.partial/`` to move back, ``.flatfl-replaced.delete/`` to delete), so a kill
  during them leaves a folder the next opening finishes with, never a partial set-aside run.
* temporary files left by a killed writer (``.NAME.XXXX.tmp``) are removed when the directory
  is opened (the lock guarantees that no one else is writing them);
* a run killed before its round 0 was committed (``run.json`` but no ``state.safetensors`` and
  no round after 0) counts as no run yet: a fresh start replaces it, ``--resume`` starts it
  from round 0.
* a directory created by a start that then failed is removed again.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shlex
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

from flatfl import checkpoint as ckpt
from flatfl.errors import UserError
from flatfl.faults import fault_point

LOCK_FILE = ".flatfl.lock"
REPLACED = ".flatfl-replaced"
MOVING = REPLACED + ".partial"
DISCARDED = REPLACED + ".delete"  # a set-aside run being deleted (its successor committed); deleted again after a kill
RUN_FILES = (ckpt.RUN_JSON, ckpt.PARTITION_JSON, ckpt.STATE_FILE, ckpt.METRICS_FILE, ckpt.DIVERGED_JSON)
CLIENT_STATE_DIR = ckpt.CLIENT_STATE_DIR  # flatfl.client_state's folder: a run file as a whole
_TEMP = re.compile(r"^\.(.+)\.[^.]+\.tmp$")


def is_run_file(name: str) -> bool:
    """A file flatfl train writes into a run directory (and may replace or remove)."""
    return (
        name in RUN_FILES
        or name == CLIENT_STATE_DIR
        or (name.endswith(".safetensors") and name.startswith(("round_", "clients_")))
    )


def is_temp_file(name: str) -> bool:
    """A temporary file of :func:`flatfl.checkpoint.atomic_write_bytes` for one of our files."""
    m = _TEMP.match(name)
    return m is not None and is_run_file(m.group(1))


def remove(p: Path) -> None:
    """Delete a run file (the client-state folder with its files)."""
    if p.is_dir():
        shutil.rmtree(p)
    else:
        p.unlink()


def run_files(out: Path) -> list[Path]:
    return sorted(p for p in out.iterdir() if is_run_file(p.name)) if out.is_dir() else []


def committed(out: Path) -> bool:
    """Round 0 (at least) is committed: the commit point ``state.safetensors`` exists."""
    return (out / ckpt.STATE_FILE).is_file()


def uncommitted_start(out: Path) -> bool:
    """``run.json`` written but the run killed before its round 0 was committed."""
    if committed(out) or not (out / ckpt.RUN_JSON).is_file():
        return False
    return set(ckpt.list_rounds(out)) <= {0} and not list(out.glob("clients_*.safetensors"))


def make_out_dir(out: Path, flag: str = "--out") -> bool:
    """Create the output folder ``out`` (with its parents) or stop with one line naming ``flag``;
    True if this call made it. Shared by every command that writes a folder."""
    out = Path(out)
    if out.is_dir():
        return False
    if out.exists():
        what = "is a file" if out.is_file() else "exists and is not a directory"
        raise UserError(f"{flag}: {out} {what}; choose another folder")
    try:
        out.mkdir(parents=True)
    except FileExistsError:
        if out.is_dir():  # made by another process meanwhile
            return False
        raise UserError(f"{flag}: {out} exists and is not a directory; choose another folder") from None
    except OSError as exc:
        raise UserError(f"{flag}: cannot create {out} ({exc.strerror}); choose another folder") from exc
    return True


def refuse_run_dir(out: Path, flag: str = "--out") -> None:
    """Refuse writing analysis files into a flatfl run directory itself."""
    if (Path(out) / ckpt.RUN_JSON).is_file():
        raise UserError(f"{flag}: {out} is a flatfl run directory; give a separate folder for the output")


def lock_dir(out: Path, doing: str) -> int:
    """An exclusive ``fcntl.flock`` on ``out/.flatfl.lock`` holding this PID and, on a second line, what it is
    ``doing`` (the kernel drops the lock when the process dies); a second holder stops with one line: another
    flatfl process (PID ...) is <what the holder is doing> -- a train refused beside a report says the report's
    "writing a report here", not its own "training this run"."""
    path = Path(out) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK | os.O_NOFOLLOW, 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW: the lock file is a symlink
            raise UserError(f"{path}: the lock file is a symbolic link; remove it and try again") from None
        raise UserError(f"{path}: cannot open the lock file ({exc.strerror}); choose another folder") from exc
    kind = os.fstat(fd).st_mode
    if not stat.S_ISREG(kind):  # a FIFO or device opens, but cannot be truncated or hold the PID
        os.close(fd)
        what = "a FIFO" if stat.S_ISFIFO(kind) else "not a regular file"
        raise UserError(f"{path}: the lock file is {what}; remove it and try again")
    os.set_blocking(fd, True)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lines = os.read(fd, 256).decode(errors="replace").split("\n")
        os.close(fd)
        holder = lines[0].strip() if lines[0].strip().isdecimal() else "unknown"  # a forged or garbled file
        held_for = _printable(lines[1]) if len(lines) > 1 else ""
        held_for = held_for or doing  # an older flatfl: PID only
        raise UserError(
            f"{out}: another flatfl process (PID {holder}) is {held_for}; wait for it to finish or stop it, then try "
            "again"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n{doing}\n".encode())
    return fd


def _printable(text: str) -> str:
    """What a lock file says its holder is doing, as it may be shown: printable characters only (no terminal
    escapes from a forged file), at most 100 of them."""
    return "".join(c for c in text if c.isprintable()).strip()[:100]


def unlock_dir(fd: int) -> None:
    os.ftruncate(fd, 0)
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


@contextlib.contextmanager
def locked_folder(out: Path, doing: str) -> Iterator[bool]:
    """An output folder made (:func:`make_out_dir`) and locked (:func:`lock_dir`) for the ``with`` block;
    yields whether it was made here. A failure inside leaves no empty folder that this call made."""
    created = make_out_dir(out)
    try:
        fd = lock_dir(out, doing)
    except UserError:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    failed = True
    try:
        yield created
        failed = False
    finally:
        unlock_dir(fd)
        if failed and created and {p.name for p in Path(out).iterdir()} <= {LOCK_FILE}:
            shutil.rmtree(out, ignore_errors=True)


class RunDir:
    """The lock on a run directory and its recovery steps (rank 0 of a launch only)."""

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self.created = False
        self._fd: int | None = None

    # -- lock ------------------------------------------------------------------------------
    def open(self, create: bool, doing: str = "training this run") -> list[str]:
        """Lock the directory (making it with ``create``), then finish what a killed process left.

        Returns notes for the log (what was recovered)."""
        out = self.out
        if create:
            self.created = make_out_dir(out)
        elif out.exists() and not out.is_dir():
            raise UserError(f"--out: {out} exists and is not a directory")
        try:
            fd = lock_dir(out, doing)  # what a refused second writer is told this process is doing
        except UserError:
            self.close(failed=True)
            raise
        self._fd = fd
        return self._recover()

    def close(self, failed: bool = False) -> None:
        """Release the lock; after a failed start in a folder this call made, remove the folder."""
        if self._fd is not None:
            unlock_dir(self._fd)
            self._fd = None
        if failed and self.created and not run_files(self.out):
            shutil.rmtree(self.out, ignore_errors=True)

    @property
    def locked(self) -> bool:
        """This process holds the directory's lock (between :meth:`open` and :meth:`close`)."""
        return self._fd is not None

    # -- recovery ----------------------------------------------------------------------------
    def recover(self) -> list[str]:
        """Finish or undo what an interrupted ``--overwrite`` left (the lock held: :meth:`open` first)."""
        assert self.locked
        return self._recover()

    def _recover(self) -> list[str]:
        out, notes = self.out, []
        for name in (REPLACED, MOVING, DISCARDED):  # a link would have files moved from or deleted in its target
            if (out / name).is_symlink() or ((out / name).exists() and not (out / name).is_dir()):
                raise UserError(
                    f"{out / name}: a symbolic link or file, not the folder an --overwrite leaves; nothing was "
                    "changed: remove it (its target is not touched) and try again"
                )
        cs = out / CLIENT_STATE_DIR
        for p in [*out.iterdir(), *(cs.iterdir() if cs.is_dir() else [])]:
            if is_temp_file(p.name) or (p.parent == cs and p.name.endswith(".tmp")):
                p.unlink()
                notes.append(f"removed {p.name}, left by an interrupted write")
        if (out / DISCARDED).is_dir():  # killed while deleting a replaced run whose successor was committed
            shutil.rmtree(out / DISCARDED)
            notes.append("removed the rest of a run replaced by --overwrite")
        moving = out / MOVING
        if moving.is_dir():  # killed while moving the old run aside (nothing new written yet) or back
            _move_back(out, moving)
            notes.append("an interrupted --overwrite was undone; the previous run is back")
        aside = out / REPLACED
        if aside.is_dir():
            _check_set_aside(out, aside)
            if committed(out):  # the new run's round 0 was committed: the old run may go
                discard(out)
            else:  # killed before the new round 0 was committed: the old run comes back
                for p in run_files(out):
                    remove(p)
                # renamed first, in one step: a kill while its files move back leaves the folder a kill while
                # moving them aside leaves (finished on the next opening), never a set-aside run without its run.json
                os.replace(aside, moving)
                _move_back(out, moving)
                notes.append("an --overwrite killed before its round 0 was saved was undone; the previous run is back")
        return notes

    # -- replacing ---------------------------------------------------------------------------
    def clear_for_new_run(self) -> None:
        """Before round 0 of a new run: an uncommitted start is deleted; a committed run is
        moved aside, deleted by :meth:`round0_committed`."""
        out = self.out
        files = run_files(out)
        if not files:
            return
        if uncommitted_start(out):
            for p in files:
                remove(p)
            return
        fault_point("overwrite:begin")
        moving = out / MOVING
        moving.mkdir()
        for p in files:
            os.replace(p, moving / p.name)
            fault_point("overwrite:move")  # the n-th file moved aside, the others not yet
        os.replace(moving, out / REPLACED)
        fault_point("overwrite:moved")  # the previous run set aside whole, nothing new written

    def round0_committed(self) -> None:
        discard(self.out)


def discard(out: Path) -> None:
    """Delete the run an ``--overwrite`` set aside, once its successor's round 0 is committed: renamed first (one
    atomic step), then deleted, so a kill part way never leaves a partial ``.flatfl-replaced/`` -- which would
    read as files moved there by hand, and stop every command -- only a folder the next opening deletes."""
    aside = Path(out) / REPLACED
    if not aside.is_dir():
        return
    trash = Path(out) / DISCARDED
    if trash.is_dir():
        shutil.rmtree(trash)
    os.replace(aside, trash)
    fault_point("overwrite:discard")
    shutil.rmtree(trash)


def _move_back(out: Path, moving: Path) -> None:
    """The previous run's files from ``moving`` back into ``out`` (none of its names is taken there)."""
    for p in sorted(moving.iterdir()):
        os.replace(p, out / p.name)
        fault_point("overwrite:restore")  # the n-th file moved back, the others not yet
    moving.rmdir()


def _check_set_aside(out: Path, aside: Path) -> None:
    """``aside`` and ``out`` are in a state an ``--overwrite`` leaves (a whole previous run set aside; beside it a
    new run, committed with its run.json or not yet), else nothing is touched: one line says what is off.

    Files moved by hand (the rounds aside, ``state.safetensors`` left) would otherwise read as a committed new
    run and the set-aside rounds would be deleted."""
    keep = f"nothing was changed: move the files back into {out} or delete {aside}/ yourself"
    if not (aside / ckpt.RUN_JSON).is_file():
        raise UserError(f"{aside}/: holds no run.json, so it is not a whole run set aside by --overwrite; {keep}")
    if committed(out) and not (out / ckpt.RUN_JSON).is_file():
        raise UserError(
            f"{out}: {ckpt.STATE_FILE} without a run.json beside {aside}/ is not what an --overwrite leaves; {keep}"
        )


def interrupted_overwrite(out: Path) -> bool:
    """``out`` holds the folder an ``--overwrite`` sets the previous run aside in (a kill, or one in progress)."""
    out = Path(out)
    return (out / REPLACED).is_dir() or (out / MOVING).is_dir() or (out / DISCARDED).is_dir()


def settle(out: Path) -> list[str]:
    """Finish or undo an interrupted ``--overwrite`` of ``out`` under its lock; every command that opens a
    run directory (train, ``--resume``, landscape, report, prune, the Flower recorder) calls this first.

    The new run's round 0 committed (``state.safetensors``): the set-aside previous run is deleted;
    otherwise the new run's files go and the previous run comes back. Nothing to do (the usual case)
    costs two ``stat`` calls and takes no lock. When the lock cannot be taken -- a trainer is replacing
    the run right now, or the folder is not writable -- one line says where the previous run is and
    which command restores it. Returns notes for the log."""
    out = Path(out)
    if not out.is_dir() or not interrupted_overwrite(out):
        return []
    aside = out / (REPLACED if (out / REPLACED).is_dir() else MOVING)
    restore = f"flatfl prune {shlex.quote(str(out))} --keep 0 --dry-run"
    try:
        fd = lock_dir(out, "writing this run")
    except UserError as exc:
        if not ((out / REPLACED).is_dir() or (out / MOVING).is_dir()):
            return []  # only a replaced run's remains, whose successor is committed: deleted by a later opening
        raise UserError(
            f"{exc}; an --overwrite set the previous run aside in {aside}/ (kept until the new run's round 0 "
            f"is saved): `{restore}` (which deletes nothing) brings it back once it can lock {out}"
        ) from None
    try:
        return RunDir(out)._recover()
    finally:
        unlock_dir(fd)


def recover(out: Path) -> list[str]:
    """Take the lock, finish or undo what a killed process left in ``out``, release it (before
    ``--resume`` reads run.json, which an undone ``--overwrite`` brings back)."""
    rd = RunDir(out)
    try:
        return rd.open(create=False)
    finally:
        rd.close()
