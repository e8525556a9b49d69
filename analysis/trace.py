"""Stochastic trace estimators: Hutchinson and Hutch++.

Hutchinson (1989): tr(H) = E[z^T H z] for Rademacher z; the mean of s samples has standard
error std(z^T H z)/sqrt(s). Hutch++ (Meyer, Musco, Musco, Woodruff, SOSA 2021, Algorithm 1)
spends a third of its m matvecs on a sketch Q = orth(H S) of the top eigenspace, takes
tr(Q^T H Q) exactly (another third) and runs Hutchinson only on the deflated remainder
(I - QQ^T) H (I - QQ^T) (the last third). When a few eigenvalues dominate -- as in neural
network Hessians -- the remainder's variance is far smaller, so the same standard error
costs fewer matvecs. The reported standard error is that of the Hutchinson part (the
deflated trace is exact given Q); it holds 2m/3 parameter-sized vectors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from analysis.operators import LinearOperator


@dataclass(frozen=True)
class TraceResult:
    """A trace estimate with its standard error and cost."""

    estimate: float
    stderr: float
    num_matvecs: int
    method: str
    samples: np.ndarray  # the Hutchinson terms (of the remainder, for Hutch++)


def _rademacher(n: int, count: int, op: LinearOperator, generator: torch.Generator | None) -> torch.Tensor:
    z = torch.randint(0, 2, (count, n), generator=generator, dtype=torch.int8)
    return (2 * z - 1).to(op.device, op.dtype)


def hutchinson(op: LinearOperator, *, num_matvecs: int = 100, generator: torch.Generator | None = None) -> TraceResult:
    """Mean of z^T H z over ``num_matvecs`` Rademacher vectors."""
    if num_matvecs < 2:
        raise ValueError("num_matvecs must be >= 2 (for a standard error)")
    zs = _rademacher(op.size, num_matvecs, op, generator)
    samples = np.array([float(torch.dot(z, op.matvec(z))) for z in zs])
    return TraceResult(
        float(samples.mean()), float(samples.std(ddof=1) / np.sqrt(len(samples))), num_matvecs, "hutchinson", samples
    )


HUTCHPP_MIN_MATVECS = 6  # a third for the sketch, a third for projection, a third for Hutchinson: >= 2 each


def hutchpp(op: LinearOperator, *, num_matvecs: int = 99, generator: torch.Generator | None = None) -> TraceResult:
    """Hutch++ with ``num_matvecs`` operator applications (split in thirds)."""
    r = num_matvecs // 3
    if num_matvecs < HUTCHPP_MIN_MATVECS:
        raise ValueError(f"num_matvecs must be >= {HUTCHPP_MIN_MATVECS} for Hutch++")
    S = _rademacher(op.size, r, op, generator)
    HS = torch.stack([op.matvec(s) for s in S], dim=1)  # (n, r)
    Q, _ = torch.linalg.qr(HS.double())
    Q = Q.to(op.dtype)
    HQ = torch.stack([op.matvec(q) for q in Q.T], dim=1)
    low_rank = float(torch.trace(Q.T @ HQ))
    G = _rademacher(op.size, num_matvecs - 2 * r, op, generator)
    samples = []
    for g in G:
        g_perp = g - Q @ (Q.T @ g)
        samples.append(float(torch.dot(g_perp, op.matvec(g_perp))))
    s = np.array(samples)
    return TraceResult(low_rank + float(s.mean()), float(s.std(ddof=1) / np.sqrt(len(s))), num_matvecs, "hutch++", s)
