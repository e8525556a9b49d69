"""``metrics.jsonl``: one JSON line per round, appended (fsynced) just before the round's commit point.

Every line must be a JSON object with an integer ``round`` and numbers where numbers belong; only an
unterminated last line (a write cut short by a kill) may be unreadable, and is left out. ``--resume``
drops the lines of uncommitted rounds (:func:`metrics_for_resume`). Re-exported by :mod:`flatfl.checkpoint`.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from flatfl.atomic import atomic_write_bytes, os_error
from flatfl.errors import UserError
from flatfl.faults import fault_point
from flatfl.run_files import METRICS_FILE


def append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    path = Path(run_dir) / METRICS_FILE
    line = (json.dumps(record) + "\n").encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        with os.fdopen(fd, "ab") as fh:
            fault_point("metrics:write", lambda: fh.write(line[: len(line) // 2]) and fh.flush())
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        raise os_error(path, exc) from exc
    fault_point("metrics:commit")


# the per-round numbers every reader computes with (and any key ending in _loss, _acc, _norm, _rel, _time)
METRIC_NUMBERS = ("test_loss", "test_acc", "train_loss", "wall_time", "round_time")


def _kind(path: Path) -> str:
    if path.is_symlink() and not path.exists():
        return "a dangling symbolic link"
    return "a FIFO" if path.is_fifo() else "a folder" if path.is_dir() else "a device or socket"


def _parse_metrics(path: Path) -> tuple[list[dict[str, Any]], bool]:
    """(records, torn): every line must be a JSON object with an integer ``round``; only an
    unterminated last line (a write cut short by a kill) may be unreadable, and is left out."""
    if not path.is_file():
        if path.exists() or path.is_symlink():  # a FIFO, a folder, a dangling link: not "no records yet"
            raise UserError(
                f"{path}: not a regular file ({_kind(path)}); restore the run's metrics.jsonl, or remove this "
                "to have the records rebuilt from the round files"
            )
        return [], False
    lines = path.read_bytes().split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline
    out = []
    for i, line in enumerate(lines, 1):
        rec = _metrics_record(path, i, line)
        out.append(rec)
    torn = False
    if tail:
        try:
            out.append(_metrics_record(path, len(lines) + 1, tail))
        except UserError:
            torn = True
    return out, torn


def _metrics_record(path: Path, i: int, line: bytes) -> dict[str, Any]:
    try:
        rec = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: line {i} is not UTF-8 JSON ({exc}); fix or delete that line") from exc
    r = rec.get("round") if isinstance(rec, dict) else None
    if not isinstance(r, int) or isinstance(r, bool) or r < 0:
        raise UserError(f"{path}: line {i} is not a round record (needs an object with an integer 'round')")
    for k, v in rec.items():
        if k in METRIC_NUMBERS or k.endswith(("_loss", "_acc", "_norm", "_rel", "_time", "_mean")):
            if not all(_number_or_null(x) for x in (v if isinstance(v, list) else [v])):
                raise UserError(f"{path}: line {i} (round {r}): {k} is {v!r}, not a number; fix or delete that line")
    # a cross-entropy is >= 0 and an accuracy a fraction: anything else was edited, and would be averaged or matched
    # on as it is (a non-finite value stays: a recorded Flower run that diverged has one, and is listed as diverged)
    for k, ok, what in (("test_loss", lambda v: v >= 0, "a loss >= 0"),
                        ("test_acc", lambda v: 0 <= v <= 1, "an accuracy in [0, 1]")):  # fmt: skip
        v = rec.get(k)
        if v is not None and not (isinstance(v, float) and not math.isfinite(v)) and not ok(v):
            raise UserError(f"{path}: line {i} (round {r}): {k} is {v!r}, not {what}; the file was edited")
    return rec


def _number_or_null(v: Any) -> bool:
    """None, a float, or an integer a float can hold (JSON has no size limit: ``10**400`` is no loss a float
    training could have recorded, and float() of it overflows where the readers average it)."""
    if isinstance(v, bool):
        return False
    return v is None or isinstance(v, float) or (isinstance(v, int) and abs(v) <= 2**53)


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The records of ``metrics.jsonl`` (a torn last line, cut by a kill, is left out); any other
    unreadable line, or a round out of order or recorded twice, is a :class:`UserError` naming it
    (as ``--resume`` refuses it: which of two lines is the round's cannot be told)."""
    path = Path(run_dir) / METRICS_FILE
    records = _parse_metrics(path)[0]
    _check_order(path, [r["round"] for r in records], "")
    return records


def _check_order(path: Path, rounds: list[int], then: str) -> None:
    """Rounds strictly increasing: one line naming the first round out of order or recorded twice."""
    bad = next((r for i, r in enumerate(rounds) if i and r <= rounds[i - 1]), None)
    if bad is not None:
        raise UserError(
            f"{path}: round {bad} is out of order or recorded twice (two processes wrote this run?); "
            f"keep one line per round, in order{then}"
        )


def metrics_for_resume(run_dir: Path, committed: int) -> tuple[list[dict[str, Any]], list[int], bool]:
    """(records to keep, committed rounds without a record, whether the file must be rewritten).

    Records of rounds after ``committed`` were written by a round that never committed and are
    dropped, as is a torn last line. A record out of order or twice (two writers) is refused: no
    valid record is ever deleted. Missing rounds are rebuilt by the caller.
    """
    path = Path(run_dir) / METRICS_FILE
    records, torn = _parse_metrics(path)
    keep = [r for r in records if r["round"] <= committed]
    rounds = [r["round"] for r in keep]
    _check_order(path, rounds, ", then --resume again")
    missing = sorted(set(range(committed + 1)) - set(rounds))
    return keep, missing, torn or len(keep) != len(records) or bool(missing)


def write_metrics(run_dir: Path, records: list[dict[str, Any]]) -> None:
    atomic_write_bytes(Path(run_dir) / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in records).encode())
