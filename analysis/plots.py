"""Static figures. Plot code takes computed results only; it never reads checkpoints."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
# TrueType (Type 42) fonts in PDFs: many venues refuse Type 3 fonts
matplotlib.rcParams.update({"pdf.fonttype": 42, "ps.fonttype": 42})
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from flatfl.analysis.density import SpectralDensity  # noqa: E402


def _save(fig, path: Path | None, **kw):
    """Write ``fig`` as path.png and path.pdf, close it, return both paths; without a path return the
    matplotlib figure itself (to show or save as you like)."""
    if path is None:
        return fig
    path = Path(path)
    outs = [path.with_suffix(".png"), path.with_suffix(".pdf")]
    try:
        for p in outs:
            try:
                fig.savefig(p, **kw)
            except OSError as exc:  # a refused write (full disk, file-size limit): no partial figure left, and
                p.unlink(missing_ok=True)  # the error names the file it was writing
                if exc.filename:
                    raise
                raise OSError(exc.errno, exc.strerror, str(p)) from exc
    finally:
        plt.close(fig)
    return outs


def plot_density(
    result: SpectralDensity,
    path: Path | None = None,
    *,
    title: str = "",
    sigma: float | None = None,
    num_points: int = 1000,
) -> list[Path]:
    """Log-density of the Hessian spectrum (Ghorbani et al. 2019, Fig. 1 style) as PNG and PDF.

    ``sigma`` defaults to 1% of the spectrum's width. Returns the written paths.
    """
    lo, hi = result.support
    width = max(hi - lo, 1e-12)
    sigma = sigma or 0.01 * width
    grid = np.linspace(lo - 0.05 * width, hi + 0.05 * width, num_points)
    dens = result.density(grid, sigma)
    fig, ax = plt.subplots(figsize=(5.0, 3.4), dpi=150)
    ax.semilogy(grid, np.maximum(dens, 1e-12), color="#1f4e79", lw=1.4)
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density (log scale)")
    ax.set_ylim(bottom=max(dens.max() * 1e-8, 1e-12))
    ax.grid(True, which="major", alpha=0.3)
    ax.set_title(title or "Hessian eigenvalue density (SLQ)", fontsize=10)
    ax.text(
        0.99,
        0.97,
        f"{len(result.nodes)} runs x {result.num_steps} steps, sigma={sigma:.2g}",
        transform=ax.transAxes,
        ha="right",
        va="top",
        fontsize=7,
        color="0.35",
    )
    fig.tight_layout()
    return _save(fig, path)


MARKER_STYLE = {  # Okabe-Ito colours, as the interactive page (no red/green pair)
    "mutants": dict(color="#D55E00", marker="D", label="mutants (sent next round)"),
    "clients": dict(color="#56B4E9", marker="o", label="returned client models"),
    "models": dict(color="#CC79A7", marker="s", label="models"),
    "trajectory": dict(color="0.25", marker=".", label="trajectory"),
}


def _draw_markers_2d(ax, surface) -> None:
    """The markers near the plane (``Surface.drawn_marker_groups``), the checkpoint star, a legend if any."""
    groups, _ = surface.drawn_marker_groups()
    for group, ms in groups.items():
        st = MARKER_STYLE.get(group, dict(color="0.3", marker="o", label=group))
        xy = np.array([m["coords"] for m in ms])
        if group == "trajectory":
            ax.plot(xy[:, 0], xy[:, 1], "-", color=st["color"], lw=0.8, marker=".", ms=3, label=st["label"])
        else:
            ax.scatter(
                xy[:, 0], xy[:, 1], s=22, c=st["color"], marker=st["marker"], edgecolors="k", lw=0.4, label=st["label"]
            )
    ax.plot(0, 0, "*", ms=12, color="k", mec="white", mew=0.6, label="checkpoint", zorder=10)
    if groups:
        ax.legend(fontsize=6, loc="upper right", framealpha=0.85)


def delta_levels(zrange: tuple[float, float], n: int | None = None, marks=()) -> np.ndarray:
    """The Δloss levels shared by every surface compared: ``n`` linear ones, or by default the 1-2-5
    sequence holding ``marks`` of :func:`flatfl.analysis.interactive.level_edges` (the interactive page's
    levels). contourf fills values outside zrange with the end colours: values are clipped first."""
    from flatfl.analysis.interactive import level_edges

    return level_edges(zrange, n, marks)


def _contour(ax, surface, levels: np.ndarray):
    """Filled Δloss contours on the levels (one colour per band, even when the levels are uneven), thin
    black level lines; the colour bar (:func:`_colorbar`) labels the same levels."""
    from matplotlib.colors import BoundaryNorm

    A, B = np.meshgrid(surface.alphas, surface.betas, indexing="ij")
    d = np.clip(surface.loss - surface.origin_loss(), levels[0], levels[-1])
    norm = BoundaryNorm(levels, plt.get_cmap("viridis").N)
    cf = ax.contourf(A, B, d, levels=levels, cmap="viridis", norm=norm)
    ax.contour(A, B, d, levels=levels[1:-1], colors="k", linewidths=0.35)
    _draw_markers_2d(ax, surface)
    ax.set_xlabel("a: " + (surface.description.get("x_label") or ""), fontsize=9)
    ax.set_ylabel("b: " + (surface.description.get("y_label") or ""), fontsize=9)
    ax.set_aspect("equal", adjustable="box")  # a circle looks like a circle
    ax.tick_params(labelsize=8)
    return cf


def _colorbar(fig, cf, ax, levels: np.ndarray):
    """A colour bar whose ticks are exactly the contour levels."""
    cb = fig.colorbar(cf, ax=ax, shrink=0.85, ticks=levels, spacing="uniform")
    cb.set_label("Δloss = L − L(checkpoint)", fontsize=9)
    cb.ax.set_yticklabels([f"{v:.3g}" for v in levels])
    cb.ax.tick_params(labelsize=8)
    return cb


def plot_surface(
    surface,
    path: Path | None = None,
    *,
    title: str = "",
    levels: int | None = None,
    zrange: tuple[float, float] | None = None,
    marks=(),
) -> list[Path]:
    """A 1D loss curve, or a 2D Δloss contour map with a colour bar, as PNG and PDF.

    ``surface`` is an :class:`analysis.surfaces.Surface`; its markers (mutants, returned client
    models, named models, the trajectory) are drawn at their coordinates in the plane. 2D maps
    show Δloss = loss − loss at the checkpoint on the levels of :func:`delta_levels` (``levels``
    linear ones, or a 1-2-5 sequence holding ``marks``) over ``zrange`` (default: 0 to the largest
    Δloss), the colour bar's ticks on those levels, the axis names those of the interactive page.
    """
    if surface.betas is None:
        fig, ax = plt.subplots(figsize=(5.0, 3.4), dpi=150)
        ax.plot(surface.alphas, surface.loss, color="#1f4e79", lw=1.6, label="loss")
        ax.set_xlabel(surface.description.get("x_label", "a"), fontsize=8)
        ax.set_ylabel("loss")
        ax2 = ax.twinx()
        ax2.plot(surface.alphas, surface.accuracy, color="#c55a11", lw=1.0, ls="--", label="accuracy")
        ax2.set_ylabel("accuracy", color="#c55a11")
        ax.axvline(0.0, color="0.6", lw=0.8, ls=":")
        for m in surface.markers:
            if m["group"] == "models":
                ax.plot(m["coords"][0], m["loss"], "s", ms=5, color="#d7191c")
                ax.annotate(
                    m["name"], (m["coords"][0], m["loss"]), xytext=(3, 3), textcoords="offset points", fontsize=7
                )
        ax.grid(True, alpha=0.3)
        fig.suptitle(title or surface.description.get("kind", "loss"), fontsize=10)
        fig.tight_layout()
        return _save(fig, path)
    if zrange is None:
        d = surface.loss - surface.origin_loss()
        zrange = (min(0.0, float(np.nanmin(d))), float(np.nanmax(d)))
    fig, ax = plt.subplots(figsize=(5.6, 4.8), dpi=150, layout="constrained")
    lv = delta_levels(zrange, levels, marks)
    cf = _contour(ax, surface, lv)
    _colorbar(fig, cf, ax, lv)
    ax.set_title(title or surface.description.get("kind", "loss surface"), fontsize=9)
    return _save(fig, path)


def plot_surfaces_side_by_side(
    surfaces, titles, path: Path, *, levels: int | None = None, zrange: tuple[float, float] | None = None, marks=()
) -> list[Path]:
    """2D Δloss contour maps next to each other on one shared set of levels (:func:`delta_levels`) and one
    colour bar whose ticks are those levels; ``titles`` should name each map's run, seed and round."""
    if zrange is None:
        zrange = (
            min([0.0] + [float(np.nanmin(s.loss - s.origin_loss())) for s in surfaces]),
            float(np.nanmedian([np.nanmax(s.loss - s.origin_loss()) for s in surfaces])),
        )
    lv = delta_levels(zrange, levels, marks)
    n = len(surfaces)
    fig, axes = plt.subplots(1, n, figsize=(4.4 * n + 1.0, 4.4), dpi=150, squeeze=False, layout="constrained")
    cf = None
    for i, (ax, s, t) in enumerate(zip(axes[0], surfaces, titles)):
        cf = _contour(ax, s, lv)
        ax.set_title(t, fontsize=10)
        if i:
            ax.set_ylabel("")  # shared axes: label once
    if cf is not None:
        _colorbar(fig, cf, axes[0].tolist(), lv)
    return _save(fig, path)


def plot_slices(panels, colors, path: Path, thresholds=()) -> list[Path]:
    """Li et al. 1D slices: per panel (condition) the mean Δloss per group with a min-max band, as PNG and PDF.

    ``panels``: {panel title: {group label: [analysis.slices.Slices, ...]}}; ``colors``: group -> colour.
    ``thresholds``: the Δloss levels of the verdict's widths, drawn dashed; the y axis is then
    symmetric-log, linear up to the smallest threshold, so Δloss 0.1 and 10 are both readable.
    """
    titles = [t for t in panels if panels[t]]
    fig, axes = plt.subplots(
        1, len(titles), figsize=(4.6 * len(titles), 3.6), dpi=150, squeeze=False, sharey=True, layout="constrained"
    )
    for ax, t in zip(axes[0], titles):
        for lab, sl in panels[t].items():
            delta = np.concatenate([s.delta for s in sl])
            ts = sl[0].ts
            ax.fill_between(ts, delta.min(0), delta.max(0), color=colors[lab], alpha=0.15, lw=0)
            ax.plot(ts, delta.mean(0), color=colors[lab], lw=1.8, label=f"{lab} ({len(sl)} seeds)")
        for tau in thresholds:
            ax.axhline(tau, color="0.35", ls="--", lw=0.8)
            ax.annotate(
                f"Δloss {tau:g}", (0.01, tau), xycoords=("axes fraction", "data"), fontsize=7, color="0.35",
                va="bottom",
            )  # fmt: skip
        if thresholds:
            ax.set_yscale("symlog", linthresh=min(thresholds))
        ax.set_title(t, fontsize=9)
        ax.set_xlabel("t (filter-normalised random direction)", fontsize=8)
        ax.grid(True, alpha=0.3)
        ax.tick_params(labelsize=7)
    axes[0][0].set_ylabel("Δloss = L(θ + t·d) − L(θ)", fontsize=8)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="outside lower center", ncols=min(len(labels), 3) or 1)
    return _save(fig, path)


def plot_curves(
    series: dict[str, tuple[list, list]], path: Path, *, xlabel: str, ylabel: str, title: str = ""
) -> list[Path]:
    """Line plot of named (x, y) series, e.g. accuracy or spread over rounds, as PNG and PDF."""
    fig, ax = plt.subplots(figsize=(5.0, 3.4), dpi=150)
    for name, (x, y) in series.items():
        x, y = list(x), list(y)
        gaps = [i for i in range(1, len(x)) if x[i] != x[i - 1] + 1]
        xs = np.array(x, dtype=float)
        ys = np.array(y, dtype=float)
        if gaps:  # break the line where rounds are missing; markers show the saved rounds
            xs, ys = np.insert(xs, gaps, np.nan), np.insert(ys, gaps, np.nan)
        ax.plot(xs, ys, lw=1.3, marker="." if gaps or len(x) < 30 else None, ms=4, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.xaxis.get_major_locator().set_params(integer=True)  # rounds: whole numbers
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_spread(series, path: Path, *, ylabel: str, title: str = "") -> list[Path]:
    """The spread of the models sent to and returned by the clients over rounds, as PNG and PDF.

    ``series``: [(label, rounds, values, colour, kind)] with kind "sent" (dashed, open markers) or
    "returned" (solid, filled). A series with missing rounds is drawn as markers only (short line
    pieces between saved pairs of rounds would look like error bars); the legend sits below the
    axes, never over the data.
    """
    fig, ax = plt.subplots(figsize=(5.4, 4.0), dpi=150, layout="constrained")
    for label, rounds, values, color, kind in series:
        xs, ys = np.asarray(rounds, dtype=float), np.asarray(values, dtype=float)
        gaps = bool(len(xs) > 1 and np.any(np.diff(xs) != 1))
        sent = kind == "sent"
        ax.plot(
            xs, ys, ls="none" if gaps else ("--" if sent else "-"), lw=1.2, color=color, label=label,
            marker="o" if sent else "s", ms=4, mfc="white" if sent else color, mec=color,
        )  # fmt: skip
    ax.set_xlabel("round", fontsize=9)
    ax.set_ylabel(ylabel, fontsize=9)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(True, alpha=0.3)
    ax.tick_params(labelsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    fig.legend(fontsize=7, loc="outside lower center", ncols=2)
    return _save(fig, path)


def plot_per_layer(panels, colors, path: Path | None, *, title: str = "") -> list[Path]:
    """λmax and trace of each layer's diagonal Hessian block, one column per group side by side (a shared y axis per
    row), the blocks named along x, each seed a point and the mean over seeds a bar, as PNG and PDF.

    ``panels``: {group label: {block name: [(seed, lambda_max, trace), ...]}} (every group the same blocks, in
    model order); ``colors``: group -> colour (Okabe-Ito, as the report's). A row whose values are all positive
    is drawn on a log axis (block curvatures span decades), else on a symmetric-log one.
    """
    groups = [g for g in panels if panels[g]]
    blocks = list(dict.fromkeys(b for g in groups for b in panels[g]))
    width = min(4.8, max(2.4, 0.42 * len(blocks) + 1.2))
    fig, axes = plt.subplots(2, len(groups), figsize=(width * len(groups) + 0.6, 5.6), dpi=150, squeeze=False,
                             sharey="row", layout="constrained")  # fmt: skip
    seeds = sorted({p[0] for g in groups for pts in panels[g].values() for p in pts})
    shapes = ["o", "s", "D", "^", "v", "P", "X", "*"]
    for row, (col, name) in enumerate(((1, "λmax of the block"), (2, "trace of the block"))):
        values = [p[col] for g in groups for pts in panels[g].values() for p in pts]
        for ax, g in zip(axes[row], groups):
            for x, b in enumerate(blocks):
                pts = panels[g].get(b, [])
                if not pts:
                    continue
                ys = np.array([p[col] for p in pts], dtype=float)
                offsets = np.linspace(-0.18, 0.18, len(pts)) if len(pts) > 1 else [0.0]
                for off, p, y in zip(offsets, pts, ys):
                    ax.plot(x + off, y, ls="none", marker=shapes[seeds.index(p[0]) % len(shapes)], ms=4.5,
                            mfc="white", mec=colors[g], mew=1.1)  # fmt: skip
                ax.hlines(ys.mean(), x - 0.3, x + 0.3, color=colors[g], lw=2.0)
            if values and min(values) > 0:
                ax.set_yscale("log")
            elif values:
                ax.set_yscale("symlog", linthresh=max(1e-6, float(np.percentile(np.abs(values), 10))))
            ax.set_xticks(range(len(blocks)))
            ax.set_xticklabels(blocks if row == 1 else [], rotation=60, ha="right", fontsize=7)
            ax.set_xlim(-0.6, len(blocks) - 0.4)
            ax.grid(True, axis="y", alpha=0.3)
            ax.tick_params(labelsize=7)
            if row == 0:
                ax.set_title(g, fontsize=9, color=colors[g])
        axes[row][0].set_ylabel(name, fontsize=8)
    handles = [plt.Line2D([], [], ls="none", marker=shapes[i % len(shapes)], mfc="white", mec="0.2", ms=5,
                          label=f"seed {s}") for i, s in enumerate(seeds)]  # fmt: skip
    handles.append(plt.Line2D([], [], color="0.2", lw=2.0, label="mean over seeds"))
    fig.legend(handles=handles, fontsize=7, loc="outside lower center", ncols=min(len(handles), 6))
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)
