"""The six sharpness measures of :data:`flatfl.analysis.sharpness.SHARPNESS` (``--sharpness LIST``), one spec each.

Lower is flatter. Adaptive (L2, Linf) and average adaptive sharpness are invariant to every tested rescaling,
the others to none (:mod:`flatfl.analysis.invariance`). Each family draws from its own seeded stream (4 epsilon,
5 SAM, 6 adaptive, 7 average), so switching one measure on or off leaves the others' numbers unchanged.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from flatfl.analysis.invariance import invariant_to
from flatfl.analysis.sharpness import SHARPNESS, SHARPNESS_MEASURES, SharpnessKind
from flatfl.analysis.verdict import Measure
from flatfl.errors import UserError
from flatfl.flagtypes import passes_t, pos_float, pos_int
from flatfl.runs import curvature
from flatfl.runs.measures.spec import Context, Flag, Meaning, MeasureSpec, register
from flatfl.runs.problem import Problem
from flatfl.runs.settings import LandscapeSettings, ReportSettings

D = LandscapeSettings()


@dataclass(frozen=True)
class SharpnessSettings:
    """Radius ``rho`` (SAM, adaptive), box ``eps`` (epsilon), noise ``sigma`` (average), ascent ``steps``,
    Monte Carlo ``samples`` (average, ``antithetic`` pairs), SAM's ``m``-sharpness groups."""

    rho: float = D.rho
    eps: float = D.eps
    sigma: float = D.sigma
    steps: int = D.sharpness_steps
    samples: int = D.sharpness_samples
    m: int | None = D.m
    antithetic: bool = D.antithetic


FLAGS = (
    Flag(("--sharpness",), {"metavar": "LIST",
                            "help": f"comma-separated measures, or all: {', '.join(SHARPNESS_MEASURES)}"}),
    Flag(("--rho",), {"type": pos_float, "help": f"radius of SAM and adaptive sharpness (default: {D.rho})"}),
    Flag(("--eps",), {"type": pos_float, "help": f"box size of epsilon-sharpness (default: {D.eps})"}),
    Flag(("--sigma",), {"type": pos_float, "help": f"noise scale of average-case sharpness (default: {D.sigma})"}),
    Flag(("--sharpness-steps",), {"type": passes_t, "metavar": "N",
                                  "help": f"ascent steps of SAM/adaptive sharpness (default: {D.sharpness_steps})"}),
    Flag(("--sharpness-samples",), {"type": passes_t, "metavar": "N",
                                    "help": "Monte Carlo draws of average-case sharpness "
                                            f"(default: {D.sharpness_samples})"}),
    Flag(("--m",), {"type": pos_int, "metavar": "M",
                    "help": "SAM m-sharpness: mean of worst cases over batches of M samples"}),
)  # fmt: skip


def meaning(name: str, s: SharpnessSettings) -> Meaning:
    """The page's text of sharpness measure ``name`` at settings ``s``."""
    rho, sigma, eps, n = s.rho, s.sigma, s.eps, s.samples
    ascent, adaptive = "none (a maximum found by ascent)", ("Kwon et al. 2021", "Andriushchenko et al. 2023")
    return {
        "sam": Meaning(
            f"max<sub>‖δ‖₂ ≤ ρ</sub> L(θ + δ) − L(θ), ρ = {rho:g}: the worst loss rise in a Euclidean ball "
            "(projected gradient ascent).",
            "lower",
            "none (a maximum found by ascent; a lower bound on the true maximum)",
            ("Foret et al. 2021", "Keskar et al. 2017"),
        ),
        "epsilon": Meaning(
            f"max<sub>‖δ‖∞ ≤ ε(|θ|+1)</sub> L(θ + δ) − L(θ), ε = {eps:g} (Keskar et al.'s box, L-BFGS-B).",
            "lower",
            "none (a maximum found by a local solver)",
            ("Keskar et al. 2017",),
        ),
        "adaptive_l2": Meaning(
            f"max<sub>‖δ / |θ|‖₂ ≤ ρ</sub> L(θ + δ) − L(θ), ρ = {rho:g}: the ball scaled coordinate-wise by the "
            "weights' own magnitudes |θ|.",
            "lower",
            ascent,
            adaptive,
        ),
        "adaptive_linf": Meaning(
            f"max<sub>‖δ / |θ|‖∞ ≤ ρ</sub> L(θ + δ) − L(θ), ρ = {rho:g}.", "lower", ascent, adaptive
        ),
        "average_adaptive": Meaning(
            f"E<sub>δ ~ N(0, σ² diag|θ|²)</sub>[L(θ + δ)] − L(θ), σ = {sigma:g}: the average loss rise under "
            "Gaussian noise scaled by the weights (Monte Carlo). Compared as a difference, not a ratio: it can be "
            "negative.",
            "lower",
            f"the Monte Carlo standard error over its {n} draws",
            ("Andriushchenko et al. 2023",),
        ),
        "average_isotropic": Meaning(
            f"E<sub>δ ~ N(0, σ² I)</sub>[L(θ + δ)] − L(θ), σ = {sigma:g}.",
            "lower",
            f"the Monte Carlo standard error over its {n} draws",
            ("Andriushchenko et al. 2023",),
        ),
    }[name]


def _spec(kind: SharpnessKind) -> MeasureSpec:
    name, key = kind.name, f"sharpness_{kind.name}"

    def compute(problem: Problem, s: SharpnessSettings, ctx: Context) -> dict[str, Any]:
        n = problem.objective.n
        if name == "sam" and s.m is not None and s.m > n:
            raise UserError(f"--m {s.m}: at most the {n} analysed samples (m-sharpness groups of M samples)")
        t = time.perf_counter()
        ctx.log(f"sharpness: {name} ...")
        with ctx.bars(f"sharpness {name} (losses)") as progress:
            r = curvature.sharpness_measure(problem.objective, name, ctx.landscape, progress)
        ctx.log(f"sharpness: {name} = {r.value:.6g}")
        return {**asdict(r), "seconds": time.perf_counter() - t}

    def columns(res: dict[str, Any], s: SharpnessSettings) -> dict[str, Any]:
        row = {key: res["value"]}
        if res.get("stderr") is not None:
            row[key + "_stderr"] = res["stderr"]
        return row

    def verdict(s: SharpnessSettings, ls: LandscapeSettings) -> list[Measure]:
        return [Measure(key, kind.label, invariant_to=invariant_to(key),
                        error=f"{key}_stderr" if kind.sampled else None,
                        budget=(s.samples, "samples") if kind.sampled else None)]  # fmt: skip

    def settings_of(ls: LandscapeSettings, report: ReportSettings | None = None) -> SharpnessSettings | None:
        if name not in ls.sharpness:
            return None
        return SharpnessSettings(ls.rho, ls.eps, ls.sigma, ls.sharpness_steps, ls.sharpness_samples, ls.m,
                                 ls.antithetic)  # fmt: skip

    return MeasureSpec(
        name=name,
        label=kind.label,
        direction="lower",
        invariances=invariant_to(key),
        settings=SharpnessSettings,
        compute=compute,
        group="sharpness",
        flags=FLAGS,
        settings_of=settings_of,
        path=("sharpness", name),
        columns=columns,
        verdict=verdict,
        collective=True,
        report=False,
        builtin=True,
        listed_as="sharpness",
        meaning=lambda s, report: meaning(name, s),
    )


SPECS = tuple(register(_spec(k)) for k in SHARPNESS.values())
