"""The settings types of the run side, at the bottom of ``flatfl.runs`` (they import nothing of it).

:class:`LandscapeSettings` says what one checkpoint's analysis computes and on which data; ``flatfl landscape``
fills it from its flags, ``flatfl report`` holds one (``ReportSettings.landscape``). The built-in measures
(Hessian, trace, density, sharpness) keep their options in its flat fields -- the form landscape.json and the
report's caches record -- and every other measure of the registry (:mod:`flatfl.runs.measures`) carries its own
frozen settings in ``measures`` as ``(name, settings)`` pairs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

DTYPES = {"float32": torch.float32, "float64": torch.float64}

__all__ = ["DTYPES", "ConnectivitySettings", "LandscapeSettings", "ReportSettings"]


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
    # the registry's other measures that are switched on: (name, its frozen settings), in registry order
    measures: tuple[tuple[str, Any], ...] = ()

    def measure_settings(self, name: str) -> Any:
        """The settings of registry measure ``name`` when it is switched on here, else None."""
        return dict(self.measures).get(name)


@dataclass(frozen=True)
class ConnectivitySettings:
    """``flatfl report --connect``: mode connectivity (:mod:`flatfl.runs.connectivity`) between the compared
    groups' global models of one seed (``groups``) and between each global model and its clients' returned
    models (``clients``, at most ``max_clients`` per run and round); ``require_clients``: client paths were named
    explicitly, so a report where no run saved its clients is refused; ``steps``/``lr``: SGD on the bend, as
    ``flatfl landscape --connect-steps/--connect-lr``."""

    groups: bool = True
    clients: bool = True
    require_clients: bool = False
    steps: int = 300
    lr: float = 0.01
    max_clients: int = 4


@dataclass(frozen=True)
class ReportSettings:
    """What the report computes (filled by the CLI)."""

    rounds: tuple[int, ...] | None = None  # equal rounds; None: the middle and the last common round
    landscape: LandscapeSettings = LandscapeSettings(
        data="train",
        samples=1000,
        hessian=True,
        topk=1,
        tol=1e-4,
        trace=True,
        trace_matvecs=30,
        sharpness=("sam", "adaptive_l2", "average_adaptive"),
        # average adaptive sharpness at sigma 0.01: antithetic pairs cancel the first-order term that buried the
        # plain estimate in noise (|value| < 1.5 standard errors on the demo's checkpoints; docs/landscapes.md)
        antithetic=True,
        surface="2d",
        grid=21,
        span=1.0,
    )
    surface: bool = True
    spread: bool = True
    spread_samples: int = 500  # test samples for each spread model's loss (0: distances only)
    match: bool = True  # also compare at equal training loss
    match_loss: float | None = None  # the common loss level (None: the highest final loss among the runs)
    match_acc: float | None = None  # also compare at equal test accuracy
    slice_directions: int = 10  # 1D slices: random directions per checkpoint (0: none)
    slice_radius: float = 1.0
    slice_points: int = 20  # grid points per side of 0
    widths: tuple[float, ...] = (0.1, 1.0)  # Δloss thresholds of the 1D width
    labels: tuple[tuple[str, str], ...] = ()  # (run path, group name) overrides
    reference: str | None = None  # the group the others are compared with: a label or a run path (--reference)
    allow_mixed_optimizers: bool = False
    connect: ConnectivitySettings | None = None  # --connect: mode connectivity (None: off)
