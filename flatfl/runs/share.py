"""Work one measure of ``flatfl report`` has done and another reuses, instead of computing it again.

Measured with ``bench/report_cost.py``: the 1D slices and the 2D surfaces -- loss evaluations at
perturbed points, one pass over the analysis data each -- take most of a report's time. Two of
those evaluations are the same point more than once:

* every slice direction passes through the checkpoint at t = 0: L(theta) is evaluated once and
  reused by the other K - 1 directions (:func:`flatfl.analysis.slices.random_slices`, ``share_origin``);
* the report's surface is drawn along random directions seeded like the slices: its first
  direction *is* slice 0's direction (the same draw, the same filter normalisation, not
  orthogonalised), so the surface's row b = 0, theta + a d_1, holds slice 0's points wherever
  the two grids share a value of a (with the defaults, --grid 21 and --slice-radius 1: all
  21 of the row's points). :func:`surface_from_slices` hands them to the surface as a partial grid
  (``resume_from`` of :func:`flatfl.analysis.surfaces.evaluate_grid`), which then evaluates the rest.

Each reused point is the very point the surface would have evaluated (the same float32 parameters:
the grid value enters as a float32 scalar), so the numbers agree to float32 reordering (a chunk of
points may go through ``vmap`` or a loop, chosen by timing, either way; the slices combine the first
layer's output along the line, A + t B, :mod:`flatfl.analysis.private`). ``FLATFL_SHARE_WORK=0``
turns the sharing off (``bench/report_cost.py --compare`` times both, interleaved).
"""

from __future__ import annotations

import os

import numpy as np
import torch

from flatfl.analysis.slices import Slices
from flatfl.analysis.surfaces import Surface, random_directions
from flatfl.runs.problem import Problem
from flatfl.runs.settings import LandscapeSettings
from flatfl.runs.surface import plane


def enabled() -> bool:
    """Sharing on, unless the environment sets ``FLATFL_SHARE_WORK=0`` (for before/after timings)."""
    return os.environ.get("FLATFL_SHARE_WORK", "1") != "0"


def surface_from_slices(problem: Problem, settings: LandscapeSettings, slices: Slices | None) -> Surface | None:
    """The surface's grid with its row b = 0 filled from slice 0 where the points coincide (None: nothing to
    share -- sharing off, no slices or slices read back from a cache, another kind of surface, BatchNorm
    re-estimated per point, or another first direction)."""
    if not enabled() or slices is None or slices.loss is None or slices.accuracy is None:
        return None
    if (settings.surface, settings.surface_dirs) != ("2d", "random") or settings.bn_reestimate:
        return None
    if settings.include_1d or settings.range is not None or settings.seed != slices.seed:
        return None
    p = plane(problem, settings)
    (d0,) = random_directions(problem.objective, 1, torch.Generator().manual_seed(slices.seed))
    if p.betas is None or not torch.equal(p.dirs[0], d0):
        return None
    j0 = np.flatnonzero(p.betas == 0.0)
    if j0.size != 1:
        return None
    loss = np.full((len(p.alphas), len(p.betas)), np.nan)
    acc = loss.copy()
    ts32 = np.asarray(slices.ts, dtype=np.float32)
    for i, a in enumerate(p.alphas):
        hit = np.flatnonzero(ts32 == np.float32(a))  # theta + a d_1: the same float32 point
        if hit.size:
            loss[i, j0[0]], acc[i, j0[0]] = slices.loss[0, hit[0]], slices.accuracy[0, hit[0]]
    if np.isnan(loss).all():
        return None
    return Surface(p.alphas, p.betas, loss, acc)
