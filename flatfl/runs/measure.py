"""``measure(problem, settings)``: everything ``flatfl landscape`` and ``flatfl report`` compute for one point
-- curvature, the federated view, sharpness and the loss surface -- on one resolved
:class:`~flatfl.runs.problem.Problem` (model, data and loss built once), as one JSON-ready record."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from flatfl.analysis.density import SpectralDensity
from flatfl.analysis.surfaces import Surface
from flatfl.runs import curvature
from flatfl.runs.problem import Problem
from flatfl.runs.timing import stage


@dataclass(frozen=True)
class Measurement:
    """The record (what landscape.json holds), the SLQ result and the surface, when computed."""

    record: dict[str, Any]
    density: SpectralDensity | None = None
    surface: Surface | None = None


def surface_summary(surf: Surface, out_dir: Path, settings: Any) -> dict[str, Any]:
    return {
        "file": str(Path(out_dir) / "surface.npz"),
        "kind": surf.description["kind"],
        "grid": settings.grid,
        "span": settings.span,
        "loss_min": float(np.nanmin(surf.loss)),
        "loss_max": float(np.nanmax(surf.loss)),
        "loss_at_checkpoint": surf.at_origin(),
        "range": surf.description["range"],
        "batchnorm": surf.description["batchnorm"],
        "markers": surf.markers,
    }


def measure(
    problem: Problem,
    settings: Any,
    *,
    log: Callable[[str], None] = lambda s: None,
    out_dir: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
    bars: curvature.Bars = curvature.no_bars,
) -> Measurement:
    """Every quantity ``settings`` switches on, at ``problem``'s point. A surface is saved (and resumed)
    under ``out_dir``; the top eigenvectors of ``--hessian`` are reused for eigen directions and the
    federated view instead of running Lanczos again. ``progress(done, total)``: the surface's points;
    ``bars``: progress bars of the curvature and sharpness solvers (:func:`~flatfl.runs.curvature.tqdm_bars`)."""
    with stage("loss and gradient"):
        record = curvature.base_record(problem)
    record["settings"] = asdict(settings)
    if problem.ranks is not None:
        record["ranks"] = problem.ranks[1]
    auto = problem.source["data"].get("auto")
    density = eig = None
    if settings.hessian or settings.trace or settings.density:
        op = curvature.hessian_operator(problem)
        record["hvp_method"] = op.method
        record["hvp_graph_bytes_estimate"] = op.graph_bytes_estimate
        if settings.hessian:
            with stage("lambda_max"):
                record["hessian"], eig = curvature.top_eigen(op, settings, auto, log, bars)
        if settings.trace:
            with stage("trace"):
                record["trace"] = curvature.trace(op, settings, auto, log, bars)
        if settings.density:
            with stage("density"):
                record["density"], density = curvature.density(op, settings, log, bars)
    if settings.federated:
        from flatfl.runs.federated import federated_view

        with stage("federated"):
            top = eig.vectors[0] if eig is not None else None
            record["federated"] = federated_view(problem, settings, top, log, bars)
    if settings.sharpness:
        record["sharpness"] = curvature.sharpness(problem, settings, log, bars)
    surf = None
    if settings.surface:
        from flatfl.runs.surface import measure_surface

        if out_dir is None:
            raise ValueError("a surface needs out_dir (where it is saved and resumed)")
        with bars("surface (points)") as surface_progress:
            vectors = eig.vectors if eig is not None else None
            with stage("surface"):
                surf = measure_surface(problem, settings, out_dir, vectors, progress or surface_progress)
        record["surface"] = surface_summary(surf, out_dir, settings)
    return Measurement(record, density, surf)
