"""Loss surfaces: the loss and accuracy on lines and planes through weight space.

A surface is L(theta + a d1 + b d2) (2D) or L(theta + a d1) (1D) on a grid of (a, b), each point
computed directly from theta and the directions -- never by walking a model in place -- so
the grid is exactly symmetric about theta and the model is never perturbed. Points are
evaluated in chunks with ``torch.func.vmap`` over stacked parameter sets
(``functional_call``), within a memory budget; the data stay on the device.

Directions (Li, Xu, Taylor, Studer, Goldstein, NeurIPS 2018, "Visualizing the loss landscape
of neural nets"):

* random, filter-normalised: a Gaussian direction, each filter (output row of a weight
  tensor) rescaled to the norm of the same filter of theta; biases and BatchNorm parameters
  (tensors with one dimension) zeroed by default. The second direction is orthogonalised
  against the first *after* normalisation (Gram-Schmidt, then rescaled to its norm), so the
  plane's axes are orthogonal as drawn -- the ``loss-landscapes`` package orthogonalises
  before normalising (and draws uniform noise), which leaves its axes correlated;
* between models: d1 = theta_B - theta_A for interpolation (a in [-0.5, 1.5] by default);
  the plane through three models (theta_A, theta_B, theta_C) with Gram-Schmidt axes, in which
  each model's coordinates are exact;
* the PCA plane of an optimisation trajectory (Li et al. sec. 7): the top two principal
  directions of {theta_t - theta_T}, with the trajectory projected onto them;
* any given vectors, e.g. the top Hessian eigenvectors from :func:`analysis.lanczos.lanczos`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.func import functional_call, vmap

from flatfl.analysis import batches as bt
from flatfl.analysis.operators import ModelLoss, _Hooked, eval_mode


# -- directions -----------------------------------------------------------------------------
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


# -- evaluation -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Surface:
    """A computed surface: grid axes, loss and accuracy per point, and how it was made."""

    alphas: np.ndarray
    betas: np.ndarray | None  # None for 1D
    loss: np.ndarray  # (len(alphas),) or (len(alphas), len(betas))
    accuracy: np.ndarray
    description: dict[str, Any] = field(default_factory=dict)
    points: dict[str, list[float]] = field(default_factory=dict)  # named models' coordinates
    # models drawn on the surface: name, group, coords, off_plane distance, in_plane distance
    # ||a d1 + b d2|| from the checkpoint, loss/accuracy at the model itself (not at its projection)
    markers: list[dict[str, Any]] = field(default_factory=list)

    def at_origin(self, metric: str = "loss") -> float | None:
        """The value at the grid point a = 0 (and b = 0) -- the model the surface is centred on -- or None when
        the grid does not hold that point (flatfl's grids always do)."""
        z = self.loss if metric == "loss" else self.accuracy
        idx = []
        for ax in [self.alphas] + ([self.betas] if self.betas is not None else []):
            hit = np.flatnonzero(np.abs(np.asarray(ax)) < 1e-12)
            if not len(hit):
                return None
            idx.append(int(hit[0]))
        return float(z[tuple(idx)])

    def marker_groups(self) -> dict[str, list[dict[str, Any]]]:
        """The markers by group (mutants, clients, models, trajectory), in order of first appearance."""
        out: dict[str, list[dict[str, Any]]] = {}
        for m in self.markers:
            out.setdefault(m["group"], []).append(m)
        return out

    def drawn_marker_groups(self) -> tuple[dict[str, list[dict[str, Any]]], int]:
        """(the markers to draw, by group; how many were left out): a model farther off the plane than its
        projection lies from the checkpoint (:func:`near_plane`) would only pile up under the checkpoint
        star at a position that says nothing about it, so it is not drawn."""
        groups = self.marker_groups()
        kept = {g: [m for m in ms if near_plane(m)] for g, ms in groups.items()}
        hidden = sum(len(ms) for ms in groups.values()) - sum(len(ms) for ms in kept.values())
        return {g: ms for g, ms in kept.items() if ms}, hidden

    def origin_loss(self) -> float:
        """The loss at the checkpoint, against which Δloss is drawn (the lowest loss for an old grid without it)."""
        v = self.at_origin()
        return v if v is not None else float(np.nanmin(self.loss))

    def npz_bytes(self) -> bytes:
        """The arrays (alphas, betas, loss, accuracy) as the bytes of an ``.npz`` file -- no pickle."""
        import io

        arrays = {"alphas": self.alphas, "loss": self.loss, "accuracy": self.accuracy}
        if self.betas is not None:
            arrays["betas"] = self.betas
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return buf.getvalue()

    def meta(self) -> dict[str, Any]:
        """The JSON half of a saved surface: description, points, markers."""
        return {"description": self.description, "points": self.points, "markers": self.markers}

    @classmethod
    def load(cls, path: Path) -> Surface:
        """Reads a saved surface: ``path`` with the suffix ``.npz`` (the arrays of :meth:`npz_bytes`, read
        without pickle) and ``.json`` (:meth:`meta`: description, points, markers)."""
        path = Path(path)
        with np.load(path.with_suffix(".npz"), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(path.with_suffix(".json").read_text())
        return cls(
            arrays["alphas"],
            arrays.get("betas"),
            arrays["loss"],
            arrays["accuracy"],
            meta["description"],
            meta["points"],
            meta.get("markers", []),
        )


def has_batchnorm(model: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


class BatchNormReestimator:
    """Fresh BatchNorm running statistics for given parameters, from a few training batches.

    Li et al.'s surfaces keep the unperturbed model's running statistics at every grid point;
    a perturbed model's activations no longer match them. This recomputes them the way
    ``torch.optim.swa_utils.update_bn`` does -- statistics reset, ``momentum=None`` (an exact
    cumulative average over the batches), forward passes in train mode -- but functionally, on
    one private copy of the model made once (never per point), so the user's model is untouched.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        batches: Sequence[Any],
        forward: Callable[[torch.nn.Module, Any], Any] | None = None,
    ) -> None:
        """``batches``: input tensors, or whole batches when a ``forward(model, batch)`` hook is given."""
        import copy

        self.model = copy.deepcopy(model)
        for m in self.model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.momentum = None
        self.batches = list(batches)
        self.forward = forward

    def buffers(self, params: dict[str, torch.Tensor], template: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        fresh = {}
        for name, b in template.items():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "running_mean":
                fresh[name] = torch.zeros_like(b)
            elif leaf == "running_var":
                fresh[name] = torch.ones_like(b)
            elif leaf == "num_batches_tracked":
                fresh[name] = torch.zeros_like(b)
            else:
                fresh[name] = b.clone()
        ref = next(iter(params.values()))
        was = self.model.training
        self.model.train()
        try:
            with torch.no_grad():
                for xb in self.batches:
                    xb = bt.to(xb, ref.device, ref.dtype)
                    if self.forward is None:
                        functional_call(self.model, (params, fresh), (xb,))
                    else:
                        p = {"model." + n: v for n, v in params.items()}
                        b = {"model." + n: v for n, v in fresh.items()}
                        functional_call(_Hooked(self.model, self.forward), (p, b), (xb,))
        finally:
            self.model.train(was)
        return fresh


def _channels_last(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """4-D (conv) weights in channels-last memory layout: same values, ~1.5x faster CPU convolutions."""
    return {n: p.contiguous(memory_format=torch.channels_last) if p.ndim == 4 else p for n, p in params.items()}


def _channels_last_batches(obj: ModelLoss) -> list[Any]:
    """obj's batches with image inputs (N, C, H, W) in channels-last layout, converted once and kept.

    Measured on this project's 2-core CPU (0.9M-parameter CNN, 1,000 3x32x32 images, batches of
    250): 0.14-0.18 s per forward pass against 0.21-0.33 s in the default layout; the values are
    the same up to float rounding.
    """
    cached = getattr(obj, "_surface_batches", None)
    if cached is None:
        cached = [
            bt.tree_map(lambda t: t.contiguous(memory_format=torch.channels_last) if t.ndim == 4 else t, b)
            for b in obj.batches
        ]
        obj._surface_batches = cached
    return cached


def points_loss(
    obj: ModelLoss,
    flat_points: torch.Tensor,
    vectorize: bool | None = None,
    bn: BatchNormReestimator | None = None,
    buffers: Sequence[dict[str, torch.Tensor] | None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean loss and accuracy of each row of ``flat_points`` (P, n) over all of obj's data.

    ``vectorize``: one ``vmap`` over the rows per batch (True), a loop (False), or vmap with a
    fallback to the loop where the model does not support it (None). ``buffers``: each point's own
    buffers (None: obj's), e.g. the running statistics of the model a point is.
    """
    if bn is not None or (buffers is not None and any(b is not None for b in buffers)):
        vectorize = False  # per-point statistics: one point at a time
    else:
        buffers = None
    if vectorize is None:
        try:
            return points_loss(obj, flat_points, True)
        except (RuntimeError, NotImplementedError):
            return points_loss(obj, flat_points, False)
    P = flat_points.shape[0]
    loss = torch.zeros(P, dtype=torch.float64, device=obj.device)
    correct = torch.zeros(P, dtype=torch.float64, device=obj.device)

    classify = [True]

    def one(params: dict[str, torch.Tensor], batch: Any, buffers: dict | None = None) -> tuple[torch.Tensor, ...]:
        out = obj.output(params, batch, buffers)
        c = obj.correct(out, batch)
        if c is None:
            classify[0] = False
            c = torch.zeros((), device=obj.device)
        return obj.loss_sum(out, batch), c

    with torch.no_grad(), eval_mode(obj.model):
        if vectorize:
            stacked = obj.unflat_batch(flat_points)
            for b in obj.batches:
                lb, cb = vmap(one, in_dims=(0, None))(stacked, obj.on_device(b))
                loss += lb.double()
                correct += cb.double()
        else:
            batches = _channels_last_batches(obj)
            for i in range(P):
                params = _channels_last(obj.unflat(flat_points[i]))
                own = buffers[i] if buffers is not None else None
                own = bn.buffers(params, obj.buffers) if bn is not None else own
                for b in batches:
                    lb, cb = one(params, obj.on_device(b), own)
                    loss[i] += lb.double()
                    correct[i] += cb.double()
    accuracy = correct / obj.labelled if classify[0] else torch.full_like(correct, float("nan"))
    return loss / obj.norm, accuracy


class _ChunkPlan:
    """How many grid points go through :func:`points_loss` at once, and whether stacked (vmap) or in a loop.

    ``vectorize=None`` (auto): point 1 in a loop (warm-up), point 2 in a loop (timed), then one vmap chunk
    of up to 4 points (timed); the faster per point is kept. Out of memory halves the chunk; a model vmap
    cannot batch falls back to the loop for good.
    """

    def __init__(self, chunk: int, vectorize: bool | None) -> None:
        self.chunk = chunk
        self.trials = ["loop-warm", "loop", "vmap"] if vectorize is None and chunk > 1 else []
        self.vectorize = chunk > 1 if vectorize is None else vectorize
        self.per_point: dict[str, float] = {}
        self._last: str | None = None

    def next(self) -> tuple[int, bool, str | None]:
        """(points in the next chunk, stacked?, the trial it is or None)."""
        trial = self.trials.pop(0) if self.trials else None
        size = 1 if trial in ("loop-warm", "loop") else min(self.chunk, 4) if trial == "vmap" else self.chunk
        return size, (trial == "vmap") if trial else self.vectorize, trial

    def out_of_memory(self, trial: str | None) -> bool:
        """Halve the chunk and retry (True), or give up at one point per chunk (False)."""
        if self.chunk == 1:
            return False
        self.chunk = max(1, self.chunk // 2)  # the estimate was too optimistic: smaller chunks
        if trial:
            self.trials.insert(0, trial)
        return True

    def no_vmap(self) -> None:
        self.vectorize, self.trials = False, []

    def timed(self, trial: str | None, seconds_per_point: float) -> None:
        if trial in ("loop", "vmap"):
            self.per_point[trial] = seconds_per_point
            if len(self.per_point) == 2:
                self.vectorize = self.per_point["vmap"] < self.per_point["loop"]


def _grid_point(theta: torch.Tensor, dirs: list[torch.Tensor], alphas: Any, betas: Any, c: tuple) -> torch.Tensor:
    p = theta + float(alphas[c[0]]) * dirs[0]
    return p if betas is None else p + float(betas[c[1]]) * dirs[1]


def evaluate_grid(
    obj: ModelLoss,
    directions: Sequence[torch.Tensor],
    alphas: np.ndarray,
    betas: np.ndarray | None = None,
    *,
    origin: torch.Tensor | None = None,
    memory_budget: float = 2**30,
    resume_from: Surface | None = None,
    on_chunk: Callable[[Surface, int, int], None] | None = None,
    bn: BatchNormReestimator | None = None,
    vectorize: bool | None = None,
    split: tuple[int, int] | None = None,
) -> Surface:
    """Loss/accuracy at origin + a d1 (+ b d2) for every grid point.

    Points go through ``vmap`` in chunks sized so the stacked parameters of a chunk stay
    within ``memory_budget`` bytes (at least one point per chunk; if vmap is not supported by
    the model, points are evaluated one by one). ``vectorize=None`` measures both ways on the
    first points and keeps the faster per point: on a GPU stacking points fills the device, on
    a CPU a plain loop over points is usually faster (vmap turns convolutions into grouped
    ones); True/False force one way. ``resume_from`` skips points already
    computed (non-NaN); ``on_chunk(surface, done, total)`` is called after every chunk (for
    progress bars and saving a partial surface). ``bn``: re-estimate BatchNorm statistics at
    every point (see :class:`BatchNormReestimator`; points then go one at a time).
    ``split=(rank, world)``: under torchrun this rank evaluates every world-th remaining point and
    the grid is assembled on every rank (``analysis.distributed``); rank 0's ``resume_from`` counts.
    """
    theta = obj.flat() if origin is None else origin.to(obj.device, obj.dtype)
    alphas = np.asarray(alphas, dtype=float)
    shape = (len(alphas),) if betas is None else (len(alphas), len(betas))
    if resume_from is not None and resume_from.loss.shape == shape:
        loss, acc = resume_from.loss.copy(), resume_from.accuracy.copy()
    else:
        loss, acc = np.full(shape, np.nan), np.full(shape, np.nan)
    coords = [(i,) for i in range(len(alphas))] if betas is None else list(np.ndindex(len(alphas), len(betas)))
    if split is not None:
        from flatfl.analysis import distributed

        loss, acc = distributed.broadcast_array(loss), distributed.broadcast_array(acc)
    # filled in place chunk by chunk (on_chunk sees the partial grid); a frozen result to the caller
    surf = Surface(alphas, None if betas is None else np.asarray(betas, dtype=float), loss, acc)
    todo = [c for c in coords if np.isnan(loss[c])]
    if split is not None:
        todo = todo[split[0] :: split[1]]
    plan = _ChunkPlan(points_per_chunk(obj, memory_budget), False if bn is not None else vectorize)
    dirs = [d.to(obj.device, obj.dtype) for d in directions]
    done, start = len(coords) - len(todo), 0
    while start < len(todo):
        size, vec, trial = plan.next()
        part = todo[start : start + size]
        P = torch.stack([_grid_point(theta, dirs, alphas, betas, c) for c in part])
        t0 = _synced_time(obj.device)
        try:
            lv, av = points_loss(obj, P, vec, bn)
        except torch.OutOfMemoryError:
            if not plan.out_of_memory(trial):
                raise
            continue
        except (RuntimeError, NotImplementedError):
            if not vec:
                raise
            plan.no_vmap()
            vec, trial = False, None
            lv, av = points_loss(obj, P, vec, bn)
        plan.timed(trial, (_synced_time(obj.device) - t0) / len(part))
        for c, lval, aval in zip(part, lv.tolist(), av.tolist()):
            loss[c], acc[c] = lval, aval
        done += len(part)
        start += len(part)
        if on_chunk is not None:
            on_chunk(surf, done, len(coords))
    return surf if split is None else _assembled(surf, todo)


def _assembled(surf: Surface, mine_points: list[tuple[int, ...]]) -> Surface:
    """Under torchrun: the grid with every rank's points (this rank computed ``mine_points``)."""
    from flatfl.analysis import distributed

    mine = np.zeros(surf.loss.shape, dtype=bool)
    for c in mine_points:
        mine[c] = True
    filled = ~np.isnan(surf.loss) & ~mine  # points resumed from rank 0's file: already on every rank
    return replace(
        surf,
        loss=np.where(filled, surf.loss, distributed.assemble(surf.loss, mine)),
        accuracy=np.where(filled, surf.accuracy, distributed.assemble(surf.accuracy, mine)),
    )


def _synced_time(device: torch.device) -> float:
    import time

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def points_per_chunk(obj: ModelLoss, memory_budget: float) -> int:
    """How many grid points one vmap call may take within ``memory_budget`` bytes.

    Per point: its stacked parameters plus the activations of one batch, measured by a forward
    hook on every module during one forward pass of the first batch.
    """
    act = [0]

    def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor):
            act[0] += output.numel() * output.element_size()

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        with torch.no_grad(), eval_mode(obj.model):
            obj.output(obj.params, obj.on_device(obj.batches[0]))
    finally:
        handle.remove()
    per_point = obj.size * obj.flat().element_size() + act[0]
    return max(1, int(memory_budget // max(per_point, 1)))


def axis(lo: float, hi: float, n: int, must: tuple[float, ...] = (0.0,)) -> np.ndarray:
    """n points from lo to hi that hold each of ``must`` inside [lo, hi] exactly.

    A grid point within half a step of such a value is moved onto it; otherwise the value is
    inserted (the grid is then one point longer and not quite even). So the checkpoint (0) and,
    for interpolation, the other end (1) are always points of the surface.
    """
    ax = np.linspace(lo, hi, n)
    half = 0.5 * (hi - lo) / max(n - 1, 1)
    for v in must:
        if not lo <= v <= hi:
            continue
        i = int(np.argmin(np.abs(ax - v)))
        if abs(ax[i] - v) <= half * 1e-6:
            ax[i] = v  # float rounding of linspace
        elif ax[i] != v:
            ax = np.sort(np.append(ax, v))
    return ax


def near_plane(marker: Mapping[str, Any]) -> bool:
    """Whether a marker is drawn: its distance off the plane is at most its in-plane distance from the
    checkpoint, ‖a·d1 + b·d2‖ (``in_plane``), or it lies in the plane (off_plane < 1e-3·‖θ‖).

    Markers saved before ``in_plane`` existed estimate it as ‖(a, b)‖·‖θ‖ (filter-normalised
    directions have about the norm of θ; ‖θ‖ = off_plane / off_plane_relative)."""
    rel = float(marker.get("off_plane_relative", 0.0))
    if rel < 1e-3:
        return True
    inside = marker.get("in_plane")
    if inside is None:
        inside = math.hypot(*marker["coords"]) * float(marker["off_plane"]) / rel
    return float(marker["off_plane"]) <= float(inside)


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
