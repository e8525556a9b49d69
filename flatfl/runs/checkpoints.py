"""One checkpoint of ``flatfl report``: what it is measured with and its numbers as one flat row.

The verdict's rows and each checkpoint's columns come from the measure registry (:mod:`flatfl.runs.measures`):
every measure the report settings switch on contributes its rows (:func:`measures`) and its columns
(:func:`checkpoint_row`). Results are cached per checkpoint under ``DIR/runs/`` and reused only when their
settings and the checkpoint's SHA-256 match.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from flatfl import checkpoint as ckpt
from flatfl.analysis import distributed
from flatfl.analysis.invariance import invariant_to
from flatfl.analysis.sharpness import SHARPNESS
from flatfl.analysis.slices import Slices
from flatfl.analysis.surfaces import Surface
from flatfl.analysis.verdict import ACCURACY_MARGIN, LOSS_MARGIN, Measure
from flatfl.runs import curvature, timing
from flatfl.runs.landscape import json_ready, select_data
from flatfl.runs.measure import measure, record_at
from flatfl.runs.measures import Context, registered
from flatfl.runs.measures.widths import WidthSettings, slices_of
from flatfl.runs.measures.widths import compute as compute_slices
from flatfl.runs.problem import Problem
from flatfl.runs.run import Run
from flatfl.runs.settings import LandscapeSettings, ReportSettings

# the verdict labels of the sharpness measures (flatfl.analysis.sharpness.SHARPNESS, the one vocabulary)
SHARPNESS_LABELS = {name: kind.label for name, kind in SHARPNESS.items()}

# sharpness measures invariant to every tested function-preserving rescaling (from analysis/invariance.py's table;
# bench/invariance_table.py measures them)
SCALE_INVARIANT = tuple(s for s in SHARPNESS_LABELS if invariant_to(f"sharpness_{s}"))

# sharpness measures estimated by Monte Carlo (a standard error per checkpoint)
SAMPLED_SHARPNESS = tuple(name for name, kind in SHARPNESS.items() if kind.sampled)


def measures(settings: ReportSettings) -> list[Measure]:
    """The verdict table's rows for these settings: the flatness rows of every registered measure switched on
    (:meth:`~flatfl.runs.measures.MeasureSpec.rows`: what it is invariant to, :func:`flatfl.analysis.invariance.
    invariant_to`, and, when it is estimated, the per-checkpoint column of its own error and the budget that
    error shrinks with), then performance."""
    ls = settings.landscape
    rows = [m for spec in registered() if (st := spec.on(ls, settings)) is not None for m in spec.rows(st, ls)]
    rows.append(
        Measure("test_acc", "test accuracy", lower_is_better=False, kind="performance", ratio=False, bounds=(0.0, 1.0),
                margin=ACCURACY_MARGIN)
    )  # fmt: skip
    rows.append(
        Measure("train_loss", "train loss", kind="performance", ratio=False, bounds=(0.0, None), margin=LOSS_MARGIN)
    )
    return rows


@dataclass
class Measured:
    """Per-checkpoint results, keyed by (group label, seed, round)."""

    rows: dict[tuple[str, int, int], dict[str, Any]] = field(default_factory=dict)
    results: dict[tuple[str, int, int], dict[str, Any]] = field(default_factory=dict)
    slices: dict[tuple[str, int, int], Slices] = field(default_factory=dict)
    surfaces: dict[str, list[tuple[int, Surface]]] = field(default_factory=dict)
    norms: dict[tuple[str, int, int], dict[str, float]] = field(default_factory=dict)  # ||θ_l||₂ per tensor


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)


def cache_dir(out: Path, label: str, seed: int, rnd: int) -> Path:
    return out / "runs" / f"{_slug(label)}-s{seed}" / f"round_{rnd:04d}"


def _cached_json(path: Path, settings: dict, digest: str) -> dict | None:
    """The cached result if it was computed with these settings from this very checkpoint file."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return old if old.get("settings") == settings and old.get("checkpoint_sha256") == digest else None


def measure_landscape(
    problem: Callable[[], Problem],
    run: Run,
    rnd: int,
    ls: LandscapeSettings,
    out: Path,
    log: Callable[[str], None],
    digest: str,
    bars: curvature.Bars = curvature.no_bars,
) -> dict:
    """Curvature and sharpness of one checkpoint (SHA-256 ``digest``), cached in ``out/landscape.json``;
    ``problem()`` resolves the checkpoint's model and data (once, shared with the slices and surface)."""
    main = distributed.is_main()
    ls = replace(ls, surface=None)
    want = json_ready(asdict(ls))
    # under torchrun rank 0's cache decides for every rank (the computation below is collective)
    res = distributed.broadcast_array(_cached_json(out / "landscape.json", want, digest) if main else None)
    if res is not None:
        log(f"{run.path.name} round {rnd}: reusing {out / 'landscape.json'}")
        timing.count("checkpoints reused")
        return res
    timing.count("checkpoints measured")
    res = measure(problem(), ls, log=lambda s: log(f"{run.path.name} round {rnd}: {s}"), bars=bars).record
    res = json.loads(json.dumps(json_ready(res), sort_keys=True))  # as a cached file reads back
    if main:
        out.mkdir(parents=True, exist_ok=True)
        ckpt.atomic_write_json(out / "landscape.json", res)
    return res


def measure_slices(problem: Callable[[], Problem], settings: ReportSettings, out: Path, digest: str) -> Slices:
    """Li et al. 1D slices of one checkpoint (SHA-256 ``digest``), cached in ``out/slices.json``: the widths
    measure's record (:mod:`flatfl.runs.measures.widths`)."""
    ls = settings.landscape
    want = {
        "directions": settings.slice_directions,
        "radius": settings.slice_radius,
        "points": settings.slice_points,
        "data": ls.data,
        "samples": ls.samples,
        "seed": ls.seed,
        "dtype": ls.dtype,
    }
    old = _cached_json(out / "slices.json", want, digest)
    if old is not None:
        return slices_of(old)
    ws = WidthSettings(settings.slice_directions, settings.slice_radius, settings.slice_points, tuple(settings.widths))
    ctx = Context(ls)
    record = compute_slices(problem(), ws, ctx)
    if distributed.is_main():
        out.mkdir(parents=True, exist_ok=True)
        ckpt.atomic_write_json(out / "slices.json", {"settings": want, "checkpoint_sha256": digest, **record})
    return ctx.shared["slices"]


def checkpoint_row(
    res: dict,
    metrics: dict,
    slices: Slices | None,
    widths: Sequence[float],
    settings: ReportSettings | None = None,
) -> dict[str, Any]:
    """The numbers of one measured checkpoint as one flat row (report.csv, verdict input): the performance
    columns, then the columns of every registered measure whose record ``res`` holds (the 1D widths from
    ``slices`` at ``widths``), in registry order."""
    row: dict[str, Any] = {
        "test_acc": metrics.get("test_acc"),
        "test_loss": metrics.get("test_loss"),
        "train_loss": res["loss"],
        "gradient_norm": res["gradient_norm"],
    }
    ls = settings.landscape if settings is not None else None
    for spec in registered():
        if spec.name == "widths":
            record = None if slices is None else {"ts": slices.ts, "delta": slices.delta, "loss0": slices.loss0,
                                                  "seed": slices.seed, "directions": slices.num_directions}  # fmt: skip
            st = WidthSettings(thresholds=tuple(widths))
        else:
            record = record_at(res, spec.where)
            st = spec.on(ls, settings) if ls is not None else None
        if record is not None:
            row.update(spec.row(record, st))
    return row


class AnalysisData:
    """The (x, y) selection of the analysis data per data config, loaded once per report."""

    def __init__(self, ls: LandscapeSettings) -> None:
        self.ls, self._memo = ls, {}

    def __call__(self, run: Run) -> tuple:
        key = json.dumps(run.config["data"], sort_keys=True)
        if key not in self._memo:
            self._memo[key] = select_data(run, self.ls.data, self.ls.samples, self.ls.seed)[:2]
        return self._memo[key]
