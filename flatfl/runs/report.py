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
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from flatfl import checkpoint as ckpt
from flatfl.analysis import distributed
from flatfl.analysis.invariance import invariant_to
from flatfl.analysis.slices import (
    Slices,
    line_grid,
    line_slice,
    random_slices,
    symmetric_grid,
    width,
    width_stderr,
)
from flatfl.analysis.surfaces import Surface
from flatfl.analysis.verdict import (
    ACCURACY_MARGIN,
    CENSORED,
    LOSS_MARGIN,
    Measure,
    Paired,
    disagreement,
    headline,
    paired,
    resolution,
    scale_caveat,
    summarize,
    verdict,
    winner,
)
from flatfl.runs import curvature, share, timing
from flatfl.runs.datacache import shared_data
from flatfl.runs.groups import (
    Group,
    confound_sentence,
    differences,
    differences_text,
    group_runs,
    local_optimizers,
    reference_group,
)
from flatfl.runs.landscape import LandscapeSettings, file_digest, json_ready
from flatfl.runs.matching import LossCurve, Match, level_refusal, match_accuracy, match_loss, round_warnings
from flatfl.runs.measure import measure
from flatfl.runs.problem import Problem, of_checkpoint
from flatfl.runs.run import Run
from flatfl.runs.scale import NORM_KEY, checkpoint_norms, norm_ratio, per_seed_norms, scale_context
from flatfl.runs.surface import measure_surface


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


SHARPNESS_LABELS = {
    "epsilon": "epsilon-sharpness",
    "sam": "SAM sharpness",
    "adaptive_l2": "adaptive sharpness (L2)",
    "adaptive_linf": "adaptive sharpness (Linf)",
    "average_adaptive": "average adaptive sharpness",
    "average_isotropic": "average sharpness",
}


# sharpness measures invariant to every tested function-preserving rescaling (from analysis/invariance.py's table;
# bench/invariance_table.py measures them)
SCALE_INVARIANT = tuple(s for s in SHARPNESS_LABELS if invariant_to(f"sharpness_{s}"))

# sharpness measures estimated by Monte Carlo (a standard error per checkpoint): their per-checkpoint budget
SAMPLED_SHARPNESS = ("average_adaptive", "average_isotropic")


def measures(settings: ReportSettings) -> list[Measure]:
    """The verdict table's rows for these settings: flatness measures first, then performance. Each flatness
    row carries what it is invariant to (:func:`flatfl.analysis.invariance.invariant_to`) and, when it is
    estimated, the per-checkpoint column of its own error and the budget that error shrinks with."""
    ls = settings.landscape
    rows = []
    if ls.hessian:  # the Lanczos residual ||Hv - lambda v|| bounds the error; no budget (it converges to --tol)
        rows.append(Measure("lambda_max", "lambda_max", invariant_to=invariant_to("lambda_max"),
                            error="lambda_max_residual"))  # fmt: skip
    if ls.trace:
        rows.append(Measure("trace", "trace", invariant_to=invariant_to("trace"), error="trace_stderr",
                            budget=(ls.trace_matvecs, "HVPs")))  # fmt: skip
    for s in ls.sharpness:
        key = f"sharpness_{s}"
        sampled = s in SAMPLED_SHARPNESS
        rows.append(
            Measure(key, SHARPNESS_LABELS.get(s, s), invariant_to=invariant_to(key),
                    error=f"{key}_stderr" if sampled else None,
                    budget=(ls.sharpness_samples, "samples") if sampled else None)
        )  # fmt: skip
    if settings.slice_directions:
        rows += [
            Measure(_width_key(t), f"1D width at Δloss {t:g}", lower_is_better=False, bounds=(0.0, None),
                    invariant_to=invariant_to(_width_key(t)), error=_width_key(t) + "_stderr",
                    budget=(settings.slice_directions, "directions"))
            for t in settings.widths
        ]  # fmt: skip
    rows.append(
        Measure("test_acc", "test accuracy", lower_is_better=False, kind="performance", ratio=False, bounds=(0.0, 1.0),
                margin=ACCURACY_MARGIN)
    )  # fmt: skip
    rows.append(
        Measure("train_loss", "train loss", kind="performance", ratio=False, bounds=(0.0, None), margin=LOSS_MARGIN)
    )
    return rows


def _width_key(t: float) -> str:
    return f"width_{t:g}"


@dataclass
class Condition:
    """One way of choosing each run's round: equal round, equal train loss or equal accuracy."""

    name: str  # round | loss | acc
    title: str
    rounds: dict[str, dict[int, Match]]  # group label -> seed -> where it is measured
    level: float | None = None
    values: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)  # label -> seed -> row
    # matched convergence (flatfl.runs.matching): why the level gets no verdict at all, sentences per compared
    # group (matched rounds far apart or early), whether the user gave the level, the curves the rule used
    refused: str | None = None
    warnings: dict[str, list[str]] = field(default_factory=dict)  # other group label -> sentences
    user_level: bool = False
    curves: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)  # label -> seed -> Trace as a dict
    window: int | None = None  # the moving median's window (saved rounds)

    def no_verdict(self, other: str) -> tuple[str, str] | None:
        """(short, long) reason why the comparison of ``other`` with the reference gets no verdict here:
        a refused level, or warned matched rounds at a level the user did not give."""
        if self.refused:
            return "level not reached by training", self.refused
        if self.warnings.get(other) and not self.user_level:
            why = "; ".join(self.warnings[other])
            return "matched rounds not comparable", f"{why} (give the level with --match-loss to compare anyway)"
        return None

    def matching_json(self) -> dict[str, Any]:
        return {
            "refused": self.refused,
            "warnings": self.warnings,
            "user_level": self.user_level,
            "window": self.window,
            "curves": {lab: {str(s): t for s, t in v.items()} for lab, v in self.curves.items()},
        }


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
    """Li et al. 1D slices of one checkpoint (SHA-256 ``digest``), cached in ``out/slices.json``."""
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
        return Slices(np.array(old["ts"]), np.array(old["delta"]), old["loss0"], old["seed"], old["directions"])
    obj = problem().objective
    ts = symmetric_grid(settings.slice_radius, settings.slice_points)
    s = random_slices(
        obj, ts, num_directions=settings.slice_directions, seed=ls.seed, memory_budget=ls.memory_budget_gb * 2**30,
        share_origin=share.enabled(),  # L(theta) once for every direction
    )  # fmt: skip
    if distributed.is_main():
        out.mkdir(parents=True, exist_ok=True)
        ckpt.atomic_write_json(
            out / "slices.json",
            {
                "settings": want,
                "checkpoint_sha256": digest,
                "ts": s.ts.tolist(),
                "delta": s.delta.tolist(),
                "loss0": s.loss0,
                "seed": s.seed,
                "directions": s.num_directions,
            },
        )
    return s


def checkpoint_row(res: dict, metrics: dict, slices: Slices | None, widths: Sequence[float]) -> dict[str, Any]:
    """The numbers of one measured checkpoint as one flat row (report.csv, verdict input)."""
    row: dict[str, Any] = {
        "test_acc": metrics.get("test_acc"),
        "test_loss": metrics.get("test_loss"),
        "train_loss": res["loss"],
        "gradient_norm": res["gradient_norm"],
    }
    if "hessian" in res:
        row["lambda_max"] = res["hessian"]["eigenvalues"][0]
        if res["hessian"].get("residuals"):  # ||Hv - lambda v||: bounds |lambda_max - its estimate|
            row["lambda_max_residual"] = res["hessian"]["residuals"][0]
        if res["hessian"].get("data_error") is not None:  # --samples auto: the error from the data drawn
            row["lambda_max_data_error"] = res["hessian"]["data_error"]
        row["lambda_min"] = res["hessian"]["smallest"]
    if "trace" in res:
        row["trace"] = res["trace"]["estimate"]
        row["trace_stderr"] = res["trace"]["stderr"]
        if res["trace"].get("data_error") is not None:
            row["trace_data_error"] = res["trace"]["data_error"]
    for name, v in res.get("sharpness", {}).items():
        row[f"sharpness_{name}"] = v["value"]
        if v.get("stderr") is not None:
            row[f"sharpness_{name}_stderr"] = v["stderr"]
    if slices is not None:
        for t in widths:
            w, censored = width(slices.ts, slices.mean, t)
            row[_width_key(t)] = w
            row[_width_key(t) + "_stderr"] = width_stderr(slices.ts, slices.delta, t)  # over the K directions
            row[_width_key(t) + "_censored"] = censored
    return row


def _name(label: str, seed: int) -> str:
    return f"{label} seed {seed}"


class AnalysisData:
    """The (x, y) selection of the analysis data per data config, loaded once per report."""

    def __init__(self, ls: LandscapeSettings) -> None:
        self.ls, self._memo = ls, {}

    def __call__(self, run: Run) -> tuple:
        from flatfl.runs.landscape import select_data

        key = json.dumps(run.config["data"], sort_keys=True)
        if key not in self._memo:
            self._memo[key] = select_data(run, self.ls.data, self.ls.samples, self.ls.seed)[:2]
        return self._memo[key]


def equal_rounds(groups: Sequence[Group], wanted: Sequence[int] | None) -> list[int]:
    """The equal rounds to measure: ``wanted``, or the middle and the last round every run has saved."""
    runs = [g.runs[s] for g in groups for s in g.seeds]
    if not runs:
        raise ValueError("every run diverged: nothing to compare (see the list of diverged runs)")
    saved = {str(r.path): set(r.rounds()) for r in runs}
    if wanted is not None:
        missing = {p: sorted(set(wanted) - have) for p, have in saved.items() if set(wanted) - have}
        if missing:
            p, m = next(iter(missing.items()))
            raise ValueError(
                f"--at-rounds: {p} has no checkpoint for round(s) {m} (saved: {min(saved[p])}..{max(saved[p])}); "
                "choose rounds every run has saved"
            )
        return sorted(wanted)
    common = sorted(set.intersection(*saved.values()))
    if not common:
        raise ValueError("the runs share no saved round; pass --at-rounds with rounds every run has")
    last = common[-1]
    middle = max((r for r in common if r <= last // 2), default=last)
    return sorted({middle, last})


def plan_conditions(
    groups: Sequence[Group], settings: ReportSettings, rounds: list[int], out: Path, data: AnalysisData
) -> list[Condition]:
    """Equal round (the last of ``rounds``), equal train loss and, if asked, equal test accuracy."""
    last = rounds[-1]
    conds = [
        Condition(
            "round",
            f"equal round ({last})",
            {g.label: {s: Match(last, None) for s in g.seeds} for g in groups},
        )
    ]
    ls = settings.landscape
    if settings.match:
        curves = {}
        for g in groups:
            for s in g.seeds:
                run = g.runs[s]
                key = {"data": ls.data, "samples": ls.samples, "seed": ls.seed, "dtype": ls.dtype}
                curve = LossCurve(
                    run, *data(run), out / "runs" / f"{_slug(g.label)}-s{s}" / "train_loss.json", key,
                    batch_size=ls.batch_size, device=ls.device,
                )  # fmt: skip
                curves[_name(g.label, s)] = (curve, run.rounds())
        conds.append(_loss_condition(groups, curves, settings.match_loss, last))
    if settings.match_acc is not None:
        accs = {}
        for g in groups:
            for s in g.seeds:
                m = {int(r["round"]): r["test_acc"] for r in g.runs[s].metrics() if r.get("test_acc") is not None}
                accs[_name(g.label, s)] = (m, g.runs[s].rounds())
        found = match_accuracy(accs, settings.match_acc)
        conds.append(
            Condition(
                "acc",
                f"equal test accuracy (>= {settings.match_acc:g})",
                {g.label: {s: found[_name(g.label, s)] for s in g.seeds} for g in groups},
                settings.match_acc,
                user_level=True,
            )
        )
        _warn_rounds(conds[-1], groups, last)
    return conds


def _loss_condition(groups: Sequence[Group], curves: dict, level: float | None, last: int) -> Condition:
    """Equal train loss: each run where its smoothed loss settles at the level (:mod:`flatfl.runs.matching`),
    the level refused when training did not reach it, warnings when the matched rounds are far apart or early."""
    given = level is not None
    lm = match_loss(curves, level, None if given else last)
    if distributed.is_main():
        for curve, _ in curves.values():
            curve.save()
    chances = {c.chance() for c, _ in curves.values()} - {None}
    c = Condition(
        "loss",
        f"equal train loss (settled <= {lm.level:.4g})",
        {g.label: {s: lm.found[_name(g.label, s)] for s in g.seeds} for g in groups},
        lm.level,
        refused=level_refusal(lm.level, lm.traces, min(chances) if chances else None),
        user_level=given,
        curves={g.label: {s: asdict(lm.traces[_name(g.label, s)]) for s in g.seeds} for g in groups},
        window=lm.window,
    )
    total = last if not given else max(max(rs) for _, rs in curves.values())
    _warn_rounds(c, groups, total)
    return c


def _warn_rounds(c: Condition, groups: Sequence[Group], total: int) -> None:
    """Sentences for every comparison whose matched rounds are far apart or early (``total``: rounds considered)."""
    ref = reference_group(groups)
    for g in groups:
        if g is not ref:
            rounds = {x.label: {s: m.round for s, m in c.rounds[x.label].items()} for x in (ref, g)}
            said = round_warnings(ref.label, g.label, rounds[ref.label], rounds[g.label], total)
            if said:
                c.warnings[g.label] = said


def not_compared(c: Condition, rows: list[dict[str, Any]], comp: dict[str, dict[str, Any]]) -> None:
    """Matched convergence that means what it says: a comparison whose level is refused, or whose matched rounds
    are far apart or early at a level the user did not give, gets "not compared: <reason>" instead of a verdict
    and its headline says why; warnings at a given level are added to the headline in words."""
    for other, words in comp.items():
        why = c.no_verdict(other)
        if why is None:
            if c.warnings.get(other):
                words["headline"] += " Caution: " + "; ".join(c.warnings[other]) + "."
            continue
        for r in rows:
            r["comparisons"][other].update(verdict=f"not compared: {why[0]}", winner=None)
        words.update(headline=f"Not compared at this level: {why[1]}.", disagreement=None, scale_caveat=None)


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
                ms.rows[(g.label, s, rnd)] = checkpoint_row(res, metrics.get(rnd, {}), sl, settings.widths)
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


def _summary_json(values: list[float | None], errors: dict[int, float | None] | None = None) -> dict[str, Any] | None:
    """The group's summary; with ``errors`` (seed -> the checkpoint's own estimation error) also ``errors`` and
    ``error``, their root mean square (the typical per-checkpoint error, shown beside the mean)."""
    s = summarize([v for v in values if v is not None])
    if s is None:
        return None
    out = asdict(s)
    if errors:
        errs = [float(e) for e in errors.values() if e is not None]
        out["errors"] = {str(k): v for k, v in errors.items()}
        out["error"] = float(np.sqrt(np.mean(np.square(errs)))) if errs else None
    return out


def _paired_json(p: Paired | None) -> dict[str, Any] | None:
    return None if p is None else asdict(p)


def _paired_of(d: dict[str, Any] | None) -> Paired | None:
    return None if d is None else Paired(**{**d, "seeds": tuple(d["seeds"])})


def why_not_compared(ref: Group, g: Group, c: Condition, short: bool = False) -> str | None:
    """Why no seed of ``g`` pairs with one of ``ref`` under condition ``c`` (None when some seed does).

    Only diverged runs in a group, no seed in common, or the condition's level (matched loss or
    accuracy) never reached by one side of every shared seed.
    """
    for x in (ref, g):
        if not x.seeds:
            return "only diverged runs" if short else f"every {x.label} run diverged ({_seeds(x.diverged)})"
    shared = sorted(set(ref.seeds) & set(g.seeds))
    if not shared:
        if short:
            return "no shared seed"
        return f"{ref.label} ({_seeds(ref.seeds)}) and {g.label} ({_seeds(g.seeds)}) share no seed to pair"
    if any(all(c.rounds[x.label][s].round is not None for x in (ref, g)) for s in shared):
        return None
    if short:
        return f"{'accuracy' if c.name == 'acc' else 'loss'} level not reached"
    by_note: dict[str, dict[str, list[int]]] = {}  # note -> group -> seeds that never get there
    for x in (ref, g):
        for s in shared:
            m = c.rounds[x.label][s]
            if m.round is None:
                by_note.setdefault(m.note or "is not measured here", {}).setdefault(x.label, []).append(s)
    parts = []
    for note, who in by_note.items():
        runs = sum(len(v) for v in who.values())
        verb = note.replace("never reaches", "never reach", 1) if runs > 1 else note
        parts.append(" and ".join(f"{lab} {_seeds(seeds)}" for lab, seeds in who.items()) + f" {verb}")
    return "; ".join(parts)


def _seeds(seeds: Sequence[int]) -> str:
    """'seed 2' or 'seeds 0, 1'."""
    return f"seed{'s' if len(seeds) > 1 else ''} " + ", ".join(map(str, seeds))


def _measure_row(m: Measure, c: Condition, groups: Sequence[Group], ref: Group, radius: float) -> dict[str, Any]:
    """One verdict row: each group's summary and the paired comparison of every other group with ``ref``.

    A 1D width whose curve never reaches its threshold within ±``radius`` is censored (only a lower
    bound, 2·radius): it is left out of the group's mean and interval, and a comparison whose seeds
    hold one gets no verdict ("raise --slice-radius") instead of one computed from bounds.
    """
    cens = {g.label: {s: bool(r.get(m.key + "_censored")) for s, r in c.values[g.label].items()} for g in groups}
    per = {g.label: {s: r.get(m.key) for s, r in c.values[g.label].items()} for g in groups}
    err = {g.label: {s: r.get(m.error) for s, r in c.values[g.label].items()} for g in groups} if m.error else {}
    row: dict[str, Any] = {
        "measure": m.key,
        "label": m.label,
        "kind": m.kind,
        "lower_is_better": m.lower_is_better,
        "bounds": list(m.bounds),
        "invariant_to": sorted(m.invariant_to),
        "error_kind": m.error and ("residual" if m.error.endswith("_residual") else "stderr"),
        "budget": list(m.budget) if m.budget else None,
        "groups": {
            lab: _summary_json([x for s, x in v.items() if not cens[lab][s]], err.get(lab, {}))
            for lab, v in per.items()
        },
        "censored": {lab: sum(v.values()) for lab, v in cens.items()},
        "censor_radius": radius if any(any(v.values()) for v in cens.values()) else None,
        "comparisons": {},
    }
    for g in groups:
        if g is ref:
            continue
        p = paired(per[ref.label], per[g.label], ratio=m.ratio, errors_a=err.get(ref.label),
                   errors_b=err.get(g.label))  # fmt: skip
        n_cens = 0 if p is None else sum(cens[lab][s] for s in p.seeds for lab in (ref.label, g.label))
        if n_cens:
            text = f"{CENSORED}: {n_cens} of {2 * p.n} widths not reached within ±{radius:g} (raise --slice-radius)"
            p = None
        else:
            text = verdict(m, p, ref.label, g.label, why_not_compared(ref, g, c, short=True))
        res = resolution(m, p)
        row["comparisons"][g.label] = {
            "against": ref.label,
            "paired": _paired_json(p),
            "verdict": text,
            "winner": winner(m, p, ref.label, g.label),
            "resolution": None if res is None else asdict(res),
        }
    return row


def verdicts(
    groups: Sequence[Group], conds: Sequence[Condition], ms: list[Measure], radius: float = 1.0
) -> list[dict[str, Any]]:
    """Per condition: per measure each group's summary and the paired comparison with the reference group
    (``radius``: the 1D slices' --slice-radius, named where a width is not reached within it)."""
    ref = reference_group(groups)
    others = [g for g in groups if g is not ref]
    out = []
    for c in conds:
        rows = [_measure_row(m, c, groups, ref, radius) for m in ms]
        comp = {}
        for g in others:
            vs = {r["measure"]: r["comparisons"][g.label]["verdict"] for r in rows}
            pairs = {r["measure"]: _paired_of(r["comparisons"][g.label]["paired"]) for r in rows}
            entry: dict[str, Any] = {
                "headline": headline(ms, vs, ref.label, g.label, why_not_compared(ref, g, c), pairs),
                "disagreement": disagreement(ms, vs),
                "measures_compared": sum(1 for m in ms if m.kind == "flatness" and pairs.get(m.key) is not None),
                "inconclusive": {
                    r["label"]: r["comparisons"][g.label]["resolution"]["text"]
                    for r in rows
                    if (r["comparisons"][g.label]["resolution"] or {}).get("text")
                },
            }
            # the caution quotes the global models' norm ratio (other / reference, as scale_context records it)
            entry["norm_ratio"] = norm_ratio(per_seed_norms(c.values, ref.label), per_seed_norms(c.values, g.label))
            entry["scale_caveat"] = scale_caveat(ms, vs, entry["norm_ratio"], (g.label, ref.label))
            comp[g.label] = entry
            add_differences(comp[g.label], ref, g)
        not_compared(c, rows, comp)
        out.append(
            {
                "condition": c.name,
                "title": c.title,
                "level": c.level,
                "reference": ref.label,
                "rounds": {lab: {str(s): asdict(m) for s, m in per_seed.items()} for lab, per_seed in c.rounds.items()},
                "rows": rows,
                "comparisons": comp,
                "matching": c.matching_json(),
            }
        )
    return out


def add_differences(comp: dict[str, Any], ref: Group, g: Group) -> None:
    """What else than the seed tells ``g`` from ``ref`` (:func:`~flatfl.runs.groups.differences`), into a
    comparison's record: ``differs_by`` (a list of {key, value, reference, side, text, algorithm}),
    ``differs_by_text`` (all of them in one line) and ``confounds`` (the sentence naming the settings beyond
    the algorithm, '' if none), which is appended to ``headline`` so the answer never hides a confound."""
    diffs = differences(ref, g)
    comp["differs_by"] = [d.as_json() for d in diffs]
    comp["differs_by_text"] = differences_text(ref, g, diffs)
    comp["confounds"] = confound_sentence(ref, g, diffs)
    if comp["confounds"]:
        comp["headline"] = f"{comp['headline']} {comp['confounds']}"


def _partition_digest(run: Run) -> str:
    import hashlib

    try:
        return hashlib.sha256((run.path / ckpt.PARTITION_JSON).read_bytes()).hexdigest()
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
    from flatfl.runs.landscape import model_loss_of

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

    from flatfl.runs.landscape import select_data
    from flatfl.runs.spread import spread_curve, spread_rounds

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
            x, y, _ = select_data(run, "test", settings.spread_samples, settings.landscape.seed)
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
    from flatfl.reportdir import check_report_out
    from flatfl.runs.report_page import write_report

    check_report_out(out, list(run_dirs))
    runs = [Run.open(p) for p in run_dirs]
    for r in runs:
        if not (r.path / ckpt.METRICS_FILE).is_file():
            raise ValueError(
                f"{r.path / ckpt.METRICS_FILE}: missing (the report reads each round's test accuracy from it); "
                "restore it, or leave this run out"
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
            )  # fmt: skip
        # the page timed too, and the time table put into report.json (flatfl.runs.timing)
        return folder.write(timing.with_timing(write_set, timer))


def _open_out(out: Path, stack: contextlib.ExitStack) -> Any:
    """Rank 0 takes ``out`` (made, locked, tidied: :class:`~flatfl.reportdir.ReportDir`) and returns it;
    every other rank gets None, or rank 0's refusal (it then stops too, instead of waiting for rank 0)."""
    from flatfl.errors import UserError
    from flatfl.reportdir import ReportDir

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
