"""``flatfl landscape``'s per-checkpoint entry points (and, for existing imports, its settings and data helpers).

What one checkpoint's analysis computes -- every registered measure switched on (:mod:`flatfl.runs.measures`:
Hessian eigenpairs, trace, spectral density, sharpness, the literature's measures), the federated view and
loss surfaces -- is chosen by :class:`~flatfl.runs.settings.LandscapeSettings` (filled by the CLI) and computed
by :func:`flatfl.runs.measure.measure` on a
:class:`~flatfl.runs.problem.Problem` resolved once. Every number is stored with the settings that
produced it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flatfl.analysis.density import SpectralDensity
from flatfl.analysis.operators import ModelLoss
from flatfl.analysis.sharpness import SHARPNESS_MEASURES
from flatfl.analysis.surfaces import Surface
from flatfl.runs.curvature import slq_block
from flatfl.runs.measure import measure
from flatfl.runs.problem import auto_subset, of_checkpoint, select_data
from flatfl.runs.run import Run
from flatfl.runs.settings import DTYPES, LandscapeSettings
from flatfl.runs.sources import file_digest
from flatfl.runs.surface import check_surface_settings, measure_surface

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


def model_loss_of(run: Run, rnd: int, settings: LandscapeSettings, *, data: tuple | None = None) -> ModelLoss:
    """The mean loss of round ``rnd``'s global model on the selection ``settings`` names (or ``data`` = (x, y))."""
    x, y = data if data is not None else select_data(run, settings.data, settings.samples, settings.seed)[:2]
    return ModelLoss(
        run.model(rnd), x, y, batch_size=settings.batch_size, dtype=DTYPES[settings.dtype], device=settings.device
    )


def compute(
    ckpt: Path, settings: LandscapeSettings, log: Callable[[str], None] = lambda s: None
) -> tuple[dict[str, Any], SpectralDensity | None]:
    """Curvature, federated view and sharpness of one checkpoint (no surface), as a JSON-ready dict
    (+ the SLQ result): :func:`~flatfl.runs.measure.measure` of :func:`~flatfl.runs.problem.of_checkpoint`."""
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
