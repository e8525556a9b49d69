"""``flatfl report``: FedAvg vs FedMut (or any runs) side by side in one HTML page + CSV/JSON."""

from __future__ import annotations

import os
import shlex
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from flatfl.analysis.verdict import VERDICT_RULE
from flatfl.cli.common import (
    SAMPLES_HELP,
    add_analysis_arguments,
    add_deprecated_alias,
    analysis_device,
    name_list,
    nonneg_int,
    pos_float,
    samples_setting,
    samples_t,
)
from flatfl.errors import UserError
from flatfl.flagtypes import grid_t, passes0_t, slices_t
from flatfl.runs.match_rule import MATCH_RULE, MIN_DROP, SMOOTH_WINDOW


def _rounds(text: str) -> tuple[int, ...] | None:
    import argparse

    if text == "auto":
        return None
    if "" in (v.strip() for v in text.split(",")):  # '2,,4' or '4,': a round left out by mistake
        raise argparse.ArgumentTypeError(f"{text!r}: an empty item between commas; give comma-separated rounds")
    try:
        given = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not auto or a comma-separated list of rounds") from None
    vals = tuple(sorted(set(given)))
    if len(vals) < len(given):
        raise argparse.ArgumentTypeError(f"{text!r}: a round given twice; name each once")
    if not vals or min(vals) < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: rounds are integers >= 0")
    return vals


def add_parser(sub: Any) -> None:
    from flatfl.runs.report import ReportSettings

    d = ReportSettings()
    p = sub.add_parser(
        "report",
        help="is one setting flatter than another? groups of seeds, matched convergence, a verdict per measure",
        description=(
            "Answer whether one training setting (e.g. FedMut) reaches flatter minima than another (e.g. FedAvg). "
            "Runs that differ only in their seed form a group. Every run is measured at equal rounds, at equal "
            f"training loss ({MATCH_RULE}) "
            "and, with --match-acc, at equal test accuracy: lambda_max (Lanczos), the Hessian trace "
            "(adaptive Hutch++), "
            "sharpness, and the 1D width of Li et al. slices along filter-normalised random directions, each "
            "estimated value with its own per-checkpoint error (standard error, Lanczos residual, spread over the "
            "directions). For each measure: the mean over seeds with a 95% t-interval, the paired comparison with "
            "the reference group (--reference; default FedAvg's, else the first), every setting in which the "
            "groups differ, and one of three verdicts -- flatter: X, no clear "
            f"difference or inconclusive. The rule: {VERDICT_RULE}. The answer opens with one sentence per "
            "comparison: how many flatness measures were compared, how many favour a group (an inconclusive "
            "measure counts neither way) grouped by the rescalings they are invariant to, which are inconclusive "
            "at this number of seeds, and the accuracy and loss verdicts; then a caution when every measure that "
            "favours a group changes under a function-preserving rescaling that a compared measure is invariant "
            "to, and what would decide each inconclusive measure. Under the verdict, as context that does not "
            "vote: the weight norm ||θ||₂ of each group's global models (per seed; per tensor in the details) and "
            "its ratio between the compared groups. Diverged runs are listed, never averaged. "
            "Writes OUT/report.html (the verdict first; one self-contained page that opens offline), "
            "OUT/verdict.csv, OUT/report.csv (a row per run and measured round), OUT/curves.csv (per-round "
            "metrics and spread) and OUT/report.json, and prints the verdict table. Per-checkpoint results are "
            "cached in OUT/runs/ and reused on a rerun with the same settings. The files are links into "
            "OUT/.report-current, which a rerun swaps in one step (a kill leaves the old report or the new one); "
            "one report at a time per OUT."
        ),
    )
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="run directories (with run.json)")
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="DIR",
        help="output folder (not a run directory, nor a folder whose runs/ holds the input runs)",
    )
    p.add_argument(
        "--at-rounds",
        type=_rounds,
        default=None,
        metavar="LIST",
        help="comma-separated equal rounds to measure in every run (the verdict uses the last), or auto: the middle "
        "and the last round every run has (default: auto)",
    )
    add_deprecated_alias(p, "--rounds", "--at-rounds", "at_rounds", type=_rounds)
    _measure_arguments(p, d)
    _group_arguments(p, d)
    from flatfl.cli.landscape import add_measure_flags
    from flatfl.runs.measures import registered

    # the registered measures beyond the report's own (flatfl landscape's flags, added to the verdict)
    add_measure_flags(p, [s for s in registered() if s.report and not s.builtin])
    from flatfl.runs.connectivity import add_connect_flags

    add_connect_flags(p)  # --connect: mode connectivity (flatfl.runs.connectivity)
    _default_set_flags(p)


def _default_set_flags(p: Any) -> None:
    """``--no-NAME`` for each measure of the report's default set beyond its own (``report_default`` specs;
    which ones is decided by measured cost, docs/landscapes.md)."""
    from flatfl.runs.measures import off_flag, registered

    on = [s for s in registered() if s.report and s.report_default]
    if not on:
        return
    g = p.add_argument_group("the default set", "measured by every report unless switched off")
    for spec in on:
        g.add_argument(off_flag(spec), action="store_true", dest="no_measure_" + spec.name,
                       help=f"skip {spec.label} (default: measured)")  # fmt: skip


def _warn_switched_off_options(ns: dict[str, Any]) -> None:
    """An option of a section that is switched off has no effect: said in one warning line when given a value
    other than its default (--grid with --no-surface, --spread-samples with --no-spread, --slice-radius or
    --widths with --slices 0, --data-tol without --samples auto). A warning, not a refusal: adding --no-surface
    to a report's command line keeps its cache (the settings, --grid included, key it)."""
    from flatfl.runs.report import ReportSettings

    d = ReportSettings()
    sections = [
        (ns["no_surface"], "the loss surfaces are off (--no-surface)", {"grid": d.landscape.grid,
                                                                        "span": d.landscape.span}),
        (ns["no_spread"], "the spread is off (--no-spread)", {"spread_samples": d.spread_samples}),
        (ns["slices"] == 0, "the 1D slices are off (--slices 0)", {"slice_radius": d.slice_radius,
                                                                    "widths": tuple(d.widths)}),
        (ns["samples"] != "auto", "--samples is not auto", {"data_tol": d.landscape.data_tol}),
    ]  # fmt: skip
    for off, why, defaults in sections:
        for dest, default in defaults.items():
            value = ns[dest]
            if off and (tuple(value) if isinstance(value, (list, tuple)) else value) != default:
                shown = ",".join(f"{v:g}" for v in value) if isinstance(value, (list, tuple)) else f"{value:g}"
                flag = "--" + dest.replace("_", "-")
                if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 alone says it
                    sys.stderr.write(f"flatfl: warning: {flag} {shown} has no effect: {why}\n")


def _measure_arguments(p: Any, d: Any) -> None:
    """What is measured at each matched round (the defaults are ``flatfl landscape``'s)."""
    ld = d.landscape
    p.add_argument(
        "--samples",
        type=samples_t,
        default=ld.samples,
        metavar="N",
        help=f"seeded random subset of N samples ({SAMPLES_HELP}), or auto: growing subsets until the "
        "data-sampling error of lambda_max and the trace is below --data-tol, shown next to them "
        f"(default: {ld.samples})",
    )
    p.add_argument(
        "--data-tol",
        type=pos_float,
        default=ld.data_tol,
        metavar="REL",
        help=f"--samples auto: relative data-sampling error to reach (default: {ld.data_tol})",
    )
    p.add_argument(
        "--sharpness",
        default=",".join(ld.sharpness),
        metavar="LIST",
        help=f"sharpness measures (see flatfl landscape --help), or none (default: {','.join(ld.sharpness)}); "
        f"average_adaptive here is antithetic: each of {ld.sharpness_samples} draws at sigma {ld.sigma:g} "
        "evaluated at +delta and -delta, which cancels the first-order noise that left the plain estimate within "
        "1.5 standard errors of zero (docs/landscapes.md)",
    )
    p.add_argument(
        "--trace-matvecs",
        type=passes0_t,
        default=ld.trace_matvecs,
        metavar="N",
        help=f"HVP budget of the trace estimator (adaptive Hutch++), 0 = no trace (default: {ld.trace_matvecs})",
    )
    p.add_argument("--no-hessian", action="store_true", help="skip lambda_max")
    p.add_argument(
        "--grid", type=grid_t, default=ld.grid, metavar="N", help=f"surface points per axis (default: {ld.grid})"
    )
    p.add_argument(
        "--span",
        type=pos_float,
        default=ld.span,
        metavar="R",
        help=f"surface axes run from -R to R (default: {ld.span})",
    )
    p.add_argument("--no-surface", action="store_true", help="skip the loss surfaces")
    p.add_argument("--no-spread", action="store_true", help="skip the spread of mutants / client models")
    p.add_argument(
        "--spread-samples",
        type=nonneg_int,
        default=d.spread_samples,
        metavar="N",
        help="test samples for the loss of each sent/returned model, 0 = distances only; an N above the test split "
        f"takes all of it, with a note (none at the default, an 'up to') (default: {d.spread_samples})",
    )


def _group_arguments(p: Any, d: Any) -> None:
    """Seed groups, matched convergence and the 1D slices."""
    g = p.add_argument_group("groups, matched convergence and 1D slices")
    g.add_argument(
        "--label",
        action="append",
        default=[],
        type=_label,
        metavar="RUN=NAME",
        help="name the group RUN belongs to (runs that differ only in their seed, or in what they store and how "
        "they evaluate -- --save-clients, --save-every, the client files' dtype, --eval-batch-size, the data's "
        "location -- "
        "form one group; default label: the algorithm plus the settings that tell groups apart); repeatable",
    )
    g.add_argument(
        "--reference",
        default=None,
        metavar="GROUP",
        help="the group every other group is compared with: its label (as printed, or as given by --label) or "
        "the path of one of its runs (default: FedAvg's group -- of several, the one that differs from the other "
        "algorithms' groups in the fewest settings besides the algorithm, e.g. FedAvg with FedMut's plain-mean "
        "aggregation -- else the first). Each comparison lists every setting besides the seed in which the "
        "groups differ, and its answer names those beyond the algorithm (e.g. 'fedmut also differs by: "
        "aggregation plain mean (fedavg: sample-weighted)')",
    )
    g.add_argument(
        "--no-match",
        action="store_true",
        help="no comparison at equal training loss (default: at equal rounds and at equal training loss; "
        "--match-acc adds equal test accuracy either way)",
    )
    g.add_argument(
        "--match-loss",
        type=pos_float,
        default=None,
        metavar="L",
        help="equal training loss at level L: each run at the first saved round from which the moving median of its "
        f"loss on the analysis data ({SMOOTH_WINDOW} saved rounds) stays <= L (default: the highest final moving "
        "median among the runs at the last equal round, which every run reaches). A given level keeps its verdict "
        "when the matched rounds are far apart or early (said in words); a level less than "
        f"{MIN_DROP * 100:g}%% below the untrained loss gets none",
    )
    g.add_argument(
        "--match-acc",
        type=_fraction,
        default=None,
        metavar="A",
        help="also compare at equal test accuracy: each run at its first saved round with test accuracy >= A "
        "(from metrics.jsonl; a run that never gets there is listed) -- the measure of progress to use where the "
        "loss on the pooled data does not track training (strongly non-IID data)",
    )
    g.add_argument(
        "--slices",
        type=slices_t,
        default=d.slice_directions,
        metavar="K",
        help=f"1D slices (Li et al.): K filter-normalised random directions per checkpoint, 0 = none "
        f"(default: {d.slice_directions})",
    )
    g.add_argument(
        "--slice-radius",
        type=pos_float,
        default=d.slice_radius,
        metavar="R",
        help=f"1D slices run over t in [-R, R]; a width whose curve never reaches its threshold within it is "
        f"shown as 'not reached within ±R', left out of the mean and given no verdict (default: {d.slice_radius})",
    )
    g.add_argument(
        "--widths",
        type=_thresholds,
        default=d.widths,
        metavar="LIST",
        help="Δloss thresholds at which the 1D width is read, comma-separated "
        f"(default: {','.join(f'{t:g}' for t in d.widths)})",
    )
    g.add_argument(
        "--allow-mixed-optimizers",
        action="store_true",
        help="compare groups whose local optimizers differ (lr, momentum, batch, epochs); refused by default",
    )
    add_analysis_arguments(p, d.landscape)
    p.add_argument(
        "--tensorboard",
        type=Path,
        metavar="DIR",
        help="also write each measured checkpoint's numbers (lambda_max, trace, sharpness, widths, losses) as "
        "TensorBoard scalars curvature/<measure> at step = its round, in DIR/<run folder name> -- the folder "
        "flatfl train --tensorboard DIR logs that run's metrics to (needs pip install 'flatfl[track]') "
        "(default: off)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _label(text: str) -> tuple[str, str]:
    import argparse

    run, sep, name = text.partition("=")
    if not sep or not run or not name.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not RUN=NAME")
    return run, name.strip()


def _labels(given: list[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """``--label RUN=NAME`` pairs; one run named twice (even with the same name) is refused in one line."""
    seen: dict[str, str] = {}
    for run, name in given:
        if run in seen:
            raise UserError(f"--label {run}: given twice ({seen[run]!r}, {name!r}); name each run once")
        seen[run] = name
    return tuple(given)


def _fraction(text: str) -> float:
    import argparse

    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 < v <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r}: an accuracy between 0 and 1")
    return v


def _thresholds(text: str) -> tuple[float, ...]:
    import argparse

    if "" in (v.strip() for v in text.split(",")):  # '0.1,,1' or '0.1,': a threshold left out by mistake
        raise argparse.ArgumentTypeError(f"{text!r}: an empty item between commas; give comma-separated thresholds")
    try:
        vals = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None
    if not vals or not all(0 < v < float("inf") for v in vals):
        raise argparse.ArgumentTypeError(f"{text!r}: thresholds are positive (finite) numbers")
    if len(set(vals)) < len(vals):
        raise argparse.ArgumentTypeError(f"{text!r}: a threshold given twice; name each once")
    return vals


def run(ns: dict[str, Any]) -> int:
    import torch

    from flatfl import checkpoint as ckpt
    from flatfl.analysis import distributed
    from flatfl.rundir import settle
    from flatfl.runs.report import build_report

    for r, flag in [*((r, "run folder") for r in ns["runs"]), (ns["out"], "--out")]:
        try:  # report.json, report.html and the CSVs name these paths, in UTF-8
            str(r).encode("utf-8")
        except UnicodeEncodeError:
            raise UserError(
                f"{ascii(str(r))[1:-1]}: a {flag} name that is not UTF-8 (the report's files name it); rename it"
            ) from None
    for r in ns["runs"]:
        settle(Path(r))  # an interrupted --overwrite finished or undone first
        if not (Path(r) / ckpt.RUN_JSON).is_file():
            raise UserError(
                f"{r}: not a flatfl run directory (no {ckpt.RUN_JSON}); pass folders written by flatfl train"
            )
    settings = _report_settings(ns)
    if ns.get("tensorboard") is not None:
        from flatfl.tracking import check_logdir

        check_logdir(Path(ns["tensorboard"]))
    command = "flatfl " + " ".join(shlex.quote(a) for a in (ns.get("_argv") or sys.argv[1:]))
    from tqdm.auto import tqdm

    with distributed.process_group(torch.device(settings.landscape.device)):
        main = distributed.is_main()
        try:
            files = build_report(
                [Path(r) for r in ns["runs"]],
                settings,
                Path(ns["out"]),
                command=command,
                log=(lambda s: tqdm.write(s, file=sys.stderr)) if main else (lambda s: None),  # above the bar
                show_progress=main and not ns["no_progress"] and sys.stderr.isatty(),
            )
        except ValueError as exc:  # the analysis side's plain errors about the runs given
            raise UserError(str(exc)) from exc
    if not files:
        return 0
    if ns.get("tensorboard") is not None:
        import json

        from flatfl.tracking import log_report_rows

        rows = json.loads(Path(files["json"]).read_text())["rounds"]
        for d in log_report_rows(ns["tensorboard"], rows, warn=lambda s: print(s, file=sys.stderr)):
            print(f"wrote {d}")
    from flatfl.runs.report_page import settings_line

    _print_verdict(files["json"], settings_line(settings), [f"wrote {files[k]}" for k in
                   ("html", "verdict", "csv", "curves", "json") if k in files])  # fmt: skip
    from flatfl.runs.timing import print_timing

    print_timing(files["json"])  # where the time went: report.json's "timing", as a table
    return 0


def _report_settings(ns: dict[str, Any]) -> Any:
    """The frozen :class:`ReportSettings` of the command line (measures validated first)."""
    from flatfl.analysis.sharpness import SHARPNESS_MEASURES
    from flatfl.runs.connectivity import connect_settings
    from flatfl.runs.measures import REGISTRY, report_defaults
    from flatfl.runs.report import ReportSettings

    connect = connect_settings(ns)  # before the registry's --connect SPEC of flatfl landscape reads the same names

    sharp = name_list(ns["sharpness"], "--sharpness", SHARPNESS_MEASURES, {"none": (), "all": SHARPNESS_MEASURES})
    device = analysis_device(ns["device"])
    from flatfl.analysis.trace import HUTCHPP_MIN_MATVECS

    if 0 < ns["trace_matvecs"] < HUTCHPP_MIN_MATVECS:
        raise UserError(
            f"--trace-matvecs: the trace estimator needs at least {HUTCHPP_MIN_MATVECS} HVPs; 0 skips the trace"
        )
    from flatfl.cli.landscape import registry_settings

    more = tuple((name, st) for name, st in registry_settings(ns) if REGISTRY[name].report)
    more = report_defaults(ns, more)  # the default set's measures (report_default), unless --no-NAME
    _check_report_flags(ns, sharp, more)
    d = ReportSettings()
    ls = replace(
        d.landscape,
        data=ns["data"],
        samples=samples_setting(ns["samples"])[0],
        samples_auto=samples_setting(ns["samples"])[1],
        data_tol=ns["data_tol"],
        sharpness=sharp,
        trace=ns["trace_matvecs"] > 0,
        trace_matvecs=max(ns["trace_matvecs"], HUTCHPP_MIN_MATVECS),
        hessian=not ns["no_hessian"],
        grid=ns["grid"],
        span=ns["span"],
        seed=ns["seed"],
        batch_size=ns["batch_size"],
        device=str(device),
        memory_budget_gb=ns["memory_budget"],
        measures=more,
    )
    return ReportSettings(
        rounds=ns["at_rounds"],
        landscape=ls,
        surface=not ns["no_surface"],
        spread=not ns["no_spread"],
        spread_samples=ns["spread_samples"],
        match=not ns["no_match"],
        match_loss=ns["match_loss"],
        match_acc=ns["match_acc"],
        slice_directions=ns["slices"],
        slice_radius=ns["slice_radius"],
        widths=ns["widths"],
        labels=_labels(ns["label"]),
        reference=ns["reference"],
        allow_mixed_optimizers=ns["allow_mixed_optimizers"],
        connect=connect,
    )


def _check_report_flags(ns: dict[str, Any], sharp: tuple[str, ...], more: tuple = ()) -> None:
    """Flags that contradict each other, or leave nothing to measure, are refused before any work."""
    from flatfl.cli.landscape import check_grid

    if ns["no_match"] and ns.get("match_loss") is not None:
        raise UserError("--match-loss: a training-loss level to match, but --no-match turns loss matching off")
    measures = not ns["no_hessian"] or ns["trace_matvecs"] > 0 or sharp or ns["slices"] > 0 or more or ns.get("connect")
    if not measures and ns["no_surface"] and ns["no_spread"]:
        from flatfl.runs.measures import off_flag, registered

        offs = [off_flag(s) for s in registered() if s.report and s.report_default]
        given = ["--no-hessian", "--trace-matvecs 0", "--sharpness none", "--slices 0", *offs, "--no-surface"]
        raise UserError(f"nothing to measure: {', '.join(given)} and --no-spread leave nothing; drop one of them")
    if ns["grid"] < 2:  # the 1D slices and the surfaces both read it
        raise UserError(f"--grid {ns['grid']}: a surface needs at least 2 points per axis")
    if not ns["no_surface"]:
        check_grid(ns["grid"], 2)
    _warn_switched_off_options(ns)


def _print_verdict(report_json: Path, settings: str, wrote: list[str]) -> None:
    """The answer first (one sentence per comparison), then the files written, the settings and the details."""
    import json

    from flatfl.runs.report_page import verdict_text

    rep = json.loads(Path(report_json).read_text())
    answer, _, details = verdict_text(rep["verdict"], rep.get("group_order") or list(rep["groups"])).partition("\n\n")
    print(answer)
    print("\n".join(["", *wrote, settings]))
    print("\n" + details if details else "")
