"""Figures of matched convergence: every run's loss curve that chose its matched round (plotly and matplotlib).

They take computed results only: per group label and seed a dict with ``rounds``, ``loss`` (raw),
``smoothed`` (the moving median), ``settled`` (the chosen round), ``first_crossing`` (the naive first
round at or below the level) and ``untrained`` (the round-0 loss), as ``flatfl.runs.matching.Trace``
writes them. One panel per group, a colour per seed; the level is a dashed horizontal line, the
untrained loss a dotted one.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from flatfl.analysis.report_figures import LAYOUT, SEED_PALETTE, stack_narrow

Curves = Mapping[str, Mapping[Any, Mapping[str, Any]]]  # group label -> seed -> trace


def _untrained(curves: Curves) -> float | None:
    vals = [t["untrained"] for per in curves.values() for t in per.values() if t.get("untrained") is not None]
    return min(vals) if vals else None


def _at(t: Mapping[str, Any], r: int | None, key: str) -> float | None:
    return None if r is None else t[key][list(t["rounds"]).index(r)]


def matching_figure(curves: Curves, level: float, window: int) -> go.Figure:
    """Per group a panel: each seed's raw loss (thin) and moving median (thick), its matched round (star on the
    smoothed curve) and its naive first crossing (open circle on the raw curve); the level and untrained loss."""
    labels = list(curves)
    fig = make_subplots(rows=1, cols=len(labels), subplot_titles=labels, shared_yaxes=True, horizontal_spacing=0.05)
    l0 = _untrained(curves)
    for col, lab in enumerate(labels, start=1):
        for i, (s, t) in enumerate(sorted(curves[lab].items(), key=lambda kv: int(kv[0]))):
            c = SEED_PALETTE[i % len(SEED_PALETTE)]
            common = dict(legendgroup=f"seed {s}", hovertemplate=f"{lab} seed {s}<br>round %{{x}}<br>%{{y:.4g}}")
            fig.add_trace(
                go.Scatter(
                    x=t["rounds"],
                    y=t["loss"],
                    mode="lines",
                    line=dict(color=c, width=0.8),
                    opacity=0.45,
                    name=f"seed {s} loss",
                    showlegend=False,
                    **common,
                ),
                row=1,
                col=col,
            )
            fig.add_trace(
                go.Scatter(
                    x=t["rounds"],
                    y=t["smoothed"],
                    mode="lines",
                    line=dict(color=c, width=2.2),
                    name=f"seed {s}",
                    showlegend=col == 1,
                    **common,
                ),
                row=1,
                col=col,
            )
            if t.get("first_crossing") is not None and t["first_crossing"] != t.get("settled"):
                r = t["first_crossing"]
                fig.add_trace(
                    go.Scatter(
                        x=[r],
                        y=[_at(t, r, "loss")],
                        mode="markers",
                        showlegend=False,
                        marker=dict(symbol="circle-open", size=10, color=c, line=dict(width=2)),
                        name=f"seed {s} first crossing",
                        legendgroup=f"seed {s}",
                        hovertemplate=f"seed {s}: first raw loss ≤ level, round {r}<extra></extra>",
                    ),
                    row=1,
                    col=col,
                )
            if t.get("settled") is not None:
                r = t["settled"]
                fig.add_trace(
                    go.Scatter(
                        x=[r],
                        y=[_at(t, r, "smoothed")],
                        mode="markers",
                        showlegend=False,
                        marker=dict(symbol="star", size=14, color=c, line=dict(color="white")),
                        name=f"seed {s} matched",
                        legendgroup=f"seed {s}",
                        hovertemplate=f"seed {s}: matched round {r}<extra></extra>",
                    ),
                    row=1,
                    col=col,
                )
        fig.add_hline(
            y=level,
            line=dict(color="black", dash="dash", width=1.2),
            row=1,
            col=col,
            # only the first panel labels the lines (annotation_text=None would print plotly's "new text")
            **(dict(annotation_text=f"level {level:.4g}") if col == 1 else {}),
        )
        if l0 is not None:
            fig.add_hline(
                y=l0,
                line=dict(color="grey", dash="dot", width=1.2),
                row=1,
                col=col,
                **(dict(annotation_text=f"untrained {l0:.4g}") if col == 1 else {}),
            )
        fig.update_xaxes(title_text="round", tickformat="d", row=1, col=col)
    fig.update_yaxes(title_text=f"loss (thin: raw; thick: moving median of {window})", row=1, col=1)
    fig.update_layout(height=420, legend=dict(orientation="h", y=-0.2), **LAYOUT)
    return stack_narrow(fig, labels, 280)  # one panel per row on a phone


def plot_matching(curves: Curves, level: float, window: int, path: Path) -> list[Path]:
    """:func:`matching_figure` as a static PNG and PDF (``path`` without suffix)."""
    from flatfl.analysis.plots import _save, plt

    labels = list(curves)
    fig, axes = plt.subplots(
        1, len(labels), figsize=(4.4 * len(labels), 3.4), dpi=150, squeeze=False, sharey=True, layout="constrained"
    )
    l0 = _untrained(curves)
    for ax, lab in zip(axes[0], labels):
        for i, (s, t) in enumerate(sorted(curves[lab].items(), key=lambda kv: int(kv[0]))):
            c = SEED_PALETTE[i % len(SEED_PALETTE)]
            rs = np.asarray(t["rounds"], dtype=float)
            ax.plot(rs, t["loss"], color=c, lw=0.6, alpha=0.45)
            ax.plot(rs, t["smoothed"], color=c, lw=1.6, label=f"seed {s}")
            r = t.get("first_crossing")
            if r is not None and r != t.get("settled"):
                ax.plot([r], [_at(t, r, "loss")], "o", mfc="none", mec=c, ms=7, mew=1.5)
            r = t.get("settled")
            if r is not None:
                ax.plot([r], [_at(t, r, "smoothed")], "*", color=c, ms=12, mec="white", mew=0.6)
        ax.axhline(level, color="black", ls="--", lw=1.0, label=f"level {level:.4g}")
        if l0 is not None:
            ax.axhline(l0, color="grey", ls=":", lw=1.0, label=f"untrained {l0:.4g}")
        ax.set_title(lab, fontsize=9)
        ax.set_xlabel("round", fontsize=8)
        ax.grid(True, alpha=0.3)
        ax.tick_params(labelsize=7)
    axes[0][0].set_ylabel(f"loss (thin: raw; thick: median of {window})", fontsize=8)
    axes[0][0].legend(fontsize=6)
    return _save(fig, path)
