"""Mode connectivity to another model (Garipov et al., NeurIPS 2018) (``--connect SPEC``).

The loss along a trained quadratic Bézier curve and along the straight line, and their barriers. A path to one
named model, so ``flatfl landscape`` only (no verdict row).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flatfl.analysis.connectivity import mode_connectivity
from flatfl.analysis.verdict import Measure
from flatfl.errors import UserError
from flatfl.flagtypes import passes_t, pos_float
from flatfl.runs.measures.spec import Context, Flag, MeasureSpec, register
from flatfl.runs.problem import Problem
from flatfl.runs.settings import LandscapeSettings

MAX_STEPS = 10**6


def curve_diverged(curve_loss: Any, lr: float) -> str | None:
    """The note for a Bézier curve whose training diverged (a loss along the trained curve that is not finite:
    SGD on the bend overflowed, so its curve barrier is nan), else None. The straight line does not depend on it."""
    import math

    if all(math.isfinite(v) for v in curve_loss):
        return None
    return (
        f"curve training diverged at --connect-lr {lr:g}: the loss along the trained Bezier curve is not finite "
        f"(curve barrier nan; the straight line's is unaffected); lower --connect-lr (default: {ConnectSettings.lr:g})"
    )


@dataclass(frozen=True)
class ConnectSettings:
    """The other end (a ``--to`` SPEC), SGD ``steps`` on the bend and their learning rate ``lr``."""

    to: str = ""
    steps: int = 300
    lr: float = 0.01


def compute(problem: Problem, s: ConnectSettings, ctx: Context) -> dict[str, Any]:
    if problem.resolve is None:
        raise UserError(f"--connect {s.to}: this model has no other models to name")
    try:
        label, state = problem.resolve(s.to)
    except UserError as exc:  # the resolver speaks of --to/--models, the flags that share its SPEC
        text = str(exc).replace("--to/--models ", "--connect ", 1).replace("--models/--to: ", "--connect: ", 1)
        raise UserError(text) from None
    try:
        r = mode_connectivity(problem.objective, state(), steps=s.steps, lr=s.lr, seed=ctx.generator(905))
    except ValueError as exc:  # e.g. the same parameters as the checkpoint: no path to find
        raise UserError(f"--connect {s.to}: {exc}") from None
    ctx.log(f"connectivity to {label}: barrier line {r.line_barrier:.4g}, Bezier curve {r.curve_barrier:.4g}")
    diverged = curve_diverged(r.curve_loss.tolist(), s.lr)
    if diverged:
        ctx.log(f"warning: --connect {s.to}: {diverged}")
    return {"to": label, "t": r.t.tolist(), "curve_loss": r.curve_loss.tolist(), "line_loss": r.line_loss.tolist(),
            "curve_barrier": r.curve_barrier, "line_barrier": r.line_barrier, "steps": s.steps, "lr": s.lr,
            "curve_diverged": diverged}  # fmt: skip


def from_flags(ns: dict[str, Any]) -> ConnectSettings | None:
    d = ConnectSettings()
    if (ns.get("connect_steps") or ns.get("connect_lr")) and not ns.get("connect"):
        raise UserError("--connect-steps/--connect-lr: options of --connect SPEC; pass --connect as well")
    if (ns.get("connect_steps") or 0) > MAX_STEPS:
        raise UserError(f"--connect-steps {ns['connect_steps']}: at most {MAX_STEPS} SGD steps on the bend")
    if not ns.get("connect"):
        return None
    return ConnectSettings(ns["connect"], ns.get("connect_steps") or d.steps, ns.get("connect_lr") or d.lr)


def no_rows(s: ConnectSettings, ls: LandscapeSettings) -> list[Measure]:
    return []


D = ConnectSettings()
SPEC = register(
    MeasureSpec(
        name="connectivity",
        label="mode connectivity",
        direction="lower",
        invariances=frozenset(),
        settings=ConnectSettings,
        compute=compute,
        flags=(
            Flag(
                ("--connect",),
                {
                    "metavar": "SPEC",
                    "help": "mode connectivity to another model (a --to SPEC): loss along a trained "
                    "quadratic Bezier curve (Garipov et al. 2018) and the straight line, and "
                    "their barriers",
                },
            ),
            Flag(
                ("--connect-steps",),
                {"type": passes_t, "metavar": "N", "help": f"SGD steps on the bend (default: {D.steps})"},
            ),
            Flag(
                ("--connect-lr",), {"type": pos_float, "metavar": "LR", "help": f"its learning rate (default: {D.lr})"}
            ),
        ),  # fmt: skip
        from_flags=from_flags,
        path=("literature", "connectivity"),
        columns=lambda res, s: {},
        verdict=no_rows,
        report=False,
    )
)
