"""Relative flatness kappa_Tr of the output layer (Petzka et al., NeurIPS 2021), exact (``--relative-flatness``).

Lower is flatter. Invariant to layer-wise rescaling, also at the output layer (the paper's case), and to
filter-wise rescalings of earlier layers; changes when one feature neuron is rescaled against its output column
(tests/test_invariance.py, :mod:`flatfl.analysis.invariance`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flatfl.analysis.invariance import invariant_to
from flatfl.analysis.measures import relative_flatness
from flatfl.errors import UserError
from flatfl.runs.measures.spec import Context, Flag, Meaning, MeasureSpec, register
from flatfl.runs.problem import Problem


@dataclass(frozen=True)
class RelativeFlatnessSettings:
    """``layer``: the output nn.Linear (None: the last one)."""

    layer: str | None = None


def compute(problem: Problem, s: RelativeFlatnessSettings, ctx: Context) -> dict[str, Any]:
    try:
        r = relative_flatness(problem.objective, layer=s.layer)
    except ValueError as e:
        if s.layer is not None:  # a layer named on the command line: its mistake is the user's
            raise UserError(f"--relative-flatness-layer {s.layer}: {e}") from None
        # the default (the last nn.Linear, e.g. in flatfl report's default set): not defined for this model
        ctx.log(f"relative flatness: not measured ({e})")
        return {"kappa": None, "layer": None, "weight_shape": None, "not_measured": str(e)}
    ctx.log(f"relative flatness (layer {r.layer}): {r.kappa:.6g}")
    return {"kappa": r.kappa, "layer": r.layer, "weight_shape": list(r.weight_shape)}


SPEC = register(
    MeasureSpec(
        name="relative_flatness",
        label="relative flatness",
        direction="lower",
        invariances=invariant_to("relative_flatness"),
        settings=RelativeFlatnessSettings,
        compute=compute,
        flags=(
            Flag(
                ("--relative-flatness",),
                {
                    "action": "store_true",
                    "help": "relative flatness kappa_Tr of the output layer (Petzka et al. 2021), exact",
                },
            ),
            Flag(
                ("--relative-flatness-layer",),
                {"metavar": "NAME", "help": "the output nn.Linear (default: the last one)"},
                "layer",
            ),
        ),  # fmt: skip
        path=("literature", "relative_flatness"),
        columns=lambda res, s: {"relative_flatness": res["kappa"]},
        report_default=True,
        meaning=Meaning(
            "κ<sub>Tr</sub>(w) = Σ<sub>s,s′</sub> ⟨w<sub>s</sub>, w<sub>s′</sub>⟩ Tr(H<sub>s,s′</sub>): w the output "
            "layer's weights (rows w<sub>s</sub>; the last nn.Linear, fed by the penultimate 'feature' layer φ), "
            "H<sub>s,s′</sub> the Hessian block of L in w<sub>s</sub> and w<sub>s′</sub>; computed exactly as "
            "(1/N) Σ<sub>i</sub> ‖φ(x<sub>i</sub>)‖² ⟨w wᵀ, ∂²ℓ<sub>i</sub>/∂z²⟩. The weights' scale enters against "
            "the curvature's, so moving scale between the feature layer and the output layer leaves it unchanged.",
            "lower",
            "none (computed exactly on the analysis data)",
            ("Petzka et al. 2021",),
        ),
        references={
            "Petzka et al. 2021": "H. Petzka, M. Kamp, L. Adilova, C. Sminchisescu, M. Boley. Relative flatness and "
            "generalization. NeurIPS 2021.",
        },  # measured cost: docs/landscapes.md, "The report's default set"
        describe=lambda s: "relative flatness",
    )
)
