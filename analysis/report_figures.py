"""The report's interactive figures (plotly). They take computed results only.

One colour per group throughout (``group_colors``); seeds of a group share its colour, except in
the straight-line figure, which compares seed by seed and gives each seed its own style. Lines
join only consecutive rounds: where rounds are missing (a run saved every 10th round, a
spread only on saved rounds) the line breaks and the saved rounds show as markers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from flatfl.analysis.slices import Slices

# Okabe & Ito (2008) colours: told apart with every common colour-vision deficiency (no red/green pair);
# the same group colour in every HTML and static figure of a report
PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#999999"]
# the straight-line figure tells seeds apart (a colour, dash and marker each), not groups
SEED_PALETTE = ["#000000", "#e69f00", "#56b4e9", "#009e73", "#cc79a7", "#0072b2", "#d55e00", "#999999"]
DASHES = ["solid", "dash", "dot", "dashdot", "longdash"]
SYMBOLS = ["circle", "square", "diamond", "triangle-up", "x", "cross"]
LAYOUT = dict(template="plotly_white", margin=dict(l=60, r=20, t=50, b=50))


def group_colors(labels: Sequence[str]) -> dict[str, str]:
    """One colour per group label, in order (:data:`PALETTE`)."""
    return {lab: PALETTE[i % len(PALETTE)] for i, lab in enumerate(labels)}


def stack_narrow(fig: go.Figure, titles: Sequence[str], panel_height: int = 300, *, legend_gap: int = 30) -> go.Figure:
    """Attach a layout patch (``layout.meta["narrow"]``) that the report page applies below 700 px: the
    figure's panels (subplots numbered row by row) stacked in one column, each ``panel_height`` px, the
    legend above them, ``legend_gap`` px above the first panel (room for its title: more for a two-line
    one) -- no two subplot or axis titles overlap on a phone."""
    n = len(titles)
    if n < 2:
        return fig
    ref = make_subplots(rows=n, cols=1, subplot_titles=list(titles), vertical_spacing=min(0.3 / n, 0.12))
    plot = panel_height * n  # the plot area's height: paper coordinates above 1 are px / plot
    patch: dict[str, Any] = {"height": plot + 190, "margin": dict(l=55, r=10, t=140, b=50)}
    for i in range(1, n + 1):
        sx, sy = ("xaxis", "yaxis") if i == 1 else (f"xaxis{i}", f"yaxis{i}")
        patch[sx] = {"domain": list(ref.layout[sx].domain)}
        patch[sy] = {"domain": list(ref.layout[sy].domain), "showticklabels": True}
    titled = set(titles)
    extra = [a.to_plotly_json() for a in fig.layout.annotations if a.text not in titled]
    patch["annotations"] = [a.to_plotly_json() for a in ref.layout.annotations] + extra
    patch["legend"] = dict(orientation="h", x=0, y=1 + legend_gap / plot, yanchor="bottom")
    if fig.layout.updatemenus:
        patch["updatemenus"] = [dict(m.to_plotly_json(), y=1 + 100 / plot) for m in fig.layout.updatemenus]
    fig.update_layout(meta={"narrow": patch})
    return fig


def _rgba(hex_color: str, alpha: float) -> str:
    r, g, b = (int(hex_color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def gapped(xs: Sequence[int], ys: Sequence[Any]) -> tuple[list, list]:
    """(x, y) with a None between non-consecutive x, so plotly breaks the line there."""
    ox: list = []
    oy: list = []
    for i, (x, y) in enumerate(zip(xs, ys)):
        if i and x != xs[i - 1] + 1:
            ox.append(None)
            oy.append(None)
        ox.append(x)
        oy.append(y)
    return ox, oy


def slices_figure(
    panels: Mapping[str, Mapping[str, Sequence[Slices]]],
    colors: Mapping[str, str],
    thresholds: Sequence[float] = (),
) -> go.Figure:
    """Li et al. 1D slices: per panel (condition) and group, the mean Δloss over seeds x directions
    with a min-max band; all groups on one axis, panels share the y axis.

    ``thresholds``: the Δloss levels the verdict's 1D widths are read at, drawn as dashed lines; the
    y axis then opens zoomed to them (a button shows the full range), so a width at Δloss 0.1 is
    visible beside curves that rise to 10."""
    titles = list(panels)
    fig = make_subplots(rows=1, cols=len(titles), subplot_titles=titles, shared_yaxes=True, horizontal_spacing=0.06)
    for col, title in enumerate(titles, start=1):
        for lab, sl in panels[title].items():
            if not sl:
                continue
            ts = sl[0].ts
            delta = np.concatenate([s.delta for s in sl])
            c = colors[lab]
            lo, hi = delta.min(0), delta.max(0)
            fig.add_trace(
                go.Scatter(
                    x=np.concatenate([ts, ts[::-1]]),
                    y=np.concatenate([hi, lo[::-1]]),
                    fill="toself",
                    fillcolor=_rgba(c, 0.15),
                    line=dict(width=0),
                    hoverinfo="skip",
                    showlegend=False,
                    legendgroup=lab,
                ),
                row=1,
                col=col,
            )
            fig.add_trace(
                go.Scatter(
                    x=ts,
                    y=delta.mean(0),
                    name=f"{lab} ({len(sl)} seed{'s' if len(sl) > 1 else ''} x {sl[0].num_directions} dirs)",
                    line=dict(color=c, width=2.5),
                    legendgroup=lab,
                    showlegend=col == 1,
                    hovertemplate="t %{x:.2f}<br>mean Δloss %{y:.4g}<extra>" + lab + "</extra>",
                ),
                row=1,
                col=col,
            )
        fig.update_xaxes(title_text="t (filter-normalised random direction)", row=1, col=col)
    fig.update_yaxes(title_text="Δloss = L(θ + t·d) − L(θ)", row=1, col=1)
    fig.update_layout(height=430, legend=dict(orientation="h", y=-0.22), **LAYOUT)
    if thresholds:
        for col in range(1, len(titles) + 1):
            for tau in thresholds:
                fig.add_hline(
                    y=tau, line=dict(color="#555", dash="dash", width=1), row=1, col=col,
                    annotation_text=f"width at Δloss {tau:g}", annotation_position="top left",
                    annotation_font=dict(size=10, color="#555"),
                )  # fmt: skip
        top = max(thresholds)
        zoom = [-0.1 * top, 1.6 * top]
        axes = {f"yaxis{'' if c == 1 else c}.range": zoom for c in range(1, len(titles) + 1)}
        full = {f"yaxis{'' if c == 1 else c}.autorange": True for c in range(1, len(titles) + 1)}
        fig.update_yaxes(range=zoom)
        fig.update_layout(
            updatemenus=[
                dict(
                    type="buttons",
                    direction="right",
                    x=0,
                    xanchor="left",
                    y=1.18,
                    yanchor="bottom",
                    showactive=True,
                    active=0,
                    pad=dict(r=4, t=0),
                    buttons=[
                        dict(label="zoom to the widths' Δloss", method="relayout", args=[axes]),
                        dict(label="full range", method="relayout", args=[full]),
                    ],
                )  # fmt: skip
            ],
            margin=dict(l=60, r=20, t=90, b=50),
        )
    return stack_narrow(fig, titles, 320)


def line_figure(lines: Mapping[str, Mapping[int, Mapping[str, Any]]], reference: str, colors: Mapping[str, str]):
    """Δloss along the straight line from the reference group's model (t = 0) to another's (t = 1), per seed:
    L((1 - t) θ_ref + t θ_other) - L(θ_ref). Each seed has its own colour, dash and marker, so the barrier
    in a legend entry can be matched to its curve (group colours would make every seed look alike)."""
    fig = go.Figure()
    seeds = sorted({s for per_seed in lines.values() for s in per_seed})
    for g, (lab, per_seed) in enumerate(lines.items()):
        for s, ln in sorted(per_seed.items()):
            ts = np.asarray(ln["ts"])
            loss = np.asarray(ln["loss"])
            k = seeds.index(s)
            name = f"{reference} → {lab}, seed {s} (barrier {ln['barrier']:.3g})"
            fig.add_trace(
                go.Scatter(
                    x=ts,
                    y=loss - loss[ts == 0.0][0],
                    name=name,
                    # the whole name (plotly cuts a trace name at 15 characters) and 3 significant digits
                    hovertemplate=f"{name}<br>t = %{{x:.3~g}}<br>Δloss = %{{y:.3~g}}<extra></extra>",
                    line=dict(color=SEED_PALETTE[k % len(SEED_PALETTE)], width=2, dash=DASHES[(k + g) % len(DASHES)]),
                    mode="lines+markers",
                    marker=dict(symbol=SYMBOLS[k % len(SYMBOLS)], size=6),
                    opacity=0.9,
                )
            )
    fig.add_vline(x=0, line=dict(color="#888", dash="dot"))
    fig.add_vline(x=1, line=dict(color="#888", dash="dot"))
    fig.update_layout(
        height=380,
        xaxis_title=f"t: (1 − t)·θ[{reference}] + t·θ[other], same seed",
        yaxis_title=f"Δloss = L(θ<sub>t</sub>) − L(θ[{reference}])",
        legend=dict(orientation="h", y=-0.25),
        **LAYOUT,
    )
    return fig


def measures_figure(
    points: Mapping[str, Mapping[str, list[tuple]]],
    labels: Mapping[str, str],
    colors: Mapping[str, str],
) -> go.Figure:
    """Small multiples, one per measure: value against round, a marker per seed and measured round. A point
    ``(seed, round, value)`` or ``(seed, round, value, censored)``: a censored 1D width (not reached within the
    slice radius; the value is a lower bound) is an open marker, and its hover says so."""
    keys = list(labels)
    cols = 3
    rows = (len(keys) + cols - 1) // cols
    fig = make_subplots(
        rows=rows, cols=cols, subplot_titles=[labels[k] for k in keys], vertical_spacing=0.14, horizontal_spacing=0.08
    )
    shown: set[str] = set()
    for i, key in enumerate(keys):
        r, c = i // cols + 1, i % cols + 1
        for lab, pts in points[key].items():
            for cut in (False, True):
                sel = [p for p in pts if (len(p) > 3 and bool(p[3])) == cut]
                if not sel:
                    continue
                fig.add_trace(
                    go.Scatter(
                        x=[p[1] for p in sel],
                        y=[p[2] for p in sel],
                        mode="markers",
                        marker=dict(
                            color="white" if cut else colors[lab],
                            size=8,
                            line=dict(width=1.5 if cut else 0.5, color=colors[lab] if cut else "black"),
                        ),  # fmt: skip
                        name=lab,
                        legendgroup=lab,
                        showlegend=lab not in shown,
                        text=[f"seed {p[0]}" for p in sel],
                        hovertemplate="round %{x}<br>"
                        + ("≥ %{y:.3g}: not reached within the slice radius" if cut else "%{y:.3g}")
                        + "<br>%{text}<extra>"
                        + lab
                        + "</extra>",
                    ),
                    row=r,
                    col=c,
                )
                shown.add(lab)
        fig.update_xaxes(title_text="round", tickformat="d", row=r, col=c)
    plot = 300 * rows - 40  # the plot area: the legend 40 px above it, clear of the first row's titles
    fig.update_layout(
        height=300 * rows + 60,
        legend=dict(orientation="h", x=0, y=1 + 40 / plot, yanchor="bottom"),
        **{**LAYOUT, "margin": dict(l=60, r=20, t=90, b=50)},
    )
    return stack_narrow(fig, [labels[k] for k in keys], 240)


def over_rounds_figure(
    curves: Sequence[Mapping[str, Any]],
    panels: Sequence[tuple[str, str]],
    colors: Mapping[str, str],
    *,
    height: int = 380,
    markers: bool | None = None,
) -> go.Figure:
    """Per-round metrics side by side (one panel per (key, title)); a line per run, coloured by group (the
    legend names the seed of a group drawn by one seed).

    ``markers``: draw a marker at every point (default: only for short series); where rounds are
    missing the line breaks, so isolated saved rounds show as markers only.
    """
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[t for _, t in panels], horizontal_spacing=0.08)
    runs: dict[tuple[str, int], list[Mapping[str, Any]]] = {}
    for row in curves:
        runs.setdefault((row["run"], row["seed"]), []).append(row)
    seeds: dict[str, set[int]] = {}
    for lab, s in runs:
        seeds.setdefault(lab, set()).add(s)
    shown: set[str] = set()
    for col, (key, _) in enumerate(panels, start=1):
        for (lab, s), rows in runs.items():
            pts = [r for r in rows if r.get(key) is not None]
            if not pts:
                continue
            xs, ys = gapped([r["round"] for r in pts], [r[key] for r in pts])
            status = pts[0].get("status", "complete")
            fig.add_trace(
                go.Scatter(
                    x=xs,
                    y=ys,
                    mode="lines+markers" if (markers if markers is not None else len(pts) < 40) else "lines",
                    marker=dict(size=5),
                    line=dict(color=colors[lab], width=1.4, dash="dash" if status == "diverged" else "solid"),
                    name=lab if len(seeds[lab]) > 1 else f"{lab}, seed {s}",  # a group drawn by one seed says which
                    legendgroup=lab,
                    showlegend=lab not in shown,
                    hovertemplate=f"seed {s}"
                    + (" (diverged)" if status == "diverged" else "")
                    + "<br>round %{x}<br>%{y:.4g}<extra>"
                    + lab
                    + "</extra>",
                ),
                row=1,
                col=col,
            )
            shown.add(lab)
        fig.update_xaxes(title_text="round", tickformat="d", row=1, col=col)
    fig.update_layout(height=height, legend=dict(orientation="h", y=-0.25), **LAYOUT)
    return stack_narrow(fig, [t for _, t in panels], 280)
