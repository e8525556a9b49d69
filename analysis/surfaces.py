"""Loss surfaces: the loss and accuracy on lines and planes through weight space.

A surface is L(theta + a d1 + b d2) (2D) or L(theta + a d1) (1D) on a grid of (a, b), each point
computed directly from theta and the directions -- never by walking a model in place -- so
the grid is exactly symmetric about theta and the model is never perturbed. Points are
evaluated in chunks with ``torch.func.vmap`` over stacked parameter sets
(``functional_call``) or in a loop, within a memory budget; the data stay on the device.

One job per module; this one gathers their names (``from flatfl.analysis.surfaces import evaluate_grid`` keeps
working) and holds the surfaces between models and the markers drawn on a surface:

* :mod:`flatfl.analysis.directions` -- random filter-normalised directions (Li, Xu, Taylor, Studer,
  Goldstein, NeurIPS 2018, "Visualizing the loss landscape of neural nets"), the plane through three models,
  the PCA plane of a trajectory; any given vectors work too, e.g. the top Hessian eigenvectors from
  :func:`analysis.lanczos.lanczos`;
* :mod:`flatfl.analysis.grid` -- the result (:class:`Surface`) and its grid helpers;
* :mod:`flatfl.analysis.points` -- the evaluation of many points (:func:`evaluate_grid`, :func:`points_loss`);
* :mod:`flatfl.analysis.batchnorm` -- BatchNorm statistics re-estimated per point;
* here: between models, d1 = theta_B - theta_A for interpolation (a in [-0.5, 1.5] by default)
  (:func:`interpolation`), and the models drawn on a surface (:func:`model_markers`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from flatfl.analysis.batchnorm import BatchNormReestimator, has_batchnorm
from flatfl.analysis.directions import filter_normalized, pca_directions, plane_through, random_directions
from flatfl.analysis.grid import Surface, axis, near_plane
from flatfl.analysis.model_loss import ModelLoss
from flatfl.analysis.points import evaluate_grid, points_loss, points_per_chunk

__all__ = [
    "BatchNormReestimator",
    "Surface",
    "axis",
    "evaluate_grid",
    "filter_normalized",
    "has_batchnorm",
    "interpolation",
    "model_markers",
    "near_plane",
    "pca_directions",
    "plane_through",
    "points_loss",
    "points_per_chunk",
    "random_directions",
]


def model_markers(
    obj: ModelLoss,
    origin: torch.Tensor,
    dirs: Sequence[torch.Tensor],
    named: Sequence[tuple[str, str, torch.Tensor]],
    buffers: Sequence[dict[str, torch.Tensor] | None] | None = None,
) -> list[dict[str, Any]]:
    """Markers for the models ``named`` (name, group, flat parameters) on the surface origin + a d1 (+ b d2).

    Coordinates are least-squares positions in the plane (exact for models in it); loss and
    accuracy are those of the model itself -- with its own ``buffers`` (BatchNorm statistics) where
    given, else obj's -- and ``off_plane`` says how far it lies from the plane.
    """
    from flatfl.analysis.spread import plane_coordinates

    if not named:
        return []
    P = torch.stack([v.to(obj.device, obj.dtype) for _, _, v in named])
    coords, off = plane_coordinates(
        P.cpu().double(),
        origin.cpu().double(),
        dirs[0].cpu().double(),
        dirs[1].cpu().double() if len(dirs) > 1 else None,
    )
    D = torch.stack([d.cpu().double() for d in dirs[: coords.shape[1]]])  # (k, n)
    inside = (torch.from_numpy(np.ascontiguousarray(coords, dtype=np.float64)) @ D).norm(dim=1)  # ||a d1 + b d2||
    lv, av = points_loss(obj, P, buffers=buffers or None)
    return [
        {
            "name": name,
            "group": group,
            "coords": coords[i].tolist(),
            "off_plane": float(off[i]),
            "in_plane": float(inside[i]),
            "off_plane_relative": float(off[i] / max(float(origin.norm()), 1e-300)),
            "loss": float(lv[i]),
            "accuracy": float(av[i]),
        }
        for i, (name, group, _) in enumerate(named)
    ]


def interpolation(obj: ModelLoss, a: torch.Tensor, b: torch.Tensor, ts: np.ndarray, **kw) -> Surface:
    """1D loss along (1 - t) a + t b: origin a, direction b - a."""
    s = evaluate_grid(obj, [b - a], ts, origin=a, **kw)
    return replace(s, description={"kind": "interpolation", "t": "(1 - t) A + t B"}, points={"A": [0.0], "B": [1.0]})
