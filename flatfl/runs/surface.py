"""The 1D/2D loss surface around a :class:`~flatfl.runs.problem.Problem`, saved (and resumed) as
``OUT/surface.npz`` + ``surface.json``.

Directions (``settings.surface_dirs``): ``random`` (filter-normalised Gaussian, Li et al. 2018),
``eigen`` (top Hessian eigenvectors, scaled to ||w||), ``interp`` (1D, towards ``settings.to``),
``models`` (2D, the plane through the point and ``settings.models``), ``pca`` (2D, the PCA plane of
a flatfl run's trajectory up to this round, trajectory drawn). A flatfl run also draws the round's
FedMut mutants and returned client models. The grid is evaluated by
:func:`flatfl.analysis.surfaces.evaluate_grid`.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flatfl import checkpoint as ckpt
from flatfl.analysis.distributed import is_main as dist_is_main
from flatfl.analysis.distributed import world as dist_world
from flatfl.analysis.lanczos import lanczos
from flatfl.analysis.operators import HessianOperator, ModelLoss
from flatfl.analysis.surfaces import (
    BatchNormReestimator,
    Surface,
    axis,
    evaluate_grid,
    has_batchnorm,
    model_markers,
    pca_directions,
    plane_through,
    random_directions,
)
from flatfl.errors import UserError
from flatfl.runs.files import save_surface
from flatfl.runs.problem import Problem, is_slot, run_model_spec
from flatfl.runs.run import Run
from flatfl.runs.settings import LandscapeSettings


@dataclass
class Plane:
    """Directions of a surface, its axes, the axis labels and the models to draw on it."""

    dirs: list[torch.Tensor]
    alphas: np.ndarray
    betas: np.ndarray | None
    labels: list[str]
    named: list[tuple[str, str, torch.Tensor]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


def flat_of(state: dict[str, torch.Tensor], obj: ModelLoss) -> torch.Tensor:
    return torch.cat([state[n].reshape(-1) for n in obj.names]).to(obj.device, obj.dtype)


def other_model(problem: Problem, spec: str) -> tuple[str, torch.Tensor]:
    """(label, flat parameters) of a model named by ``--to``/``--models``."""
    if problem.resolve is None:
        raise UserError(f"--to/--models {spec}: this model has no other models to name")
    label, state = problem.resolve(spec)
    return label, flat_of(state(), problem.objective)


def _plane_eigen(problem: Problem, settings: LandscapeSettings, count: int, eigvecs: torch.Tensor | None) -> Plane:
    obj = problem.objective
    if eigvecs is None or len(eigvecs) < count:
        gen = torch.Generator().manual_seed(settings.seed * 1000 + 1)
        op = HessianOperator(obj, memory_budget=problem.memory_budget)
        eigvecs = lanczos(op, k=count, tol=settings.tol, max_vectors=settings.max_vectors, generator=gen).vectors
    theta = obj.flat()
    dirs = [v.to(obj.device, obj.dtype) * theta.norm() for v in eigvecs[:count]]  # read like Li et al.'s span
    a = axis(*(settings.range or (-settings.span, settings.span)), settings.grid)
    labels = ["top Hessian eigenvector 1 (x ||w||)", "top Hessian eigenvector 2 (x ||w||)"]
    return Plane(dirs, a, a if count == 2 else None, labels)


def _plane_models(problem: Problem, settings: LandscapeSettings) -> Plane:
    theta = problem.objective.flat()
    (nb, b), (nc, c) = (other_model(problem, m) for m in settings.models)
    d1, d2, co = plane_through(theta, b, c)
    if float(d2.norm()) <= 1e-4 * max(float(d1.norm()), 1e-30):
        raise UserError(
            f"--models: {nb} and {nc} lie on one line through the checkpoint (e.g. two FedMut mutants "
            "with opposite signs in every tensor); choose models that span a plane"
        )
    xs, lo_hi = co[:, 0], settings.range
    alphas = axis(*(lo_hi or (min(xs.min(), 0.0) - 0.5, max(xs.max(), 1.0) + 0.5)), settings.grid, must=(0.0, 1.0))
    betas = axis(*(lo_hi or (-0.5, 1.5)), settings.grid, must=(0.0, 1.0))
    labels = [f"towards {nb}", f"towards {nc} (orthogonalised)"]
    return Plane([d1, d2], alphas, betas, labels, [(nb, "models", b), (nc, "models", c)])


def _plane_pca(problem: Problem, settings: LandscapeSettings) -> Plane:
    run, rnd, obj = problem.run, problem.round, problem.objective
    if run is None:
        raise UserError("--surface-dirs pca: needs a flatfl run's saved rounds (a trajectory); this model has none")
    rounds = [r for r in run.rounds() if r <= rnd]
    if len(rounds) < 3:
        raise UserError(f"--surface-dirs pca: needs >= 3 saved rounds up to round {rnd}, found {len(rounds)}")
    traj = [flat_of(run.global_state(r), obj) for r in rounds]
    d1, d2, co, var = pca_directions(traj)
    pad = lambda v: 0.2 * max(v.max() - v.min(), 1e-12)  # noqa: E731
    alphas = axis(co[:, 0].min() - pad(co[:, 0]), co[:, 0].max() + pad(co[:, 0]), settings.grid)
    betas = axis(co[:, 1].min() - pad(co[:, 1]), co[:, 1].max() + pad(co[:, 1]), settings.grid)
    labels = [f"PC1 ({100 * var[0]:.1f}% of variance)", f"PC2 ({100 * var[1]:.1f}% of variance)"]
    named = [(f"round {r}", "trajectory", v) for r, v in zip(rounds, traj)]  # ends at the checkpoint, (0, 0)
    return Plane([d1, d2], alphas, betas, labels, named, {"explained_variance": var.tolist()})


def plane(problem: Problem, settings: LandscapeSettings, eigvecs: torch.Tensor | None = None) -> Plane:
    """The directions and axes ``settings`` asks for (``eigvecs``: Lanczos vectors already computed)."""
    kind, count = settings.surface_dirs, 1 if settings.surface == "1d" else 2
    obj = problem.objective
    if kind == "eigen":
        return _plane_eigen(problem, settings, count, eigvecs)
    if kind == "random":
        dirs = random_directions(
            obj, count, torch.Generator().manual_seed(settings.seed), include_1d=settings.include_1d
        )
        a = axis(*(settings.range or (-settings.span, settings.span)), settings.grid)
        labels = ["random filter-normalised direction 1", "random direction 2 (orthogonalised)"]
        return Plane(dirs, a, a if count == 2 else None, labels)
    if kind == "interp":
        name, other = other_model(problem, settings.to)
        a = axis(*(settings.range or (-0.5, 1.5)), settings.grid, must=(0.0, 1.0))
        labels = [f"t: (1 - t) * this checkpoint + t * {name}"]
        return Plane([other - obj.flat()], a, None, labels, [(name, "models", other)])
    if kind == "models":
        return _plane_models(problem, settings)
    if kind == "pca":
        return _plane_pca(problem, settings)
    raise UserError(f"--surface-dirs: {kind!r} is not random, eigen, interp, models or pca")


def _batchnorm(problem: Problem, settings: LandscapeSettings) -> tuple[BatchNormReestimator | None, str]:
    if not settings.bn_reestimate:
        return None, "running statistics of the checkpoint (not re-estimated per point)"
    if not has_batchnorm(problem.model):
        return None, "the model has no BatchNorm layers (--bn-reestimate had nothing to do)"
    if not problem.bn_inputs:
        raise UserError("--bn-reestimate: no training inputs to re-estimate BatchNorm statistics with")
    bn = BatchNormReestimator(problem.model, problem.bn_inputs, forward=problem.forward)
    n = sum(len(b) if isinstance(b, torch.Tensor) else 1 for b in problem.bn_inputs)
    note = (
        f"re-estimated at every point on {n} training samples ({len(problem.bn_inputs)} batches), "
        "exact cumulative average (momentum=None)"
    )
    return bn, note


def _markers(problem: Problem, settings: LandscapeSettings, p: Plane) -> list[dict[str, Any]]:
    """The plane's named models, and a flatfl run's mutants of this round and returned client models."""
    named, run, rnd, obj = list(p.named), problem.run, problem.round, problem.objective
    if run is not None and settings.markers:
        if ckpt.clients_path(run.path, rnd + 1).is_file():
            sent, _, info = run.clients(rnd + 1)
            for i, sd in enumerate(sent):
                label = f"mutant {i} (to client {info['clients'][i]}, round {rnd + 1})"
                named.append((label, "mutants", flat_of(sd, obj)))
        if rnd >= 1 and ckpt.clients_path(run.path, rnd).is_file():
            _, returned, info = run.clients(rnd)
            for i, sd in enumerate(returned):
                named.append((f"client {info['clients'][i]} (returned in round {rnd})", "clients", flat_of(sd, obj)))
    return model_markers(obj, obj.flat(), p.dirs, named)


def _widen_to_models(p: Plane, markers: list[dict[str, Any]], settings: LandscapeSettings) -> None:
    """``models`` plane: widen the axes to every model that lies in it (e.g. the mirrored FedMut mutants)."""
    inplane = np.array([m["coords"] for m in markers if m["off_plane_relative"] < 1e-3] or [[0.0, 0.0]])
    a_lo, a_hi = min(p.alphas[0], inplane[:, 0].min() - 0.25), max(p.alphas[-1], inplane[:, 0].max() + 0.25)
    b_lo, b_hi = min(p.betas[0], inplane[:, 1].min() - 0.25), max(p.betas[-1], inplane[:, 1].max() + 0.25)
    p.alphas = axis(a_lo, a_hi, settings.grid, must=(0.0, 1.0))
    p.betas = axis(b_lo, b_hi, settings.grid, must=(0.0, 1.0))


def describe(problem: Problem, settings: LandscapeSettings, p: Plane, bn_note: str) -> dict[str, Any]:
    """The surface's description: what a resumed grid must match exactly to be reused."""
    count = 1 if p.betas is None else 2
    src = problem.source
    desc = {
        "checkpoint_sha256": problem.digest,  # a retrained run must not resume an old surface
        "kind": f"{settings.surface} {settings.surface_dirs}",
        "checkpoint": src.get("checkpoint") or src.get("weights"),
        "round": problem.round,
        "algo": src.get("algo"),
        "data": src["data"],
        "x_label": p.labels[0],
        "y_label": p.labels[1] if count == 2 else None,
        "grid": settings.grid,
        "span": settings.span,
        "range": [float(p.alphas[0]), float(p.alphas[-1])],
        "include_1d": settings.include_1d,
        "batchnorm": bn_note,
        "filter_normalised": settings.surface_dirs == "random",
        "seed": settings.seed,
        "to": settings.to,
        "models": list(settings.models) if settings.models else None,
        **p.extra,
    }
    if p.betas is not None:
        desc["range_b"] = [float(p.betas[0]), float(p.betas[-1])]
    return desc


def _previous(path: Path, desc: dict[str, Any]) -> Surface | None:
    """A saved (partial) surface with exactly this description, to resume; None if absent or cut."""
    if not (path.with_suffix(".npz").is_file() and path.with_suffix(".json").is_file()):
        return None
    try:
        old = Surface.load(path)
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile):  # a cut cache: recompute
        return None
    return old if old.description == desc else None


def measure_surface(
    problem: Problem,
    settings: LandscapeSettings,
    out_dir: Path,
    eigvecs: torch.Tensor | None = None,
    progress: Callable[[int, int], None] | None = None,
    known: Surface | None = None,
) -> Surface:
    """The surface ``settings`` asks for around ``problem``'s point, saved after every chunk (and resumed).
    ``known``: a partial grid of the same axes already evaluated elsewhere (:mod:`flatfl.runs.share`), used
    when no saved surface is resumed."""
    p = plane(problem, settings, eigvecs)
    bn, bn_note = _batchnorm(problem, settings)
    markers = _markers(problem, settings, p)
    if settings.surface_dirs == "models" and settings.range is None:
        _widen_to_models(p, markers, settings)
    desc = describe(problem, settings, p, bn_note)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    path = Path(out_dir) / "surface"
    count = 1 if p.betas is None else 2

    def finish(s: Surface) -> Surface:
        return replace(s, description=desc, points={"checkpoint": [0.0] * count}, markers=markers)

    def on_chunk(s: Surface, done: int, total: int) -> None:
        if dist_is_main():
            save_surface(finish(s), path)  # the partial grid, resumable after a kill
        if progress is not None:
            progress(done, total)

    surf = evaluate_grid(
        problem.objective,
        p.dirs,
        p.alphas,
        p.betas,
        memory_budget=problem.memory_budget,
        resume_from=_previous(path, desc) or known,
        on_chunk=on_chunk,
        bn=bn,
        split=dist_world(),
    )
    surf = finish(surf)
    if dist_is_main():
        save_surface(surf, path)
    return surf


def check_surface_settings(settings: LandscapeSettings, ckpt: Path | None = None) -> None:
    """Flag combinations a surface cannot use: one line each, before anything is computed
    (with ``ckpt``, the ``--to``/``--models`` specs are resolved against its run too)."""
    kind, count = settings.surface_dirs, 1 if settings.surface == "1d" else 2
    if kind not in ("random", "eigen", "interp", "models", "pca"):
        raise UserError(f"--surface-dirs: {kind!r} is not random, eigen, interp, models or pca")
    if kind == "interp" and count != 1:
        raise UserError("--surface-dirs interp is a line: use --surface 1d")
    if kind in ("models", "pca") and count != 2:
        raise UserError(f"--surface-dirs {kind} is a plane: use --surface 2d")
    if kind == "interp" and not settings.to:
        raise UserError("--surface-dirs interp needs --to MODEL (the other end of the line)")
    if kind == "models" and (not settings.models or len(settings.models) != 2):
        raise UserError("--surface-dirs models needs --models B C (two more models; the checkpoint is the third)")
    specs = ([settings.to] if kind == "interp" else []) + (list(settings.models or []) if kind == "models" else [])
    run, rnd = Run.of_checkpoint(ckpt) if ckpt is not None and specs else (None, 0)
    for spec in specs:
        kind_, _, slot = spec.partition(":")
        if not (kind_ in ("mutant", "returned") and is_slot(slot)) and not Path(spec).is_file():
            raise UserError(f"--models/--to: {spec!r} is neither a checkpoint file nor mutant:SLOT / returned:SLOT")
    for spec in specs if run is not None else []:
        run_model_spec(run, rnd, spec)
