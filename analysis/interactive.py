"""Interactive plotly figures of computed surfaces and curves, as HTML that opens offline.

Takes results only (:class:`analysis.surfaces.Surface`, plain lists); never computes or reads
checkpoints. Every page embeds plotly.js (no CDN, no network): ``write_page`` inlines it
once however many figures the page holds.

* 2D surface: a 3D surface and a contour map side by side, with the models drawn on them --
  the checkpoint (star), FedMut's mutants, the returned client models, other named models and
  the optimisation trajectory (a line) -- at their least-squares coordinates in the plane and
  their own loss; hover shows loss, accuracy and the distance off the plane;
* 1D surface: loss and accuracy along the line, models as points;
* several surfaces (rounds) in one figure get a slider; a shared colour range makes surfaces
  of different runs comparable.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from analysis.surfaces import Surface

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


def color_range(surfaces: Sequence[Surface], metric: str = "loss", clip: float | None = None) -> tuple[float, float]:
    """One (min, max) over several surfaces, so they share a colour scale; ``clip`` caps max."""
    vals = np.concatenate([_value(s, metric)[np.isfinite(_value(s, metric))].ravel() for s in surfaces])
    lo, hi = float(vals.min()), float(vals.max())
    if clip is not None:
        hi = min(hi, clip)
    return lo, max(hi, lo + 1e-12)


def use_log_scale(crange: tuple[float, float], metric: str = "loss") -> bool:
    """Colour by log10(loss) when the range spans more than a factor 20 (else the basin is one colour)."""
    return metric == "loss" and crange[0] > 0 and crange[1] / crange[0] > 20


def _surface_traces(surf: Surface, metric: str, crange: tuple[float, float], show_scale: bool) -> list[tuple]:
    """(trace, row, col) of one 2D surface: 3D surface, contour, and marker traces in both."""
    raw = np.clip(_value(surf, metric), *crange).T  # plotly: z[j, i] at (x_i, y_j)
    a, b = surf.alphas, surf.betas
    log = use_log_scale(crange, metric)
    if log:
        color, cmin, cmax = np.log10(raw), np.log10(crange[0]), np.log10(crange[1])
        ticks = [v for v in np.geomspace(crange[0], crange[1], 7)]
        cbar = dict(
            title=metric + " (log)", len=0.8, tickvals=np.log10(ticks).tolist(), ticktext=[f"{t:.3g}" for t in ticks]
        )
    else:
        color, (cmin, cmax) = raw, crange
        cbar = dict(title=metric, len=0.8)
    hover = "a %{x:.3f}<br>b %{y:.3f}<br>" + metric + " %{customdata:.4g}<extra></extra>"
    z = raw
    out: list[tuple] = [
        (
            go.Surface(
                x=a,
                y=b,
                z=z,
                surfacecolor=color,
                customdata=raw,
                cmin=cmin,
                cmax=cmax,
                colorscale="Viridis",
                showscale=False,
                name=metric,
                hovertemplate=hover,
            ),
            1,
            1,
        ),
        (
            go.Contour(
                x=a,
                y=b,
                z=color,
                customdata=raw,
                zmin=cmin,
                zmax=cmax,
                ncontours=20,
                colorscale="Viridis",
                showscale=show_scale,
                colorbar=cbar,
                contours=dict(showlabels=not log, labelfont=dict(size=9, color="white")),
                name=metric,
                hovertemplate=hover,
            ),
            1,
            2,
        ),
    ]
    z0 = float(np.clip(_value(surf, metric)[len(a) // 2, len(b) // 2], *crange)) if len(a) % 2 else None
    origin = [0.0, 0.0]
    if z0 is not None:
        text = f"checkpoint (round {surf.description.get('round', '?')})<br>{metric} {z0:.4g}"
        out.append(
            (
                go.Scatter3d(
                    x=[origin[0]],
                    y=[origin[1]],
                    z=[z0],
                    mode="markers",
                    marker=dict(size=6, color="black", symbol="x"),
                    name="checkpoint",
                    hovertext=[text],
                    hoverinfo="text",
                    showlegend=False,
                ),
                1,
                1,
            )
        )
    out.append(
        (
            go.Scatter(
                x=[origin[0]],
                y=[origin[1]],
                mode="markers",
                marker=dict(size=14, color="black", symbol="star"),
                name="checkpoint",
                hovertext=[f"checkpoint (round {surf.description.get('round', '?')})"],
                hoverinfo="text",
            ),
            1,
            2,
        )
    )
    groups: dict[str, list[dict]] = {}
    for m in surf.markers:
        groups.setdefault(m["group"], []).append(m)
    for group, ms in groups.items():
        st = GROUP_STYLE.get(group, dict(color="#444", symbol="circle", label=group))
        xs = [m["coords"][0] for m in ms]
        ys = [m["coords"][1] for m in ms]
        zs = [float(np.clip(m["loss"] if metric == "loss" else m["accuracy"], *crange)) for m in ms]
        texts = [_hover(m) for m in ms]
        line = group == "trajectory"
        out.append(
            (
                go.Scatter3d(
                    x=xs,
                    y=ys,
                    z=zs,
                    mode="lines+markers" if line else "markers",
                    marker=dict(size=3 if line else 5, color=st["color"], line=dict(width=1, color="black")),
                    line=dict(color=st["color"], width=3),
                    name=st["label"],
                    hovertext=texts,
                    hoverinfo="text",
                    showlegend=False,
                ),
                1,
                1,
            )
        )
        out.append(
            (
                go.Scatter(
                    x=xs,
                    y=ys,
                    mode="lines+markers" if line else "markers",
                    marker=dict(
                        size=6 if line else 10,
                        color=st["color"],
                        symbol=st["symbol"],
                        line=dict(width=1, color="black"),
                    ),
                    line=dict(color=st["color"], width=2),
                    name=st["label"],
                    hovertext=texts,
                    hoverinfo="text",
                ),
                1,
                2,
            )
        )
    return out


def surface_figure(
    frames: Sequence[tuple[str, Surface]],
    *,
    metric: str = "loss",
    title: str = "",
    crange: tuple[float, float] | None = None,
    clip: float | None = None,
) -> go.Figure:
    """A 2D surface (3D view + contour), or several with a slider (one step per frame label)."""
    if not frames:
        raise ValueError("no surfaces")
    if any(s.betas is None for _, s in frames):
        return curve_figure(frames, title=title)
    crange = crange or color_range([s for _, s in frames], metric, clip)
    fig = make_subplots(
        rows=1,
        cols=2,
        specs=[[{"type": "scene"}, {"type": "xy"}]],
        column_widths=[0.5, 0.5],
        horizontal_spacing=0.06,
    )
    spans = []
    for k, (_, surf) in enumerate(frames):
        first = len(fig.data)
        for trace, row, col in _surface_traces(surf, metric, crange, show_scale=True):
            trace.visible = k == 0
            fig.add_trace(trace, row=row, col=col)
        spans.append((first, len(fig.data)))
    desc = frames[0][1].description
    fig.update_layout(
        title=dict(text=title or f"{metric} surface", x=0.01),
        scene=dict(
            xaxis_title="a: " + (desc.get("x_label") or ""),
            yaxis_title="b: " + (desc.get("y_label") or ""),
            zaxis=dict(title=metric, range=list(crange)),
            camera=dict(eye=dict(x=1.5, y=-1.5, z=1.0)),
        ),
        xaxis=dict(title="a: " + (desc.get("x_label") or "")),
        yaxis=dict(title="b: " + (desc.get("y_label") or ""), scaleanchor=None),
        legend=dict(orientation="h", x=0.0, y=1.06, font=dict(size=11)),
        height=620,
        margin=dict(l=10, r=10, t=60, b=40),
        template="plotly_white",
    )
    if len(frames) > 1:
        steps = []
        for k, (label, _) in enumerate(frames):
            vis = [False] * len(fig.data)
            for i in range(*spans[k]):
                vis[i] = True
            steps.append(dict(method="update", label=label, args=[{"visible": vis}]))
        fig.update_layout(sliders=[dict(active=0, steps=steps, currentvalue=dict(prefix=""), pad=dict(t=40))])
    return fig


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
    fig.update_layout(title=dict(text=title or "1D loss", x=0.01), height=460, template="plotly_white")
    return fig


def write_page(path: Path, title: str, sections: Sequence[tuple[str, object]], *, intro: str = "") -> Path:
    """One self-contained HTML page: plotly.js inlined once, then each (heading, figure-or-HTML).

    A section's body is a plotly figure or an HTML string (tables, images as data URIs).
    """
    from plotly.offline import get_plotlyjs

    from flatfl.checkpoint import atomic_write_bytes

    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:system-ui,sans-serif;max-width:1400px;margin:auto;padding:1em;color:#222}"
        "table{border-collapse:collapse;font-size:0.9em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
        "th{background:#f3f3f3}h2{border-bottom:1px solid #ddd;margin-top:1.6em}code,pre{background:#f6f6f6}"
        "pre{padding:0.6em;overflow-x:auto;font-size:0.85em}.row{display:flex;flex-wrap:wrap;gap:1em}</style>",
        f"<script type='text/javascript'>{get_plotlyjs()}</script>",
        f"</head><body><h1>{html.escape(title)}</h1>{intro}",
    ]
    for heading, body in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        if isinstance(body, go.Figure):
            parts.append(body.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False}))
        else:
            parts.append(str(body))
    parts.append("</body></html>")
    atomic_write_bytes(Path(path), "\n".join(parts).encode())
    return Path(path)
