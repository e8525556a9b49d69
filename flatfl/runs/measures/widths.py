"""The 1D basin width of Li et al. (NeurIPS 2018) slices at given Δloss thresholds (``flatfl report --slices K
--widths LIST``).

The loss along K filter-normalised random directions; the width at threshold τ is the distance between the
first crossings of the mean Δloss curve (censored when a side never reaches τ within ±radius). Higher is
flatter. Invariant to layer-wise rescaling and to a filter rescaled before BatchNorm, not to filter-wise
rescaling (:mod:`flatfl.analysis.invariance`). A report measure: its settings are ``flatfl report``'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from flatfl.analysis.invariance import invariant_to
from flatfl.analysis.slices import Slices, random_slices, symmetric_grid, width, width_stderr
from flatfl.analysis.verdict import Measure
from flatfl.runs.measures.spec import Context, Meaning, MeasureSpec, register
from flatfl.runs.problem import Problem
from flatfl.runs.settings import LandscapeSettings, ReportSettings
from flatfl.runs.share import enabled as share_enabled


@dataclass(frozen=True)
class WidthSettings:
    """``directions`` random directions, t in ±``radius`` with ``points`` per side, widths at ``thresholds``."""

    directions: int = 10
    radius: float = 1.0
    points: int = 20
    thresholds: tuple[float, ...] = (0.1, 1.0)


def width_key(t: float) -> str:
    return f"width_{t:g}"


def compute(problem: Problem, s: WidthSettings, ctx: Context) -> dict[str, Any]:
    ls = ctx.landscape
    ts = symmetric_grid(s.radius, s.points)
    r = random_slices(problem.objective, ts, num_directions=s.directions, seed=ls.seed,
                      memory_budget=ls.memory_budget_gb * 2**30,
                      share_origin=share_enabled())  # fmt: skip  # L(theta) once for every direction
    ctx.shared["slices"] = r  # the arrays as computed (the record holds them as lists)
    return {"ts": r.ts.tolist(), "delta": r.delta.tolist(), "loss0": r.loss0, "seed": r.seed,
            "directions": r.num_directions}  # fmt: skip


def slices_of(record: dict[str, Any]) -> Slices:
    return Slices(np.array(record["ts"]), np.array(record["delta"]), record["loss0"], record["seed"],
                  record["directions"])  # fmt: skip


def slice_columns(slices: Slices, thresholds: Sequence[float]) -> dict[str, Any]:
    """The width at each threshold, its standard error over the K directions and whether it is censored."""
    row: dict[str, Any] = {}
    for t in thresholds:
        w, censored = width(slices.ts, slices.mean, t)
        row[width_key(t)] = w
        row[width_key(t) + "_stderr"] = width_stderr(slices.ts, slices.delta, t)  # over the K directions
        row[width_key(t) + "_censored"] = censored
    return row


def verdict(s: WidthSettings, ls: LandscapeSettings) -> list[Measure]:
    return [
        Measure(width_key(t), f"1D width at Δloss {t:g}", lower_is_better=False, bounds=(0.0, None),
                invariant_to=invariant_to(width_key(t)), error=width_key(t) + "_stderr",
                budget=(s.directions, "directions"))
        for t in s.thresholds
    ]  # fmt: skip


def meaning(s: WidthSettings, report: ReportSettings) -> Meaning:
    return Meaning(
        "Along K random directions d<sub>k</sub>, each filter of d<sub>k</sub> rescaled to the norm of the "
        "same filter of θ (biases and BatchNorm parameters get no direction), Δ<sub>k</sub>(t) = L(θ + t "
        "d<sub>k</sub>) − L(θ); the width at τ is the distance between the first crossings of the mean "
        f"curve over k with Δloss = τ on either side of t = 0, within ±{s.radius:g}.",
        "wider",
        "the spread of the widths read from each direction's own curve",
        ("Li et al. 2018",),
    )


def settings_of(ls: LandscapeSettings, report: ReportSettings | None = None) -> WidthSettings | None:
    if report is None or not report.slice_directions:
        return None
    return WidthSettings(report.slice_directions, report.slice_radius, report.slice_points, tuple(report.widths))


SPEC = register(
    MeasureSpec(
        name="widths",
        label="1D width",
        direction="higher",
        invariances=invariant_to("width"),
        settings=WidthSettings,
        compute=compute,
        settings_of=settings_of,
        path=("slices",),
        columns=lambda res, s: slice_columns(slices_of(res), s.thresholds),
        verdict=verdict,
        report=False,
        builtin=True,
        meaning=meaning,
    )
)
