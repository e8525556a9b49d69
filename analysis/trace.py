"""Stochastic trace estimators: Hutchinson, Hutch++ and an adaptive choice between them.

Hutchinson (1989): tr(H) = E[z^T H z] for Rademacher z; the mean of s samples has standard
error std(z^T H z)/sqrt(s). Hutch++ (Meyer, Musco, Musco, Woodruff, SOSA 2021, Algorithm 1)
spends a third of its m matvecs on a sketch Q = orth(H S) of the top eigenspace, takes
tr(Q^T H Q) exactly (another third) and runs Hutchinson only on the deflated remainder
(I - QQ^T) H (I - QQ^T) (the last third). When a few eigenvalues dominate -- as in neural
network Hessians early in training -- the remainder's variance is far smaller, so the same
standard error costs fewer matvecs; on a wide bulk it costs more (Hutchinson spends all m on
samples). The reported standard error is that of the Hutchinson part (the deflated trace is
exact given Q); it holds 2m/3 parameter-sized vectors.

:func:`adaptive_trace` decides between the two from its own first third, in the spirit of
adaptive Hutch++ (Persson, Cortinovis & Kressner, SIMAX 2022: size the sketch from an estimate of
the remainder's Frobenius norm): the first r = m/3 Rademacher vectors S are Hutchinson samples
*and* a sketch. Their products Y = HS give ||H||_F^2 ~ mean ||H s||^2 (E||Hs||^2 = ||H||_F^2), and a
leave-one-out estimate of the share a sketch leaves, rho = sum_j ||(I - P_{-j}) H s_j||^2 / sum_j ||H s_j||^2
with P_{-j} the projection on the other columns of Y (:func:`remainder_share`) -- no extra products.
Hutch++'s variance is then about rho * v / (m - 2r) against Hutchinson's v / m (v: the per-sample
variance), so it deflates when rho < (m - 2r)/m, else it continues as plain Hutchinson with the
same vectors: the estimate is exactly one of the two estimators (bitwise Hutchinson's with the
same seed when it does not deflate), chosen by measurement, at no extra cost. Every product
goes through ``matmat`` (blocks of vectors per pass over the data).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from flatfl.analysis import checks
from flatfl.analysis.interop import as_operator
from flatfl.analysis.operators import NOT_FINITE, LinearOperator, matmat


@dataclass(frozen=True)
class TraceResult:
    """A trace estimate with its standard error and cost."""

    estimate: float
    stderr: float
    num_matvecs: int
    method: str
    samples: np.ndarray  # the Hutchinson terms (of the remainder, for Hutch++)
    deflated: bool = False  # adaptive: whether it chose Hutch++'s deflation
    remainder_share: float | None = None  # adaptive: leave-one-out rho (see the module docstring)
    settings: dict = field(default_factory=dict)  # how it was computed (the public API fills it)


def _rademacher(n: int, count: int, op: LinearOperator, generator: torch.Generator | None) -> torch.Tensor:
    z = torch.randint(0, 2, (count, n), generator=generator, dtype=torch.int8)
    return (2 * z - 1).to(op.device, op.dtype)


def _quadratic_forms(Z: torch.Tensor, HZ: torch.Tensor) -> np.ndarray:
    """z_j^T H z_j for the rows of Z and the columns of HZ."""
    return (Z * HZ.T).sum(1).double().cpu().numpy()


def _mean_se(samples: np.ndarray) -> tuple[float, float]:
    return float(samples.mean()), float(samples.std(ddof=1) / np.sqrt(len(samples)))


Progress = Callable[[int, int], None]


def _applier(op: LinearOperator, progress: Progress | None, total: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """V -> H V by ``matmat``; with ``progress``, in chunks of about a twentieth of ``total`` columns, calling
    ``progress(done, total)`` after each chunk (the same products, reported as they are computed); a ValueError
    when a product is not finite (a NaN estimate would say nothing of why)."""
    done, step = [0], max(1, -(-total // 20))

    def apply(V: torch.Tensor) -> torch.Tensor:
        if progress is None:
            HV = matmat(op, V)
        else:
            cols = []
            for i in range(0, V.shape[1], step):
                cols.append(matmat(op, V[:, i : i + step]))
                done[0] += cols[-1].shape[1]
                progress(done[0], total)
            HV = torch.cat(cols, dim=1)
        if not bool(torch.isfinite(HV).all()):
            raise ValueError(NOT_FINITE)
        return HV

    return apply


def hutchinson(
    op: LinearOperator,
    *,
    num_matvecs: int = 100,
    generator: torch.Generator | None = None,
    progress: Progress | None = None,
) -> TraceResult:
    """Mean of z^T H z over ``num_matvecs`` Rademacher vectors (``op``: see :func:`as_operator`);
    ``progress(done, num_matvecs)`` as the matvecs are computed."""
    op = as_operator(op)
    checks.integer("num_matvecs", num_matvecs, 2, " (for a standard error)")
    Z = _rademacher(op.size, num_matvecs, op, generator)
    samples = _quadratic_forms(Z, _applier(op, progress, num_matvecs)(Z.T))
    return TraceResult(*_mean_se(samples), num_matvecs, "hutchinson", samples)


HUTCHPP_MIN_MATVECS = 6  # a third for the sketch, a third for projection, a third for Hutchinson: >= 2 each


def _deflated(
    op: LinearOperator,
    HS: torch.Tensor,
    num_probes: int,
    generator: torch.Generator | None,
    apply: Callable[[torch.Tensor], torch.Tensor],
) -> tuple[float, np.ndarray]:
    """Hutch++'s second and third thirds: tr(Q^T H Q) with Q = orth(HS), and the remainder's samples."""
    Q, _ = torch.linalg.qr(HS.double())
    Q = Q.to(op.dtype)
    low_rank = float(torch.trace(Q.T @ apply(Q)))
    G = _rademacher(op.size, num_probes, op, generator)
    G_perp = G - (G @ Q) @ Q.T
    return low_rank, _quadratic_forms(G_perp, apply(G_perp.T))


def hutchpp(
    op: LinearOperator,
    *,
    num_matvecs: int = 99,
    generator: torch.Generator | None = None,
    progress: Progress | None = None,
) -> TraceResult:
    """Hutch++ with ``num_matvecs`` operator applications (split in thirds; ``op``: see :func:`as_operator`);
    ``progress(done, num_matvecs)`` as the matvecs are computed."""
    op = as_operator(op)
    r = num_matvecs // 3
    checks.integer("num_matvecs", num_matvecs, HUTCHPP_MIN_MATVECS, " for Hutch++")
    S = _rademacher(op.size, r, op, generator)
    apply = _applier(op, progress, num_matvecs)
    low_rank, s = _deflated(op, apply(S.T), num_matvecs - 2 * r, generator, apply)
    est, se = _mean_se(s)
    return TraceResult(low_rank + est, se, num_matvecs, "hutch++", s, deflated=True)


def remainder_share(HS: torch.Tensor) -> float:
    """Leave-one-out share of ||H||_F^2 a sketch leaves: sum_j ||(I - P_{-j}) H s_j||^2 / sum_j ||H s_j||^2.

    P_{-j} projects on the span of the other r - 1 columns of Y = HS, independent of s_j, so each term
    is an unbiased estimate of ||(I - P_{-j}) H||_F^2 (E ||A s||^2 = ||A||_F^2 for Rademacher s). The
    squared distance of column j from the others' span is 1 / (G^{-1})_jj with G = Y^T Y (the
    regression identity), so all r terms cost one r x r inverse, no extra products.
    """
    Y = HS.double()
    G = Y.T @ Y
    norms = torch.diagonal(G).clone()
    total = float(norms.sum())
    if total <= 0:
        return 1.0
    ridge = 1e-12 * total / len(norms)
    inv_diag = torch.diagonal(torch.linalg.inv(G + ridge * torch.eye(len(G), dtype=G.dtype, device=G.device)))
    residual = torch.clamp(1.0 / inv_diag - ridge, min=torch.zeros_like(norms), max=norms)
    return float(residual.sum()) / total


def adaptive_trace(
    op: LinearOperator,
    *,
    num_matvecs: int = 99,
    generator: torch.Generator | None = None,
    progress: Progress | None = None,
) -> TraceResult:
    """Hutchinson or Hutch++, whichever the first third of the budget predicts has the smaller variance.

    See the module docstring: with r = m // 3 and rho = :func:`remainder_share`, deflate (Hutch++ on
    the same S) when rho < (m - 2r) / m, else spend the rest on Hutchinson samples. ``op``: a flatfl
    operator or anything :func:`~flatfl.analysis.interop.as_operator` takes (curvlinops, SciPy).
    ``progress(done, num_matvecs)`` as the matvecs are computed.
    """
    op = as_operator(op)
    checks.integer("num_matvecs", num_matvecs, HUTCHPP_MIN_MATVECS, " for the adaptive estimator")
    r = num_matvecs // 3
    S = _rademacher(op.size, r, op, generator)
    apply = _applier(op, progress, num_matvecs)
    HS = apply(S.T)
    rho = remainder_share(HS)
    if rho < (num_matvecs - 2 * r) / num_matvecs:
        low_rank, s = _deflated(op, HS, num_matvecs - 2 * r, generator, apply)
        est, se = _mean_se(s)
        return TraceResult(low_rank + est, se, num_matvecs, "adaptive", s, deflated=True, remainder_share=rho)
    Z = _rademacher(op.size, num_matvecs - r, op, generator)
    samples = np.concatenate([_quadratic_forms(S, HS), _quadratic_forms(Z, apply(Z.T))])
    return TraceResult(*_mean_se(samples), num_matvecs, "adaptive", samples, deflated=False, remainder_share=rho)


TRACE_ESTIMATORS = {"adaptive": adaptive_trace, "hutch++": hutchpp, "hutchinson": hutchinson}
