"""Curvature and sharpness of one :class:`~flatfl.runs.problem.Problem`, as JSON-ready records.

Top-k Hessian eigenpairs and the most negative eigenvalue (Lanczos), the trace (adaptive
Hutchinson/Hutch++ with a standard error), the spectral density (SLQ) and the sharpness measures;
every number is stored with what it cost and how long it took. The numerics are
:mod:`flatfl.analysis`'s; this module only chooses seeds, budgets and the record's shape.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict
from typing import Any

import torch

from flatfl.analysis.density import SpectralDensity, slq
from flatfl.analysis.distributed import ShardedOperator, sharded_loss_and_gradient
from flatfl.analysis.lanczos import EigenResult, lanczos
from flatfl.analysis.operators import HessianOperator
from flatfl.analysis.sharpness import adaptive_sharpness, average_sharpness, epsilon_sharpness, sam_sharpness
from flatfl.analysis.trace import TRACE_ESTIMATORS
from flatfl.errors import UserError
from flatfl.runs.problem import Problem
from flatfl.runs.timing import stage

SHARPNESS_MEASURES = ("epsilon", "sam", "adaptive_l2", "adaptive_linf", "average_adaptive", "average_isotropic")

Log = Callable[[str], None]
Progress = Callable[[int, int], None]
# bars(description) -> a context holding a progress(done, total) callback for a solver, or None (no bar)
Bars = Callable[[str], AbstractContextManager[Progress | None]]


@contextmanager
def no_bars(desc: str) -> Iterator[Progress | None]:
    """No progress bar (the library's and the report's default)."""
    yield None


@contextmanager
def tqdm_bars(desc: str, leave: bool = True) -> Iterator[Progress | None]:
    """A tqdm bar on stderr counting a solver's HVPs or loss evaluations, with its rate and ETA (left on
    screen with ``leave``); none (and no callback, so the solver does no extra work) when stderr is not a
    terminal."""
    if not sys.stderr.isatty():
        yield None
        return
    from tqdm.auto import tqdm

    with tqdm(desc=desc, file=sys.stderr, dynamic_ncols=True, leave=leave) as bar:

        def update(done: int, total: int) -> None:
            if bar.total != total:
                bar.total = total
            bar.update(done - bar.n)
            if done == total:
                bar.refresh()

        yield update


def generator(settings: Any, k: int) -> torch.Generator:
    """The seeded generator of quantity ``k`` (1 Lanczos, 2 trace, 3 SLQ, 4-7 sharpness, 8+ federated)."""
    return torch.Generator().manual_seed(settings.seed * 1000 + k)


def base_record(problem: Problem) -> dict[str, Any]:
    """Loss and gradient norm at the point, the parameter count and where it all came from."""
    obj = problem.objective
    if problem.ranks is None:
        loss0, g0 = obj.loss_and_gradient()
    else:
        loss0, g0 = sharded_loss_and_gradient(problem.hvp_objective, obj.norm)
    return {
        **{k: v for k, v in problem.source.items() if k != "memory_budget_gb"},
        "num_parameters": obj.size,
        "loss": loss0,
        "gradient_norm": float(g0.norm()),
        "eval_mode": "model.eval(): BatchNorm uses running statistics, dropout off",
    }


def hessian_operator(problem: Problem) -> HessianOperator | ShardedOperator:
    op = HessianOperator(problem.hvp_objective, memory_budget=problem.memory_budget)
    if problem.ranks is not None:
        op = ShardedOperator(op, problem.hvp_objective.norm, problem.objective.norm)
    return op


def top_eigen(
    op: Any, settings: Any, auto: dict | None, log: Log, bars: Bars = no_bars
) -> tuple[dict[str, Any], EigenResult]:
    if settings.topk >= op.size:
        raise UserError(f"--topk {settings.topk}: the model has only {op.size} parameters; use --topk < {op.size}")
    t = time.perf_counter()
    log(f"hessian: top-{settings.topk} and most negative eigenvalue by Lanczos ...")
    with bars("hessian (HVPs)") as progress:
        r = lanczos(
            op,
            k=settings.topk,
            smallest=True,
            tol=settings.tol,
            max_vectors=settings.max_vectors,
            generator=generator(settings, 1),
            progress=progress,
        )
    log(f"hessian: lambda_max {r.values[0]:.6g}, lambda_min {r.smallest:.6g}, {r.num_matvecs} HVPs")
    return {
        "eigenvalues": r.values.tolist(),
        "residuals": r.residuals.tolist(),
        "smallest": r.smallest,
        "smallest_residual": r.smallest_residual,
        "num_hvps": r.num_matvecs,
        "data_error": auto["data_errors"].get("lambda_max") if auto else None,
        "vectors_held": r.num_vectors,
        "converged": r.converged,
        "tol": r.tol,
        "seconds": time.perf_counter() - t,
    }, r


def trace(op: Any, settings: Any, auto: dict | None, log: Log, bars: Bars = no_bars) -> dict[str, Any]:
    t = time.perf_counter()
    log(f"trace: {settings.trace_method} with {settings.trace_matvecs} HVPs ...")
    with bars("trace (HVPs)") as progress:
        tr = TRACE_ESTIMATORS[settings.trace_method](
            op, num_matvecs=settings.trace_matvecs, generator=generator(settings, 2), progress=progress
        )
    log(f"trace: {tr.estimate:.6g} +- {tr.stderr:.2g}")
    return {
        "estimate": tr.estimate,
        "stderr": tr.stderr,
        "num_hvps": tr.num_matvecs,
        "method": tr.method,
        "data_error": auto["data_errors"].get("trace") if auto else None,
        "deflated": tr.deflated,
        "remainder_share": tr.remainder_share,
        "seconds": time.perf_counter() - t,
    }


def slq_block(size: int, dtype: torch.dtype, settings: Any) -> int:
    """SLQ runs in lockstep: as many as the memory budget holds bases of ``slq_steps`` vectors for."""
    per_run = settings.slq_steps * size * torch.finfo(dtype).bits // 8
    return int(max(1, min(settings.slq_runs, settings.memory_budget_gb * 2**30 // max(per_run, 1))))


def density(op: Any, settings: Any, log: Log, bars: Bars = no_bars) -> tuple[dict[str, Any], SpectralDensity]:
    t = time.perf_counter()
    log(f"density: SLQ, {settings.slq_runs} runs x {settings.slq_steps} steps ...")
    lockstep = slq_block(op.size, op.dtype, settings)
    with bars("density (HVPs)") as progress:
        d = slq(
            op,
            num_runs=settings.slq_runs,
            num_steps=settings.slq_steps,
            generator=generator(settings, 3),
            block=lockstep,
            progress=progress,
        )
    return {
        "nodes": [n.tolist() for n in d.nodes],
        "weights": [w.tolist() for w in d.weights],
        "num_hvps": d.num_matvecs,
        "vectors_held": settings.slq_steps * lockstep,
        "runs_in_lockstep": lockstep,
        "moments": {str(p): d.moment(p) for p in (1, 2)},
        "seconds": time.perf_counter() - t,
    }, d


def sharpness(problem: Problem, settings: Any, log: Log, bars: Bars = no_bars) -> dict[str, Any]:
    """Every measure of ``settings.sharpness`` on the whole analysis data."""
    n = problem.objective.n
    if "sam" in settings.sharpness and settings.m is not None and settings.m > n:
        raise UserError(f"--m {settings.m}: at most the {n} analysed samples (m-sharpness groups of M samples)")
    out = {}
    for name in settings.sharpness:
        t = time.perf_counter()
        log(f"sharpness: {name} ...")
        with bars(f"sharpness {name} (losses)") as progress, stage(f"sharpness {name}"):
            r = _sharpness_measure(problem.objective, name, settings, progress)
        out[name] = {**asdict(r), "seconds": time.perf_counter() - t}
        log(f"sharpness: {name} = {r.value:.6g}")
    return out


def _sharpness_measure(obj: Any, name: str, settings: Any, progress: Progress | None) -> Any:
    """One sharpness measure by name, with its settings and seeded generator."""
    if name == "epsilon":
        return epsilon_sharpness(obj, eps=settings.eps, generator=generator(settings, 4), progress=progress)
    if name == "sam":
        return sam_sharpness(
            obj,
            rho=settings.rho,
            steps=settings.sharpness_steps,
            m=settings.m,
            generator=generator(settings, 5),
            progress=progress,
        )
    if name in ("adaptive_l2", "adaptive_linf"):
        p = 2 if name == "adaptive_l2" else float("inf")
        return adaptive_sharpness(
            obj,
            rho=settings.rho,
            p=p,
            steps=settings.sharpness_steps,
            generator=generator(settings, 6),
            progress=progress,
        )
    if name in ("average_adaptive", "average_isotropic"):
        return average_sharpness(
            obj,
            sigma=settings.sigma,
            adaptive=name == "average_adaptive",
            num_samples=settings.sharpness_samples,
            generator=generator(settings, 7),
            progress=progress,
            antithetic=getattr(settings, "antithetic", False),
        )
    raise UserError(f"--sharpness: unknown measure {name!r}; choose from all, {', '.join(SHARPNESS_MEASURES)}")
