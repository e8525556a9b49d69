"""The squared Fisher-Rao norm E<theta, grad loss>^2 (Liang et al., AISTATS 2019) (``--fisher-rao``).

With the data's labels (empirical, the verdict's number) and with labels drawn from the model (cross-entropy
only). Lower is flatter. No invariance is claimed: none is tested here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flatfl.analysis.measures import fisher_rao_norm
from flatfl.runs.measures.spec import Context, Flag, MeasureSpec, register
from flatfl.runs.problem import Problem


@dataclass(frozen=True)
class FisherRaoSettings:
    """No options: both label kinds are computed."""


def compute(problem: Problem, s: FisherRaoSettings, ctx: Context) -> dict[str, Any]:
    obj = problem.objective
    res = {"empirical": fisher_rao_norm(obj).squared}
    try:
        res["model"] = fisher_rao_norm(obj, labels="model").squared
    except ValueError:
        res["model"] = None  # not cross-entropy: the model's labels are not defined here
    ctx.log(f"Fisher-Rao norm^2: empirical {res['empirical']:.6g}, model {res['model']}")
    return {"squared_empirical": res["empirical"], "squared_model": res["model"]}


SPEC = register(
    MeasureSpec(
        name="fisher_rao",
        label="Fisher-Rao norm²",
        direction="lower",
        invariances=frozenset(),
        settings=FisherRaoSettings,
        compute=compute,
        flags=(
            Flag(
                ("--fisher-rao",),
                {
                    "action": "store_true",
                    "help": "squared Fisher-Rao norm E<theta, grad loss>^2 (Liang et al. 2019), the "
                    "data's and the model's labels",
                },
            ),
        ),  # fmt: skip
        path=("literature", "fisher_rao"),
        columns=lambda res, s: {"fisher_rao": res["squared_empirical"]},
        describe=lambda s: "Fisher-Rao norm",
    )
)
