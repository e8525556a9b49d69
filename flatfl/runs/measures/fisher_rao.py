"""The squared Fisher-Rao norm E<theta, grad loss>^2 (Liang et al., AISTATS 2019) (``--fisher-rao``).

With the data's labels (empirical, the verdict's number) and with labels drawn from the model (cross-entropy
only). Lower is flatter. Invariant to every tested function-preserving rescaling (tests/test_invariance.py:
<T theta, T^-1 grad l> = <theta, grad l>; :mod:`flatfl.analysis.invariance`). On a model without forward-mode
autodiff (the LSTM) the products go by reverse over reverse; "not measured" with the reason only where that fails
too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from flatfl.analysis.invariance import invariant_to
from flatfl.analysis.measures import fisher_rao_norm
from flatfl.runs.measures.spec import Context, Flag, Meaning, MeasureSpec, register
from flatfl.runs.problem import Problem


@dataclass(frozen=True)
class FisherRaoSettings:
    """No options: both label kinds are computed."""


def compute(problem: Problem, s: FisherRaoSettings, ctx: Context) -> dict[str, Any]:
    obj = problem.objective
    try:
        res = {"empirical": fisher_rao_norm(obj).squared}
    except torch.cuda.OutOfMemoryError:
        raise  # the device's limit, not the model's
    except (RuntimeError, NotImplementedError) as e:  # neither forward mode nor reverse over reverse
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        ctx.log(f"Fisher-Rao norm: not measured ({first})")
        return {"squared_empirical": None, "squared_model": None, "not_measured": first}
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
        invariances=invariant_to("fisher_rao"),
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
        report_default=True,
        meaning=Meaning(
            "‖θ‖<sub>fr</sub>² = E[⟨θ, ∇<sub>θ</sub>ℓ(f<sub>θ</sub>(x), y)⟩²] over the analysis data with its own "
            "labels y: θᵀFθ, F the empirical Fisher, one forward-mode product per batch (the value with labels "
            "drawn from the model, θᵀGθ with G the Gauss-Newton matrix, is in report.json). A norm of the weights "
            "measured by the loss's sensitivity to scaling them: ⟨θ, ∇ℓ⟩ is the loss's derivative along θ itself.",
            "lower",
            "none (computed exactly on the analysis data)",
            ("Liang et al. 2019",),
        ),
        references={
            "Liang et al. 2019": "T. Liang, T. Poggio, A. Rakhlin, J. Stokes. Fisher-Rao metric, geometry, and "
            "complexity of neural networks. AISTATS 2019.",
        },  # measured cost: docs/landscapes.md, "The report's default set"
        describe=lambda s: "Fisher-Rao norm",
    )
)
