"""Writing the report: the verdict table (HTML and text), report.html, CSVs, JSON and static figures.

Takes computed results only (the objects :func:`flatfl.runs.report.build_report` assembles).
The page opens with the answer: one sentence per condition (equal round, equal train loss,
equal accuracy), a sentence when the flatness measures disagree, and the verdict table --
one row per measure, each group's mean with its 95% interval over seeds, and the verdict of
the paired comparison. Below it: which round each run was measured at, the Li et al. 1D
slices, the straight line between the groups' models, every measure over rounds, the
curvature table (key columns first, the rest folded), accuracy/loss curves, loss surfaces,
the spread of mutants and client models, diagnostics, and the commands and settings.

The figure sections (surfaces, spread, diagnostics, curves, the straight line) are built in
:mod:`flatfl.runs.figure_sections`, the verdict's formatting in :mod:`flatfl.runs.verdict_page`.
"""

from __future__ import annotations

import csv
import html
import io
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from flatfl import checkpoint as ckpt
from flatfl.analysis.verdict import VERDICT_RULE
from flatfl.runs.connectivity_page import connectivity_sections
from flatfl.runs.figure_sections import (  # noqa: F401  (png_data_uri re-exported)
    curves_section,
    diagnostic_section,
    line_section,
    png_data_uri,
    spread_sections,
    surface_sections,
)
from flatfl.runs.files import write_page
from flatfl.runs.landscape import json_ready
from flatfl.runs.matching_page import matching_sections
from flatfl.runs.measures import describe_measures
from flatfl.runs.per_layer_page import per_layer_json, per_layer_sections
from flatfl.runs.report_glossary import cited_in, column_name, glossary_has, glossary_html, link_citations
from flatfl.runs.scale_page import context_html
from flatfl.runs.settings import ReportSettings
from flatfl.runs.verdict_page import (  # noqa: F401  (re-exported: the page's verdict formatting)
    PER_SEED_MAX,
    answer_html,
    differs_lines,
    fmt,
    interval_text,
    paired_text,
    summary_text,
    verdict_csv_rows,
    verdict_table_html,
    verdict_text,
)

PAGE_CSS = (
    "table.verdict{font-size:0.92em}table.verdict td.v{text-align:left;min-width:9em}"
    "td.win-a{background:#e3efff}td.win-b{background:#ffe6e3}td.none{background:#f4f4f4;color:#555}"
    "p.answer{font-size:1.15em;margin:0.3em 0}p.disagree{color:#9a3b00;font-weight:600}"
    "p.differs{margin:0.3em 0;padding:0.2em 0.5em;border-left:3px solid #9a3b00}"
    "table.verdict th{text-align:center}small{color:#555}details{margin:0.6em 0}summary{cursor:pointer;color:#1f4e79}"
    "dl.glossary dt{margin-top:0.7em}dl.glossary dd{margin-left:1.2em}table.invariance td{text-align:left}"
    "table.context td:nth-child(-n+2),table.context th:nth-child(-n+2){text-align:left}"
    # a phone-width screen: the verdict table becomes one card per measure, each cell labelled, so the
    # verdict is on screen rather than behind a horizontal scroll
    "@media (max-width:700px){table.verdict,table.verdict tbody,table.verdict tr,table.verdict td{display:block}"
    "table.verdict tr.head{display:none}table.verdict tr{border:1px solid #ccc;margin:0 0 0.6em;padding:0.2em}"
    "table.verdict td{border:none;text-align:left}table.verdict td.m{font-weight:600}"
    "table.verdict td[data-label]::before{content:attr(data-label) ': ';color:#555;font-size:0.85em}}"
)


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if v is None else v) for k, v in r.items()})
    ckpt.atomic_write_bytes(path, buf.getvalue().encode())


def table_html(rows: Sequence[Mapping[str, Any]], cols: Sequence[str], labels: Mapping[str, str] | None = None) -> str:
    """A table of ``rows``; with ``labels`` (measure key -> label) the headers are report.csv's columns in words
    (:func:`flatfl.runs.report_glossary.column_name`), each with its CSV name as the tooltip."""
    if labels is None:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    else:
        head = "".join(f"<th title='report.csv: {html.escape(c)}'>{html.escape(column_name(c, labels))}</th>"
                       for c in cols)  # fmt: skip
    body = "".join("<tr>" + "".join(f"<td>{html.escape(fmt(r.get(c)))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<div style='overflow-x:auto'><table><tr>{head}</tr>{body}</table></div>"


KEY_COLUMNS = [
    "run", "seed", "round", "conditions", "test_acc", "train_loss",
    "lambda_max", "lambda_max_data_error", "lambda_max_residual", "trace", "trace_stderr", "trace_data_error",
]  # fmt: skip


def _excluded_html(groups: Sequence[Any]) -> str:
    items = [
        f"<li>{html.escape(g.label)} seed {s} ({html.escape(str(g.runs[s].path))}): {html.escape(g.status[s].why)}</li>"
        for g in groups
        for s in g.diverged
    ]
    if not items:
        return ""
    return "<p><b>Diverged runs, left out of every mean and test:</b></p><ul>" + "".join(items) + "</ul>"


def _rounds_rows(groups: Sequence[Any], conds: Sequence[Any]) -> list[dict[str, Any]]:
    rows = []
    for g in groups:
        for s in sorted(g.runs):
            st = g.status[s]
            row: dict[str, Any] = {"run": g.label, "seed": s, "status": st.state, "last saved round": st.last}
            for c in conds:
                m = c.rounds[g.label].get(s)
                if m is None:
                    row[c.title] = "left out"
                elif m.round is None:
                    row[c.title] = m.note
                else:
                    row[c.title] = f"round {m.round}" + (f" ({m.value:.4g})" if m.value is not None else "")
            rows.append(row)
    return rows


def settings_line(settings: ReportSettings) -> str:
    """The report's own measurement settings in one line (printed and at the top of report.html): they are
    cheaper than ``flatfl landscape``'s defaults, so a number here may differ from a landscape run's."""
    ld = settings.landscape
    parts = [f"up to {ld.samples} {ld.data} samples" if ld.samples else f"all {ld.data} samples"]
    parts += describe_measures(ld, settings)  # every measure switched on, from the registry
    if settings.surface:
        parts.append(f"surfaces: {ld.grid}x{ld.grid}, span {ld.span:g}")
    return "report settings (not flatfl landscape's defaults): " + "; ".join(parts)


def _settings_note(settings: ReportSettings) -> str:
    ld = settings.landscape
    return (
        f"<p id='verdict-rule'><small>All measures on {html.escape(ld.data)} data "
        f"({f'up to {ld.samples}' if ld.samples else 'all'} samples, subset seed "
        f"{ld.seed}), eval mode. lambda_max: Lanczos (residual tol {ld.tol:g}); trace: {ld.trace_method}, "
        f"{ld.trace_matvecs} HVPs; sharpness: rho={ld.rho:g} (SAM, adaptive), sigma={ld.sigma:g} (average); "
        f"1D width: distance between the first crossings of the mean Δloss over {settings.slice_directions} "
        f"filter-normalised random directions (t in ±{settings.slice_radius:g}; a width not reached within the "
        "range is named, left out of the mean, and its comparison gets no verdict). "
        "Interval: 95% Student-t over seeds. ±e/ckpt: each checkpoint's own estimation error (root mean square "
        "over seeds): the trace's and average sharpness's Monte Carlo standard errors, the Lanczos residual "
        "||Hv − λv|| (a bound on λmax's error), the 1D width's bootstrap standard error over the random "
        "directions. Verdict: the paired comparison of the same seeds (same partition, initial model and client "
        f"sample; Wasserman 2004); {html.escape(VERDICT_RULE, quote=False)}. <i>k/n seeds point the same way</i>: "
        "seeds whose own ratio or difference has the sign of the mean. Displayed intervals are clipped to what the "
        "quantity can be "
        f"(accuracy in [0, 1], losses and widths ≥ 0); with 2 to {PER_SEED_MAX} seeds a cell lists each seed's value "
        "(in seed order) instead, the interval is its tooltip and in verdict.csv and report.json. "
        "↓ lower is flatter/better, ↑ higher is.</small></p>"
    )


def _slices_panels(conds: Sequence[Any], measured: Any) -> dict[str, dict[str, list]]:
    """Per condition title and group: the 1D slices of the checkpoints that condition measures."""
    panels: dict[str, dict[str, list]] = {}
    for c in conds:
        panels[c.title] = {}
        for lab, per in c.rounds.items():
            found = [measured.slices.get((lab, s, m.round)) for s, m in sorted(per.items()) if m.round is not None]
            found = [x for x in found if x is not None]
            if found:
                panels[c.title][lab] = found
    return panels


def _measure_points(measured: Any, keys: Sequence[str]) -> dict[str, dict[str, list]]:
    pts: dict[str, dict[str, list]] = {k: {} for k in keys}
    for (lab, s, rnd), row in sorted(measured.rows.items(), key=lambda kv: kv[0][2]):
        for k in keys:
            if row.get(k) is not None:  # a censored width (a lower bound) is drawn as such
                pts[k].setdefault(lab, []).append((s, rnd, row[k], bool(row.get(f"{k}_censored"))))
    return pts


def _commands_section(command: str, settings: ReportSettings, groups: Sequence[Any]) -> tuple[str, str]:
    settings_json = json.dumps(json_ready({"report": asdict(settings), "command": command}), indent=1)
    run_json = "".join(
        f"<h3>{html.escape(g.label)} seed {s}</h3>"
        f"<pre>{html.escape(json.dumps(run.config, indent=1, sort_keys=True))}</pre>"
        for g in groups
        for s, run in sorted(g.runs.items())
    )
    body = (
        f"<p>Made by:</p><pre>{html.escape(command)}</pre>"
        f"<p>Report settings:</p><pre>{html.escape(settings_json)}</pre>"
        f"<details><summary>Runs (run.json config)</summary>{run_json}</details>"
    )
    return "Commands and settings", body


def write_report(
    out: Path,
    *,
    settings: ReportSettings,
    groups: Sequence[Any],
    rounds: Sequence[int],
    conds: Sequence[Any],
    measured: Any,
    measures: Sequence[Any],
    verdict: Sequence[Mapping[str, Any]],
    lines: Mapping[str, Any],
    curves: Sequence[Mapping[str, Any]],
    rows: Sequence[Mapping[str, Any]],
    command: str,
    connectivity: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Write report.html, verdict.csv, report.csv, curves.csv, report.json and the static figures (with
    ``connectivity``, flatfl report --connect: connectivity.csv/.png/.pdf and its section)."""
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    labels = [g.label for g in groups]
    for name, data in (("verdict", verdict_csv_rows(verdict)), ("csv", rows), ("curves", curves)):
        path = out / {"verdict": "verdict.csv", "csv": "report.csv", "curves": "curves.csv"}[name]
        write_csv(path, data)
        files[name] = path
    sections = _sections(out, settings, groups, rounds, conds, measured, measures, verdict, lines, curves, rows, files)
    sections += connectivity_sections(connectivity, out, files, labels)  # flatfl.runs.connectivity_page
    texts = [(h, [b] if isinstance(b, str) else b) for h, b in sections]
    cited = cited_in([h for h, _ in texts] + [x for _, b in texts for x in b if isinstance(x, str)])
    sections.append(("What the measures mean", glossary_html(measures, settings, cited=cited)))
    sections.append(_commands_section(command, settings, groups))
    # every citation in the page's text links to its bibliography entry (headings stay plain text)
    sections = [
        (h, link_citations(b) if isinstance(b, str) else [link_citations(x) if isinstance(x, str) else x for x in b])
        if not h.startswith("Commands")
        else (h, b)
        for h, b in sections
    ]
    title = " vs ".join(labels) + ": is one flatter?"
    files["html"] = write_page(out / "report.html", title, sections, css=PAGE_CSS)
    _write_json(out / "report.json", settings, groups, rounds, verdict, rows, measured, lines, curves, command,
                connectivity)  # fmt: skip
    files["json"] = out / "report.json"
    return files


def _write_json(path, settings, groups, rounds, verdict, rows, measured, lines, curves, command, connectivity=None):
    """report.json: every number, with the settings, the command and each checkpoint's full result."""
    import torch

    ckpt.atomic_write_json(
        path,
        json_ready(
            {
                "command": command,
                "settings": asdict(settings),
                "groups": {
                    g.label: {
                        "algo": g.algo,
                        "runs": {
                            str(s): {"path": str(r.path), "status": asdict(g.status[s]), "config": r.config}
                            for s, r in g.runs.items()
                        },
                    }
                    for g in groups
                },
                "group_order": [g.label for g in groups],  # "groups" is written with sorted keys
                "equal_rounds": list(rounds),
                "verdict": list(verdict),
                "rounds": list(rows),
                "results": {f"{lab} seed {s} round {r}": v for (lab, s, r), v in measured.results.items()},
                **per_layer_json(measured, [g.label for g in groups]),  # every block, with --per-layer
                "lines": lines,
                "curves": list(curves),
                **({"connectivity": connectivity} if connectivity is not None else {}),
                "python": sys.version.split()[0],
                "torch": torch.__version__,
            }
        ),
    )


def _sections(out, settings, groups, rounds, conds, measured, measures, verdict, lines, curves, rows, files) -> list:
    """The page's sections in reading order: the answer first."""
    from flatfl.analysis.interactive import section_id
    from flatfl.analysis.plots import plot_slices
    from flatfl.analysis.report_figures import group_colors, measures_figure, slices_figure

    labels = [g.label for g in groups]
    colors = group_colors(labels)
    matching = matching_sections(conds, out, files)
    anchors = {f"m-{m.key}": f"m-{m.key}" for m in measures if glossary_has(m.key, settings)}
    anchors["verdict"] = "verdict-rule"
    if matching:
        anchors["loss"] = section_id(matching[0][0])
    table = _excluded_html(groups) + verdict_table_html(verdict, labels, anchors) + context_html(verdict, labels)
    top = (
        answer_html(verdict, table)
        + f"<p><small>{html.escape(settings_line(settings))}</small></p>"
        + _settings_note(settings)
    )
    where = _rounds_rows(groups, conds)
    sections: list[tuple[str, object]] = [
        ("The answer", top),
        ("Where each run was measured", table_html(where, list(where[0]))),
    ]
    sections += matching
    panels = _slices_panels(conds, measured)
    if any(panels.values()):
        files["slices_png"] = plot_slices(panels, colors, out / "slices", settings.widths)[0]
        caption = (
            "<p>Δloss(t) = L(θ + t·d) − L(θ) along filter-normalised random directions d (the same seeds for "
            "every run): the mean over seeds and directions, and the min–max band. A slower rise is a flatter "
            "minimum; the 1D widths in the verdict are read from each run's mean curve.</p>"
        )
        fig = slices_figure(panels, colors, settings.widths)
        sections.append(("1D slices along random directions (Li et al. 2018)", [caption, fig]))
    if lines:
        sections.append(line_section(lines, verdict[0]["reference"], rounds[-1], colors))
    keys = {m.key: m.label for m in measures}
    points = _measure_points(measured, list(keys))
    cut = any(len(p) > 3 and p[3] for per in points.values() for pts in per.values() for p in pts)
    caption = (
        "<p>Each verdict measure (one panel each) against the round it was measured at: a marker per seed and "
        "measured round (the equal rounds and each run's matched-loss/accuracy round), one colour per group. "
        "Hover for the seed."
        + (" An open marker: a 1D width not reached within the slice radius (a lower bound)." if cut else "")
        + "</p>"
    )
    sections.append(("Every measure at every measured round", [caption, measures_figure(points, keys, colors)]))
    full_cols: list[str] = []
    for r in rows:
        full_cols += [c for c in r if c not in full_cols and c not in ("path", "algo")]
    sections.append(
        (
            "Curvature and sharpness per checkpoint",
            table_html(rows, [c for c in KEY_COLUMNS if any(c in r for r in rows)], keys)
            + f"<details><summary>All columns ({len(full_cols)})</summary>{table_html(rows, full_cols, keys)}"
            "</details>",
        )
    )
    sections.append(curves_section(curves, colors))
    sections += per_layer_sections(out, measured, labels, rounds, colors, files)  # with --per-layer
    sections += surface_sections(out, measured, settings, files, {g.label: g.seeds[0] for g in groups if g.seeds})
    if settings.spread:
        sections += spread_sections(curves, groups, colors, out, files)
    sections += diagnostic_section(curves, colors)
    return sections
