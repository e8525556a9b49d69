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
    for p in outs:
        fig.savefig(p, **kw)
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


MARKER_STYLE = {
    "mutants": dict(color="#e66101", marker="D", label="mutants (sent next round)"),
    "clients": dict(color="#1a9641", marker="o", label="returned client models"),
    "models": dict(color="#d7191c", marker="s", label="models"),
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


def delta_levels(zrange: tuple[float, float], n: int) -> np.ndarray:
    """n + 1 linear Δloss levels over zrange: the same levels for every surface compared (contourf fills
    values outside zrange with the end colours: values are clipped into the range first)."""
    return np.linspace(zrange[0], max(zrange[1], zrange[0] + 1e-12), n + 1)


def _contour(ax, surface, levels: np.ndarray):
    """Filled Δloss contours on fixed levels, black level lines with black labels on a white box."""
    A, B = np.meshgrid(surface.alphas, surface.betas, indexing="ij")
    d = np.clip(surface.loss - surface.origin_loss(), levels[0], levels[-1])
    cf = ax.contourf(A, B, d, levels=levels, cmap="viridis")
    cs = ax.contour(A, B, d, levels=levels[1:-1:2], colors="k", linewidths=0.4)
    labels = ax.clabel(cs, cs.levels[::2], fontsize=6, fmt="%.3g", colors="k")
    for t in labels:
        t.set_bbox(dict(facecolor="white", edgecolor="none", alpha=0.7, pad=0.5))
    _draw_markers_2d(ax, surface)
    ax.set_xlabel("a: " + (surface.description.get("x_label") or ""), fontsize=8)
    ax.set_ylabel("b: " + (surface.description.get("y_label") or ""), fontsize=8)
    ax.set_aspect("equal", adjustable="box")  # a circle looks like a circle
    ax.tick_params(labelsize=7)
    return cf


def plot_surface(
    surface, path: Path | None = None, *, title: str = "", levels: int = 20, zrange: tuple[float, float] | None = None
) -> list[Path]:
    """A 1D loss curve, or a 2D Δloss contour map with a colour bar, as PNG and PDF.

    ``surface`` is an :class:`analysis.surfaces.Surface`; its markers (mutants, returned client
    models, named models, the trajectory) are drawn at their coordinates in the plane. 2D maps
    show Δloss = loss − loss at the checkpoint on ``levels`` linear levels over ``zrange``
    (default: 0 to the largest Δloss), the axis names those of the interactive page.
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
    cf = _contour(ax, surface, delta_levels(zrange, levels))
    fig.colorbar(cf, ax=ax, shrink=0.85, label="Δloss = L − L(checkpoint)")
    ax.set_title(title or surface.description.get("kind", "loss surface"), fontsize=9)
    return _save(fig, path)


def plot_surfaces_side_by_side(
    surfaces, titles, path: Path, *, levels: int = 20, zrange: tuple[float, float] | None = None
) -> list[Path]:
    """2D Δloss contour maps next to each other on one shared set of linear levels and one colour bar."""
    if zrange is None:
        zrange = (
            min([0.0] + [float(np.nanmin(s.loss - s.origin_loss())) for s in surfaces]),
            float(np.nanmedian([np.nanmax(s.loss - s.origin_loss()) for s in surfaces])),
        )
    lv = delta_levels(zrange, levels)
    n = len(surfaces)
    fig, axes = plt.subplots(1, n, figsize=(4.4 * n + 1.0, 4.4), dpi=150, squeeze=False, layout="constrained")
    cf = None
    for i, (ax, s, t) in enumerate(zip(axes[0], surfaces, titles)):
        cf = _contour(ax, s, lv)
        ax.set_title(t, fontsize=9)
        if i:
            ax.set_ylabel("")  # shared axes: label once
    if cf is not None:
        fig.colorbar(cf, ax=axes[0].tolist(), shrink=0.85, label="Δloss = L − L(checkpoint)")
    return _save(fig, path)


def plot_slices(panels, colors, path: Path) -> list[Path]:
    """Li et al. 1D slices: per panel (condition) the mean Δloss per group with a min-max band, as PNG and PDF.

    ``panels``: {panel title: {group label: [analysis.slices.Slices, ...]}}; ``colors``: group -> colour.
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
        ax.set_title(t, fontsize=9)
        ax.set_xlabel("t (filter-normalised random direction)", fontsize=8)
        ax.grid(True, alpha=0.3)
        ax.tick_params(labelsize=7)
    axes[0][0].set_ylabel("Δloss = L(θ + t·d) − L(θ)", fontsize=8)
    axes[0][0].legend(fontsize=7, loc="upper center")
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
