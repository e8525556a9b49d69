"""Matched convergence: the round at which each run is compared.

Sharpness changes as training goes on, so two runs compared at the same round may sit at
different stages of convergence. Besides *equal rounds*, each run is measured

* at **equal training loss**: the first saved round whose loss on the analysis data is at or
  below a common level -- by default the highest final loss among the runs (so every run
  reaches it), or a given level;
* at **equal test accuracy**: the first saved round whose test accuracy (from
  ``metrics.jsonl``) is at or above a given level.

Every round is saved, so this needs no retraining. The loss of a saved round is computed
once on the analysis data and cached (keyed on the file's size and modification time).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from flatfl import checkpoint as ckpt
from flatfl.analysis.operators import ModelLoss
from flatfl.runs.run import Run


@dataclass(frozen=True)
class Match:
    """Where one run is measured for a condition; ``round`` None when it never gets there."""

    round: int | None
    value: float | None  # the run's loss / accuracy at that round
    note: str = ""


class LossCurve:
    """Loss of a run's saved global models on fixed data, computed on demand and cached in a JSON file."""

    def __init__(self, run: Run, x: torch.Tensor, y: torch.Tensor, cache: Path, key: dict, **model_loss_kw) -> None:
        self.run, self.x, self.y, self.cache, self.key, self.kw = run, x, y, Path(cache), key, model_loss_kw
        self.values: dict[str, list] = {}
        try:
            old = json.loads(self.cache.read_text())
            if old.get("key") == key:
                self.values = dict(old.get("rounds", {}))
        except (OSError, ValueError):
            pass
        self._dirty = False

    def _stamp(self, r: int) -> list[int]:
        st = ckpt.round_path(self.run.path, r).stat()
        return [st.st_size, st.st_mtime_ns]

    def __call__(self, r: int) -> float:
        hit = self.values.get(str(r))
        stamp = self._stamp(r)
        if hit is not None and hit[1:] == stamp:
            return float(hit[0])
        obj = ModelLoss(self.run.model(r), self.x, self.y, **self.kw)
        with torch.no_grad():
            loss = float(obj.loss())
        self.values[str(r)] = [loss, *stamp]
        self._dirty = True
        return loss

    def save(self) -> None:
        if self._dirty:
            self.cache.parent.mkdir(parents=True, exist_ok=True)
            ckpt.atomic_write_json(self.cache, {"key": self.key, "rounds": self.values})
            self._dirty = False


def first_round(rounds: Sequence[int], ok: Callable[[int], bool]) -> int | None:
    """The first round (ascending) for which ``ok`` holds, evaluating ``ok`` no further than needed."""
    for r in rounds:
        if ok(r):
            return r
    return None


def match_loss(curves: dict[str, tuple[LossCurve, list[int]]], level: float | None, upto: int) -> tuple[float, dict]:
    """Per run (by name): the first saved round in 1..``upto`` whose loss is <= level.

    ``curves`` maps a run name to (its loss curve, its saved rounds). ``level`` None: the highest
    loss at round ``upto`` among the runs. Returns (level, {name: Match}).
    """
    if level is None:
        level = max(curve(min(upto, rs[-1])) for curve, rs in curves.values())
    out = {}
    for name, (curve, rs) in curves.items():
        cand = [r for r in rs if r >= 1 and (upto is None or r <= upto)]  # round 0 is the untrained model
        r = first_round(cand, lambda r, c=curve: c(r) <= level * (1 + 1e-12))
        out[name] = Match(
            r, None if r is None else curve(r), "" if r is not None else f"never reaches loss {level:.4g}"
        )
    return level, out


def match_accuracy(metrics: dict[str, tuple[dict[int, float], list[int]]], level: float) -> dict[str, Match]:
    """Per run: the first saved round whose test accuracy (metrics.jsonl) is >= level."""
    out = {}
    for name, (acc, rs) in metrics.items():
        r = first_round([r for r in rs if r >= 1 and r in acc], lambda r, a=acc: a[r] >= level)
        out[name] = Match(
            r, None if r is None else acc[r], "" if r is not None else f"never reaches accuracy {level:g}"
        )
    return out
