"""Interactive plotly figures of computed surfaces and curves, as HTML that opens offline.

Takes results only (:class:`flatfl.analysis.surfaces.Surface`, plain lists); never computes or reads
checkpoints. Every page embeds plotly.js (no CDN, no network): ``page_html`` inlines it
once however many figures the page holds.

* 2D surface: a 3D surface and a contour map side by side, with the models drawn on them --
  the checkpoint (star), FedMut's mutants, the returned client models, other named models and
  the optimisation trajectory (a line) -- at their least-squares coordinates in the plane and
  their own loss; hover shows loss, accuracy and the distance off the plane; a model farther off
  the plane than from the checkpoint within it is not drawn (``Surface.drawn_marker_groups``);
* 1D surface: loss and accuracy along the line, models as points;
* several surfaces (rounds) in one figure get a slider; a shared colour range makes surfaces
  of different runs comparable.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from flatfl.analysis.surfaces import Surface

GROUP_STYLE = {
    "mutants": dict(color="#e66101", symbol="diamond", label="mutants (sent next round)"),
    "clients": dict(color="#1a9641", symbol="circle", label="returned client models"),
    "models": dict(color="#d7191c", symbol="square", label="models"),
    "trajectory": dict(color="#f7f7f7", symbol="circle", label="trajectory (global per round)"),
}


def _hover(m: dict) -> str:
    return (
        f"{html.escape(m['name'])}<br>loss {m['loss']:.4g}, acc {m['accuracy']:.3f}"
        f"<br>off plane {m['off_plane']:.3g} ({100 * m.get('off_plane_relative', 0.0):.2g}% of ||w||)"
    )


def _value(surf: Surface, metric: str) -> np.ndarray:
    return surf.loss if metric == "loss" else surf.accuracy


def delta_range(surfaces: Sequence[Surface]) -> tuple[float, float]:
    """(lo, hi) for Δloss = loss − loss(checkpoint) shared by several surfaces: hi is the median of the
    surfaces' own largest Δloss (every surface spans most of the levels, none dwarfs the rest); lo is 0, or
    the lowest Δloss where a plane dips below its checkpoint (the checkpoint is then not the plane's minimum)."""
    tops, lows = [], [0.0]
    for s in surfaces:
        d = s.loss - s.origin_loss()
        d = d[np.isfinite(d)]
        if d.size:
            tops.append(float(d.max()))
            lows.append(float(d.min()))
    hi = float(np.median(tops)) if tops else 1.0
    lo = min(lows)
    return lo, max(hi, lo + 1e-12)


def _marker_label(group: str, surf: Surface) -> str:
    if group == "mutants" and surf.description.get("algo") == "fedavg":
        return "global model sent (next round)"
    return GROUP_STYLE.get(group, {}).get("label", group)


def _contour_traces(surf: Surface, zrange: tuple[float, float], levels: int, show_scale: bool) -> list:
    """Contour of Δloss on fixed linear levels, then the models, then the checkpoint star on top."""
    z0 = surf.origin_loss()
    d = np.clip(surf.loss - z0, *zrange).T  # plotly: z[j, i] at (x_i, y_j)
    step = (zrange[1] - zrange[0]) / max(levels, 1)
    traces: list = [
        go.Contour(
            x=surf.alphas,
            y=surf.betas,
            z=d,
            zmin=zrange[0],
            zmax=zrange[1],
            autocontour=False,
            contours=dict(
                start=zrange[0] + step,
                end=zrange[1],
                size=step,
                showlabels=True,
                labelfont=dict(size=10, color="white"),
            ),
            colorscale="Viridis",
            showscale=show_scale,
            colorbar=dict(title="Δloss", len=0.9),
            name="Δloss",
            hovertemplate="a %{x:.3f}<br>b %{y:.3f}<br>Δloss %{z:.4g}<extra></extra>",
        )
    ]
    for group, ms in surf.drawn_marker_groups()[0].items():
        st = GROUP_STYLE.get(group, dict(color="#444", symbol="circle"))
        line = group == "trajectory"
        traces.append(
            go.Scatter(
                x=[m["coords"][0] for m in ms],
                y=[m["coords"][1] for m in ms],
                mode="lines+markers" if line else "markers",
                marker=dict(
                    size=6 if line else 10, color=st["color"], symbol=st["symbol"], line=dict(width=1, color="black")
                ),
                line=dict(color=st["color"], width=2),
                name=_marker_label(group, surf),
                hovertext=[_hover(m) for m in ms],
                hoverinfo="text",
            )
        )
    traces.append(
        go.Scatter(
            x=[0.0],
            y=[0.0],
            mode="markers",
            marker=dict(size=16, color="black", symbol="star", line=dict(width=1, color="white")),
            name="checkpoint",
            hovertext=[f"checkpoint (round {surf.description.get('round', '?')}), loss {z0:.4g}"],
            hoverinfo="text",
        )
    )
    return traces


def _scene_traces(surf: Surface, zrange: tuple[float, float]) -> list:
    """3D Δloss surface with the models; symbols limited to ones WebGL draws (no glyph fallback)."""
    z0 = surf.origin_loss()
    d = np.clip(surf.loss - z0, *zrange).T
    traces: list = [
        go.Surface(
            x=surf.alphas,
            y=surf.betas,
            z=d,
            cmin=zrange[0],
            cmax=zrange[1],
            colorscale="Viridis",
            showscale=False,
            name="Δloss",
            hovertemplate="a %{x:.3f}<br>b %{y:.3f}<br>Δloss %{z:.4g}<extra></extra>",
        )
    ]
    for group, ms in surf.drawn_marker_groups()[0].items():
        st = GROUP_STYLE.get(group, dict(color="#444"))
        traces.append(
            go.Scatter3d(
                x=[m["coords"][0] for m in ms],
                y=[m["coords"][1] for m in ms],
                z=[float(np.clip(m["loss"] - z0, *zrange)) for m in ms],
                mode="lines+markers" if group == "trajectory" else "markers",
                marker=dict(size=4, color=st["color"], symbol="circle", line=dict(width=1, color="black")),
                name=_marker_label(group, surf),
                hovertext=[_hover(m) for m in ms],
                hoverinfo="text",
            )
        )
    traces.append(
        go.Scatter3d(
            x=[0.0],
            y=[0.0],
            z=[0.0],
            mode="markers",
            marker=dict(size=6, color="black", symbol="diamond"),
            name="checkpoint",
            hovertext=[f"checkpoint, loss {z0:.4g}"],
            hoverinfo="text",
        )
    )
    return traces


def _with_slider(fig: go.Figure, spans: list[tuple[int, int]], labels: list[str]) -> None:
    """One visible frame at a time, the last one first (the slider opens at the last round)."""
    last = len(spans) - 1
    for k, (a, b) in enumerate(spans):
        for i in range(a, b):
            fig.data[i].visible = k == last
    if len(spans) > 1:
        steps = []
        for k, label in enumerate(labels):
            vis = [spans[k][0] <= i < spans[k][1] for i in range(len(fig.data))]
            steps.append(dict(method="update", label=label, args=[{"visible": vis}]))
        fig.update_layout(sliders=[dict(active=last, steps=steps, currentvalue=dict(prefix=""), pad=dict(t=50))])


def surface_figures(
    frames: Sequence[tuple[str, Surface]],
    *,
    zrange: tuple[float, float] | None = None,
    levels: int = 20,
    title: str = "",
) -> tuple[go.Figure, go.Figure | None]:
    """(contour figure, 3D figure) of 2D surfaces, a slider over frames; (curve figure, None) for 1D.

    The contour is its own figure (it renders without WebGL); both show Δloss = loss − loss at the
    checkpoint on ``levels`` linear levels over ``zrange`` (default :func:`delta_range`), equal
    aspect, the checkpoint star drawn last.
    """
    if not frames:
        raise ValueError("no surfaces")
    if any(s.betas is None for _, s in frames):
        return curve_figure(frames, title=title), None
    zrange = zrange or delta_range([s for _, s in frames])
    desc = frames[0][1].description
    xl, yl = "a: " + (desc.get("x_label") or ""), "b: " + (desc.get("y_label") or "")
    contour, scene = go.Figure(), go.Figure()
    cspans, sspans = [], []
    for _, surf in frames:
        first = len(contour.data)
        for tr in _contour_traces(surf, zrange, levels, show_scale=True):
            contour.add_trace(tr)
        cspans.append((first, len(contour.data)))
        first = len(scene.data)
        for tr in _scene_traces(surf, zrange):
            scene.add_trace(tr)
        sspans.append((first, len(scene.data)))
    names = [label for label, _ in frames]
    hidden = sum(s.drawn_marker_groups()[1] for _, s in frames)
    far = (
        f" ({hidden} of {sum(len(s.markers) for _, s in frames)} models far off the plane not drawn)" if hidden else ""
    )
    _with_slider(contour, cspans, names)
    _with_slider(scene, sspans, names)
    contour.update_layout(
        title=dict(text=(title + ": " if title else "") + "Δloss contours" + far, x=0.01),
        xaxis=dict(title=xl, constrain="domain"),
        yaxis=dict(title=yl, scaleanchor="x", scaleratio=1, constrain="domain"),
        legend=dict(orientation="h", y=-0.18),
        height=640,
        width=720,
        margin=dict(l=70, r=20, t=50, b=60),
        template="plotly_white",
    )
    scene.update_layout(
        title=dict(text=(title + ": " if title else "") + "Δloss surface" + far, x=0.01),
        scene=dict(
            xaxis_title="a",
            yaxis_title="b",
            zaxis=dict(title="Δloss", range=list(zrange)),
            camera=dict(eye=dict(x=1.1, y=-1.4, z=1.5)),
            aspectmode="cube",
        ),
        legend=dict(orientation="h", y=-0.05),
        height=600,
        margin=dict(l=10, r=10, t=50, b=40),
        template="plotly_white",
    )
    return contour, scene


def curve_figure(frames: Sequence[tuple[str, Surface]], *, title: str = "") -> go.Figure:
    """1D surfaces: loss (left axis) and accuracy (right axis) along each line; models as points."""
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
    for k, (label, s) in enumerate(frames):
        c = palette[k % len(palette)]
        fig.add_trace(go.Scatter(x=s.alphas, y=s.loss, name=f"{label}: loss", line=dict(color=c)), secondary_y=False)
        fig.add_trace(
            go.Scatter(x=s.alphas, y=s.accuracy, name=f"{label}: accuracy", line=dict(color=c, dash="dot")),
            secondary_y=True,
        )
        ms = [m for m in s.markers if len(m["coords"]) >= 1]
        if ms:
            fig.add_trace(
                go.Scatter(
                    x=[m["coords"][0] for m in ms],
                    y=[m["loss"] for m in ms],
                    mode="markers",
                    marker=dict(size=9, color=c, symbol="diamond", line=dict(width=1, color="black")),
                    name=f"{label}: models",
                    hovertext=[_hover(m) for m in ms],
                    hoverinfo="text",
                ),
                secondary_y=False,
            )
    desc = frames[0][1].description
    fig.update_xaxes(title_text=desc.get("x_label") or "a")
    fig.update_yaxes(title_text="loss", secondary_y=False)
    fig.update_yaxes(title_text="accuracy", secondary_y=True, range=[0, 1])
    fig.update_layout(
        title=dict(text=title or "1D loss", x=0.01),
        height=480,
        template="plotly_white",
        legend=dict(orientation="h", y=-0.2),  # below the plot: never over the ticks of either axis
    )
    return fig


def page_html(title: str, sections: Sequence[tuple[str, object]], *, intro: str = "", css: str = "") -> str:
    """One self-contained HTML page: plotly.js inlined once, then each (heading, figure-or-HTML).

    A section's body is a plotly figure, an HTML string (tables, images as data URIs) or a list of
    them (a caption and its figure under one heading). The page opens offline (no CDN), declares
    its language and a device-width viewport, and keeps wide figures and tables inside their own
    horizontal scroll so a phone-width page does not scroll sideways.
    """
    from plotly.offline import get_plotlyjs

    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:system-ui,sans-serif;max-width:1400px;margin:auto;padding:1em;color:#222}"
        "table{border-collapse:collapse;font-size:0.9em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
        "th{background:#f3f3f3}h2{border-bottom:1px solid #ddd;margin-top:1.6em}code,pre{background:#f6f6f6}"
        "pre{padding:0.6em;overflow-x:auto;font-size:0.85em}.row{display:flex;flex-wrap:wrap;gap:1em}"
        "div.fig{overflow-x:auto;max-width:100%}img{max-width:100%}" + css + "</style>",
        f"<script type='text/javascript'>{get_plotlyjs()}</script>",
        f"</head><body><h1>{html.escape(title)}</h1>{intro}",
    ]
    for heading, body in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        for item in body if isinstance(body, (list, tuple)) else [body]:
            if isinstance(item, go.Figure):  # a fixed-width figure scrolls in its own box, not the page
                fig = item.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False})
                parts.append(f"<div class='fig'>{fig}</div>")
            else:
                parts.append(str(item))
    parts.append("</body></html>")
    return "\n".join(parts)
