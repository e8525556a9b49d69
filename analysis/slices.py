"""Li et al.-style 1D slices: how fast the loss rises along random filter-normalised directions.

For a model theta and K directions d_k (Gaussian, filter-normalised to theta's own filters,
Li, Xu, Taylor, Studer & Goldstein, NeurIPS 2018, sec. 4), the slice is

    delta_k(t) = L(theta + t d_k) - L(theta),   t on a grid symmetric about 0 that holds 0 exactly.

Filter normalisation removes the scale symmetry of ReLU networks, so slices of different
models (FedAvg's, FedMut's) are comparable on one axis. Direction k is drawn from a generator
seeded with ``seed + k`` for every model: the same Gaussian draws, each normalised to its
own model's filters. From the mean curve m(t) = mean_k delta_k(t), :func:`width` reads the
*width* at a threshold tau: the distance between the first crossings of m(t) >= tau on
either side of 0 (linearly interpolated between grid points) -- wider is flatter.

Also :func:`line_slice`: the loss along the straight line (1 - t) theta_A + t theta_B between
two models (Goodfellow et al. 2015), with its barrier max_t [L(t) - ((1 - t) L(0) + t L(1))]
over t in [0, 1] (Frankle et al. 2020).

Pure numerics over :class:`analysis.operators.ModelLoss`; the model is never perturbed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from flatfl.analysis import points
from flatfl.analysis.directions import random_directions
from flatfl.analysis.grid import Surface
from flatfl.analysis.operators import ModelLoss
from flatfl.analysis.points import (
    _ChunkPlan,
    channels_last_batches,
    evaluate_grid,
    fast_points,
    points_per_chunk,
    run_points,
)
from flatfl.analysis.private import private_model


def symmetric_grid(radius: float, points_per_side: int) -> np.ndarray:
    """``2 * points_per_side + 1`` evenly spaced values from -radius to radius with 0 and +-radius exact."""
    if radius <= 0 or points_per_side < 1:
        raise ValueError("radius > 0 and points_per_side >= 1 required")
    return radius * np.arange(-points_per_side, points_per_side + 1) / points_per_side


@dataclass(frozen=True)
class Slices:
    """delta_k(t) for K directions (rows) on the grid ``ts``; ``loss0`` = L(theta). ``loss``/``accuracy``: the
    raw L(theta + t d_k) and accuracy (K, T) when computed here (None when read back from a cache); a surface
    along d_0 reuses them (:func:`flatfl.analysis.surfaces.evaluate_grid`'s ``resume_from``)."""

    ts: np.ndarray
    delta: np.ndarray  # (K, T)
    loss0: float
    seed: int
    num_directions: int
    loss: np.ndarray | None = None
    accuracy: np.ndarray | None = None

    @property
    def mean(self) -> np.ndarray:
        return self.delta.mean(axis=0)

    @property
    def band(self) -> tuple[np.ndarray, np.ndarray]:
        """(min, max) over the directions at each t."""
        return self.delta.min(axis=0), self.delta.max(axis=0)


def random_slices(
    obj: ModelLoss,
    ts: np.ndarray,
    *,
    num_directions: int = 10,
    seed: int = 0,
    memory_budget: float = 2**30,
    include_1d: bool = False,
    share_origin: bool = True,
    fast: bool | None = None,
) -> Slices:
    """delta_k(t) along ``num_directions`` filter-normalised random directions (see module doc).

    Every direction passes through theta at t = 0: with ``share_origin`` L(theta) is evaluated once, with the
    first direction, and reused by the others (K - 1 fewer loss evaluations; delta_k(0) = 0 exactly), else
    evaluated again for each direction (as before; delta_k(0) then holds that evaluation's rounding).

    ``fast`` (None: :func:`flatfl.analysis.points.fast_points`): the points of all K directions,
    theta + t d_k (the same float parameters as before), go through one evaluation plan -- on a CPU one point
    at a time on a private model copy (:mod:`flatfl.analysis.private`), chosen once rather than timed again
    per direction (so a seeded run gives the same bits every time), elsewhere the timed vmap-or-loop choice of
    :func:`~flatfl.analysis.points.evaluate_grid`; False: one :func:`evaluate_grid` per direction with
    ``functional_call`` (the code before, kept for ``bench/slices_cost.py``'s before/after timing)."""
    ts = np.asarray(ts, dtype=float)
    zero = np.flatnonzero(ts == 0.0)
    if zero.size != 1:
        raise ValueError("the grid must hold t = 0 exactly once")
    if not (fast_points() if fast is None else fast):
        return _random_slices_per_direction(obj, ts, num_directions, seed, memory_budget, include_1d, share_origin)
    z = int(zero[0])
    dirs = [
        random_directions(obj, 1, torch.Generator().manual_seed(seed + k), include_1d=include_1d)[0]
        for k in range(num_directions)
    ]
    theta = obj.flat()
    todo = [(k, j) for k in range(num_directions) for j in range(len(ts)) if not (share_origin and k and j == z)]
    loss = np.full((num_directions, len(ts)), np.nan)
    acc = loss.copy()

    def chunk_done(part: list[tuple[int, int]], lv: list[float], av: list[float]) -> None:
        for c, lval, aval in zip(part, lv, av):
            loss[c], acc[c] = lval, aval

    chunk = points_per_chunk(obj, memory_budget)
    copy = private_model(obj) if obj.device.type == "cpu" and not obj.streamed else None
    for k, d in enumerate(dirs if copy is not None else []):  # one line at a time, its first layer combined
        js = [j for kk, j in todo if kk == k]
        lined = copy.set_line(theta, d, [b[0] for b in channels_last_batches(obj)], memory_budget / 4)
        for i in range(0, len(js), chunk):
            part = [(k, j) for j in js[i : i + chunk]]
            P = torch.stack([theta + float(ts[j]) * d for _, j in part])
            lv, av = points.points_loss(obj, P, False, private=True, along=[ts[j] for _, j in part] if lined else None)
            chunk_done(part, lv.tolist(), av.tolist())
        copy.clear_line()
    if copy is None:
        plan = _ChunkPlan(chunk, False if obj.device.type == "cpu" else None)
        # theta + float(t) * d_k: the very expression evaluate_grid builds its points with (the same float32 point)
        run_points(obj, todo, lambda c: theta + float(ts[c[1]]) * dirs[c[0]], plan, chunk_done, private=True)
    if share_origin:
        loss[:, z], acc[:, z] = loss[0, z], acc[0, z]
    loss0 = float(loss[0, z])
    return Slices(ts, loss - loss0, loss0, seed, num_directions, loss, acc)


def _random_slices_per_direction(
    obj: ModelLoss,
    ts: np.ndarray,
    num_directions: int,
    seed: int,
    memory_budget: float,
    include_1d: bool,
    share_origin: bool,
) -> Slices:
    """:func:`random_slices` as it was computed before ``fast``: one :func:`evaluate_grid` per direction (its
    vmap-or-loop choice timed again each time), the loop through ``functional_call``."""
    zero = np.flatnonzero(ts == 0.0)
    losses, accs = [], []
    loss0 = known = None
    for k in range(num_directions):
        (d,) = random_directions(obj, 1, torch.Generator().manual_seed(seed + k), include_1d=include_1d)
        surf = evaluate_grid(obj, [d], ts, memory_budget=memory_budget, resume_from=known, private=False)
        if loss0 is None:
            loss0 = float(surf.loss[zero[0]])
            if share_origin:  # the other directions start from this point, already evaluated
                nan = np.full(ts.shape, np.nan)
                nan_acc = nan.copy()
                nan[zero[0]], nan_acc[zero[0]] = surf.loss[zero[0]], surf.accuracy[zero[0]]
                known = Surface(ts, None, nan, nan_acc)
        losses.append(surf.loss)
        accs.append(surf.accuracy)
    loss = np.array(losses)
    return Slices(ts, loss - loss0, float(loss0), seed, num_directions, loss, np.array(accs))


def _crossing(ts: np.ndarray, m: np.ndarray, threshold: float) -> tuple[float, bool]:
    """First t >= 0 (ts ascending from 0) where m reaches threshold, interpolated; (t_last, True) if never."""
    for i in range(1, len(ts)):
        if m[i] >= threshold:
            prev = m[i - 1]
            frac = 1.0 if m[i] == prev else (threshold - prev) / (m[i] - prev)
            return float(ts[i - 1] + min(max(frac, 0.0), 1.0) * (ts[i] - ts[i - 1])), False
    return float(ts[-1]), True


def width(ts: np.ndarray, mean_delta: np.ndarray, threshold: float) -> tuple[float, bool]:
    """Width of the basin at ``threshold``: right crossing minus left crossing of the mean Δloss.

    Returns (width, censored): ``censored`` is True when the mean curve does not reach the
    threshold on some side within the grid (the width is then a lower bound: the grid's end).
    """
    ts = np.asarray(ts, dtype=float)
    m = np.asarray(mean_delta, dtype=float)
    i0 = int(np.flatnonzero(ts == 0.0)[0])
    right, cr = _crossing(ts[i0:], m[i0:], threshold)
    left, cl = _crossing(-ts[: i0 + 1][::-1], m[: i0 + 1][::-1], threshold)
    return right + left, cr or cl


def width_stderr(
    ts: np.ndarray, delta: np.ndarray, threshold: float, *, resamples: int = 200, seed: int = 0
) -> float | None:
    """Standard error of :func:`width` of the mean curve from the K directions' sampling: the standard
    deviation of the width over ``resamples`` bootstrap resamples of the rows of ``delta`` (K directions drawn
    with replacement; Efron & Tibshirani 1993, ch. 6). A resample whose mean curve does not reach the threshold
    counts at its lower bound, as :func:`width` does. None with fewer than two directions.
    Seeded (``seed``): the same curves give the same error."""
    delta = np.asarray(delta, dtype=float)
    k = delta.shape[0]
    if k < 2:
        return None
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, k, size=(resamples, k))
    ws = [width(ts, delta[i].mean(axis=0), threshold)[0] for i in idx]
    return float(np.std(ws, ddof=1))


@dataclass(frozen=True)
class LineSlice:
    """L((1 - t) a + t b) on ``ts`` (holding 0 and 1), and the barrier over [0, 1]."""

    ts: np.ndarray
    loss: np.ndarray
    accuracy: np.ndarray
    barrier: float


def line_slice(obj: ModelLoss, a: torch.Tensor, b: torch.Tensor, ts: np.ndarray, **kw) -> LineSlice:
    """Loss and accuracy along the straight line from flat model ``a`` (t = 0) to ``b`` (t = 1)."""
    ts = np.asarray(ts, dtype=float)
    if not ((ts == 0.0).any() and (ts == 1.0).any()):
        raise ValueError("the grid must hold t = 0 and t = 1 exactly")
    surf = evaluate_grid(obj, [b - a], ts, origin=a, **kw)
    l0, l1 = float(surf.loss[ts == 0.0][0]), float(surf.loss[ts == 1.0][0])
    inside = (ts >= 0.0) & (ts <= 1.0)
    chord = (1.0 - ts[inside]) * l0 + ts[inside] * l1
    return LineSlice(ts, surf.loss, surf.accuracy, float(np.max(surf.loss[inside] - chord)))


def line_grid(points_per_unit: int = 10, pad: float = 0.25) -> np.ndarray:
    """t from -pad to 1 + pad with 0 and 1 on the grid exactly (step 1 / points_per_unit)."""
    k = int(round(pad * points_per_unit))
    return np.arange(-k, points_per_unit + k + 1) / points_per_unit
