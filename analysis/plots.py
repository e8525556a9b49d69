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
