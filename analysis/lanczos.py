"""Extreme eigenpairs of a symmetric operator by Lanczos with full reorthogonalisation.

Lanczos (1950) builds an orthonormal Krylov basis Q_m of span{v, Hv, ..., H^{m-1} v} and the
tridiagonal T_m = Q_m^T H Q_m; the eigenvalues of T_m (Ritz values) converge to the extreme
eigenvalues of H first. In floating point the basis loses orthogonality exactly when a
Ritz value converges, and plain Lanczos then returns spurious copies ("ghosts") of the top
eigenvalue -- the failure of hessian-eigenthings 1.0 without reorthogonalisation. Here every
new vector is orthogonalised against the whole basis twice ("twice is enough", Parlett
1998 ch. 6), so no ghost can appear. Iteration stops as soon as every wanted Ritz value is
certified: its residual ``||H y - theta y|| = |beta_m s_{m,i}|`` (Parlett, Theorem 13.1.1) bounds its
error, sharpened to residual^2 / gap once it is separated from its neighbours (Kato-Temple),
and ``tol`` is that bound relative to |theta_max| -- not a relative change between iterates,
on which PyHessian's power iteration stops (it can stop far from lambda_max when the
eigengap is small, and it finds the eigenvalue of largest *magnitude*, which is the most
negative one when negative curvature dominates). Memory: the basis holds up to
``max_vectors`` parameter-sized vectors (reported in the result); a run that reaches the bound
without converging says so (``converged=False``). Repeated eigenvalues are found with one
copy each from a single start vector (an inherent limit of single-vector Krylov methods).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal

from flatfl.analysis import checks
from flatfl.analysis.interop import as_operator
from flatfl.analysis.operators import NOT_FINITE, LinearOperator


@dataclass(frozen=True)
class EigenResult:
    """Eigenpairs of an operator and what they cost.

    ``values``: the k largest eigenvalues in descending order; ``smallest``: the most
    negative (smallest algebraic) eigenvalue when asked for; ``vectors``: (k, size) unit
    eigenvectors matching ``values``; ``residuals``: ||H v - lambda v|| for each of them
    (``smallest_residual`` for the smallest); ``num_matvecs``: operator applications;
    ``num_vectors``: basis vectors held at the end (memory, in parameter-sized vectors).
    """

    values: np.ndarray
    vectors: torch.Tensor | None
    residuals: np.ndarray
    smallest: float | None
    smallest_residual: float | None
    num_matvecs: int
    num_vectors: int
    converged: bool
    tol: float
    settings: dict = field(default_factory=dict)  # how it was computed (the public API fills it)


def error_bound(theta: np.ndarray, res: np.ndarray) -> np.ndarray:
    """Bound on |lambda - theta_i| for each Ritz value: min(r_i, r_i^2 / gap_i).

    r_i bounds the distance to *some* eigenvalue; once the Ritz values are separated, the
    Kato-Temple inequality sharpens it to r_i^2 / gap_i, with gap_i the distance from theta_i to
    the nearest other Ritz value (Parlett 1998, sec. 11.7; Saad 2011, Thm 3.8). The gap is
    estimated from the current Ritz values, as ARPACK-style codes do.
    """
    if len(theta) == 1:
        return res.copy()
    gaps = np.empty_like(theta)
    gaps[1:-1] = np.minimum(np.diff(theta)[:-1], np.diff(theta)[1:])
    gaps[0], gaps[-1] = theta[1] - theta[0], theta[-1] - theta[-2]
    with np.errstate(divide="ignore", invalid="ignore"):
        kt = np.where(gaps > res, res**2 / gaps, np.inf)
    return np.minimum(res, kt)


def _random_start(op: LinearOperator, generator: torch.Generator | None) -> torch.Tensor:
    v = torch.randn(op.size, generator=generator, dtype=torch.float64).to(op.device, op.dtype)
    return v / v.norm()


def lanczos(
    op: LinearOperator,
    *,
    k: int = 1,
    smallest: bool = False,
    tol: float = 1e-5,
    max_vectors: int | None = None,
    v0: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    return_vectors: bool = True,
    exact_residuals: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> EigenResult:
    """The k largest eigenvalues (and, with ``smallest``, the most negative one) of ``op``.

    ``tol`` is the wanted eigenvalue accuracy relative to ``|largest Ritz value|``: iteration stops
    when every wanted Ritz value's error bound min(r, r^2/gap) (:func:`error_bound`) is below
    it, when the Krylov space is invariant (exact answer), or when ``max_vectors`` basis
    vectors are held (default min(size, 128)). With ``exact_residuals`` (default) the reported residuals are
    ||H v - lambda v|| recomputed with k (+1) extra matvecs, since the Lanczos estimate
    ``|beta_m s_{m,i}|`` assumes exact arithmetic and underflows to 0 once a pair has converged.
    ``op``: a flatfl operator or anything :func:`~flatfl.analysis.interop.as_operator` takes (curvlinops, SciPy).
    ``progress(done, total)`` is called after every matvec; ``total`` is the most Lanczos can spend
    (``max_vectors`` steps plus the residual matvecs) until it stops, then the matvecs it spent.
    """
    checks.positive("tol", tol)
    op = as_operator(op)
    n = op.size
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}] (the number of parameters), got {k}")
    m_max = min(n, max_vectors if max_vectors is not None else 128)
    if m_max < k:
        raise ValueError(f"max_vectors must be >= k = {k} (and at most the {n} parameters), got {max_vectors}")
    q = _random_start(op, generator) if v0 is None else (v0 / v0.norm()).to(op.device, op.dtype)
    extra = (k + int(smallest)) if exact_residuals else 0
    kr = _krylov(op, q, m_max, k=k, smallest=smallest, tol=tol, progress_total=m_max + extra, progress=progress)
    theta, S, basis, m = kr.theta, kr.S, kr.basis[: kr.m], kr.m
    order = np.argsort(theta)[::-1][:k]
    res = np.abs(kr.b * S[-1, :])
    converged = kr.converged or m == n  # full basis: T is H in that basis, residuals are round-off
    i_min = int(np.argmin(theta))
    res_top, res_min = res[order].copy(), float(res[i_min])
    vectors = None
    matvecs = kr.matvecs
    if return_vectors or exact_residuals:
        coeffs = torch.as_tensor(S[:, order].T.copy(), dtype=op.dtype, device=op.device)
        vectors = coeffs @ basis
    if exact_residuals:
        res_top = np.array([float((op.matvec(v) - float(t) * v).norm()) for v, t in zip(vectors, theta[order])])
        matvecs += len(order)
        if smallest:
            v = torch.as_tensor(S[:, i_min].copy(), dtype=op.dtype, device=op.device) @ basis
            res_min = float((op.matvec(v) - float(theta[i_min]) * v).norm())
            matvecs += 1
    if not return_vectors:
        vectors = None
    if progress is not None:
        progress(matvecs, matvecs)
    return EigenResult(
        values=theta[order].copy(),
        vectors=vectors,
        residuals=res_top,
        smallest=float(theta[i_min]) if smallest else None,
        smallest_residual=res_min if smallest else None,
        num_matvecs=matvecs,
        num_vectors=m,
        converged=converged,
        tol=tol,
    )


@dataclass
class _Krylov:
    """What the Lanczos iteration leaves: its basis (first ``m`` rows), the tridiagonal's Ritz values
    ``theta`` and vectors ``S``, the last off-diagonal ``b``, the matvecs spent and whether it converged."""

    basis: torch.Tensor
    m: int
    theta: np.ndarray
    S: np.ndarray
    b: float
    matvecs: int
    converged: bool


def _krylov(
    op: LinearOperator,
    q: torch.Tensor,
    m_max: int,
    *,
    k: int,
    smallest: bool,
    tol: float,
    progress_total: int,
    progress: Callable[[int, int], None] | None,
) -> _Krylov:
    """Lanczos steps from the unit vector q with full reorthogonalisation (twice), until the wanted
    Ritz values' error bounds are below ``tol`` x |largest|, the space is invariant, or m_max steps."""
    basis = torch.empty((m_max, op.size), dtype=op.dtype, device=op.device)
    alpha: list[float] = []
    beta: list[float] = []
    theta = S = None
    b = 0.0
    for j in range(m_max):
        basis[j] = q
        w = op.matvec(q)
        if progress is not None:
            progress(j + 1, progress_total)
        a = float(torch.dot(w, q))
        if not math.isfinite(a):
            raise ValueError(NOT_FINITE)
        alpha.append(a)
        Qj = basis[: j + 1]
        for _ in range(2):  # full reorthogonalisation, twice
            w = w - Qj.T @ (Qj @ w)
        b = float(w.norm())
        theta, S = eigh_tridiagonal(np.array(alpha), np.array(beta)) if j else (np.array([a]), np.ones((1, 1)))
        scale = max(abs(theta[0]), abs(theta[-1]), np.finfo(float).tiny)
        res = np.abs(b * S[-1, :])
        wanted = list(range(len(theta) - 1, max(len(theta) - 1 - k, -1), -1))
        if smallest:
            wanted.append(0)
        invariant = b <= 1e-12 * scale
        if invariant or (len(theta) > k and np.all(error_bound(theta, res)[wanted] <= tol * scale)):
            return _Krylov(basis, len(alpha), theta, S, b, len(alpha), True)
        if j + 1 < m_max:
            beta.append(b)
            q = w / b
    assert theta is not None and S is not None
    return _Krylov(basis, len(alpha), theta, S, b, len(alpha), False)


def lanczos_tridiagonal(op: LinearOperator, v0: torch.Tensor, num_steps: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(alpha, beta, matvecs) of ``num_steps`` Lanczos steps from ``v0``, fully reorthogonalised.

    Used by stochastic Lanczos quadrature; stops early on an invariant subspace.
    """
    return lanczos_tridiagonal_block(op, v0[None], num_steps)[0]


def lanczos_tridiagonal_block(
    op: LinearOperator, V0: torch.Tensor, num_steps: int, on_step: Callable[[int], None] | None = None
) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """Independent Lanczos runs from the rows of ``V0`` (b x size), in lockstep.

    Each step applies the operator to the b current vectors at once (``matmat``: one pass over
    the data for all of them); each run keeps its own fully reorthogonalised basis and stops on
    its own invariant subspace, exactly as :func:`lanczos_tridiagonal` would run it alone.
    Holds b x ``num_steps`` parameter-sized vectors. ``on_step(m)`` after each step of m matvecs.
    """
    from flatfl.analysis.operators import matmat

    op = as_operator(op)
    n, b = op.size, V0.shape[0]
    m_max = min(n, num_steps)
    Q = (V0 / V0.norm(dim=1, keepdim=True)).to(op.device, op.dtype)
    basis = torch.empty((b, m_max, n), dtype=op.dtype, device=op.device)
    alpha: list[list[float]] = [[] for _ in range(b)]
    beta: list[list[float]] = [[] for _ in range(b)]
    active = list(range(b))
    for j in range(m_max):
        basis[active, j] = Q[active]
        W = op.matvec(Q[active[0]])[None] if len(active) == 1 else matmat(op, Q[active].T).T
        if on_step is not None:
            on_step(len(active))
        still = []
        for w, i in zip(W, active):
            alpha[i].append(float(torch.dot(w, Q[i])))
            if not math.isfinite(alpha[i][-1]):
                raise ValueError(NOT_FINITE)
            Qj = basis[i, : j + 1]
            for _ in range(2):
                w = w - Qj.T @ (Qj @ w)
            nb = float(w.norm())
            if j + 1 == m_max or nb <= 1e-12 * max(abs(x) for x in alpha[i]):
                continue
            beta[i].append(nb)
            Q[i] = w / nb
            still.append(i)
        active = still
        if not active:
            break
    return [(np.array(a), np.array(bt), len(a)) for a, bt in zip(alpha, beta)]
