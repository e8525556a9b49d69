"""``flatfl report``: is one setting flatter than another, across seeds and at matched convergence?

Runs are grouped by setting (runs that differ only in their seed, :mod:`flatfl.runs.groups`).
Every run is measured, on the same data selection, at

* **equal rounds** (``rounds``; by default the middle and the last round all runs have; the
  verdict uses the last of them),
* **equal training loss** (the first saved round whose loss on the analysis data is at or
  below a common level, :mod:`flatfl.runs.matching`) and, when asked, **equal test accuracy**;

with lambda_max (Lanczos), the Hessian trace (adaptive Hutch++ with a standard error), the sharpness
measures, and Li et al. 1D slices along K filter-normalised random directions with the basin
width at given Δloss thresholds (:mod:`analysis.slices`). :mod:`analysis.verdict` turns the
per-seed numbers into one row per measure: each group's mean with a 95% t-interval, the
paired difference against the reference group (FedAvg's, if present) and a verdict --
*flatter: A*, *flatter: B* or *no clear difference* -- with a sentence when the measures
disagree. Diverged runs are listed and left out of every mean.

Written: ``report.html`` (verdict first, then slices, curvature, curves, surfaces, spread;
one self-contained page), ``verdict.csv``, ``report.csv`` (a row per run, condition and
round), ``curves.csv`` (per-round metrics and spread), ``report.json`` (everything, with
settings and the command). Per-checkpoint results are cached under ``DIR/runs/`` and reused
when their settings and the checkpoint's SHA-256 match, so an interrupted report resumes.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

from flatfl import checkpoint as ckpt
from flatfl.analysis import distributed
from flatfl.analysis.slices import (
    line_grid,
    line_slice,
)
from flatfl.errors import UserError
from flatfl.reportdir import ReportDir, check_report_out
from flatfl.runs import curvature, share, timing
from flatfl.runs.checkpoints import (
    SAMPLED_SHARPNESS,
    SCALE_INVARIANT,
    SHARPNESS_LABELS,
    AnalysisData,
    Measured,
    cache_dir,
    checkpoint_row,
    measure_landscape,
    measure_slices,
    measures,
)
from flatfl.runs.conditions import Condition, equal_rounds, plan_conditions
from flatfl.runs.connectivity import measure_connectivity
from flatfl.runs.datacache import shared_data
from flatfl.runs.groups import (
    Group,
    group_runs,
    local_optimizers,
    reference_group,
)
from flatfl.runs.landscape import model_loss_of, select_data
from flatfl.runs.problem import of_checkpoint
from flatfl.runs.report_page import write_report
from flatfl.runs.run import Run
from flatfl.runs.scale import NORM_KEY, checkpoint_norms, scale_context
from flatfl.runs.settings import ReportSettings
from flatfl.runs.sources import file_digest
from flatfl.runs.spread import spread_curve, spread_rounds
from flatfl.runs.surface import measure_surface
from flatfl.runs.verdicts import add_differences, not_compared, verdicts, why_not_compared

__all__ = [
    "SAMPLED_SHARPNESS", "SCALE_INVARIANT", "SHARPNESS_LABELS", "AnalysisData", "Condition", "Measured",
    "ReportSettings", "add_differences", "build_report", "cache_dir", "checkpoint_row", "equal_rounds",
    "measure_all", "measure_landscape", "measure_slices", "measures", "not_compared", "plan_conditions", "verdicts",
    "why_not_compared",
]  # fmt: skip


def _partition_digest(run: Run) -> str:
    try:
        return file_digest(run.path / ckpt.PARTITION_JSON)
    except OSError:
        return ""


def check_comparable(groups: Sequence[Group], settings: ReportSettings, log: Callable[[str], None]) -> None:
    """Refuse runs with different local optimizers (unless allowed); note different data/models."""
    opts = local_optimizers(groups)
    users = sorted(g.label for g in groups for s in g.runs if g.runs[s].user_data)
    if users and len(users) < sum(len(g.runs) for g in groups):
        raise ValueError(
            f"{', '.join(dict.fromkeys(users))}: a recorded run of a user's own model and data beside flatfl-trained "
            "runs; their models, data and training differ -- report them separately"
        )
    if len(set(opts.values())) > 1 and not settings.allow_mixed_optimizers:
        detail = "; ".join(f"{k}: {v}" for k, v in opts.items())
        raise ValueError(
            f"the groups train with different local optimizers ({detail}); a flatness comparison needs the same "
            "one -- retrain, or pass --allow-mixed-optimizers to compare anyway"
        )
    for seed in sorted({s for g in groups for s in g.runs}):
        parts = {g.label: _partition_digest(g.runs[seed]) for g in groups if seed in g.runs}
        if len(set(parts.values())) > 1:
            log(
                f"note: seed {seed}: the groups' client partitions differ ({', '.join(parts)}); the paired comparison "
                "then pairs different client data (expected where FedDF/FedAUX hold out server data)"
            )
    kinds = {(str(g.runs[s].config["data"].get("dataset") or "user data"), g.runs[s].info["model"]["name"])
             for g in groups for s in g.runs}  # fmt: skip
    if len(kinds) > 1:
        log(f"note: the runs differ in dataset/model {sorted(kinds)}; their curvature is not directly comparable")


def line_slices(
    groups: Sequence[Group], rnd: int, settings: ReportSettings, data: AnalysisData
) -> dict[str, dict[int, dict[str, Any]]]:
    """Loss along the straight line from the reference group's model to each other group's, seed by seed."""
    ref = reference_group(groups)
    out: dict[str, dict[int, dict[str, Any]]] = {}
    ts = line_grid()
    for g in groups:
        if g is ref:
            continue
        for s in sorted(set(ref.seeds) & set(g.seeds)):
            a_run, b_run = ref.runs[s], g.runs[s]
            if a_run.info["model"] != b_run.info["model"]:
                continue
            obj = model_loss_of(a_run, rnd, settings.landscape, data=data(a_run))
            state = b_run.global_state(rnd)
            b = obj.flat({n: state[n] for n in obj.names}).to(obj.device, obj.dtype)
            ln = line_slice(obj, obj.flat(), b, ts, memory_budget=settings.landscape.memory_budget_gb * 2**30)
            out.setdefault(g.label, {})[s] = {
                "ts": ln.ts.tolist(),
                "loss": ln.loss.tolist(),
                "accuracy": ln.accuracy.tolist(),
                "barrier": ln.barrier,
                "round": rnd,
            }
    return out


def training_curves(groups: Sequence[Group], settings: ReportSettings, show_progress: bool) -> list[dict[str, Any]]:
    """Per run and round: test accuracy/loss, training metrics and (first seed, --save-clients) the spread."""
    from tqdm.auto import tqdm

    rows: dict[tuple[str, int, int], dict[str, Any]] = {}
    keep = ("test_acc", "test_loss", "train_loss", "global_update_norm", "mutation_norm", "mutation_rel")
    for g in groups:
        for s, run in sorted(g.runs.items()):
            for m in run.metrics():
                r = {"run": g.label, "seed": s, "round": m["round"], "status": g.status[s].state}
                r.update({k: m.get(k) for k in keep if k in m})
                if "sent_loss_mean" in m:
                    r["sent_first_batch_loss_mean"] = m["sent_loss_mean"]
                rows[(g.label, s, m["round"])] = r
        # the lowest seed that saved client models (--save-clients does not split a group)
        first = next(((s, g.runs[s]) for s in g.seeds if spread_rounds(g.runs[s])), None)
        if not settings.spread or first is None:
            continue
        s, run = first
        data = None
        if settings.spread_samples:
            x, y, _ = select_data(run, "test", settings.spread_samples, settings.landscape.seed, "--spread-samples")
            data = (x, y)
        rs = spread_rounds(run)
        with tqdm(total=len(rs), desc=f"spread {g.label}", unit="round", disable=not show_progress) as bar:
            curve = spread_curve(
                run, rs, data=data, progress=bar.update,
                batch_size=settings.landscape.batch_size, device=settings.landscape.device,
            )  # fmt: skip
        for c in curve:
            summ = c.summary()
            rows.setdefault((g.label, s, summ["round"]), {"run": g.label, "seed": s, "round": summ["round"]}).update(
                {f"spread_{k}": v for k, v in summ.items() if k != "round"}
            )
    order = {g.label: i for i, g in enumerate(groups)}
    return [rows[k] for k in sorted(rows, key=lambda k: (order[k[0]], k[1], k[2]))]


def report_rows(groups: Sequence[Group], conds: Sequence[Condition], ms: Measured) -> list[dict[str, Any]]:
    """report.csv: one row per run, measured round and the conditions it serves."""
    out = []
    for (lab, s, rnd), row in ms.rows.items():
        g = next(g for g in groups if g.label == lab)
        serves = [c.name for c in conds if c.rounds[lab].get(s) is not None and c.rounds[lab][s].round == rnd]
        out.append(
            {
                "run": lab,
                "seed": s,
                "algo": g.algo,
                "path": str(g.runs[s].path),
                "round": rnd,
                "conditions": " ".join(serves),
                **row,
            }
        )
    return out


def build_report(
    run_dirs: Sequence[Path],
    settings: ReportSettings,
    out: Path,
    *,
    command: str = "",
    log: Callable[[str], None] = lambda s: None,
    show_progress: bool = False,
) -> dict[str, Path]:
    """Compute and write the report (under ``out``'s lock, the new set replacing the old at once,
    :mod:`flatfl.reportdir`); returns the written files by kind. Each run's data is loaded once
    (:mod:`flatfl.runs.datacache`), and the time of every stage (:mod:`flatfl.runs.timing`) is stored in
    report.json's ``timing``."""
    with timing.timed() as timer, shared_data():
        return _build_report(run_dirs, settings, out, command, log, show_progress, timer)


def _build_report(
    run_dirs: Sequence[Path],
    settings: ReportSettings,
    out: Path,
    command: str,
    log: Callable[[str], None],
    show_progress: bool,
    timer: timing.StageTimer,
) -> dict[str, Path]:

    check_report_out(out, list(run_dirs))
    runs = [Run.open(p) for p in run_dirs]
    for r in runs:
        metrics = r.path / ckpt.METRICS_FILE
        if not metrics.is_file():
            what = "not a regular file" if metrics.exists() or metrics.is_symlink() else "missing"
            raise ValueError(
                f"{metrics}: {what} (the report reads each round's test accuracy from it); "
                "restore it, or leave this run out"
            )
        last = max(r.rounds(), default=0)  # every round's line is appended before its round file is committed
        if last and not any(m["round"] == last for m in r.metrics()):
            raise ValueError(
                f"{r.path / ckpt.METRICS_FILE}: holds no line for round {last}, the run's last saved round (a run "
                "writes each round's line before its round file); restore it, or leave this run out"
            )
    groups = group_runs(runs, dict(settings.labels), settings.reference)
    check_comparable(groups, settings, log)
    for g in groups:
        for s in g.diverged:
            log(f"{g.runs[s].path}: diverged ({g.status[s].why}); listed, left out of every mean")
    rounds = equal_rounds(groups, settings.rounds)
    with contextlib.ExitStack() as stack:
        folder = _open_out(out, stack)  # rank 0 alone writes; it locks ``out`` before any cache write
        conds, ms, data = _measure(groups, settings, rounds, out, log, show_progress)
        if folder is None:
            return {}  # under torchrun: the collective part is done; rank 0 computes the rest and writes
        mlist = measures(settings)
        with timing.stage("verdict"):
            verdict = verdicts(groups, conds, mlist, settings.slice_radius)
            scale_context(verdict, [g.label for g in groups], conds, ms.norms)
        with timing.stage("lines"):
            lines = line_slices(groups, rounds[-1], settings, data)
        with timing.stage("curves and spread"):
            curves = training_curves(groups, settings, show_progress)
        with timing.stage("connectivity"):  # --connect (flatfl.runs.connectivity); None when off
            connectivity = measure_connectivity(groups, conds, settings, out, log)
        rows = report_rows(groups, conds, ms)
        write_set = lambda stage: write_report(  # noqa: E731
                stage,
                settings=settings,
                groups=groups,
                rounds=rounds,
                conds=conds,
                measured=ms,
                measures=mlist,
                verdict=verdict,
                lines=lines,
                curves=curves,
                rows=rows,
                command=command,
                connectivity=connectivity,
            )  # fmt: skip
        # the page timed too, and the time table put into report.json (flatfl.runs.timing)
        return folder.write(timing.with_timing(write_set, timer))


def _open_out(out: Path, stack: contextlib.ExitStack) -> Any:
    """Rank 0 takes ``out`` (made, locked, tidied: :class:`~flatfl.reportdir.ReportDir`) and returns it;
    every other rank gets None, or rank 0's refusal (it then stops too, instead of waiting for rank 0)."""

    folder, error = None, None
    if distributed.is_main():
        try:
            folder = stack.enter_context(ReportDir(out))
        except UserError as exc:
            error = exc
    why = distributed.broadcast_array(None if error is None else str(error))  # type: ignore[arg-type]
    if error is not None:
        raise error
    if why is not None:
        raise UserError(str(why))
    return folder


def _measure(
    groups: Sequence[Group],
    settings: ReportSettings,
    rounds: list[int],
    out: Path,
    log: Callable[[str], None],
    show_progress: bool,
) -> tuple[list[Condition], Measured, AnalysisData]:
    """Plan the conditions and measure every checkpoint they need (cached under ``out/runs``)."""
    from tqdm.auto import tqdm

    data = AnalysisData(settings.landscape)
    with timing.stage("matching"):
        conds = plan_conditions(groups, settings, rounds, out, data)
    total = sum(
        len(set(rounds) | ({c.rounds[g.label][s].round for c in conds} - {None})) for g in groups for s in g.seeds
    )
    with tqdm(total=total, desc="report", unit="ckpt", disable=not show_progress) as bar:
        say = (lambda text: tqdm.write(text, file=sys.stderr)) if show_progress else log  # through the bar
        # each solver's bar below the report's, cleared when it is done (many checkpoints)
        bars = partial(curvature.tqdm_bars, leave=False) if show_progress else curvature.no_bars
        ms = measure_all(groups, conds, settings, rounds, out, say, bar.update, bars)
    return conds, ms, data


def measure_all(
    groups: Sequence[Group],
    conds: Sequence[Condition],
    settings: ReportSettings,
    rounds: list[int],
    out: Path,
    log: Callable[[str], None],
    progress: Callable[[int], None],
    bars: curvature.Bars = curvature.no_bars,
) -> Measured:
    """Every checkpoint a condition or an equal round needs, once; 2D surfaces for each group's first seed."""
    ms = Measured()
    for g in groups:
        first = g.first()
        for s in g.seeds:
            run = g.runs[s]
            metrics = {m["round"]: m for m in run.metrics()}
            need = set(rounds) | {c.rounds[g.label][s].round for c in conds} - {None}
            for rnd in sorted(need):
                where = cache_dir(out, g.label, s, rnd)
                file = ckpt.round_path(run.path, rnd)
                with timing.stage("digests"):
                    digest = file_digest(file)  # once: both caches are keyed on it
                # model and data resolved once (timed as 'checkpoint'; the data set itself as 'data', once per run)
                problem = functools.cache(
                    lambda file=file: timing.stage("checkpoint")(of_checkpoint)(file, settings.landscape)
                )
                res = measure_landscape(problem, run, rnd, settings.landscape, where, log, digest, bars)
                with timing.stage("slices"):
                    sl = measure_slices(problem, settings, where, digest) if settings.slice_directions else None
                ms.results[(g.label, s, rnd)] = res
                if sl is not None:
                    ms.slices[(g.label, s, rnd)] = sl
                ms.rows[(g.label, s, rnd)] = checkpoint_row(res, metrics.get(rnd, {}), sl, settings.widths, settings)
                # context, not a measure that votes (flatfl.runs.scale): ||θ||₂ and per tensor
                with timing.stage("norms"):
                    ms.rows[(g.label, s, rnd)][NORM_KEY], ms.norms[(g.label, s, rnd)] = checkpoint_norms(run, rnd)
                if settings.surface and first is not None and s == first[0] and rnd in rounds:
                    ss = replace(settings.landscape, surface="2d", surface_dirs="random", markers=True)
                    with timing.stage("surfaces"):  # its row b = 0 from slice 0 (flatfl.runs.share)
                        surf = measure_surface(problem(), ss, where, known=share.surface_from_slices(problem(), ss, sl))
                    ms.surfaces.setdefault(g.label, []).append((rnd, surf))
                progress(1)
    for c in conds:
        c.values = {
            g.label: {s: ms.rows[(g.label, s, m.round)] for s, m in c.rounds[g.label].items() if m.round is not None}
            for g in groups
        }
    return ms
