"""The loss and accuracy at many points of weight space: :func:`points_loss` (rows of a matrix of flat
parameters) and :func:`evaluate_grid` (origin + a d1 (+ b d2) on a grid, in chunks, within a memory budget).

Each point is computed directly from theta and the directions -- never by walking a model in place -- so a
grid is exactly symmetric about theta and the model is never perturbed. Points go through
``torch.func.vmap`` over stacked parameter sets (``functional_call``) or a loop, whichever is faster per
point (timed on the first points); the data stay on the device.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch.func import vmap

from flatfl.analysis import batches as bt
from flatfl.analysis.batchnorm import BatchNormReestimator
from flatfl.analysis.grid import Surface
from flatfl.analysis.linear import eval_mode
from flatfl.analysis.model_loss import ModelLoss
from flatfl.analysis.private import PrivateModel, private_model

FAST_POINTS_ENV = "FLATFL_FAST_POINTS"


def fast_points() -> bool:
    """The faster evaluation of many points (a private model copy in the loop, :mod:`flatfl.analysis.private`;
    1D slices of all directions through one plan, :func:`flatfl.analysis.slices.random_slices`) unless the
    environment sets ``FLATFL_FAST_POINTS=0`` (the code before it, for before/after timings:
    ``bench/slices_cost.py``)."""
    return os.environ.get(FAST_POINTS_ENV, "1") != "0"


def _fast(flag: bool | None) -> bool:
    return fast_points() if flag is None else flag


def _channels_last(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """4-D (conv) weights in channels-last memory layout: same values, ~1.5x faster CPU convolutions."""
    return {n: p.contiguous(memory_format=torch.channels_last) if p.ndim == 4 else p for n, p in params.items()}


def channels_last_batches(obj: ModelLoss) -> list[Any]:
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
    private: bool | None = None,
    along: Sequence[float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean loss and accuracy of each row of ``flat_points`` (P, n) over all of obj's data.

    ``vectorize``: one ``vmap`` over the rows per batch (True), a loop (False), or vmap with a
    fallback to the loop where the model does not support it (None). ``buffers``: each point's own
    buffers (None: obj's), e.g. the running statistics of the model a point is. ``private``: the loop runs
    a private copy of the model with each point written into it in place (:mod:`flatfl.analysis.private`;
    faster, the same values) where it applies, else ``functional_call`` per batch (None: :func:`fast_points`).
    ``along``: row i is theta + along[i] d on the line set on that copy (:meth:`PrivateModel.set_line
    <flatfl.analysis.private.PrivateModel.set_line>`: its first layer's output is combined, not computed).
    """
    if bn is not None or (buffers is not None and any(b is not None for b in buffers)):
        vectorize = False  # per-point statistics: one point at a time
    else:
        buffers = None
    if vectorize is None:
        try:
            return points_loss(obj, flat_points, True)
        except (RuntimeError, NotImplementedError):
            return points_loss(obj, flat_points, False, private=private)
    copy = private_model(obj) if not vectorize and bn is None and buffers is None and _fast(private) else None
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
        elif copy is not None:
            try:
                classify[0] = _private_loop(obj, copy, flat_points, loss, correct, along)
            except (RuntimeError, NotImplementedError):  # e.g. a .view() the channels-last layout refuses
                obj._private_model = False  # functional_call from now on
                return points_loss(obj, flat_points, False, private=False)
        else:
            plain = getattr(obj, "_plain_layout", False)
            batches = obj.batches if plain else channels_last_batches(obj)
            try:
                for i in range(P):
                    params = obj.unflat(flat_points[i])
                    params = params if plain else _channels_last(params)
                    own = buffers[i] if buffers is not None else None
                    own = bn.buffers(params, obj.buffers) if bn is not None else own
                    for b in batches:
                        lb, cb = one(params, obj.on_device(b), own)
                        loss[i] += lb.double()
                        correct[i] += cb.double()
            except RuntimeError:
                if plain:
                    raise
                # e.g. x.view(n, -1) after a convolution, which a channels-last tensor refuses: the default layout
                obj._plain_layout = True
                return points_loss(obj, flat_points, False, bn, buffers, private=False)
    accuracy = correct / obj.labelled if classify[0] else torch.full_like(correct, float("nan"))
    return loss / obj.norm, accuracy


def _private_loop(
    obj: ModelLoss,
    copy: PrivateModel,
    flat_points: torch.Tensor,
    loss: torch.Tensor,
    correct: torch.Tensor,
    along: Sequence[float] | None = None,
) -> bool:
    """Fills ``loss``/``correct`` (P,) with each point's summed loss and correct count, one point at a time on
    the private copy (:mod:`flatfl.analysis.private`); False when the task is not classification."""
    classify = True
    batches = channels_last_batches(obj)
    for i in range(flat_points.shape[0]):
        copy.load(flat_points[i], None if along is None else float(along[i]))
        for b in batches:
            b = obj.on_device(b)
            out = copy(b[0])
            c = obj.correct(out, b)
            if c is None:
                classify, c = False, torch.zeros((), device=obj.device)
            loss[i] += obj.loss_sum(out, b).double()
            correct[i] += c.double()
    return classify


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
    private: bool | None = None,
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
    ``private``: see :func:`points_loss`.
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
    dirs = [d.to(obj.device, obj.dtype) for d in directions]
    done = len(coords) - len(todo)

    def chunk_done(part: list[tuple[int, ...]], lv: list[float], av: list[float]) -> None:
        nonlocal done
        for c, lval, aval in zip(part, lv, av):
            loss[c], acc[c] = lval, aval
        done += len(part)
        if on_chunk is not None:
            on_chunk(surf, done, len(coords))

    plan = _ChunkPlan(points_per_chunk(obj, memory_budget), False if bn is not None else vectorize)
    run_points(obj, todo, lambda c: _grid_point(theta, dirs, alphas, betas, c), plan, chunk_done, bn, private)
    return surf if split is None else _assembled(surf, todo)


def run_points(
    obj: ModelLoss,
    todo: Sequence[Any],
    point: Callable[[Any], torch.Tensor],
    plan: _ChunkPlan,
    chunk_done: Callable[[list, list[float], list[float]], None],
    bn: BatchNormReestimator | None = None,
    private: bool | None = None,
) -> None:
    """The loss and accuracy at ``point(c)`` for every key ``c`` of ``todo``, in the chunks ``plan`` sizes
    (stacked or in a loop, out of memory halving the chunk, vmap falling back to the loop);
    ``chunk_done(keys, losses, accuracies)`` after each chunk."""
    start = 0
    while start < len(todo):
        size, vec, trial = plan.next()
        part = list(todo[start : start + size])
        P = torch.stack([point(c) for c in part])
        t0 = _synced_time(obj.device)
        try:
            lv, av = points_loss(obj, P, vec, bn, private=private)
        except torch.OutOfMemoryError:
            if not plan.out_of_memory(trial):
                raise
            continue
        except (RuntimeError, NotImplementedError):
            if not vec:
                raise
            plan.no_vmap()
            vec, trial = False, None
            lv, av = points_loss(obj, P, vec, bn, private=private)
        plan.timed(trial, (_synced_time(obj.device) - t0) / len(part))
        chunk_done(part, lv.tolist(), av.tolist())
        start += len(part)


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
