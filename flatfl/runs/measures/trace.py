"""The Hessian trace with a standard error: adaptive Hutchinson/Hutch++ (``--trace``).

Lower is flatter. Changes under every tested rescaling (:mod:`flatfl.analysis.invariance`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flatfl.analysis.invariance import invariant_to
from flatfl.analysis.verdict import Measure
from flatfl.flagtypes import passes_t
from flatfl.runs import curvature
from flatfl.runs.measures.spec import Context, Flag, Meaning, MeasureSpec, register
from flatfl.runs.problem import Problem
from flatfl.runs.settings import LandscapeSettings, ReportSettings

D = LandscapeSettings()


@dataclass(frozen=True)
class TraceSettings:
    """``matvecs`` Hessian-vector products of estimator ``method`` (adaptive | hutch++ | hutchinson)."""

    matvecs: int = D.trace_matvecs
    method: str = D.trace_method


def compute(problem: Problem, s: TraceSettings, ctx: Context) -> dict[str, Any]:
    op = ctx.hessian_operator(problem)
    return curvature.trace(op, ctx.landscape, problem.source["data"].get("auto"), ctx.log, ctx.bars)


def columns(res: dict[str, Any], s: TraceSettings) -> dict[str, Any]:
    row = {"trace": res["estimate"], "trace_stderr": res["stderr"]}
    if res.get("data_error") is not None:
        row["trace_data_error"] = res["data_error"]
    return row


def verdict(s: TraceSettings, ls: LandscapeSettings) -> list[Measure]:
    return [Measure("trace", "trace", invariant_to=invariant_to("trace"), error="trace_stderr",
                    budget=(s.matvecs, "HVPs"))]  # fmt: skip


def settings_of(ls: LandscapeSettings, report: ReportSettings | None = None) -> TraceSettings | None:
    return TraceSettings(ls.trace_matvecs, ls.trace_method) if ls.trace else None


SPEC = register(
    MeasureSpec(
        name="trace",
        label="trace",
        meaning=Meaning(
            "tr ∇²L(θ) = Σ<sub>i</sub> λ<sub>i</sub>: the sum of all Hessian eigenvalues (the average curvature "
            "over all directions), estimated from random probes z as E[zᵀ∇²L z].",
            "lower",
            "the estimator's standard error over its probes",
            ("Hutchinson 1989", "Meyer et al. 2021"),
        ),
        direction="lower",
        invariances=invariant_to("trace"),
        settings=TraceSettings,
        compute=compute,
        group="curvature",
        flags=(
            Flag(
                ("--trace",),
                {"action": "store_true", "help": "Hessian trace with a standard error (see --trace-method)"},
            ),
            Flag(
                ("--trace-matvecs",),
                {
                    "type": passes_t,
                    "metavar": "N",
                    "help": f"HVP budget of the trace estimator (default: {D.trace_matvecs})",
                },
            ),
            Flag(
                ("--trace-method",),
                {
                    "choices": ["adaptive", "hutch++", "hutchinson"],
                    "help": "adaptive: Hutch++ when its first third predicts a smaller variance "
                    "than Hutchinson's, else Hutchinson with the same vectors; hutch++; "
                    f"hutchinson (default: {D.trace_method})",
                },
            ),
        ),  # fmt: skip
        settings_of=settings_of,
        columns=columns,
        verdict=verdict,
        collective=True,
        report=False,
        describe=lambda s: f"trace: {s.method}, {s.matvecs} HVPs",
        builtin=True,
    )
)
