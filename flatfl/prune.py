"""Thin an existing run: delete round (and, if asked, client) files it no longer needs.

``prune(run, keep)`` deletes every ``round_NNNN.safetensors`` not selected by ``keep`` (a
:func:`flatfl.storage.parse_round_spec` selection), except the files a run cannot do without:

* round 0 (the initial model; every analysis and the report's distances start from it),
* the last saved round (the trained model),
* the round ``state.safetensors`` was committed at (``--resume`` continues from that file),
* the last finite round named by ``diverged.json``.

With ``keep_clients`` it thins ``clients_NNNN.safetensors`` the same way (none are protected:
training never reads them). It holds the run directory's lock (``flatfl.rundir``) for the whole
prune, so it never runs beside a trainer of the same run, and deletes one file at a time,
oldest first: each ``unlink`` is atomic, and as the protected files are never touched, a kill at
any point leaves a run that resumes and analyses as before; the same command finishes the job.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from safetensors import SafetensorError, safe_open

from flatfl import checkpoint as ckpt
from flatfl.errors import UserError
from flatfl.faults import fault_point
from flatfl.rundir import RunDir, settle


@dataclass(frozen=True)
class Selection:
    """Rounds to keep: listed ones, and multiples of ``every`` (0: none)."""

    rounds: tuple[int, ...] = ()
    every: int = 0

    def __contains__(self, r: object) -> bool:
        return isinstance(r, int) and (r in self.rounds or (self.every > 0 and r % self.every == 0))


@dataclass(frozen=True)
class Plan:
    delete: list[Path]
    protected: dict[int, str]  # round -> why it stays whatever --keep says


def protected_rounds(run_dir: Path) -> dict[int, str]:
    """Rounds whose files stay whatever the selection: round 0, the last, the state's, the last finite."""
    rounds = ckpt.list_rounds(run_dir)
    out: dict[int, str] = {0: "round 0"}
    if rounds:
        out.setdefault(rounds[-1], "the last round")
    state = Path(run_dir) / ckpt.STATE_FILE
    if state.is_file():
        out.setdefault(_state_round(state), "the round --resume continues from")
    diverged = Path(run_dir) / ckpt.DIVERGED_JSON
    if diverged.is_file():
        try:
            out.setdefault(int(json.loads(diverged.read_text())["last_finite_round"]), "the last finite round")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{diverged}: damaged ({exc}); fix or delete it, then prune again") from exc
    return out


def _header_meta(path: Path) -> object:
    """The flatfl metadata of a safetensors file from its header, checked by safetensors where it can open the path
    (UTF-8 paths only: a folder name in another encoding is read by :func:`flatfl.checkpoint.read_metadata`)."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        meta = ckpt.read_metadata(path)
        if meta is None:
            raise ValueError("its header is not a safetensors header") from None
        return meta
    with safe_open(str(path), "pt") as f:
        return json.loads((f.metadata() or {}).get(ckpt.META_KEY, "{}"))


def _state_round(path: Path) -> int:
    try:
        r = _header_meta(path)["round"]  # type: ignore[index]
        if type(r) is not int or r < 0:  # 4.0 or "4": not what flatfl writes (the other readers refuse it too)
            raise ValueError(f"metadata 'round' is {r!r}, not a round number")
        return r
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as exc:
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise UserError(
            f"{path}: unreadable ({reason}); prune deletes nothing while the state of the run is damaged"
        ) from exc


def plan(run_dir: Path, keep: Selection, keep_clients: Selection | None = None) -> Plan:
    """Which files go (ascending round, clients files first) and which rounds are protected."""
    run_dir = Path(run_dir)
    ckpt.read_run_json(run_dir)  # a flatfl run, or one line saying why not
    protected = protected_rounds(run_dir)
    delete = []
    if keep_clients is not None:
        for p in sorted(run_dir.glob("clients_*.safetensors")):
            r = p.stem.split("_", 1)[1]
            if r.isdigit() and int(r) not in keep_clients:
                delete.append(p)
    for r in protected:  # the files that stay must be the run's rounds, or deleting the others loses the last good
        _check_kept_round(ckpt.round_path(run_dir, r), r)
    delete += [ckpt.round_path(run_dir, r) for r in ckpt.list_rounds(run_dir) if r not in keep and r not in protected]
    return Plan(delete, protected)


def _check_kept_round(path: Path, r: int) -> None:
    """A round file prune keeps whatever --keep says reads as round ``r`` (its header only): a damaged or
    mislabelled one is refused before anything is deleted, as the rounds before it may be the last readable."""
    if not path.exists():
        return
    try:
        meta = _header_meta(path)
        ok = (
            isinstance(meta, dict)
            and meta.get("format") == "flatfl.round"
            and type(meta.get("round")) is int
            and meta["round"] == r
        )
    except Exception as exc:  # noqa: BLE001 -- safetensors raises its own error types for a damaged header
        raise UserError(
            f"{path}: unreadable ({str(exc).splitlines()[0][:120]}); prune deletes nothing while a round it must "
            "keep is damaged: restore or delete that file first"
        ) from exc
    if not ok:
        said = meta.get("round") if isinstance(meta, dict) else meta
        raise UserError(
            f"{path}: not round {r} of this run (its metadata say {said!r}); prune deletes nothing while a round "
            "it must keep is mislabelled: restore or rename that file first"
        )


def check_run_folder(run_dir: Path) -> None:
    """One line when ``run_dir`` is not a folder: a file inside a run (``RUN/run.json``) names the run it is in."""
    if run_dir.is_dir():
        return
    if run_dir.exists() or run_dir.is_symlink():
        parent = run_dir.parent
        hint = (
            f"; did you mean its folder {parent}?"
            if (parent / ckpt.RUN_JSON).is_file() or (parent / ckpt.METRICS_FILE).is_file()
            else ""
        )
        from flatfl.atomic import file_kind

        kind = file_kind(run_dir) if run_dir.exists() else "a broken symbolic link"
        raise UserError(f"{run_dir}: {kind}, not a run folder (prune takes the folder flatfl train --out wrote){hint}")
    raise UserError(f"{run_dir}: no such run directory")


def prune(
    run_dir: Path,
    keep: Selection,
    keep_clients: Selection | None = None,
    *,
    dry_run: bool = False,
    say: Callable[[str], None] = print,
) -> Plan:
    """Delete the planned files under the run's lock (nothing with ``dry_run``); returns the plan."""
    check_run_folder(Path(run_dir))
    for note in settle(Path(run_dir)):  # an interrupted --overwrite finished or undone
        say(f"{run_dir}: {note}")
    ckpt.check_partition_file(run_dir, ckpt.read_run_json(run_dir))  # checked before the lock file is made in it
    lock = RunDir(Path(run_dir))
    for note in lock.open(create=False, doing="pruning this run"):
        say(f"{run_dir}: {note}")
    try:
        p = plan(run_dir, keep, keep_clients)
        if dry_run:
            return p
        for path in p.delete:
            fault_point("prune:delete")
            path.unlink(missing_ok=True)
        return p
    finally:
        lock.close()
