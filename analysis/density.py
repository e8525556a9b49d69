"""Eigenvalue spectral density by stochastic Lanczos quadrature (SLQ).

Ghorbani, Krishnan, Xiao (ICML 2019), after Lin, Saad, Yang (SIAM Review 2016): for a unit
random vector v, m Lanczos steps from v give the m-point Gauss quadrature of the spectral
measure mu_v = sum_i (u_i^T v)^2 delta(lambda_i): nodes theta_j (Ritz values) and weights
tau_j = (first component of the j-th eigenvector of T_m)^2. It integrates polynomials of
degree <= 2m-1 exactly: sum_j tau_j theta_j^p = v^T H^p v. With v = z/sqrt(n), z Rademacher,
E[v^T H^p v] = tr(H^p)/n, so averaging runs estimates the density
phi(t) = (1/n) sum_i delta(t - lambda_i), smoothed by a Gaussian of width sigma.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal

from flatfl.analysis import checks
from flatfl.analysis.interop import as_operator
from flatfl.analysis.lanczos import lanczos_tridiagonal_block
from flatfl.analysis.operators import LinearOperator


@dataclass(frozen=True)
class SpectralDensity:
    """SLQ nodes and weights per run; each run's weights sum to 1."""

    nodes: tuple[np.ndarray, ...]
    weights: tuple[np.ndarray, ...]
    num_matvecs: int
    num_steps: int
    settings: dict = field(default_factory=dict)  # how it was computed (the public API fills it)

    def density(self, grid: np.ndarray, sigma: float) -> np.ndarray:
        """Gaussian-smoothed density on ``grid``; integrates to ~1 over a wide grid."""
        grid = np.asarray(grid, dtype=float)[:, None]
        out = np.zeros(len(grid))
        for th, w in zip(self.nodes, self.weights):
            out += (w[None, :] * np.exp(-((grid - th[None, :]) ** 2) / (2 * sigma**2))).sum(1)
        return out / (len(self.nodes) * sigma * np.sqrt(2 * np.pi))

    def moment(self, p: int) -> tuple[float, float]:
        """Estimate of tr(H^p)/n with its standard error over runs."""
        vals = np.array([(w * th**p).sum() for th, w in zip(self.nodes, self.weights)])
        se = vals.std(ddof=1) / np.sqrt(len(vals)) if len(vals) > 1 else float("nan")
        return float(vals.mean()), float(se)

    @property
    def support(self) -> tuple[float, float]:
        """(smallest, largest) node over all runs: the interval of the spectrum the quadrature saw."""
        return float(min(t.min() for t in self.nodes)), float(max(t.max() for t in self.nodes))


def slq(
    op: LinearOperator,
    *,
    num_runs: int = 10,
    num_steps: int = 80,
    generator: torch.Generator | None = None,
    block: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SpectralDensity:
    """SLQ with ``num_runs`` Rademacher start vectors and ``num_steps`` Lanczos steps each.

    ``block`` runs go in lockstep (one ``matmat`` of ``block`` vectors per step; default all),
    holding ``block * num_steps`` parameter-sized vectors (full reorthogonalisation). The start
    vectors and results do not depend on ``block`` (up to float summation order). ``op``: a flatfl
    operator or anything :func:`~flatfl.analysis.interop.as_operator` takes (curvlinops, SciPy).
    ``progress(done, total)`` after every Lanczos step (total: ``num_runs * num_steps`` matvecs, at most).
    """
    checks.integer("num_runs", num_runs, 1)
    checks.integer("num_steps", num_steps, 1)
    op = as_operator(op)
    block = num_runs if block is None else max(1, block)
    total, done = num_runs * min(num_steps, op.size), [0]

    def on_step(m: int) -> None:
        done[0] += m
        progress(done[0], total)  # type: ignore[misc]

    starts = [
        (2 * torch.randint(0, 2, (op.size,), generator=generator) - 1).to(op.device, op.dtype) for _ in range(num_runs)
    ]
    nodes, weights = [], []
    matvecs = 0
    for i in range(0, num_runs, block):
        for a, b, m in lanczos_tridiagonal_block(
            op, torch.stack(starts[i : i + block]), num_steps, on_step if progress is not None else None
        ):
            matvecs += m
            theta, S = eigh_tridiagonal(a, b) if len(a) > 1 else (a.copy(), np.ones((1, 1)))
            nodes.append(theta)
            weights.append(S[0, :] ** 2)
    if progress is not None:
        progress(matvecs, matvecs)
    return SpectralDensity(tuple(nodes), tuple(weights), matvecs, num_steps)
