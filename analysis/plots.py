"""Static figures. Plot code takes computed results only; it never reads checkpoints."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from analysis.density import SpectralDensity  # noqa: E402


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
    path = Path(path)
    outs = [path.with_suffix(".png"), path.with_suffix(".pdf")]
    for p in outs:
        fig.savefig(p)
    plt.close(fig)
    return outs


def plot_surface(surface, path: Path, *, title: str = "", levels: int = 20) -> list[Path]:
    """A 1D loss curve, or a 2D contour map with labelled levels and a 3D view, as PNG and PDF.

    ``surface`` is an :class:`analysis.surfaces.Surface`; named points (``surface.points``:
    the global model, mutants, client models, ...) are drawn and labelled.
    """
    path = Path(path)
    if surface.betas is None:
        fig, ax = plt.subplots(figsize=(5.0, 3.4), dpi=150)
        ax.plot(surface.alphas, surface.loss, color="#1f4e79", lw=1.6, label="loss")
        ax.set_xlabel(surface.description.get("x_label", "a"))
        ax.set_ylabel("loss")
        ax2 = ax.twinx()
        ax2.plot(surface.alphas, surface.accuracy, color="#c55a11", lw=1.0, ls="--", label="accuracy")
        ax2.set_ylabel("accuracy", color="#c55a11")
        for name, (x,) in ((k, v) for k, v in surface.points.items() if len(v) == 1):
            ax.axvline(x, color="0.6", lw=0.8, ls=":")
            ax.text(x, ax.get_ylim()[1], name, ha="center", va="bottom", fontsize=7)
        ax.grid(True, alpha=0.3)
    else:
        fig = plt.figure(figsize=(9.5, 4.0), dpi=150)
        ax = fig.add_subplot(1, 2, 1)
        A, B = np.meshgrid(surface.alphas, surface.betas, indexing="ij")
        finite = np.isfinite(surface.loss)
        lo, hi = np.nanmin(surface.loss[finite]), np.nanmax(surface.loss[finite])
        lv = np.linspace(lo, hi, levels)
        cs = ax.contour(A, B, surface.loss, levels=lv, cmap="viridis", linewidths=0.8)
        ax.clabel(cs, cs.levels[::3], fontsize=6, fmt="%.3g")
        for name, pt in ((k, v) for k, v in surface.points.items() if len(v) == 2):
            ax.plot(*pt, "o", ms=4, color="#c00000")
            ax.annotate(name, pt, xytext=(3, 3), textcoords="offset points", fontsize=7)
        ax.set_xlabel(surface.description.get("x_label", "a"))
        ax.set_ylabel(surface.description.get("y_label", "b"))
        ax.set_aspect("equal", adjustable="box")
        ax3 = fig.add_subplot(1, 2, 2, projection="3d")
        ax3.plot_surface(A, B, surface.loss, cmap="viridis", linewidth=0, antialiased=True, alpha=0.9)
        ax3.set_xlabel("a", fontsize=8)
        ax3.set_ylabel("b", fontsize=8)
        ax3.set_zlabel("loss", fontsize=8)
        ax3.tick_params(labelsize=6)
    fig.suptitle(title or surface.description.get("kind", "loss surface"), fontsize=10)
    fig.tight_layout()
    outs = [path.with_suffix(".png"), path.with_suffix(".pdf")]
    for p in outs:
        fig.savefig(p)
    plt.close(fig)
    return outs
