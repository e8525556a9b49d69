"""The Hessian's eigenvalue spectral density by stochastic Lanczos quadrature (``--density``).

A distribution, not one number: landscape.json holds its nodes and weights and density.png draws it; it has no
verdict row. Its SLQ result is shared (``context.shared["density"]``) for the figure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flatfl.analysis.verdict import Measure
from flatfl.flagtypes import passes_t
from flatfl.runs import curvature
from flatfl.runs.measures.spec import Context, Flag, MeasureSpec, register
from flatfl.runs.problem import Problem
from flatfl.runs.settings import LandscapeSettings, ReportSettings

D = LandscapeSettings()


@dataclass(frozen=True)
class DensitySettings:
    """``runs`` random starts of ``steps`` Lanczos steps each."""

    runs: int = D.slq_runs
    steps: int = D.slq_steps


def compute(problem: Problem, s: DensitySettings, ctx: Context) -> dict[str, Any]:
    op = ctx.hessian_operator(problem)
    record, ctx.shared["density"] = curvature.density(op, ctx.landscape, ctx.log, ctx.bars)
    return record


def settings_of(ls: LandscapeSettings, report: ReportSettings | None = None) -> DensitySettings | None:
    return DensitySettings(ls.slq_runs, ls.slq_steps) if ls.density else None


def no_rows(s: DensitySettings, ls: LandscapeSettings) -> list[Measure]:
    return []


SPEC = register(
    MeasureSpec(
        name="density",
        label="spectral density",
        direction="lower",
        invariances=frozenset(),
        settings=DensitySettings,
        compute=compute,
        group="curvature",
        flags=(
            Flag(
                ("--density",),
                {"action": "store_true", "help": "eigenvalue spectral density by stochastic Lanczos quadrature"},
            ),
            Flag(
                ("--slq-runs",),
                {"type": passes_t, "metavar": "N", "help": f"SLQ random vectors (default: {D.slq_runs})"},
            ),
            Flag(
                ("--slq-steps",),
                {
                    "type": passes_t,
                    "metavar": "N",
                    "help": f"Lanczos steps per SLQ run, at most --max-vectors (default: {D.slq_steps})",
                },
            ),
        ),  # fmt: skip
        settings_of=settings_of,
        columns=lambda res, s: {},
        verdict=no_rows,
        collective=True,
        report=False,
        builtin=True,
    )
)
