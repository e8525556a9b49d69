"""lambda_max and trace of each layer's diagonal Hessian block (``--per-layer [parameter|module]``).

Which layer is sharp: a table per block in landscape.json, no single number, so no verdict row. In ``flatfl
report --per-layer`` a figure per group side by side and every block in report.json
(:mod:`flatfl.runs.per_layer_page`); one flag away, not in the report's default set (its measured cost:
docs/landscapes.md, "The report's default set"). Works on the LSTM (by module, ``nn.LSTM`` is one block) and on
BatchNorm nets in eval mode (tests/test_per_layer_models.py, against the dense Hessian's blocks). No invariance
is claimed: a block on which a rescaling w -> T w is alpha is divided by alpha^2 (H -> T^-1 H T^-1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flatfl.analysis.measures import layer_curvature
from flatfl.analysis.verdict import Measure
from flatfl.runs.measures.spec import Context, Flag, MeasureSpec, register
from flatfl.runs.problem import Problem
from flatfl.runs.settings import LandscapeSettings

GROUPS = ("parameter", "module")
PER_BLOCK_MATVECS = 30  # each block's trace budget (exact below it) without --per-layer-shared


@dataclass(frozen=True)
class PerLayerSettings:
    """Blocks per parameter tensor or per module; ``shared``: every block's trace from the same
    ``--trace-matvecs`` whole-model probes."""

    group: str = "parameter"
    shared: bool = False


def compute(problem: Problem, s: PerLayerSettings, ctx: Context) -> dict[str, Any]:
    ls = ctx.landscape
    num = ls.trace_matvecs if s.shared else PER_BLOCK_MATVECS
    r = layer_curvature(problem.objective, group=s.group, num_matvecs=num, tol=ls.tol, shared_probes=s.shared,
                        seed=ctx.generator(904))  # fmt: skip
    ctx.log(f"per-layer: {len(r.names)} blocks, {r.num_matvecs} HVPs")
    return {"group": s.group, "curvature": "hessian", "blocks": r.rows(), "products": r.num_matvecs,
            "shared_probes": s.shared, "trace_matvecs": num}  # fmt: skip


def from_flags(ns: dict[str, Any]) -> PerLayerSettings | None:
    group = ns.get("per_layer") or ("parameter" if ns.get("per_layer_shared") else None)
    return PerLayerSettings(group, bool(ns.get("per_layer_shared"))) if group else None


def no_rows(s: PerLayerSettings, ls: LandscapeSettings) -> list[Measure]:
    return []


SPEC = register(
    MeasureSpec(
        name="per_layer",
        label="per-layer curvature",
        direction="lower",
        invariances=frozenset(),
        settings=PerLayerSettings,
        compute=compute,
        flags=(
            Flag(
                ("--per-layer",),
                {
                    "nargs": "?",
                    "const": "parameter",
                    "choices": list(GROUPS),
                    "help": "lambda_max and trace of each layer's diagonal Hessian block, per "
                    "parameter tensor (default) or module; each trace from "
                    f"{PER_BLOCK_MATVECS} HVPs (exact for a block of at most "
                    f"{PER_BLOCK_MATVECS} parameters)",
                },
            ),
            Flag(
                ("--per-layer-shared",),
                {
                    "action": "store_true",
                    "help": "--per-layer traces all from the same --trace-matvecs HVPs with "
                    "whole-model probes (cheaper, larger standard errors)",
                },
            ),
        ),  # fmt: skip
        from_flags=from_flags,
        path=("literature", "per_layer"),
        columns=lambda res, s: {},
        verdict=no_rows,
        describe=lambda s: f"per-layer curvature per {s.group}" + (" (shared probes)" if s.shared else ""),
    )
)
