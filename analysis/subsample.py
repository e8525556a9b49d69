"""Curvature on growing random subsets of the data, with the error that comes from which samples were drawn.

Every HVP runs over the whole analysis data, so cost grows linearly with it. ``--samples auto``
instead takes nested random subsets of s = s_0, 2 s_0, 4 s_0, ... samples (one seeded permutation
of all N) and stops at the first s whose *data-sampling* error is below ``data_tol`` x |value| for
every requested quantity (lambda_max and/or the trace), or at s = N (the exact full-data value).

Data error: the subset is split into K disjoint groups of about s/K samples, the quantity is
computed on each group, and the spread of the group values gives the standard error of the
subset's value, sd_K / sqrt(K) (the subset's mean loss is the mean of the groups', so the error of
a mean of K independent draws), times the finite-population factor sqrt(1 - s/N) of sampling
without replacement (Cochran 1977, sec. 2.6), which is 0 at s = N. For the trace the groups use
the *same* Hutchinson probe vectors (common random numbers), so the spread is the data's, not the
probes'; the trace of the subset is then exactly the size-weighted mean of the groups' estimates.
lambda_max of the subset comes from its own Lanczos run; its group spread is the delta-method
error of a smooth function of the mean Hessian (a simple top eigenvalue).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from flatfl.analysis.lanczos import lanczos
from flatfl.analysis.operators import HessianOperator, LinearOperator, matmat
from flatfl.analysis.trace import _rademacher


@dataclass(frozen=True)
class SubsampleSettings:
    """How ``--samples auto`` grows the subset (filled by the CLI)."""

    data_tol: float = 0.01  # relative data-sampling error to reach
    start: int = 256  # first subset size
    groups: int = 8  # disjoint groups per subset for the error
    trace_matvecs: int = 30  # shared Hutchinson probes of the trace's data error
    tol: float = 1e-5  # Lanczos tolerance
    seed: int = 0
    # at s = N the data error is 0 by construction: False skips computing the full-data values there (a
    # caller that measures the full data anyway, as flatfl landscape does, would compute them twice)
    full_values: bool = True


@dataclass(frozen=True)
class DataSampled:
    """The chosen subset (indices into the data), the values on it and their data-sampling errors."""

    indices: np.ndarray
    values: dict[str, float]
    data_errors: dict[str, float]
    converged: bool
    levels: list[dict] = field(default_factory=list)


def group_error(values: np.ndarray, weights: np.ndarray, s: int, n: int) -> float:
    """Standard error of the weighted mean of K group values, with the finite-population factor."""
    k = len(values)
    mean = float((weights * values).sum() / weights.sum())
    sd = float(np.sqrt(((values - mean) ** 2).sum() / (k - 1)))
    return sd / np.sqrt(k) * np.sqrt(max(1.0 - s / n, 0.0))


def _trace_groups(ops: list[LinearOperator], weights: np.ndarray, num: int, seed: int) -> tuple[float, np.ndarray]:
    """Hutchinson with the same probes on every group: (subset trace, group traces)."""
    Z = _rademacher(ops[0].size, num, ops[0], torch.Generator().manual_seed(seed))
    groups = np.array([float((Z * matmat(op, Z.T).T).sum(1).mean()) for op in ops])
    return float((weights * groups).sum() / weights.sum()), groups


def _lambda_max(op: LinearOperator, tol: float, seed: int) -> float:
    r = lanczos(op, k=1, tol=tol, generator=torch.Generator().manual_seed(seed), return_vectors=False)
    return float(r.values[0])


def subsample(
    n: int,
    make_op: Callable[[np.ndarray], HessianOperator],
    quantities: tuple[str, ...],
    settings: SubsampleSettings = SubsampleSettings(),
    log: Callable[[str], None] = lambda s: None,
) -> DataSampled:
    """Grow a seeded random subset of the n samples until every quantity's data error is below tolerance.

    ``make_op(indices)``: the Hessian operator of the mean loss over those samples;
    ``quantities``: some of "lambda_max", "trace".
    """
    if not set(quantities) <= {"lambda_max", "trace"} or not quantities:
        raise ValueError("quantities: lambda_max and/or trace")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(settings.seed)).numpy()
    s = min(max(settings.start, 2 * settings.groups), n)
    levels = []
    while True:
        idx = order[:s]
        if s == n and not settings.full_values and levels:
            zeros = {q: 0.0 for q in quantities}
            levels.append({"samples": int(s), "values": {}, "data_errors": zeros})
            log(f"samples auto: the whole data ({n}): exact, measured once by the caller")
            return DataSampled(np.sort(idx), {}, zeros, True, levels)
        parts = np.array_split(idx, settings.groups)
        weights = np.array([len(p) for p in parts], dtype=float)
        ops = [make_op(np.sort(p)) for p in parts]
        values, errors = {}, {}
        if "lambda_max" in quantities:
            values["lambda_max"] = _lambda_max(make_op(np.sort(idx)), settings.tol, settings.seed)
            g = np.array([_lambda_max(op, settings.tol, settings.seed) for op in ops])
            errors["lambda_max"] = group_error(g, weights, s, n)
        if "trace" in quantities:
            values["trace"], g = _trace_groups(ops, weights, settings.trace_matvecs, settings.seed)
            errors["trace"] = group_error(g, weights, s, n)
        done = all(errors[q] <= settings.data_tol * abs(values[q]) for q in quantities)
        levels.append({"samples": int(s), "values": values, "data_errors": errors})
        log(
            f"samples auto: {s} of {n}: "
            + ", ".join(f"{q} {values[q]:.5g} +- {errors[q]:.2g} (data)" for q in quantities)
        )
        if done or s == n:
            return DataSampled(np.sort(idx), values, errors, done, levels)
        s = min(2 * s, n)
