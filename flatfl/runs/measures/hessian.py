"""lambda_max: the top Hessian eigenvalues and the most negative one, by Lanczos (``--hessian``).

Lower is flatter. Changes under every tested rescaling (H -> T^-1 H T^-1; :mod:`flatfl.analysis.invariance`).
Its top eigenvectors are shared (``context.shared["eigen"]``) with the federated view and eigen surfaces.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flatfl.analysis.invariance import invariant_to
from flatfl.analysis.verdict import Measure
from flatfl.flagtypes import passes_t, pos_float
from flatfl.runs import curvature
from flatfl.runs.measures.spec import Context, Flag, Meaning, MeasureSpec, register
from flatfl.runs.problem import Problem
from flatfl.runs.settings import LandscapeSettings, ReportSettings

D = LandscapeSettings()


@dataclass(frozen=True)
class HessianSettings:
    """Lanczos: ``topk`` eigenvalues to a relative residual ``tol``, at most ``max_vectors`` held."""

    topk: int = D.topk
    tol: float = D.tol
    max_vectors: int = D.max_vectors


def compute(problem: Problem, s: HessianSettings, ctx: Context) -> dict[str, Any]:
    op = ctx.hessian_operator(problem)
    record, eig = curvature.top_eigen(op, ctx.landscape, problem.source["data"].get("auto"), ctx.log, ctx.bars)
    ctx.shared["eigen"] = eig
    return record


def columns(res: dict[str, Any], s: HessianSettings) -> dict[str, Any]:
    row = {"lambda_max": res["eigenvalues"][0]}
    if res.get("residuals"):  # ||Hv - lambda v||: bounds |lambda_max - its estimate|
        row["lambda_max_residual"] = res["residuals"][0]
    if res.get("data_error") is not None:  # --samples auto: the error from the data drawn
        row["lambda_max_data_error"] = res["data_error"]
    row["lambda_min"] = res["smallest"]
    return row


def verdict(s: HessianSettings, ls: LandscapeSettings) -> list[Measure]:
    # the Lanczos residual ||Hv - lambda v|| bounds the error; no budget (it converges to --tol)
    return [Measure("lambda_max", "λmax", invariant_to=invariant_to("lambda_max"), error="lambda_max_residual")]


def settings_of(ls: LandscapeSettings, report: ReportSettings | None = None) -> HessianSettings | None:
    return HessianSettings(ls.topk, ls.tol, ls.max_vectors) if ls.hessian else None


SPEC = register(
    MeasureSpec(
        name="hessian",
        label="λmax",
        meaning=Meaning(
            "λ<sub>max</sub>(∇²L(θ)): the largest eigenvalue of the Hessian of the training loss L at the "
            "global model θ (Lanczos iteration on Hessian-vector products).",
            "lower: the loss curves up less steeply along its sharpest direction",
            "the Lanczos residual ‖Hv − λv‖ of the returned eigenpair (converged below the tolerance)",
            ("Lanczos 1950", "Keskar et al. 2017"),
        ),
        direction="lower",
        invariances=invariant_to("lambda_max"),
        settings=HessianSettings,
        compute=compute,
        group="curvature",
        flags=(
            Flag(
                ("--hessian",),
                {"action": "store_true", "help": "top-k eigenpairs and the most negative eigenvalue (Lanczos)"},
            ),
            Flag(
                ("--topk",),
                {"type": passes_t, "metavar": "K", "help": f"number of top eigenvalues (default: {D.topk})"},
            ),
            Flag(
                ("--tol",),
                {
                    "type": pos_float,
                    "help": f"Lanczos stops when every residual ||Hv - lv|| <= tol * |lambda_max| (default: {D.tol})",
                },
            ),
            Flag(
                ("--max-vectors",),
                {
                    "type": passes_t,
                    "metavar": "N",
                    "help": f"most parameter-sized vectors Lanczos/SLQ hold in memory (default: {D.max_vectors})",
                },
            ),
        ),  # fmt: skip
        settings_of=settings_of,
        columns=columns,
        verdict=verdict,
        collective=True,
        report=False,
        describe=lambda s: f"lambda_max: Lanczos top-{s.topk}, tol {s.tol:g}",
        builtin=True,
    )
)
