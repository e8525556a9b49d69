"""One writer per report folder, and a rerun that replaces the whole set of report files at once.

``flatfl report --out OUT`` holds ``OUT/.flatfl.lock`` (:func:`flatfl.rundir.lock_dir`, the lock
of a run directory) from before its first cache write to its last rename: a second report into
the same folder stops with one line. The report's files live in a version folder and are swapped
by one atomic rename::

    OUT/report.html        -> .report-current/report.html   (fixed links, one per file name)
    OUT/.report-current    -> .report-v7                     (one symlink: the commit point)
    OUT/.report-v7/        report.html report.json verdict.csv report.csv curves.csv *.png *.pdf
    OUT/runs/              the per-checkpoint cache (unchanged, reused across reruns)

A rerun writes its complete set into ``OUT/.staging-PID/``, renames that to ``.report-vN+1``,
adds the fixed links its new file names need, then replaces ``.report-current`` (``os.replace`` of
a symlink: atomic). Every name therefore shows the complete old set until that replace and the
complete new set after it; a file the new run no longer writes (``spread.png`` after
``--no-spread``) is a dangling link from then on and is removed next, with the old version. A kill
at any point leaves at most a staging folder, an unused version or dangling links, which the next
report into ``OUT`` removes under the lock. A folder written by an older flatfl (plain files) is
first turned into version 0 by hard links, file by file with identical content.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flatfl.errors import UserError
from flatfl.faults import fault_point
from flatfl.rundir import locked_folder, refuse_run_dir

CURRENT = ".report-current"
STAGING = ".staging-"
_VERSION = re.compile(r"^\.report-v(\d+)$")
# the files flatfl report wrote straight into OUT before versions (migrated to version 0)
LEGACY = ("report.html", "report.json", "verdict.csv", "report.csv", "curves.csv") + tuple(
    f"{fig}.{ext}" for fig in ("slices", "surfaces", "spread") for ext in ("png", "pdf")
)


def _ours(p: Path) -> bool:
    """A fixed link OUT/NAME -> .report-current/NAME."""
    return p.is_symlink() and os.readlink(p) == f"{CURRENT}/{p.name}"


def current_version(out: Path) -> Path | None:
    link = Path(out) / CURRENT
    if not link.is_symlink():
        return None
    target = os.readlink(link)
    # only a version folder of OUT itself: a link edited to point elsewhere must never be deleted as "the old version"
    return Path(out) / target if _VERSION.match(target) and not (Path(out) / target).is_symlink() else None


def _versions(out: Path) -> dict[int, Path]:
    return {
        int(m.group(1)): p for p in out.iterdir() if (m := _VERSION.match(p.name)) and p.is_dir() and not p.is_symlink()
    }


def _link(out: Path, name: str, target: str) -> None:
    """``out/name`` -> ``target``, replacing what is there in one rename."""
    tmp = out / f".{name}.link-{os.getpid()}.tmp"
    if tmp.is_symlink():
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, out / name)


def tidy(out: Path) -> None:
    """Remove what a killed writer left: staging folders, versions not current, link temporaries and
    fixed links the current version has no file for."""
    cur = current_version(out)
    for p in out.iterdir():
        if p.is_symlink() and not _ours(p) and p.name != CURRENT:
            continue  # not ours (never delete through a link)
        if p.name.startswith(STAGING) and p.is_dir():
            shutil.rmtree(p)
        elif p.name.endswith(".tmp") and ".link-" in p.name and p.is_symlink():
            p.unlink()
        elif _VERSION.match(p.name) and p.is_dir() and (cur is None or p.name != cur.name):
            shutil.rmtree(p)
        elif _ours(p) and not p.exists():
            p.unlink()


def migrate(out: Path) -> None:
    """A folder of plain report files (an older flatfl) becomes version 0 with the same content."""
    plain = [n for n in LEGACY if (out / n).is_file() and not (out / n).is_symlink()]
    if not plain:
        return
    cur = current_version(out)
    if cur is None:  # hard links (a copy where the file system has none) into a new version
        stage = out / f"{STAGING}{os.getpid()}"
        stage.mkdir()
        for n in plain:
            try:
                os.link(out / n, stage / n)
            except OSError:
                shutil.copy2(out / n, stage / n)
        os.rename(stage, out / ".report-v0")
        _link(out, CURRENT, ".report-v0")
        cur = out / ".report-v0"
    for n in plain:  # the same bytes before and after each replace
        if (cur / n).is_file():
            _link(out, n, f"{CURRENT}/{n}")
        else:  # not part of the current set: a stale file
            (out / n).unlink()


def publish(out: Path, staged: Path) -> Path:
    """Make the complete set in ``staged`` the report of ``out`` (one atomic switch); returns the version."""
    versions = _versions(out)
    version = out / f".report-v{max(versions, default=0) + 1}"
    os.rename(staged, version)
    fault_point("report:renamed")
    names = sorted(p.name for p in version.iterdir())
    for n in names:
        if not _ours(out / n):
            _link(out, n, f"{CURRENT}/{n}")
    fault_point("report:linked")
    old = current_version(out)
    _link(out, CURRENT, version.name)  # the commit point
    fault_point("report:switched")
    for p in out.iterdir():
        if _ours(p) and p.name not in names:
            p.unlink()
    if old is not None and old.is_dir():
        shutil.rmtree(old)
    return version


class ReportDir:
    """The lock on a report folder and its staged, atomic replacement (rank 0 only)."""

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self._lock = locked_folder(self.out, "writing a report here")

    def __enter__(self) -> ReportDir:
        self._lock.__enter__()
        tidy(self.out)
        migrate(self.out)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._lock.__exit__(*exc)

    def write(self, write_set: Callable[[Path], dict[str, Path]]) -> dict[str, Path]:
        """``write_set(folder)`` writes the complete set into a staging folder; then it replaces the
        old set at once. Returns the written files by kind, as OUT/NAME."""
        stage = self.out / f"{STAGING}{os.getpid()}"
        if stage.exists():
            shutil.rmtree(stage)
        stage.mkdir()
        try:
            files = write_set(stage)
        except BaseException as exc:  # a refused write (full disk, ulimit -f), Ctrl-C, a bug: no staging left behind
            shutil.rmtree(stage, ignore_errors=True)
            if isinstance(exc, OSError) and exc.filename and Path(exc.filename).parent == stage:
                # the file under the name the report gives it (the staging folder is gone)
                raise OSError(exc.errno, exc.strerror, str(self.out / Path(exc.filename).name)) from exc
            if type(exc) is UserError and f"{stage}/" in str(exc):  # an atomic write's one line: the same
                raise UserError(str(exc).replace(f"{stage}/", f"{self.out}/")) from exc
            raise
        fault_point("report:staged")
        publish(self.out, stage)
        return {k: self.out / Path(p).name for k, p in files.items()}


def check_report_out(out: Path, run_dirs: list[Path], flag: str = "--out") -> None:
    """Refuse an output folder that is a run directory, or whose per-checkpoint cache ``OUT/runs/``
    holds one of the input runs (the report would write into the runs it reads)."""
    out = Path(out)
    refuse_run_dir(out, flag)
    cache = (out / "runs").resolve()
    for r in run_dirs:
        if Path(r).resolve().is_relative_to(cache):
            raise UserError(
                f"{flag}: {out}/runs is where the report caches per-checkpoint results, and the input run {r} "
                f"is inside it; give a folder outside, e.g. --out {out}/report"
            )
