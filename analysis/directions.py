"""Directions through weight space for surfaces and slices.

Li, Xu, Taylor, Studer, Goldstein, NeurIPS 2018, "Visualizing the loss landscape of neural nets":

* random, filter-normalised: a Gaussian direction, each filter (output row of a weight
  tensor) rescaled to the norm of the same filter of theta; biases and BatchNorm parameters
  (tensors with one dimension) zeroed by default. The second direction is orthogonalised
  against the first *after* normalisation (Gram-Schmidt, then rescaled to its norm), so the
  plane's axes are orthogonal as drawn -- the ``loss-landscapes`` package orthogonalises
  before normalising (and draws uniform noise), which leaves its axes correlated;
* the plane through three models (theta_A, theta_B, theta_C) with Gram-Schmidt axes, in which
  each model's coordinates are exact;
* the PCA plane of an optimisation trajectory (Li et al. sec. 7): the top two principal
  directions of {theta_t - theta_T}, with the trajectory projected onto them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from flatfl.analysis.model_loss import ModelLoss


def filter_normalized(obj: ModelLoss, d: torch.Tensor, *, include_1d: bool = False) -> torch.Tensor:
    """Rescale each filter of direction ``d`` to the norm of the same filter of the weights.

    A "filter" is one slice along the first (output) dimension of a weight tensor. Tensors
    with one dimension (biases, BatchNorm scales/shifts) are zeroed unless ``include_1d``,
    in which case they are rescaled to the norm of the whole weight tensor.
    """
    out = []
    for name, di in obj.unflat(d).items():
        wi = obj.params[name]
        if wi.ndim <= 1:
            if not include_1d:
                out.append(torch.zeros_like(di).reshape(-1))
                continue
            out.append((di * (wi.norm() / di.norm().clamp_min(1e-12))).reshape(-1))
            continue
        dn = di.reshape(di.shape[0], -1)
        wn = wi.reshape(wi.shape[0], -1)
        scale = wn.norm(dim=1, keepdim=True) / dn.norm(dim=1, keepdim=True).clamp_min(1e-12)
        out.append((dn * scale).reshape(-1))
    return torch.cat(out)


def random_directions(
    obj: ModelLoss, count: int, generator: torch.Generator | None = None, *, include_1d: bool = False
) -> list[torch.Tensor]:
    """``count`` Gaussian filter-normalised directions, orthogonalised after normalisation."""
    dirs: list[torch.Tensor] = []
    for _ in range(count):
        d = torch.randn(obj.size, generator=generator, dtype=torch.float64).to(obj.device, obj.dtype)
        d = filter_normalized(obj, d, include_1d=include_1d)
        norm = d.norm()
        for prev in dirs:
            d = d - (d @ prev) / (prev @ prev) * prev
        dirs.append(d * (norm / d.norm()))
    return dirs


def plane_through(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Axes (d1, d2) of the plane through three flat models, origin ``a``, and their coordinates.

    d1 = b - a; d2 = the part of c - a orthogonal to d1. Returns (d1, d2, coords (3, 2)), coords of
    a, b, c being (0, 0), (1, 0) and (x_c, 1).
    """
    d1 = b - a
    u = c - a
    x_c = float(u @ d1 / (d1 @ d1))
    d2 = u - x_c * d1
    return d1, d2, np.array([[0.0, 0.0], [1.0, 0.0], [x_c, 1.0]])


def pca_directions(trajectory: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, np.ndarray]:
    """Top-2 principal directions of the trajectory {theta_t - theta_T} and its coordinates.

    As Li et al.'s code (scikit-learn PCA), the differences are centred before the SVD; the
    coordinates are the projections of theta_t - theta_T, so the last model sits at (0, 0).
    Returns (d1, d2, coords (T, 2), explained variance ratios (2,)); directions have unit norm.
    """
    last = trajectory[-1]
    M = torch.stack([t - last for t in trajectory]).double()  # (T, n)
    _, S, Vh = torch.linalg.svd(M - M.mean(0, keepdim=True), full_matrices=False)
    d1, d2 = Vh[0].to(last.dtype), Vh[1].to(last.dtype)
    coords = (M @ Vh[:2].T).numpy()
    var = (S**2 / (S**2).sum()).numpy()[:2]
    return d1, d2, coords, var
