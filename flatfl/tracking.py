"""TensorBoard logging of per-round numbers (``flatfl train --tensorboard``, ``flatfl report --tensorboard``).

``metrics.jsonl`` stays the source of truth: the trainer logs a round's record only after its
line is appended, and a tracker that fails (disk full, a bug in the package) is switched off with
one warning -- it never stops a run. Every numeric field of a record becomes a scalar (tag = the
field's name, step = the round); every list of numbers but the client ids (``client_train_loss``)
a histogram. Event files are written with ``tensorboardX`` (the optional extra ``flatfl[track]``),
which needs only protobuf; view them with ``tensorboard --logdir DIR``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flatfl.errors import UserError

NOT_LOGGED = ("round", "clients")  # the step itself, and client ids (labels, not measurements)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class Tracker:
    """One TensorBoard run folder; ``log`` never raises."""

    def __init__(self, logdir: Path, purge_step: int | None = None, warn: Callable[[str], None] = print) -> None:
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            raise UserError(
                "--tensorboard: needs the tensorboardX package; pip install 'flatfl[track]' (or tensorboardX)"
            ) from None
        try:
            Path(logdir).mkdir(parents=True, exist_ok=True)
            # event files are named by the second they were opened: a suffix in nanoseconds keeps a resume
            # started within the same second from overwriting the first file, and sorts after it
            suffix = f".{time.time_ns()}"
            self._w: Any = SummaryWriter(str(logdir), purge_step=purge_step, flush_secs=30, filename_suffix=suffix)
        except OSError as exc:
            why = exc.strerror or exc
            raise UserError(f"--tensorboard: cannot write to {logdir} ({why}); choose another folder") from exc
        self.logdir = Path(logdir)
        self._warn = warn

    def log(self, record: dict[str, Any], step: int | None = None, prefix: str = "") -> None:
        """Scalars (and histograms of number lists) of one record at ``step`` (default: its round)."""
        if self._w is None:
            return
        try:
            step = int(record["round"]) if step is None else step
            for k, v in record.items():
                if k in NOT_LOGGED:
                    continue
                if _number(v):
                    self._w.add_scalar(prefix + k, float(v), step)
                elif isinstance(v, list) and v and all(_number(x) for x in v):
                    import numpy as np

                    self._w.add_histogram(prefix + k, np.asarray(v, dtype=np.float64), step)
        except Exception as exc:  # noqa: BLE001 -- a tracker must never break the run
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        self._warn(
            f"warning: --tensorboard {self.logdir}: logging failed ({type(exc).__name__}: {exc}); switched off, "
            "metrics.jsonl stays complete"
        )
        try:
            self._w.close()
        except Exception:  # noqa: BLE001
            pass
        self._w = None

    def close(self) -> None:
        if self._w is None:
            return
        try:
            self._w.close()
        except Exception as exc:  # noqa: BLE001
            self._fail(exc)


REPORT_PREFIX = "curvature/"
ROW_LABELS = ("run", "seed", "algo", "path", "round", "conditions")  # report.json rows: labels, not numbers


def check_logdir(logdir: Path) -> None:
    """Before any work: ``--tensorboard DIR`` that can never be written (tensorboardX missing, DIR or a folder
    above it an existing file) is refused in one line, not after a report's measurements."""
    try:
        import tensorboardX  # noqa: F401
    except ImportError:
        raise UserError(
            "--tensorboard: needs the tensorboardX package; pip install 'flatfl[track]' (or tensorboardX)"
        ) from None
    for p in (Path(logdir), *Path(logdir).parents):
        if p.exists():
            if not p.is_dir():
                raise UserError(f"--tensorboard: cannot write to {logdir} ({p} is not a folder); choose another folder")
            break


def log_report_rows(logdir: Path, rows: list[dict[str, Any]], warn: Callable[[str], None] = print) -> list[Path]:
    """``flatfl report --tensorboard``: each report row (one run at one measured round) as scalars
    ``curvature/<measure>`` at step = round, in ``logdir/<run folder name>``. Returns the folders."""
    by_run: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_run.setdefault(str(row["path"]), []).append(row)
    written = []
    for path, run_rows in by_run.items():
        tracker = Tracker(Path(logdir) / Path(path).name, warn=warn)
        for row in sorted(run_rows, key=lambda r: r["round"]):
            numbers = {k: v for k, v in row.items() if k not in ROW_LABELS}
            tracker.log(numbers, step=int(row["round"]), prefix=REPORT_PREFIX)
        tracker.close()
        written.append(tracker.logdir)
    return written
