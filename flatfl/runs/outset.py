"""The files one ``flatfl landscape`` invocation writes into ``--out``, committed as one set.

A folder named by ``--out`` holds the outputs of one invocation, never a mix of two:

* **staged, then moved**: every file of the set (``landscape.json``, the surface's ``.npz``/``.json``/``.html`` and
  figures, the density figures) is written into ``OUT/.flatfl-staging-PID/`` first and renamed into ``OUT`` only
  once all of them are written, ``landscape.json`` last. A write the OS refuses (full disk, ``ulimit -f``) leaves
  ``OUT`` as it was and names the file in one line; a kill leaves at most a staging folder, which the next
  landscape into ``OUT`` removes (under ``OUT``'s lock);
* **earlier outputs set aside, never lost**: a known output in ``OUT`` that this invocation did not produce (say
  ``surface.html`` of an earlier ``--surface`` run) is moved to ``OUT/.flatfl-earlier/`` with a line saying so, and
  ``landscape.json``'s ``files`` lists the set that belongs to it;
* **the surface's resume cache** lives in ``OUT/.flatfl-cache/`` (saved after every chunk of grid points, keyed by
  the surface's full description); a rerun with the same settings resumes from it, or from the ``surface.npz``/
  ``.json`` of an earlier set in ``OUT`` or ``OUT/.flatfl-earlier/``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from flatfl.atomic import os_error
from flatfl.errors import UserError

STAGING_PREFIX = ".flatfl-staging-"
EARLIER_DIR = ".flatfl-earlier"
CACHE_DIR = ".flatfl-cache"
SURFACE_FILES = ("surface.npz", "surface.json", "surface.html", "surface.png", "surface.pdf")
DENSITY_FILES = ("density.png", "density.pdf")
OUTPUTS = ("landscape.json", *SURFACE_FILES, *DENSITY_FILES)  # what a landscape invocation may write into OUT


def check_own_folders(out: Path) -> None:
    """``OUT/.flatfl-earlier`` and ``OUT/.flatfl-cache``, where they exist, must be folders of ``OUT`` itself: files
    are moved into the first and written into the second, so a symbolic link there would move or write them outside
    ``OUT`` (and replace what the link's target holds), and a file there fails mid-run. Either is refused in one line
    before anything is measured."""
    own = [p for p in Path(out).parts if p in (EARLIER_DIR, CACHE_DIR) or p.startswith(STAGING_PREFIX)]
    if own:  # a later landscape into the folder above replaces, clears or removes these folders and what they hold
        raise UserError(
            f"--out: {out} is in {own[0]}, a folder flatfl keeps its own files in (an earlier set, the cache or a "
            "staging folder of the folder above it); name another --out"
        )
    for name in (EARLIER_DIR, CACHE_DIR):
        path = Path(out) / name
        if path.is_symlink():
            raise UserError(
                f"--out: {path} is a symbolic link; flatfl keeps its own files there, inside --out; remove the link "
                "and try again"
            )
        if path.exists() and not path.is_dir():
            raise UserError(
                f"--out: {path} is not a folder; flatfl keeps its own files in a folder of that name; remove it and "
                "try again"
            )


def seed_cache(out: Path) -> Path:
    """``OUT/.flatfl-cache`` with the surface of an earlier set copied in when it holds none (the description
    check of :func:`flatfl.runs.surface.measure_surface` decides whether it is resumed)."""
    cache = out / CACHE_DIR
    if (cache / "surface.npz").is_file():
        return cache
    for where in (out, out / EARLIER_DIR):
        if all((where / n).is_file() for n in ("surface.npz", "surface.json")):
            cache.mkdir(parents=True, exist_ok=True)
            for n in ("surface.json", "surface.npz"):  # the .npz, whose presence is checked, last
                tmp = cache / f".{n}.{os.getpid()}.tmp"  # torchrun: every rank may copy; each rename is whole
                shutil.copyfile(where / n, tmp)
                os.replace(tmp, cache / n)
            break
    return cache


class OutputSet:
    """Stage files under ``OUT/.flatfl-staging-PID``; :meth:`commit` moves them into ``OUT`` together."""

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.stage = self.out / f"{STAGING_PREFIX}{os.getpid()}"
        for old in self.out.glob(f"{STAGING_PREFIX}*"):  # a killed invocation's (we hold OUT's lock)
            shutil.rmtree(old, ignore_errors=True)
        self.stage.mkdir()

    def __enter__(self) -> OutputSet:
        return self

    def __exit__(self, kind: type | None, exc: BaseException | None, tb: object) -> None:
        shutil.rmtree(self.stage, ignore_errors=True)  # nothing of a failed set reaches OUT
        if isinstance(exc, OSError) and exc.filename and Path(exc.filename).parent == self.stage:
            raise os_error(self.out / Path(exc.filename).name, exc) from exc  # named where it was going

    def staged(self) -> list[str]:
        return sorted(p.name for p in self.stage.iterdir() if p.is_file())

    def commit(self, say: Callable[[str], None]) -> list[str]:
        """Rename the staged files into ``OUT`` (``landscape.json`` last); known outputs it does not replace
        move to ``OUT/.flatfl-earlier``. Returns the names committed."""
        names = self.staged()
        check_own_folders(self.out)  # again: one could have been planted while this run measured
        stale = [n for n in OUTPUTS if n not in names and (self.out / n).is_file()]
        if stale:
            earlier = self.out / EARLIER_DIR
            earlier.mkdir(exist_ok=True)
            older = [n for n in stale if (earlier / n).exists()]
            for n in stale:
                os.replace(self.out / n, earlier / n)
            say(
                f"moved {', '.join(stale)} to {earlier}: from an earlier run into this folder, removed from this "
                "output set (this run did not write them)"
                + (f"; replaced the older {', '.join(older)} kept there" if older else "")
            )
        for n in sorted(names, key=lambda n: n == "landscape.json"):
            os.replace(self.stage / n, self.out / n)
        return names
