"""The literature's measures beyond the Hessian, for ``flatfl landscape`` (landscape.json's ``literature``).

GGN and empirical-Fisher λmax and trace (``--curvature ggn,ef``), per-layer Hessian blocks (``--per-layer``),
relative flatness (``--relative-flatness``), the Fisher-Rao norm (``--fisher-rao``) and mode connectivity to
another model (``--connect SPEC``), each computed by :mod:`flatfl.analysis` on the problem's full analysis data
(``problem.objective``), each with its settings and wall-clock seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from flatfl.analysis.connectivity import mode_connectivity
from flatfl.analysis.curvatures import curvature_operator
from flatfl.analysis.lanczos import lanczos
from flatfl.analysis.measures import fisher_rao_norm, layer_curvature, relative_flatness
from flatfl.analysis.trace import TRACE_ESTIMATORS
from flatfl.errors import UserError
from flatfl.runs.problem import Problem

CURVATURE_KINDS = ("ggn", "ef")
GROUPS = ("parameter", "module")
PER_BLOCK_MATVECS = 30  # --per-layer: each block's trace budget (exact below it) without --per-layer-shared


@dataclass(frozen=True)
class LiteratureSettings:
    """What to compute (all off by default) and how; ``seed``, ``tol`` and the trace budget are the landscape's."""

    curvature: tuple[str, ...] = ()
    per_layer: str | None = None  # "parameter" or "module"
    per_layer_shared: bool = False  # every block's trace from the same trace_matvecs products
    relative_flatness: bool = False
    relative_flatness_layer: str | None = None
    fisher_rao: bool = False
    connect: str | None = None
    connect_steps: int = 300
    connect_lr: float = 0.01
    seed: int = 0
    tol: float = 1e-3
    trace_matvecs: int = 99
    trace_method: str = "adaptive"

    @property
    def any(self) -> bool:
        return bool(self.curvature or self.per_layer or self.relative_flatness or self.fisher_rao or self.connect)


def parse_curvature(text: str | None) -> tuple[str, ...]:
    """``--curvature ggn,ef`` as a tuple; a one-line error for an unknown kind."""
    if not text:
        return ()
    names = tuple(dict.fromkeys(s.strip() for s in text.split(",") if s.strip()))
    bad = [n for n in names if n not in CURVATURE_KINDS]
    if bad or not names:
        raise UserError(f"--curvature: unknown kind(s) {bad or [text]}; choose from {', '.join(CURVATURE_KINDS)}")
    return names


def _gen(settings: LiteratureSettings, k: int) -> torch.Generator:
    return torch.Generator().manual_seed(settings.seed * 1000 + 900 + k)  # clear of the landscape's own seeds


def _timed(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    t = time.perf_counter()
    out = fn()
    return {**out, "seconds": time.perf_counter() - t}


def _curvature(problem: Problem, kind: str, s: LiteratureSettings, log: Callable[[str], None]) -> dict[str, Any]:
    op = curvature_operator(problem.objective, kind, None)
    eig = lanczos(op, k=1, tol=s.tol, generator=_gen(s, 1 + CURVATURE_KINDS.index(kind)), return_vectors=False)
    lam_products = op.num_matvecs
    tr = TRACE_ESTIMATORS[s.trace_method](op, num_matvecs=s.trace_matvecs, generator=_gen(s, 3))
    log(f"{kind}: lambda_max {eig.values[0]:.6g}, trace {tr.estimate:.6g} +- {tr.stderr:.2g}")
    return {"lambda_max": float(eig.values[0]), "residual": float(eig.residuals[0]),
            "lambda_max_products": lam_products, "trace": tr.estimate, "trace_stderr": tr.stderr,
            "trace_products": tr.num_matvecs, "trace_method": s.trace_method}  # fmt: skip


def measure_literature(
    problem: Problem, settings: LiteratureSettings, log: Callable[[str], None] = lambda s: None
) -> dict[str, Any]:
    """Every measure ``settings`` switches on, as a JSON-ready dict (one key per measure, with ``seconds``)."""
    obj, s = problem.objective, settings
    out: dict[str, Any] = {"settings": asdict(s)}
    for kind in s.curvature:
        out[kind] = _timed(lambda kind=kind: _curvature(problem, kind, s, log))
    if s.per_layer:

        def per_layer() -> dict[str, Any]:
            num = s.trace_matvecs if s.per_layer_shared else PER_BLOCK_MATVECS
            r = layer_curvature(obj, group=s.per_layer, num_matvecs=num, tol=s.tol, shared_probes=s.per_layer_shared,
                                seed=_gen(s, 4))  # fmt: skip
            log(f"per-layer: {len(r.names)} blocks, {r.num_matvecs} HVPs")
            return {"group": s.per_layer, "curvature": "hessian", "blocks": r.rows(), "products": r.num_matvecs,
                    "shared_probes": s.per_layer_shared, "trace_matvecs": num}  # fmt: skip

        out["per_layer"] = _timed(per_layer)
    if s.relative_flatness:

        def rf() -> dict[str, Any]:
            try:
                r = relative_flatness(obj, layer=s.relative_flatness_layer)
            except ValueError as e:
                raise UserError(f"--relative-flatness: {e}") from None
            log(f"relative flatness (layer {r.layer}): {r.kappa:.6g}")
            return {"kappa": r.kappa, "layer": r.layer, "weight_shape": list(r.weight_shape)}

        out["relative_flatness"] = _timed(rf)
    if s.fisher_rao:

        def fr() -> dict[str, Any]:
            res = {"empirical": fisher_rao_norm(obj).squared}
            try:
                res["model"] = fisher_rao_norm(obj, labels="model").squared
            except ValueError:
                res["model"] = None  # not cross-entropy: the model's labels are not defined here
            log(f"Fisher-Rao norm^2: empirical {res['empirical']:.6g}, model {res['model']}")
            return {"squared_empirical": res["empirical"], "squared_model": res["model"]}

        out["fisher_rao"] = _timed(fr)
    if s.connect:
        if problem.resolve is None:
            raise UserError(f"--connect {s.connect}: this model has no other models to name")

        def connect() -> dict[str, Any]:
            label, state = problem.resolve(s.connect)
            try:
                r = mode_connectivity(obj, state(), steps=s.connect_steps, lr=s.connect_lr, seed=_gen(s, 5))
            except ValueError as exc:  # e.g. the same parameters as the checkpoint: no path to find
                raise UserError(f"--connect {s.connect}: {exc}") from None
            log(f"connectivity to {label}: barrier line {r.line_barrier:.4g}, Bezier curve {r.curve_barrier:.4g}")
            return {"to": label, "t": r.t.tolist(), "curve_loss": r.curve_loss.tolist(),
                    "line_loss": r.line_loss.tolist(), "curve_barrier": r.curve_barrier,
                    "line_barrier": r.line_barrier, "steps": s.connect_steps, "lr": s.connect_lr}  # fmt: skip

        out["connectivity"] = _timed(connect)
    return out
