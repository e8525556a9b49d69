"""``measure(problem, settings)``: everything ``flatfl landscape`` and ``flatfl report`` compute for one point
-- every registered measure switched on (:mod:`flatfl.runs.measures`), the federated view and the loss surface
-- on one resolved :class:`~flatfl.runs.problem.Problem` (model, data and loss built once), as one JSON-ready
record."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from flatfl.analysis.density import SpectralDensity
from flatfl.analysis.surfaces import Surface
from flatfl.runs import curvature
from flatfl.runs.federated import federated_view
from flatfl.runs.measures import Context, MeasureSpec, registered
from flatfl.runs.problem import Problem
from flatfl.runs.settings import LandscapeSettings
from flatfl.runs.surface import measure_surface
from flatfl.runs.timing import stage


@dataclass(frozen=True)
class Measurement:
    """The record (what landscape.json holds), the SLQ result and the surface, when computed."""

    record: dict[str, Any]
    density: SpectralDensity | None = None
    surface: Surface | None = None


def surface_summary(surf: Surface, out_dir: Path, settings: LandscapeSettings) -> dict[str, Any]:
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


def stage_name(spec: MeasureSpec) -> str:
    """The measure's line in the report's time table (:mod:`flatfl.runs.timing`): its name, sharpness kinds
    as ``sharpness NAME``."""
    return f"sharpness {spec.name}" if spec.where[0] == "sharpness" else spec.name


def switched_on(settings: LandscapeSettings) -> list[tuple[MeasureSpec, Any]]:
    """The registered measures ``settings`` switches on, with their settings, in registry order."""
    return [(spec, st) for spec in registered() if (st := spec.on(settings)) is not None]


def place(record: dict[str, Any], path: tuple[str, ...], value: dict[str, Any]) -> None:
    """``value`` at ``path`` in ``record`` (``("sharpness", "sam")`` -> ``record["sharpness"]["sam"]``)."""
    for key in path[:-1]:
        record = record.setdefault(key, {})
    record[path[-1]] = value


def record_at(record: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any] | None:
    """What :func:`place` put at ``path``, or None."""
    for key in path:
        if not isinstance(record, dict) or key not in record:
            return None
        record = record[key]
    return record


def measure(
    problem: Problem,
    settings: LandscapeSettings,
    *,
    log: Callable[[str], None] = lambda s: None,
    out_dir: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
    bars: curvature.Bars = curvature.no_bars,
    main: bool = True,
) -> Measurement:
    """Every quantity ``settings`` switches on, at ``problem``'s point. Collective measures (Hessian products
    reduced over torchrun's shards) run on every rank, the others only where ``main``. A surface is saved (and
    resumed) under ``out_dir``; the top eigenvectors of ``--hessian`` are reused for eigen directions and the
    federated view instead of running Lanczos again. ``progress(done, total)``: the surface's points; ``bars``:
    progress bars of the solvers (:func:`~flatfl.runs.curvature.tqdm_bars`)."""
    with stage("loss and gradient"):
        record = curvature.base_record(problem)
    record["settings"] = asdict(settings)
    if problem.ranks is not None:
        record["ranks"] = problem.ranks[1]
    ctx = Context(settings, log, bars)
    on = switched_on(settings)
    for spec, st in on:
        if spec.collective:
            with stage(stage_name(spec)):
                place(record, spec.where, spec.run(problem, st, ctx))
    op = ctx.shared.get("hessian_operator")
    if op is not None:
        record["hvp_method"] = op.method
        record["hvp_graph_bytes_estimate"] = op.graph_bytes_estimate
    eig = ctx.shared.get("eigen")
    if settings.federated:
        with stage("federated"):
            top = eig.vectors[0] if eig is not None else None
            record["federated"] = federated_view(problem, settings, top, log, bars)
    surf = None
    if settings.surface:
        if out_dir is None:
            raise ValueError("a surface needs out_dir (where it is saved and resumed)")
        with bars("surface (points)") as surface_progress:
            vectors = eig.vectors if eig is not None else None
            surf = measure_surface(problem, settings, out_dir, vectors, progress or surface_progress)
        record["surface"] = surface_summary(surf, out_dir, settings)
    if main:
        for spec, st in on:
            if not spec.collective:
                if spec.where[0] == "literature":  # the settings of the literature's measures, first in their section
                    record.setdefault("literature", {}).setdefault("settings", {})[spec.name] = asdict(st)
                with stage(stage_name(spec)):
                    place(record, spec.where, spec.run(problem, st, ctx))
    return Measurement(record, ctx.shared.get("density"), surf)
