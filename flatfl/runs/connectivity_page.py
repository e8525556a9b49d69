"""The report's mode-connectivity section (``flatfl report --connect``, :mod:`flatfl.runs.connectivity`):
connectivity.csv (a row per path), connectivity.png/.pdf (a static figure for a paper) and the page's
section (what a barrier means, the tables and an interactive figure)."""

from __future__ import annotations

import csv
import html
import io
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from flatfl import checkpoint as ckpt

__all__ = ["connectivity_csv_rows", "connectivity_panels", "connectivity_sections", "plot_connectivity"]

HEADING = "Mode connectivity (Garipov et al. 2018)"


def connectivity_csv_rows(conn: Mapping[str, Any]) -> list[dict[str, Any]]:
    """connectivity.csv: one row per path (kind ``groups`` or ``clients``), with both barriers, the end losses
    and the highest loss along each path."""
    rows = []
    for p in conn["pairs"]:
        rows.append({"kind": "groups", "condition": p["condition"], "from": p["reference"], "to": p["other"],
                     "seed": p["seed"], "round_from": p["round_a"], "round_to": p["round_b"], "client": None,
                     **_numbers(p)})  # fmt: skip
    for c in conn["clients"]:
        rows.append({"kind": "clients", "condition": " ".join(c["conditions"]), "from": c["group"],
                     "to": f"client {c['client']} (returned)", "seed": c["seed"], "round_from": c["round"],
                     "round_to": c["round"], "client": c["client"], **_numbers(c)})  # fmt: skip
    return rows


def _numbers(p: Mapping[str, Any]) -> dict[str, Any]:
    return {"line_barrier": p["line_barrier"], "curve_barrier": p["curve_barrier"], "loss_from": p["line_loss"][0],
            "loss_to": p["line_loss"][-1], "line_loss_max": max(p["line_loss"]),
            "curve_loss_max": max(p["curve_loss"]), "curve_loss_min": min(p["curve_loss"]),
            "curve_dip": curve_dip(p), "curve_diverged": bool(p.get("curve_diverged"))}  # fmt: skip


def curve_dip(p: Mapping[str, Any]) -> float:
    """How far the trained curve runs below the lower end: min(L(a), L(b)) - min_t L(φ(t)), relative to
    min(L(a), L(b)); > 0 when the bend found lower loss than both end models, i.e. they are not minima of the
    analysis loss (Garipov et al. connect trained minima, where this is about 0)."""
    low = min(p["line_loss"][0], p["line_loss"][-1])
    return (low - min(p["curve_loss"])) / low if low > 0 else 0.0


def reading(conn: Mapping[str, Any], dip: float = 0.05) -> str:
    """What the barriers can and cannot say here, counted over every computed path: how many straight lines
    stay on or below the chord (line barrier 0), and how many trained curves run more than ``dip`` (5%) below
    both end models -- then the ends are not minima and a curve barrier of 0 says the bend found lower ground,
    not that two minima are joined. "" when no path was computed."""
    paths = [*conn["pairs"], *conn["clients"]]
    if not paths:
        return ""
    n = len(paths)
    flat_line = sum(p["line_barrier"] <= 0 for p in paths)
    dips = sorted(curve_dip(p) for p in paths)
    below = [d for d in dips if d > dip]
    text = f"<p><b>Reading.</b> {flat_line} of {n} straight lines never rise above the chord (line barrier 0)."
    if below:
        median = statistics.median(below)
        text += (
            f" On {len(below)} of {n} paths the trained curve runs more than {dip:.0%} below both end models "
            f"(median {median:.0%} below the lower end loss): those models are not minima of this loss, the bend "
            "found lower ground, and a barrier of 0 there does not show that two minima are joined — mode "
            "connectivity (Garipov et al. 2018) compares trained minima. Compare models that have converged "
            "(a later round, or at equal training loss) before reading these barriers as flatness."
        )
    return text + "</p>"


class Trace(NamedTuple):
    """One path of a panel: ``label`` its entry in the static figure's legend (None: no entry), ``key`` its
    entry in the interactive figure's legend (shared across panels: a seed, or a group's clients), ``name``
    the path in words (the hover box)."""

    label: str | None
    colour: str
    t: Sequence[float]
    line: Sequence[float]
    curve: Sequence[float]
    key: str
    name: str


def _seeds_text(seeds: Sequence[int]) -> str:
    return ("seed " if len(seeds) == 1 else "seeds ") + ", ".join(map(str, seeds))


def connectivity_panels(conn: Mapping[str, Any], colors: Mapping[str, str]) -> list[tuple[str, list[Trace]]]:
    """The figure's panels: (title, traces). One panel per compared pair of groups and condition (a colour per
    seed), then one per group and condition with client paths (the group's colour, one thin line per client;
    legend once)."""
    from flatfl.analysis.report_figures import SEED_PALETTE

    panels: dict[str, list[Trace]] = {}
    seeds = sorted({p["seed"] for p in conn["pairs"]} | {c["seed"] for c in conn["clients"]})
    for p in conn["pairs"]:
        title = f"{p['reference']} → {p['other']}, {p['title']}"
        colour = SEED_PALETTE[seeds.index(p["seed"]) % len(SEED_PALETTE)]
        label = f"seed {p['seed']} (rounds {p['round_a']}→{p['round_b']})"
        panels.setdefault(title, []).append(Trace(label, colour, p["t"], p["line_loss"], p["curve_loss"],
                                                  f"seed {p['seed']}", label))  # fmt: skip
    for s in conn["client_summary"]:
        title = f"{s['group']} global → its clients, {s['title']}"
        have = [c for c in conn["clients"] if c["group"] == s["group"] and s["condition"] in c["conditions"]]
        for i, c in enumerate(have):
            label = f"{len(have)} clients, {_seeds_text(s['seeds'])}" if i == 0 else None
            name = f"client {c['client']}, seed {c['seed']}, round {c['round']}"
            colour = colors.get(s["group"], "#000000")
            panels.setdefault(title, []).append(Trace(label, colour, c["t"], c["line_loss"], c["curve_loss"],
                                                      f"{s['group']} → its clients", name))  # fmt: skip
    return list(panels.items())


def plot_connectivity(panels: Sequence[tuple[str, list[Trace]]], path: Path | None) -> Any:
    """Loss along t ∈ [0, 1] per panel: the straight line dashed, the trained Bézier curve solid, as PNG and
    PDF (Okabe-Ito colours; TrueType fonts in the PDF)."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    import flatfl.analysis.plots  # noqa: F401  (the Agg backend and TrueType fonts of every static figure)

    n = len(panels)
    cols = min(n, 3)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.3 * rows), dpi=150, squeeze=False,
                             layout="constrained")  # fmt: skip
    for ax, (title, traces) in zip(axes.flat, panels):
        many = len(traces) > 6
        for label, colour, t, line, curve, *_ in traces:
            ax.plot(t, line, color=colour, ls="--", lw=0.8 if many else 1.3, alpha=0.6 if many else 0.9)
            ax.plot(t, curve, color=colour, ls="-", lw=0.8 if many else 1.6, alpha=0.6 if many else 1.0, label=label)
        ax.set_title(title, fontsize=8)
        ax.set_xlabel("t", fontsize=8)
        ax.set_ylabel("loss", fontsize=8)
        ax.set_xlim(0, 1)
        ax.grid(True, alpha=0.3)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6, loc="best")
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    style = [Line2D([], [], color="0.3", ls="--", lw=1.2), Line2D([], [], color="0.3", ls="-", lw=1.6)]
    fig.legend(style, ["straight line (1 − t)·a + t·b", "trained quadratic Bézier curve"], fontsize=7,
               loc="outside lower center", ncols=2)  # fmt: skip
    if path is None:
        return fig
    outs = [Path(path).with_suffix(".png"), Path(path).with_suffix(".pdf")]
    for p in outs:
        fig.savefig(p)
    plt.close(fig)
    return outs


def _figure(panels: Sequence[tuple[str, list[Trace]]]) -> Any:
    """The same panels, interactive: two columns (one below 700 px), the straight line dashed and the curve
    solid; the legend names each colour once (a seed, or a group's clients; a click hides it in every panel)
    and the two line styles; hover: the panel, the path, t and the loss."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from flatfl.analysis.report_figures import LAYOUT, stack_narrow

    cols = min(len(panels), 2)
    rows = -(-len(panels) // cols)
    # the path, then the condition on a second line (a group label may hold ', '): a whole title fits a phone
    titles = ["<br>".join(t.rsplit(", ", 1)) for t, _ in panels]
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=titles, vertical_spacing=min(0.4 / rows, 0.16))
    shown: set[str] = set()
    for i, (title, traces) in enumerate(panels):
        r, c = divmod(i, cols)
        for tr in traces:
            for kind, ys, dash in (("straight line", tr.line, "dash"), ("Bézier curve", tr.curve, "solid")):
                first = dash == "solid" and tr.key not in shown
                fig.add_trace(
                    go.Scatter(x=tr.t, y=ys, mode="lines", line=dict(color=tr.colour, dash=dash, width=1.5),
                               name=tr.key, legendgroup=tr.key, showlegend=first,
                               hovertemplate=f"{html.escape(title)}<br>{html.escape(tr.name)}, {kind}"
                               "<br>t = %{x:.3~g}<br>loss = %{y:.4~g}<extra></extra>"),
                    row=r + 1, col=c + 1,
                )  # fmt: skip
                if first:
                    shown.add(tr.key)
        fig.update_xaxes(title_text="t", range=[0, 1], row=r + 1, col=c + 1)
        fig.update_yaxes(title_text="loss", row=r + 1, col=c + 1)
    for name, dash in (("straight line (1 − t)·a + t·b", "dash"), ("trained Bézier curve", "solid")):
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", line=dict(color="#555555", dash=dash, width=1.5),
                                 name=name, legendgroup="style", hoverinfo="skip"), row=1, col=1)  # fmt: skip
    plot = 300 * rows
    fig.update_layout(height=plot + 200, **{**LAYOUT, "margin": dict(l=60, r=20, t=50, b=150)},
                      legend=dict(orientation="h", x=0, y=-70 / plot, yanchor="top"))  # fmt: skip
    return stack_narrow(fig, titles, 320, legend_gap=50)  # two-line titles: more room above each panel


def _table(rows: Sequence[Mapping[str, Any]], cols: Sequence[tuple[str, str]]) -> str:
    def cell(v: Any) -> str:
        return "–" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))

    head = "".join(f"<th title='connectivity.csv / report.json'>{html.escape(h)}</th>" for _, h in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell(r.get(k)))}</td>" for k, _ in cols) + "</tr>"
                   for r in rows)  # fmt: skip
    return f"<div style='overflow-x:auto'><table><tr>{head}</tr>{body}</table></div>"


CAPTION = (
    "<p>Between two models a (t = 0) and b (t = 1): the loss along the straight line (1 − t)·a + t·b and along "
    "the quadratic Bézier curve φ(t) = (1 − t)²·a + 2t(1 − t)·c + t²·b whose bend c is trained by SGD to "
    "minimise the mean loss along it (Garipov et al. 2018), on the report's analysis data. "
    "<b>Barrier</b> of a path γ: max<sub>t</sub> L(γ(t)) − [(1 − t)·L(a) + t·L(b)], how far the loss rises above "
    "the chord joining the two end losses (Frankle et al. 2020). About 0 on the line: one basin; about 0 on the "
    "curve but not on the line: the two minima are joined by a curved low-loss valley; large on both: a ridge "
    "separates them. Two kinds of paths: the compared groups' global models of the same seed, and each global "
    "model to the models its clients returned in that round. FedMut's claim (Hu et al. 2024) is a global model "
    "in a flat area within the range of the clients' models: low barriers on the second kind.</p>"
)


def connectivity_sections(conn: Mapping[str, Any] | None, out: Path, files: dict[str, Path],
                          labels: Sequence[str]) -> list[tuple[str, object]]:  # fmt: skip
    """The page's section; writes out/connectivity.csv and out/connectivity.png/.pdf (into ``files``); the
    groups ``labels`` in order (their colours, :func:`flatfl.analysis.report_figures.group_colors`)."""
    from flatfl.analysis.report_figures import group_colors

    if conn is None:
        return []
    colors = group_colors(labels)
    rows = connectivity_csv_rows(conn)
    _write_csv(out / "connectivity.csv", rows)
    files["connectivity"] = out / "connectivity.csv"
    st = conn["settings"]
    body: list[object] = [
        CAPTION + f"<p><small>{st['steps']} SGD steps on the bend (lr {st['lr']:g}, momentum {st['momentum']:g}, "
        f"cosine decay), seed {st['seed']} (flatfl landscape --connect's stream), {st['num_points']} points along "
        f"each path, up to {st['max_clients']} clients per run and round. Every path: connectivity.csv; curves: "
        "report.json's connectivity.</small></p>"
    ]
    if read := reading(conn):
        body.append(read)
    diverged = [p["curve_diverged"] for p in [*conn["pairs"], *conn["clients"]] if p.get("curve_diverged")]
    if diverged:  # their curve barriers are nan: said where the numbers are read
        body.append(f"<p><b>Warning.</b> {len(diverged)} of {len(conn['pairs']) + len(conn['clients'])} paths: "
                    f"{html.escape(diverged[0])}.</p>")  # fmt: skip
    if conn["pairs"]:
        body.append("<h3>Between the groups' models of the same seed</h3>")
        cols = [("title", "condition"), ("reference", "from (t = 0)"), ("other", "to (t = 1)"), ("seed", "seed"),
                ("round_a", "round from"), ("round_b", "round to"), ("line_barrier", "line barrier"),
                ("curve_barrier", "curve barrier")]  # fmt: skip
        body.append(_table(conn["pairs"], cols))
    if conn["client_summary"]:
        body.append("<h3>Between each global model and its clients' returned models</h3>")
        summ = [{**s, "line": _range(s, "line"), "curve": _range(s, "curve"), "seeds": ", ".join(map(str, s["seeds"]))}
                for s in conn["client_summary"]]  # fmt: skip
        body.append(_table(summ, [("group", "group"), ("title", "condition"), ("paths", "paths"), ("seeds", "seeds"),
                                  ("line", "line barrier: median [min, max]"),
                                  ("curve", "curve barrier: median [min, max]")]))  # fmt: skip
    if conn["skipped"]:
        items = "".join(f"<li>{html.escape(s)}</li>" for s in conn["skipped"])
        body.append(f"<details><summary>Paths left out ({len(conn['skipped'])})</summary><ul>{items}</ul></details>")
    panels = connectivity_panels(conn, colors)
    if panels:
        files["connectivity_png"] = plot_connectivity(panels, out / "connectivity")[0]
        body.append(_figure(panels))
    else:
        body.append("<p>No path was computed (see the paths left out).</p>")
    return [(HEADING, body)]


def _range(s: Mapping[str, Any], kind: str) -> str:
    return f"{s[kind + '_barrier_median']:.4g} [{s[kind + '_barrier_min']:.4g}, {s[kind + '_barrier_max']:.4g}]"


def _write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols or ["kind"], lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if v is None else v) for k, v in r.items()})
    ckpt.atomic_write_bytes(path, buf.getvalue().encode())
