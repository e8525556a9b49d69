"""Relative flatness kappa_Tr of the output layer (Petzka et al., NeurIPS 2021), exact (``--relative-flatness``).

Lower is flatter. No invariance is claimed here: flatfl's reparametrisation tests (tests/test_invariance.py)
do not cover it yet, although the paper proves invariance to layer-wise rescaling.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flatfl.analysis.measures import relative_flatness
from flatfl.errors import UserError
from flatfl.runs.measures.spec import Context, Flag, MeasureSpec, register
from flatfl.runs.problem import Problem


@dataclass(frozen=True)
class RelativeFlatnessSettings:
    """``layer``: the output nn.Linear (None: the last one)."""

    layer: str | None = None


def compute(problem: Problem, s: RelativeFlatnessSettings, ctx: Context) -> dict[str, Any]:
    try:
        r = relative_flatness(problem.objective, layer=s.layer)
    except ValueError as e:
        raise UserError(f"--relative-flatness: {e}") from None
    ctx.log(f"relative flatness (layer {r.layer}): {r.kappa:.6g}")
    return {"kappa": r.kappa, "layer": r.layer, "weight_shape": list(r.weight_shape)}


SPEC = register(
    MeasureSpec(
        name="relative_flatness",
        label="relative flatness",
        direction="lower",
        invariances=frozenset(),
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
        describe=lambda s: "relative flatness",
    )
)
