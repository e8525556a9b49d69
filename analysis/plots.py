"""Static figures. Plot code takes computed results only; it never reads checkpoints."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from analysis.density import SpectralDensity  # noqa: E402


def _save(fig, path: Path, **kw) -> list[Path]:
    """Write ``fig`` as path.png and path.pdf, close it, return both paths."""
    path = Path(path)
    outs = [path.with_suffix(".png"), path.with_suffix(".pdf")]
    for p in outs:
        fig.savefig(p, **kw)
    plt.close(fig)
    return outs


def plot_density(
    result: SpectralDensity,
    path: Path,
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
    groups: dict[str, list[dict]] = {}
    for m in surface.markers:
        groups.setdefault(m["group"], []).append(m)
    for group, ms in groups.items():
        st = MARKER_STYLE.get(group, dict(color="0.3", marker="o", label=group))
        xy = np.array([m["coords"] for m in ms])
        if group == "trajectory":
            ax.plot(xy[:, 0], xy[:, 1], "-", color=st["color"], lw=0.8, marker=".", ms=3, label=st["label"])
        else:
            ax.scatter(
                xy[:, 0], xy[:, 1], s=22, c=st["color"], marker=st["marker"], edgecolors="k", lw=0.4, label=st["label"]
            )
    ax.plot(0, 0, "*", ms=10, color="k", label="checkpoint")
    if surface.markers:
        ax.legend(fontsize=6, loc="best", framealpha=0.8)


def contour_levels(lo: float, hi: float, n: int) -> np.ndarray:
    """n levels from lo to hi: geometric when the range spans > 20x (so the basin shows), else linear."""
    if lo > 0 and hi / lo > 20:
        return np.geomspace(lo, hi, n)
    return np.linspace(lo, max(hi, lo + 1e-12), n)


def _contour(ax, surface, levels: np.ndarray, metric: str = "loss"):
    A, B = np.meshgrid(surface.alphas, surface.betas, indexing="ij")
    z = surface.loss if metric == "loss" else surface.accuracy
    cs = ax.contour(A, B, np.clip(z, levels[0], levels[-1]), levels=levels, cmap="viridis", linewidths=0.8)
    ax.clabel(cs, cs.levels[::3], fontsize=6, fmt="%.3g")
    _draw_markers_2d(ax, surface)
    ax.set_xlabel(surface.description.get("x_label", "a"), fontsize=8)
    ax.set_ylabel(surface.description.get("y_label", "b"), fontsize=8)
    if surface.description.get("kind", "").split()[-1] in ("random", "eigen", "pca"):
        ax.set_aspect("equal", adjustable="box")  # orthogonal axes of equal scale: distances read true
    return cs


def plot_surface(surface, path: Path, *, title: str = "", levels: int = 20) -> list[Path]:
    """A 1D loss curve, or a 2D contour map with labelled levels and a 3D view, as PNG and PDF.

    ``surface`` is an :class:`analysis.surfaces.Surface`; its markers (mutants, returned client
    models, named models, the trajectory) are drawn at their coordinates in the plane.
    """
    path = Path(path)
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
    else:
        fig = plt.figure(figsize=(9.5, 4.0), dpi=150)
        ax = fig.add_subplot(1, 2, 1)
        finite = surface.loss[np.isfinite(surface.loss)]
        _contour(ax, surface, contour_levels(float(finite.min()), float(finite.max()), levels))
        A, B = np.meshgrid(surface.alphas, surface.betas, indexing="ij")
        ax3 = fig.add_subplot(1, 2, 2, projection="3d")
        ax3.plot_surface(A, B, surface.loss, cmap="viridis", linewidth=0, antialiased=True, alpha=0.9)
        ax3.set_xlabel("a", fontsize=8)
        ax3.set_ylabel("b", fontsize=8)
        ax3.set_zlabel("loss", fontsize=8)
        ax3.tick_params(labelsize=6)
    fig.suptitle(title or surface.description.get("kind", "loss surface"), fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_surfaces_side_by_side(
    surfaces, titles, path: Path, *, levels: int = 20, vrange: tuple[float, float] | None = None
) -> list[Path]:
    """2D contour maps next to each other on one shared set of levels (comparable colours)."""
    path = Path(path)
    if vrange is None:
        vals = np.concatenate([s.loss[np.isfinite(s.loss)].ravel() for s in surfaces])
        vrange = (float(vals.min()), float(vals.max()))
    lv = contour_levels(vrange[0], vrange[1], levels)
    n = len(surfaces)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 4.0), dpi=150, squeeze=False)
    cs = None
    for i, (ax, s, t) in enumerate(zip(axes[0], surfaces, titles)):
        cs = _contour(ax, s, lv)
        ax.set_title(t, fontsize=9)
        if i:
            ax.set_ylabel("")  # shared axes: label once
    if cs is not None:
        fig.colorbar(cs, ax=axes[0].tolist(), shrink=0.8, label="loss")
    return _save(fig, path, bbox_inches="tight")


def plot_curves(
    series: dict[str, tuple[list, list]], path: Path, *, xlabel: str, ylabel: str, title: str = ""
) -> list[Path]:
    """Line plot of named (x, y) series, e.g. accuracy or spread over rounds, as PNG and PDF."""
    path = Path(path)
    fig, ax = plt.subplots(figsize=(5.0, 3.4), dpi=150)
    for name, (x, y) in series.items():
        ax.plot(x, y, lw=1.3, marker="." if len(x) < 30 else None, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)
