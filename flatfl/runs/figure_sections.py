"""The report page's figure sections: loss surfaces, the spread of client models, the training diagnostics,
the accuracy/loss curves and the straight line between the groups' models (used by
:mod:`flatfl.runs.report_page`).

Each takes computed results and gives ``(heading, body)`` sections; a static figure it writes is recorded in
``files``. The plotting modules are imported where a section is drawn (plotly, matplotlib).
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from flatfl.runs.settings import ReportSettings


def png_data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()


def surface_sections(
    out: Path, measured: Any, settings: ReportSettings, files: dict[str, Path], seeds: Mapping[str, int] | None = None
) -> list[tuple[str, object]]:
    """The surfaces of each group's lowest seed (``seeds``: group -> that seed, named in every title) on one
    set of levels holding the width thresholds: a static side-by-side map, then each group's contour."""
    from flatfl.analysis.interactive import delta_range, surface_figures
    from flatfl.analysis.plots import plot_surfaces_side_by_side

    surfaces = {lab: v for lab, v in measured.surfaces.items() if v}
    if not surfaces:
        return []
    ld = settings.landscape
    allsurf = [s for v in surfaces.values() for _, s in v]
    zr = delta_range(allsurf)
    last = {lab: v[-1] for lab, v in surfaces.items()}
    seeds = seeds or {}
    name = {lab: f"{lab} seed {seeds[lab]}" if lab in seeds else lab for lab in surfaces}
    marks = tuple(settings.widths) if settings.slice_directions else ()
    png = plot_surfaces_side_by_side(
        [s for _, s in last.values()],
        [f"{name[lab]}, round {r}" for lab, (r, _) in last.items()],
        out / "surfaces",
        zrange=zr,
        marks=marks,
    )[0]
    files["surfaces_png"] = png
    text = (
        f"<p>2D filter-normalised random planes (Li et al. 2018) through each group's lowest-seed model, a, b in "
        f"[-{ld.span:g}, {ld.span:g}], {ld.grid}x{ld.grid} points. Colour and contours: Δloss = L − L(checkpoint) "
        f"on the same levels for every run and round (0 to {zr[1]:.3g}; "
        + ("including the widths' thresholds Δloss " + ", ".join(f"{t:g}" for t in marks) + "; " if marks else "")
        + "the colour bar's ticks are the levels). "
        f"{markers_note([s for _, s in last.values()])}</p>"
        "<details><summary>The last rounds' maps side by side as one static figure (surfaces.png and .pdf)"
        f"</summary><img alt='surfaces' style='max-width:100%' src='{png_data_uri(png)}'></details>"
    )
    out_sections: list[tuple[str, object]] = [("Loss surfaces (last measured round, shared levels)", text)]
    for lab, v in surfaces.items():
        contour, scene = surface_figures([(f"round {r}", s) for r, s in v], zrange=zr, title=name[lab], marks=marks)
        drawn = any(s.drawn_marker_groups()[0] for _, s in v)
        hover = " Hover over a drawn model for its own loss, accuracy and distance off the plane." if drawn else ""
        note = f"<p>{markers_note([s for _, s in v])}{hover}</p>"
        body: list[object] = [note, contour]
        if scene is not None:
            body += ["<details><summary>The same surface in 3D (needs WebGL)</summary>", scene, "</details>"]
        out_sections.append((f"Loss surface: {name[lab]} (contour" + (", slider: round)" if len(v) > 1 else ")"), body))
    return out_sections


def markers_note(surfaces: Sequence[Any]) -> str:
    """What the surfaces' markers are, and how many were left out for lying far off the plane."""
    total = sum(len(s.markers) for s in surfaces)
    if not total:
        return "No client models drawn (none saved for these rounds: train with --save-clients)."
    hidden = sum(s.drawn_marker_groups()[1] for s in surfaces)
    what = "the returned client models and the models sent in the next round"
    why = (
        "farther off the plane than their projection lies from the checkpoint (on a random plane almost all of a "
        "client model's difference from the checkpoint is off the plane), so their position in it says nothing "
        "about them"
    )
    if hidden == total:
        return f"No client model is drawn: all {total} ({what}) lie {why}."
    text = f"Markers: {what}, at their least-squares position in the plane."
    if hidden:
        text += f" {hidden} of {total} are not drawn: they lie {why}."
    return text


def spread_sections(curves: Sequence[Mapping[str, Any]], groups: Sequence[Any], colors, out: Path, files) -> list:
    from flatfl.analysis.plots import plot_spread
    from flatfl.analysis.report_figures import over_rounds_figure

    have = [r for r in curves if r.get("spread_sent_l2_mean") is not None]
    if not have:
        missing = ", ".join(g.label for g in groups)
        return [
            (
                "Spread of sent and returned models",
                f"<p>No client models saved (train with --save-clients): {html.escape(missing)}.</p>",
            )
        ]
    algo = {g.label: g.algo for g in groups}
    sent_name = {lab: ("global model sent (distance 0)" if algo[lab] == "fedavg" else "sent (mutants)") for lab in algo}
    fig = over_rounds_figure(
        have,
        [
            ("spread_sent_l2_mean", "sent models: mean L2 to w<sub>t−1</sub>"),
            ("spread_returned_l2_mean", "returned models: mean L2 to w<sub>t−1</sub>"),
        ],
        colors,
        markers=True,
    )
    series, seeds = [], []
    for g in groups:
        pts = [r for r in have if r["run"] == g.label]
        if pts:
            seeds.append(f"{g.label} seed {pts[0]['seed']}")
            rs = [r["round"] for r in pts]
            series.append((f"{g.label}: {sent_name[g.label]}", rs, [r["spread_sent_l2_mean"] for r in pts],
                           colors[g.label], "sent"))  # fmt: skip
            series.append((f"{g.label}: returned", rs, [r["spread_returned_l2_mean"] for r in pts], colors[g.label],
                           "returned"))  # fmt: skip
    files["spread_png"] = plot_spread(
        series, out / "spread", ylabel="mean L2 distance to $w_{t-1}$", title="drawn: " + ", ".join(seeds)
    )[0]
    text = (
        "<p>Per saved round t (lowest seed of each group): mean L2 distance to w<sub>t-1</sub> of the models sent to "
        "clients (FedMut's mutants, Hu et al. 2024; FedAvg sends the global model itself, distance 0) and of the "
        "returned models. "
        "Markers at the saved rounds; lines only join consecutive rounds. Relative and filter-normalised distances, "
        "update cosines and the sent models' losses are in curves.csv.</p>"
    )
    return [("Spread of sent and returned models", [text, fig])]


def diagnostic_section(curves: Sequence[Mapping[str, Any]], colors) -> list:
    from flatfl.analysis.report_figures import over_rounds_figure

    panels = [
        (k, t)
        for k, t in (
            ("global_update_norm", "global update ‖w<sub>t</sub> − w<sub>t−1</sub>‖"),
            ("mutation_rel", "mutation norm / ‖w‖"),
            ("sent_first_batch_loss_mean", "loss of the sent models (first batch)"),
        )
        if any(r.get(k) is not None for r in curves)
    ]
    if not panels:
        return []
    if any(r.get("status") == "diverged" for r in curves):
        text = "<p>Training diagnostics from metrics.jsonl, every run including the diverged ones (dashed).</p>"
        heading = "Why runs diverge: per-round diagnostics"
    else:
        text = "<p>Training diagnostics from metrics.jsonl, every run (none diverged).</p>"
        heading = "Training diagnostics per round"
    return [(heading, [text, over_rounds_figure(curves, panels, colors)])]


def curves_section(curves: Sequence[Mapping[str, Any]], colors) -> tuple[str, list]:
    """Test accuracy, test loss and the clients' train loss over rounds, with a caption."""
    from flatfl.analysis.report_figures import over_rounds_figure

    diverged = any(r.get("status") == "diverged" for r in curves)
    caption = (
        "<p>From each run's metrics.jsonl: the global model's test accuracy and test loss after every round, and "
        "the mean local training loss the sampled clients reported. One colour per group, a line per seed"
        + ("; diverged runs dashed.</p>" if diverged else ".</p>")
    )
    panels = [("test_acc", "test accuracy"), ("test_loss", "test loss"), ("train_loss", "clients' local train loss")]
    return "Accuracy and loss over rounds", [caption, over_rounds_figure(curves, panels, colors)]


def line_section(lines: Mapping[str, Any], ref: str, rnd: int, colors) -> tuple[str, list]:
    """The straight line between the reference group's model and another's, seed by seed, with the barrier defined."""
    from flatfl.analysis.report_figures import line_figure

    caption = (
        f"<p>Loss along the straight line θ<sub>t</sub> = (1 − t)·θ[{html.escape(ref)}] + t·θ[other] between the "
        f"two groups' models of the same seed at round {rnd} (t = 0: {html.escape(ref)}, t = 1: the other), as "
        f"Δloss = L(θ<sub>t</sub>) − L(θ[{html.escape(ref)}]); one colour and dash per seed. <b>Barrier</b> (in "
        "the legend): max<sub>t∈[0,1]</sub> L(θ<sub>t</sub>) − [(1 − t)·L(θ<sub>0</sub>) + t·L(θ<sub>1</sub>)], "
        "how far the loss rises above the straight line joining the two end losses (Goodfellow et al. 2015; "
        "Frankle et al. 2020). "
        "About 0: the two models lie in one basin (linearly connected); large: a ridge separates them.</p>"
    )
    return (
        f"Straight line between the models of the same seed (round {rnd})",
        [caption, line_figure(lines, ref, colors)],
    )
