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
import json
import math
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


def level_edges(zrange: tuple[float, float], levels: int | None = None, marks: Sequence[float] = ()) -> np.ndarray:
    """The Δloss levels of a contour map, as increasing edges from ``zrange[0]`` to ``zrange[1]``.

    ``levels`` an int: that many linear levels (equal steps). ``None`` (default): a 1-2-5 sequence
    (0.01, 0.02, 0.05, 0.1, ...) from 1/100 of the top -- or the smallest of ``marks`` if lower --
    up to the top, plus ``marks`` themselves (the verdict's width thresholds), so the basin around the
    checkpoint, where a width at Δloss 0.1 is read, gets levels of its own instead of one colour; 0 is
    an edge when the range dips below it.
    """
    lo, hi = float(zrange[0]), float(max(zrange[1], zrange[0] + 1e-12))
    if levels is not None:
        return np.linspace(lo, hi, int(levels) + 1)
    inside = [m for m in marks if lo < m < hi]
    floor = min([hi / 100] + inside) if hi > 0 else hi
    vals = set(inside)
    if hi > 0:
        e = math.floor(math.log10(floor))
        while 10.0**e <= hi * 10:
            vals.update(v * 10.0**e for v in (1, 2, 5) if floor * (1 - 1e-9) <= v * 10.0**e < hi * (1 - 1e-9))
            e += 1
    if lo < 0 < hi:
        vals.add(0.0)
    return np.array(sorted({lo, hi} | {float(f"{v:.6g}") for v in vals if lo < v < hi}))


def _level_index(d: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Δloss mapped piecewise-linearly onto the edges' indices (edge k -> k): uneven levels drawn with
    plotly's even contour steps, one colour band between two levels."""
    return np.interp(d, edges, np.arange(len(edges), dtype=float))


def _colorbar(edges: np.ndarray) -> dict:
    """A colour bar whose ticks are the contour levels themselves (labels in Δloss)."""
    return dict(title="Δloss", len=0.9, tickvals=list(range(len(edges))), ticktext=[f"{e:.3g}" for e in edges])


def _contour_traces(surf: Surface, edges: np.ndarray, show_scale: bool) -> list:
    """Contour of Δloss on the levels ``edges`` (see :func:`level_edges`), then the models, then the
    checkpoint star on top."""
    z0 = surf.origin_loss()
    d = np.clip(surf.loss - z0, edges[0], edges[-1]).T  # plotly: z[j, i] at (x_i, y_j)
    traces: list = [
        go.Contour(
            x=surf.alphas,
            y=surf.betas,
            z=_level_index(d, edges),
            customdata=d,
            zmin=0,
            zmax=len(edges) - 1,
            autocontour=False,
            contours=dict(start=1, end=len(edges) - 2 + 1e-9, size=1, showlabels=False),
            colorscale="Viridis",
            showscale=show_scale,
            colorbar=_colorbar(edges),
            name="Δloss",
            hovertemplate="a %{x:.3f}<br>b %{y:.3f}<br>Δloss %{customdata:.4g}<extra></extra>",
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


def _scene_traces(surf: Surface, edges: np.ndarray) -> list:
    """3D Δloss surface (height: Δloss; colour: the contour map's level bands) with the models; symbols
    limited to ones WebGL draws (no glyph fallback)."""
    z0 = surf.origin_loss()
    zrange = (float(edges[0]), float(edges[-1]))
    d = np.clip(surf.loss - z0, *zrange).T
    traces: list = [
        go.Surface(
            x=surf.alphas,
            y=surf.betas,
            z=d,
            surfacecolor=_level_index(d, edges),
            cmin=0,
            cmax=len(edges) - 1,
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
    levels: int | None = None,
    title: str = "",
    marks: Sequence[float] = (),
) -> tuple[go.Figure, go.Figure | None]:
    """(contour figure, 3D figure) of 2D surfaces, a slider over frames; (curve figure, None) for 1D.

    The contour is its own figure (it renders without WebGL); both show Δloss = loss − loss at the
    checkpoint on the levels of :func:`level_edges` (``levels`` linear ones, or by default a 1-2-5
    sequence holding ``marks``, e.g. the width thresholds) over ``zrange`` (default
    :func:`delta_range`), the colour bar's ticks on those levels, equal
    aspect, the checkpoint star drawn last.
    """
    if not frames:
        raise ValueError("no surfaces")
    if any(s.betas is None for _, s in frames):
        return curve_figure(frames, title=title), None
    zrange = zrange or delta_range([s for _, s in frames])
    edges = level_edges(zrange, levels, marks)
    desc = frames[0][1].description
    xl, yl = "a: " + (desc.get("x_label") or ""), "b: " + (desc.get("y_label") or "")
    contour, scene = go.Figure(), go.Figure()
    cspans, sspans = [], []
    for _, surf in frames:
        first = len(contour.data)
        for tr in _contour_traces(surf, edges, show_scale=True):
            contour.add_trace(tr)
        cspans.append((first, len(contour.data)))
        first = len(scene.data)
        for tr in _scene_traces(surf, edges):
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
        # below 700 px (the page's script scales the map to the screen): short axis titles, a smaller title,
        # so the rotated y title never runs into the figure's title
        meta={
            "narrow": {
                "title": {"font": {"size": 12}},
                "xaxis": {"title": {"text": "a"}},
                "yaxis": {"title": {"text": "b"}},
                "margin": {"l": 40, "r": 10, "t": 60, "b": 50},
            }
        },
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


# Figures are initialised after the page: the text (the answer first) paints before plotly.js is parsed.
# Each figure's JSON sits in a <script type="application/json">; the script at the end of the body draws it,
# scaled to its box, stacked into one column on a narrow screen when the figure says how
# (``layout.meta.narrow``: a layout patch), and a WebGL figure in a browser without WebGL is replaced by
# one line (plotly's own message links to an outside site).
_INIT_JS = r"""
(function () {
  var gl = false;
  try { var c = document.createElement('canvas'); gl = !!(window.WebGLRenderingContext &&
        (c.getContext('webgl') || c.getContext('experimental-webgl'))); } catch (e) { gl = false; }
  function merge(a, b) {
    var out = Object.assign({}, a || {});
    for (var k in b) {
      out[k] = (b[k] && typeof b[k] === 'object' && !Array.isArray(b[k])) ? merge(out[k], b[k]) : b[k];
    }
    return out;
  }
  function draw(div) {
    var spec = JSON.parse(document.getElementById(div.dataset.src).textContent);
    var fig = spec.fig, layout = fig.layout || {}, meta = layout.meta || {};
    if (spec.webgl && !gl) {
      var p = document.createElement('p'); p.className = 'nogl'; p.textContent = spec.nogl;
      div.replaceWith(p); return;
    }
    var w = div.parentNode.clientWidth;
    if (meta.narrow && w < 700) { layout = merge(layout, meta.narrow); }
    if (layout.width && w && w < layout.width) {
      if (spec.keep_aspect) { layout.height = Math.round(layout.height * w / layout.width) + 40; }
      layout.width = w;
    }
    Plotly.newPlot(div, fig.data, layout, {displaylogo: false, responsive: true});
  }
  document.querySelectorAll('div.plot').forEach(function (div) {
    var box = div.closest('details');
    if (box && !box.open) {  // drawn when first opened: a closed box has no width to fit
      box.addEventListener('toggle', function once() {
        if (box.open) { box.removeEventListener('toggle', once); draw(div); }
      });
      return;
    }
    draw(div);
  });
})();
"""

_GL_TRACES = {"surface", "scatter3d", "mesh3d", "cone", "streamtube", "volume", "isosurface", "scattergl"}


def _slug(text: str, taken: set[str]) -> str:
    base = "".join(ch if ch.isalnum() else "-" for ch in text.lower()).strip("-")
    base = "-".join(filter(None, base.split("-")))[:60] or "section"
    slug, k = base, 2
    while slug in taken:
        slug, k = f"{base}-{k}", k + 1
    taken.add(slug)
    return slug


def section_id(heading: str) -> str:
    """The anchor :func:`page_html` gives the section under ``heading`` (its first use on the page)."""
    return _slug(heading, set())


def _figure_html(fig: go.Figure, fid: str) -> str:
    """A figure as an empty box plus its JSON (drawn by ``_INIT_JS`` once plotly.js is loaded)."""
    webgl = any(t.type in _GL_TRACES for t in fig.data)
    keep = fig.layout.yaxis.scaleanchor == "x" and fig.layout.width is not None
    spec = {
        "fig": json.loads(fig.to_json()),
        "webgl": webgl,
        "keep_aspect": keep,
        "nogl": "This 3D view needs WebGL, which this browser has turned off; the contour map shows the same surface.",
    }
    data = json.dumps(spec, separators=(",", ":")).replace("</", "<\\/")
    return (
        f"<div class='fig'><div class='plot' id='{fid}' data-src='{fid}-json'></div></div>"
        f"<script type='application/json' id='{fid}-json'>{data}</script>"
    )


PAGE_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:1400px;margin:auto;padding:1em;color:#222}"
    "table{border-collapse:collapse;font-size:0.9em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
    "th{background:#f3f3f3}h2{border-bottom:1px solid #ddd;margin-top:1.6em}code,pre{background:#f6f6f6}"
    "pre{padding:0.6em;overflow-x:auto;font-size:0.85em}.row{display:flex;flex-wrap:wrap;gap:1em}"
    "div.fig,div.scroll{overflow-x:auto;max-width:100%}img{max-width:100%}"
    "nav.toc{font-size:0.85em;color:#555;margin:0.2em 0 0.8em}nav.toc a{color:#1f4e79}"
    "p.nogl{color:#555;font-style:italic}"
)


def page_html(title: str, sections: Sequence[tuple[str, object]], *, intro: str = "", css: str = "") -> str:
    """One self-contained HTML page: each (heading, figure-or-HTML) under an anchored heading, a contents
    line of links, then plotly.js inlined once at the end.

    A section's body is a plotly figure, an HTML string (tables, images as data URIs) or a list of
    them (a caption and its figure under one heading). The page opens offline (no CDN, no outside
    link), declares its language and a device-width viewport, and keeps wide figures and tables
    inside their own horizontal scroll so a phone-width page does not scroll sideways. Its text
    paints before plotly.js is parsed: figures are drawn by a script at the end of the body,
    fitted to the screen's width (equal-aspect maps keep their aspect; a figure whose
    ``layout.meta["narrow"]`` holds a layout patch takes it below 700 px, e.g. panels stacked in one
    column); a WebGL figure in a browser without WebGL is replaced by one line.
    """
    from plotly.offline import get_plotlyjs

    taken: set[str] = set()
    slugs = [_slug(h, taken) for h, _ in sections]
    toc = ""
    if len(sections) > 2:
        links = " · ".join(f"<a href='#{s}'>{html.escape(h)}</a>" for s, (h, _) in zip(slugs, sections))
        # open on a wide screen, one line ("Contents") on a phone, where the answer should fill the first screen
        toc = (
            f"<nav class='toc' aria-label='contents'><details id='toc'><summary>Contents</summary>{links}</details>"
            "</nav><script>if (window.innerWidth >= 700) document.getElementById('toc').open = true;</script>"
        )
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>{html.escape(title)}</title>",
        f"<style>{PAGE_STYLE}{css}</style>",
        f"</head><body><h1>{html.escape(title)}</h1>{intro}{toc}",
    ]
    n = 0
    for slug, (heading, body) in zip(slugs, sections):
        parts.append(f"<h2 id='{slug}'>{html.escape(heading)}</h2>")
        for item in body if isinstance(body, (list, tuple)) else [body]:
            if isinstance(item, go.Figure):  # a fixed-width figure scrolls in its own box, not the page
                n += 1
                parts.append(_figure_html(item, f"fig{n}"))
            else:
                parts.append(str(item))
    if n:
        parts.append(f"<script type='text/javascript'>{get_plotlyjs()}</script>")
        parts.append(f"<script type='text/javascript'>{_INIT_JS}</script>")
    parts.append("</body></html>")
    return "\n".join(parts)
