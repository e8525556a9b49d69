"""Matched convergence: the round at which each run is compared.

Sharpness changes as training goes on, so two runs compared at the same round may sit at
different stages of convergence. Besides *equal rounds*, each run is measured

* at **equal training loss**: the round where the run has *settled* at or below a common loss
  level on the analysis data (:func:`settled_round`, the rule below) -- by default the highest
  final smoothed loss among the runs (so every run settles there), or a given level;
* at **equal test accuracy**: the first saved round whose test accuracy (from
  ``metrics.jsonl``) is at or above a given level.

The settled rule. Let L_1, ..., L_n be a run's losses at its saved rounds r_1 < ... < r_n
(round 0, the untrained model, left out) and S_i their centred moving median over
``w = SMOOTH_WINDOW`` saved rounds, S_i = median{L_j : |j - i| <= w // 2} (the window cut at the
ends). The matched round is r_i for the first i with S_j <= level for every j >= i up to the last
round considered -- the smoothed curve has come down to the level *and stays there* -- and L_i <= level
itself (the window is cut at the curve's start, so S_1 of a curve that falls fast can already be low while
L_1 is far above the level: found by the large- vs small-batch calibration control). The naive
rule -- the first r_i with L_i <= level -- picks transient dips of a noisy non-IID run; a median
of 5 ignores up to two outlying rounds in a row (measured on noisy digits runs: docs/landscapes.md,
"Matched convergence").

A level must be one the runs reached *by training* (:func:`level_refusal`): below every run's
untrained loss L_0 (its round-0 loss on the same data; ln C for C classes is its sanity value)
by at least ``MIN_DROP`` of L_0. Otherwise the comparison at that level gets no verdict, and the
report says why. Matched rounds of two groups that differ by more than ``DISPARITY`` times, or
that fall in the first ``EARLY_FRACTION`` of training, are said in words
(:func:`round_warnings`); such a comparison gets no verdict unless the level was given.

Every round is saved, so this needs no retraining. The loss of a saved round is computed
once on the analysis data and cached (keyed on the file's size and modification time).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from flatfl import checkpoint as ckpt
from flatfl.analysis.operators import ModelLoss
from flatfl.runs.match_rule import DISPARITY, EARLY_FRACTION, MATCH_RULE, MIN_DROP, SMOOTH_WINDOW  # noqa: F401
from flatfl.runs.run import Run

_TOL = 1e-12


@dataclass(frozen=True)
class Match:
    """Where one run is measured for a condition; ``round`` None when it never gets there."""

    round: int | None
    value: float | None  # the run's loss / accuracy at that round
    note: str = ""


@dataclass(frozen=True)
class Trace:
    """The loss curve the rule used for one run: saved rounds >= 1, raw and smoothed loss, the chosen round,
    the naive first crossing, and the untrained (round-0) loss when round 0 is saved."""

    rounds: tuple[int, ...]
    loss: tuple[float, ...]
    smoothed: tuple[float, ...]
    settled: int | None
    first_crossing: int | None
    untrained: float | None


@dataclass(frozen=True)
class LossMatch:
    """The outcome of :func:`match_loss`: the level, each run's match and the curve behind it."""

    level: float
    found: dict[str, Match]
    traces: dict[str, Trace] = field(default_factory=dict)
    window: int = SMOOTH_WINDOW


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

    def chance(self) -> float | None:
        """ln C, the cross-entropy of a uniform guess over the model's C classes (None if unknown)."""
        c = self.run.info.get("model", {}).get("kwargs", {}).get("num_classes")
        return math.log(c) if isinstance(c, int) and c > 1 else None

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


def moving_median(values: Sequence[float], window: int = SMOOTH_WINDOW) -> np.ndarray:
    """Centred moving median: S_i = median{v_j : |j - i| <= window // 2}, the window cut at both ends."""
    v = np.asarray(values, dtype=float)
    h = max(int(window), 1) // 2
    return np.array([np.median(v[max(0, i - h) : i + h + 1]) for i in range(len(v))])


def settled_index(smoothed: Sequence[float], level: float) -> int | None:
    """The first i with smoothed[j] <= level for every j >= i (None when the last value is above the level)."""
    above = np.flatnonzero(np.asarray(smoothed, dtype=float) > level * (1 + _TOL))
    if len(above) == 0:
        return 0 if len(smoothed) else None
    i = int(above[-1]) + 1
    return i if i < len(smoothed) else None


def matched_index(loss: Sequence[float], level: float, window: int = SMOOTH_WINDOW) -> int | None:
    """The index the matching rule picks in the loss curve ``loss``: the first i from which the moving median
    stays at or below ``level`` (:func:`settled_index`) *and* whose own loss is at or below it; None if none."""
    i = settled_index(moving_median(loss, window), level)
    # the measured round's own loss at or below the level too: the window is cut at the curve's start, so the
    # smoothed value of an early round can already be low while the round itself is far above the level
    while i is not None and loss[i] > level * (1 + _TOL):
        i = i + 1 if i + 1 < len(loss) else None
    return i


def _trace(curve: Callable[[int], float], rounds: Sequence[int], level: float, window: int) -> Trace:
    loss = [curve(r) for r in rounds]
    sm = moving_median(loss, window)
    i = matched_index(loss, level, window)
    first = next((r for r, v in zip(rounds, loss) if v <= level * (1 + _TOL)), None)
    return Trace(tuple(rounds), tuple(loss), tuple(float(x) for x in sm), None if i is None else rounds[i], first, None)


def match_loss(
    curves: Mapping[str, tuple[Callable[[int], float], Sequence[int]]],
    level: float | None,
    upto: int | None,
    window: int = SMOOTH_WINDOW,
) -> LossMatch:
    """Per run (by name): the round in 1..``upto`` where its smoothed loss settles at or below the level.

    ``curves`` maps a run name to (its loss curve, its saved rounds). ``level`` None: the highest smoothed
    loss at round ``upto`` among the runs (each run's last smoothed value, so every run settles there).
    ``upto`` None: every saved round. The untrained loss (round 0) is read when round 0 is saved.
    """
    cand = {n: [r for r in rs if r >= 1 and (upto is None or r <= upto)] for n, (_, rs) in curves.items()}
    empty = [n for n, rs in cand.items() if not rs]
    if level is None and empty:
        raise ValueError(
            f"equal train loss: {empty[0]} has no saved round in 1..{upto} to set the level from; pass --at-rounds "
            "with a later round, --match-loss, or --no-match"
        )
    if level is None:
        level = max(float(moving_median([c(r) for r in cand[n]], window)[-1]) for n, (c, _) in curves.items())
    found, traces = {}, {}
    for name, (curve, rs) in curves.items():
        t = _trace(curve, cand[name], level, window)
        if 0 in rs:
            t = Trace(t.rounds, t.loss, t.smoothed, t.settled, t.first_crossing, curve(0))
        traces[name] = t
        r = t.settled
        note = "" if r is not None else f"never settles at loss <= {level:.4g}"
        found[name] = Match(r, None if r is None else t.loss[t.rounds.index(r)], note)
    return LossMatch(level, found, traces, window)


def level_refusal(level: float, traces: Mapping[str, Trace], chance: float | None) -> str | None:
    """Why ``level`` is not one the runs reached by training (None when it is).

    Refused when level > (1 - MIN_DROP) * L_0 for some run's untrained loss L_0 (its round-0 loss on the same
    data; ln C where round 0 is not saved): a model one round from initialisation is then already "matched".
    """
    base = {n: t.untrained for n, t in traces.items() if t.untrained is not None}
    if not base and chance is not None:
        base = {"ln C": chance}
    if not base:
        return None
    name, l0 = min(base.items(), key=lambda kv: kv[1])
    if level <= (1 - MIN_DROP) * l0 * (1 + _TOL):
        return None
    sanity = f"; ln C = {chance:.4g}" if chance is not None else ""
    where = "the untrained model's loss" if name == "ln C" else f"{name}'s untrained (round 0) loss"
    if level >= l0:
        how = f"is at or above {where}, {l0:.4g}{sanity}"
    else:
        how = f"is less than {MIN_DROP:.0%} below {where}, {l0:.4g}{sanity}"
    return (
        f"loss level {level:.4g} {how}: not a level reached by training (on non-IID data the global model's loss on "
        "the pooled data can stay high while it learns) -- compare at equal test accuracy with --match-acc"
    )


def round_warnings(
    ref: str, other: str, a: Mapping[int, int | None], b: Mapping[int, int | None], total: int
) -> list[str]:
    """Sentences when two groups' matched rounds (seed -> round) are far apart or early in training.

    Far apart: the groups' median matched rounds differ by more than ``DISPARITY`` times. Early: a matched
    round <= ``EARLY_FRACTION`` of ``total`` (the last round considered).
    """
    out = []
    ra = sorted(r for r in a.values() if r is not None)
    rb = sorted(r for r in b.values() if r is not None)
    if ra and rb:
        ma, mb = float(np.median(ra)), float(np.median(rb))
        if max(ma, mb) > DISPARITY * min(ma, mb):
            out.append(
                f"the matched rounds differ by more than {DISPARITY:g}x ({ref}: median round {ma:g}, {other}: {mb:g}),"
                " so the groups are compared at very different stages of training"
            )
    early = EARLY_FRACTION * total
    for lab, per in ((ref, a), (other, b)):
        few = sorted((s, r) for s, r in per.items() if r is not None and r <= early)
        if few:
            which = ", ".join(f"seed {s} at round {r}" for s, r in few)
            out.append(f"{lab} {which} settles within the first {EARLY_FRACTION:.0%} of training (round ≤ {early:g})")
    return out


def match_accuracy(metrics: dict[str, tuple[dict[int, float], list[int]]], level: float) -> dict[str, Match]:
    """Per run: the first saved round whose test accuracy (metrics.jsonl) is >= level."""
    out = {}
    for name, (acc, rs) in metrics.items():
        r = first_round([r for r in rs if r >= 1 and r in acc], lambda r, a=acc: a[r] >= level)
        out[name] = Match(
            r, None if r is None else acc[r], "" if r is not None else f"never reaches accuracy {level:g}"
        )
    return out
