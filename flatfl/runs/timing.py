"""Where a command's time goes: a stage timer with exclusive (self) times, and its frozen result.

``with timed() as timer:`` makes ``timer`` the active one (a :class:`contextvars.ContextVar`, so
nothing is threaded through signatures); inside it, ``with stage("trace"):`` charges the wall-clock
time of the block to ``trace``. Stages nest: a stage's time is its *self* time -- while an inner
stage runs, the outer one's clock is stopped -- so the stages never count a second twice and

    total = sum(seconds.values()) + other

where ``other`` is the time inside ``timed()`` spent outside every stage. ``counts[stage]`` is how
many times the stage was entered; :func:`count` adds any other tally (e.g. checkpoints reused from
the cache). Without an active timer ``stage`` and ``count`` do nothing, so library callers pay
nothing. ``flatfl report`` stores :meth:`Timing.as_json` in report.json (``timing``) and prints
:meth:`Timing.table`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flatfl.checkpoint import atomic_write_json

OTHER = "other"  # the time inside timed() outside every stage


@dataclass(frozen=True)
class Timing:
    """Exclusive seconds per stage (in the order first entered), how often each was entered, the total."""

    seconds: Mapping[str, float]
    counts: Mapping[str, int]
    total: float
    tallies: Mapping[str, int] = field(default_factory=dict)  # other counts (count(...)), not stages

    @property
    def other(self) -> float:
        """Seconds inside the timer spent outside every stage (never negative)."""
        return max(0.0, self.total - sum(self.seconds.values()))

    def dominant(self) -> str | None:
        """The stage that took the most time (None when no stage ran)."""
        return max(self.seconds, key=lambda k: self.seconds[k]) if self.seconds else None

    def as_json(self) -> dict[str, Any]:
        """``{"seconds": {stage: s, ..., "other": s}, "counts": {...}, "total": s, "dominant": stage}``."""
        return {
            "seconds": {**{k: round(v, 6) for k, v in self.seconds.items()}, OTHER: round(self.other, 6)},
            "counts": dict(self.counts),
            "tallies": dict(self.tallies),
            "total": round(self.total, 6),
            "dominant": self.dominant(),
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Timing:
        seconds = {k: float(v) for k, v in d["seconds"].items() if k != OTHER}
        return cls(seconds, {k: int(v) for k, v in d["counts"].items()}, float(d["total"]), dict(d.get("tallies", {})))

    def table(self, title: str = "time per stage") -> str:
        """A plain-text table: stage, seconds, share of the total, times run; largest first, then other, total."""
        rows = sorted(self.seconds.items(), key=lambda kv: -kv[1])
        width = max([len(k) for k in self.seconds] + [len(OTHER), len("total")])
        pct = (lambda s: 100.0 * s / self.total) if self.total > 0 else (lambda s: 0.0)
        lines = [f"{title}:", f"  {'stage':<{width}} {'seconds':>9} {'share':>6} {'runs':>5}"]
        lines += [f"  {k:<{width}} {s:>9.2f} {pct(s):>5.1f}% {self.counts.get(k, 0):>5}" for k, s in rows]
        lines.append(f"  {OTHER:<{width}} {self.other:>9.2f} {pct(self.other):>5.1f}%")
        lines.append(f"  {'total':<{width}} {self.total:>9.2f} {100.0 if self.total > 0 else 0.0:>5.1f}%")
        if self.tallies:
            lines.append("  " + ", ".join(f"{k}: {v}" for k, v in self.tallies.items()))
        return "\n".join(lines)


class StageTimer:
    """Self time per stage; ``clock`` is injectable (tests use a fake one)."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._start = clock()
        self._seconds: dict[str, float] = {}
        self._counts: dict[str, int] = {}
        self._tallies: dict[str, int] = {}
        self._stack: list[list[Any]] = []  # [name, since]: the innermost stage's clock runs

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        now = self._clock()
        if self._stack:  # the enclosing stage's clock stops while this one runs
            outer = self._stack[-1]
            self._seconds[outer[0]] += now - outer[1]
        self._seconds.setdefault(name, 0.0)
        self._counts[name] = self._counts.get(name, 0) + 1
        self._stack.append([name, now])
        try:
            yield
        finally:
            now = self._clock()
            inner = self._stack.pop()
            self._seconds[inner[0]] += now - inner[1]
            if self._stack:
                self._stack[-1][1] = now

    def count(self, name: str, n: int = 1) -> None:
        self._tallies[name] = self._tallies.get(name, 0) + n

    def result(self) -> Timing:
        """The times so far (a stage still open is charged up to now)."""
        now = self._clock()
        seconds = dict(self._seconds)
        if self._stack:
            seconds[self._stack[-1][0]] += now - self._stack[-1][1]
        return Timing(seconds, dict(self._counts), now - self._start, dict(self._tallies))


_ACTIVE: ContextVar[StageTimer | None] = ContextVar("flatfl_stage_timer", default=None)


@contextmanager
def timed(clock: Callable[[], float] = time.perf_counter) -> Iterator[StageTimer]:
    """A fresh :class:`StageTimer`, active (for :func:`stage` and :func:`count`) inside the block."""
    timer = StageTimer(clock)
    token = _ACTIVE.set(timer)
    try:
        yield timer
    finally:
        _ACTIVE.reset(token)


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Charge the block's time to ``name`` on the active timer (nothing when none is active)."""
    timer = _ACTIVE.get()
    if timer is None:
        yield
        return
    with timer.stage(name):
        yield


def count(name: str, n: int = 1) -> None:
    """Add ``n`` to the tally ``name`` of the active timer (nothing when none is active)."""
    timer = _ACTIVE.get()
    if timer is not None:
        timer.count(name, n)


def with_timing(write_set: Callable[[Path], dict[str, Any]], timer: StageTimer) -> Callable[[Path], dict[str, Any]]:
    """``write_set`` (a report's files into a folder, returning them by kind, with ``json``) timed as the ``page``
    stage; then the timer's result so far goes into the written report.json as ``timing``."""

    def write(folder: Path) -> dict[str, Any]:
        with stage("page"):
            files = write_set(folder)
        path = Path(files["json"])
        rep = json.loads(path.read_text())
        rep["timing"] = timer.result().as_json()
        atomic_write_json(path, rep)
        return files

    return write


def print_timing(report_json: Path) -> None:
    """Print the time table of a written report.json (its ``timing``; nothing when it has none)."""
    rep = json.loads(Path(report_json).read_text())
    if "timing" in rep:
        print(Timing.from_json(rep["timing"]).table("flatfl report: time per stage"))
