"""``flatfl landscape``'s settings and the per-checkpoint entry points.

What one checkpoint's analysis computes -- top-k Hessian eigenpairs and the most negative eigenvalue
(Lanczos), the trace (adaptive Hutchinson/Hutch++ with a standard error), the spectral density (SLQ),
sharpness measures, the federated view and loss surfaces -- is chosen by :class:`LandscapeSettings`
(filled by the CLI) and computed by :func:`flatfl.runs.measure.measure` on a
:class:`~flatfl.runs.problem.Problem` resolved once. Every number is stored with the settings that
produced it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flatfl.analysis.density import SpectralDensity
from flatfl.analysis.operators import ModelLoss
from flatfl.analysis.surfaces import Surface
from flatfl.runs.curvature import SHARPNESS_MEASURES, slq_block
from flatfl.runs.problem import DTYPES, auto_subset, of_checkpoint, select_data
from flatfl.runs.run import Run

__all__ = [
    "SHARPNESS_MEASURES",
    "LandscapeSettings",
    "auto_subset",
    "compute",
    "compute_surface",
    "file_digest",
    "json_ready",
    "model_loss_of",
    "select_data",
    "slq_block",
]


@dataclass(frozen=True)
class LandscapeSettings:
    """What to compute and on which data (filled by the CLI)."""

    data: str = "train"  # train | test | client:K
    samples: int | None = None
    samples_auto: bool = False  # --samples auto: grow a random subset until the data error is below data_tol
    data_tol: float = 0.01
    batch_size: int = 250
    dtype: str = "float32"
    device: str = "cpu"
    seed: int = 0
    hessian: bool = False
    topk: int = 5
    tol: float = 1e-5
    max_vectors: int = 128
    trace: bool = False
    trace_matvecs: int = 99
    trace_method: str = "adaptive"  # adaptive | hutch++ | hutchinson
    density: bool = False
    slq_runs: int = 10
    slq_steps: int = 80
    sharpness: tuple[str, ...] = ()
    rho: float = 0.05
    eps: float = 1e-3
    sigma: float = 0.01
    sharpness_steps: int = 10
    sharpness_samples: int = 50
    antithetic: bool = False  # average sharpness: evaluate each draw at +delta and -delta (flatfl report: on)
    m: int | None = None
    memory_budget_gb: float = 2.0
    surface: str | None = None  # 1d | 2d
    surface_dirs: str = "random"  # random | eigen | interp | models | pca
    grid: int = 21
    span: float = 1.0
    range: tuple[float, float] | None = None  # axis range (overrides span; interp/models/pca pick one)
    to: str | None = None  # interp: the other end (checkpoint file, mutant:SLOT, returned:SLOT)
    models: tuple[str, ...] | None = None  # models: the two other models of the plane
    bn_reestimate: int = 0  # batches of training data to re-estimate BatchNorm statistics per point
    markers: bool = True  # draw this round's mutants / returned models (and trajectory) on the surface
    include_1d: bool = False
    federated: bool = False
    clients: str = "auto"  # auto | all | sampled | comma-separated ids


def model_loss_of(run: Run, rnd: int, settings: LandscapeSettings, *, data: tuple | None = None) -> ModelLoss:
    """The mean loss of round ``rnd``'s global model on the selection ``settings`` names (or ``data`` = (x, y))."""
    x, y = data if data is not None else select_data(run, settings.data, settings.samples, settings.seed)[:2]
    return ModelLoss(
        run.model(rnd), x, y, batch_size=settings.batch_size, dtype=DTYPES[settings.dtype], device=settings.device
    )


def file_digest(path: Path) -> str:
    """SHA-256 of a file: cached results are reused only for the very same tensors."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def compute(
    ckpt: Path, settings: LandscapeSettings, log: Callable[[str], None] = lambda s: None
) -> tuple[dict[str, Any], SpectralDensity | None]:
    """Curvature, federated view and sharpness of one checkpoint (no surface), as a JSON-ready dict
    (+ the SLQ result): :func:`~flatfl.runs.measure.measure` of :func:`~flatfl.runs.problem.of_checkpoint`."""
    from dataclasses import replace

    from flatfl.runs.measure import measure

    m = measure(of_checkpoint(ckpt, settings, log), replace(settings, surface=None), log=log)
    return m.record, m.density


def compute_surface(
    ckpt: Path,
    settings: LandscapeSettings,
    out_dir: Path,
    eigvecs: torch.Tensor | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Surface:
    """The surface of one checkpoint alone (see :func:`flatfl.runs.surface.measure_surface`)."""
    from flatfl.runs.surface import check_surface_settings, measure_surface

    check_surface_settings(settings)
    return measure_surface(of_checkpoint(ckpt, settings), settings, out_dir, eigvecs, progress)


def json_ready(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj
