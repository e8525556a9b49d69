"""Sharpness of a minimum: how much the loss rises under bounded weight perturbations.

Each measure maximises (or averages) L(w + delta) - L(w) over a neighbourhood of the weights
w; they differ in the neighbourhood. All work on any :class:`Objective` (a model's mean
loss over a data set, :class:`analysis.operators.ModelLoss`, or a closed-form test loss) and
return a :class:`SharpnessResult` recording the definition's parameters.

* epsilon-sharpness (Keskar et al., ICLR 2017, Metric 2.1, full space):
      100 * max_{|delta_i| <= eps (|w_i| + 1)} [L(w + delta) - L(w)] / (1 + L(w)),
  maximised with L-BFGS-B (scipy) within the box, as in the paper.
* SAM sharpness (Foret et al., ICLR 2021):  max_{||delta||_2 <= rho} L(w + delta) - L(w);
  with ``m`` set, m-sharpness: the mean over disjoint batches of m samples of each batch's
  own worst case.
* adaptive sharpness (Kwon et al., ICML 2021 "ASAM"; Andriushchenko et al., ICML 2023):
      max_{||delta / |w| ||_p <= rho} L(w + delta) - L(w),  p in {2, inf},
  i.e. delta = |w| * u elementwise with ||u||_p <= rho. Invariant to rescaling a ReLU layer
  pair by (a, 1/a) (Dinh et al., ICML 2017), unlike the Hessian's lambda_max.
* average-case sharpness: E_delta [L(w + delta) - L(w)] for delta ~ N(0, sigma^2 diag(|w|^2))
  (adaptive, default) or N(0, sigma^2 I), Monte Carlo with a standard error and 95% interval.
  With ``antithetic``, each draw is evaluated at +delta and -delta and contributes
  (L(w + delta) + L(w - delta)) / 2 - L(w): the same expectation (delta is symmetric), but the
  first-order term g^T delta, which dominates the variance of small perturbations and averages to
  zero, cancels exactly (antithetic variates, e.g. Owen, *Monte Carlo theory*, ch. 8.2).

Maximisation for SAM/adaptive uses projected steepest ascent (normalised gradient for l2,
sign of the gradient for l_inf), started from the one-step SAM/ASAM perturbation, keeping
the best point seen; ``steps`` is the budget. Closed forms these match: for a quadratic at its
minimum SAM sharpness is rho^2 lambda_max / 2 and adaptive-l2 is rho^2 lambda_max(|W| H |W|) / 2;
for a linear loss g^T w SAM is rho ||g||, adaptive-l_inf rho sum |w_i g_i|, and epsilon-sharpness
100 eps sum (|w_i| + 1)|g_i| / (1 + L).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from scipy.optimize import minimize

from flatfl.analysis import batches as bt
from flatfl.analysis import checks

Progress = Callable[[int, int], None]


class Objective(Protocol):
    """A loss over flat parameters, optionally restricted to a subset of batches."""

    size: int
    dtype: torch.dtype
    device: torch.device
    batches: list

    def flat(self) -> torch.Tensor: ...

    def loss(self, w: torch.Tensor | None = None, batches: Sequence[tuple] | None = None) -> float: ...

    def loss_and_gradient(
        self, w: torch.Tensor | None = None, batches: Sequence[tuple] | None = None
    ) -> tuple[float, torch.Tensor]: ...


@dataclass(frozen=True)
class SharpnessResult:
    """One sharpness value with the loss it started from and the definition's parameters."""

    measure: str
    value: float
    base_loss: float
    settings: dict[str, Any]
    num_loss_evals: int
    stderr: float | None = None
    ci95: tuple[float, float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _mean_stderr(values: Sequence[float]) -> tuple[float, float]:
    """Mean and its standard error std(ddof=1)/sqrt(n); the error is NaN from a single value (no warning)."""
    arr = np.asarray(values, dtype=float)
    se = float(arr.std(ddof=1) / np.sqrt(len(arr))) if len(arr) > 1 else float("nan")
    return float(arr.mean()), se


def _check_ball(rho: float, steps: int) -> None:
    checks.positive("rho", rho)
    checks.integer("steps", steps, 1)


def _rebatch(obj: Objective, m: int) -> list[list[tuple]]:
    """Disjoint groups of exactly-m samples (the tail < m is dropped, as in m-sharpness)."""
    every = bt.concat(obj.batches)
    return [[bt.slice_batch(every, i, i + m)] for i in range(0, obj.n - m + 1, m)]


def _ascent(
    obj: Objective,
    w: torch.Tensor,
    scale: torch.Tensor | None,
    rho: float,
    p: float,
    steps: int,
    batches: Sequence[tuple] | None,
    generator: torch.Generator | None,
    tick: Callable[[], None] = lambda: None,
) -> tuple[float, float, int]:
    """max over ||u||_p <= rho of L(w + scale*u) (scale=None: identity). Returns (best, L(w), evals);
    ``tick()`` after each of the max(steps, 1) + 2 evaluations."""
    s = torch.ones_like(w) if scale is None else scale
    base, g = obj.loss_and_gradient(w, batches)
    evals = 1
    tick()

    def step_dir(grad_u: torch.Tensor) -> torch.Tensor:
        if p == 2:
            nrm = grad_u.norm()
            return grad_u / nrm if nrm > 0 else grad_u
        return torch.sign(grad_u)

    def project(u: torch.Tensor) -> torch.Tensor:
        if p == 2:
            nrm = u.norm()
            return u * (rho / nrm) if nrm > rho else u
        return u.clamp(-rho, rho)

    gu = s * g
    if float(gu.abs().max()) == 0.0:  # exactly stationary: start from a random direction
        gu = torch.randn(w.shape, generator=generator, dtype=torch.float64).to(w.device, w.dtype)
    u = project(rho * step_dir(gu))
    best = base
    for _ in range(max(steps, 1)):
        val, g = obj.loss_and_gradient(w + s * u, batches)
        evals += 1
        tick()
        best = max(best, val)
        u = project(u + rho * step_dir(s * g))
    val = obj.loss(w + s * u, batches)
    evals += 1
    tick()
    return max(best, val), base, evals


def _ticker(progress: Progress | None, total: int) -> Callable[[], None]:
    """A counter calling ``progress(done, total)`` at each tick (nothing without ``progress``)."""
    if progress is None:
        return lambda: None
    done = [0]

    def tick() -> None:
        done[0] += 1
        progress(done[0], max(total, done[0]))

    return tick


def sam_sharpness(
    obj: Objective,
    *,
    rho: float = 0.05,
    steps: int = 10,
    m: int | None = None,
    generator: torch.Generator | None = None,
    progress: Progress | None = None,
) -> SharpnessResult:
    """max_{||delta||_2 <= rho} L(w+delta) - L(w); with ``m``, the mean of per-batch worst cases.
    ``progress(done, total)`` after each loss evaluation."""
    _check_ball(rho, steps)
    if m is not None:
        n = getattr(obj, "n", None)
        checks.integer("m", m, 1)
        if n is not None and m > n:
            raise ValueError(f"m must be an int in [1, {n}] (the number of examples), got {m}")
    w = obj.flat()
    settings = {"rho": rho, "steps": steps, "m": m, "norm": "l2"}
    if m is None:
        best, base, evals = _ascent(obj, w, None, rho, 2, steps, None, generator, _ticker(progress, max(steps, 1) + 2))
        return SharpnessResult("sam", best - base, base, settings, evals)
    vals, evals = [], 0
    groups = _rebatch(obj, m)
    tick = _ticker(progress, len(groups) * (max(steps, 1) + 2))
    for group in groups:
        best, base, e = _ascent(obj, w, None, rho, 2, steps, group, generator, tick)
        vals.append(best - base)
        evals += e
    mean, se = _mean_stderr(vals)
    return SharpnessResult("sam", mean, obj.loss(w), settings, evals, stderr=se)


def adaptive_sharpness(
    obj: Objective,
    *,
    rho: float = 0.05,
    p: float = 2,
    steps: int = 10,
    generator: torch.Generator | None = None,
    progress: Progress | None = None,
) -> SharpnessResult:
    """max_{||delta/|w| ||_p <= rho} L(w+delta) - L(w), p = 2 or inf (elementwise-adaptive);
    ``progress(done, total)`` after each loss evaluation."""
    if p not in (2, float("inf")):
        raise ValueError(f"p must be 2 or float('inf'), got {p!r}")
    _check_ball(rho, steps)
    w = obj.flat()
    tick = _ticker(progress, max(steps, 1) + 2)
    best, base, evals = _ascent(obj, w, w.abs(), rho, p, steps, None, generator, tick)
    name = "adaptive_l2" if p == 2 else "adaptive_linf"
    return SharpnessResult(name, best - base, base, {"rho": rho, "p": "inf" if p != 2 else 2, "steps": steps}, evals)


def epsilon_sharpness(
    obj: Objective,
    *,
    eps: float = 1e-3,
    max_iter: int = 10,
    generator: torch.Generator | None = None,
    progress: Progress | None = None,
) -> SharpnessResult:
    """Keskar et al.'s epsilon-sharpness (x100, relative to 1 + L), box solved by L-BFGS-B;
    ``progress(done, total)`` after each evaluation (total: max_iter + 1, raised if the line searches need more).

    L-BFGS-B starts from a random point in the inner half of the box: at an exact critical
    point the gradient vanishes and a start at delta = 0 would never move.
    """
    checks.positive("eps", eps)
    checks.integer("max_iter", max_iter, 1)
    w = obj.flat()
    w64 = w.double().cpu().numpy()
    bound = eps * (np.abs(w64) + 1.0)
    u = torch.rand(w.shape, generator=generator, dtype=torch.float64).numpy()
    x0 = (u - 0.5) * bound
    base = obj.loss(w)
    evals = [1]
    tick = _ticker(progress, max_iter + 1)

    def fun(d: np.ndarray) -> tuple[float, np.ndarray]:
        evals[0] += 1
        tick()
        val, g = obj.loss_and_gradient(w + torch.as_tensor(d, dtype=w.dtype, device=w.device))
        return -val, -g.double().cpu().numpy()

    res = minimize(
        fun,
        x0,
        jac=True,
        method="L-BFGS-B",
        bounds=list(zip(-bound, bound)),
        options={"maxiter": max_iter},
    )
    best = max(-float(res.fun), base)
    return SharpnessResult(
        "epsilon",
        100.0 * (best - base) / (1.0 + base),
        base,
        {"eps": eps, "max_iter": max_iter, "solver": "L-BFGS-B"},
        evals[0],
        extra={"max_loss": best},
    )


def average_sharpness(
    obj: Objective,
    *,
    sigma: float = 0.01,
    adaptive: bool = True,
    num_samples: int = 50,
    generator: torch.Generator | None = None,
    block: int = 16,
    progress: Progress | None = None,
    antithetic: bool = False,
) -> SharpnessResult:
    """E[L(w+delta)] - L(w), delta ~ N(0, sigma^2 diag(|w|^2)) (adaptive) or N(0, sigma^2 I).

    ``antithetic``: each of the ``num_samples`` draws evaluated at w + delta and w - delta (2 num_samples
    loss evaluations), its value the mean of the two rises (see the module doc); the standard error is over
    the draws.

    The draws are evaluated ``block`` at a time in one pass over the data when the objective has
    ``losses(W)`` (:meth:`ModelLoss.losses`: stacked through ``vmap`` on an accelerator, a loop on a
    CPU); the same draws, in the same order, whatever ``block``. ``progress(done, num_samples)`` for
    each draw evaluated.
    """
    checks.positive("sigma", sigma)
    checks.integer("num_samples", num_samples, 1)
    checks.integer("block", block, 1)
    w = obj.flat()
    base = obj.loss(w)
    scale = w.abs() if adaptive else torch.ones_like(w)
    draws = [torch.randn(w.shape, generator=generator, dtype=torch.float64) for _ in range(num_samples)]
    if antithetic:  # +delta_1, -delta_1, +delta_2, ...
        draws = [x for dr in draws for x in (dr, -dr)]
    losses = getattr(obj, "losses", None)  # many points per pass over the data (ModelLoss), else one by one
    d: list[float] = []
    tick = _ticker(progress, len(draws))
    for i in range(0, len(draws), block):
        W = w + sigma * scale * torch.stack(draws[i : i + block]).to(w.device, w.dtype)
        if losses is not None:  # the block in one pass; progress counts its draws
            d += list(losses(W))
            for _ in W:
                tick()
            continue
        for row in W:
            d.append(obj.loss(row))
            tick()
    rises = np.asarray(d, dtype=float) - base
    if antithetic:
        rises = rises.reshape(num_samples, 2).mean(axis=1)
    mean, se = _mean_stderr(rises)
    return SharpnessResult(
        "average_adaptive" if adaptive else "average_isotropic",
        mean,
        base,
        {"sigma": sigma, "adaptive": adaptive, "num_samples": num_samples, "antithetic": antithetic},
        len(draws) + 1,
        stderr=se,
        ci95=(mean - 1.96 * se, mean + 1.96 * se),
    )


@dataclass(frozen=True)
class SharpnessKind:
    """One named sharpness measure: its ``family`` (the library's ``sharpness(kind=...)``), its parameter
    within the family (``p`` of adaptive, ``adaptive`` of average), a label and whether it is a Monte Carlo
    estimate (with a standard error that shrinks with ``num_samples``)."""

    name: str
    family: str
    label: str
    sampled: bool = False
    p: float = 2
    adaptive: bool = True


# The one sharpness vocabulary: the run side (``flatfl landscape --sharpness``, ``flatfl report``'s verdict rows)
# and the library's ``sharpness(kind=...)`` both read it.
SHARPNESS: dict[str, SharpnessKind] = {
    k.name: k
    for k in (
        SharpnessKind("epsilon", "epsilon", "epsilon-sharpness"),
        SharpnessKind("sam", "sam", "SAM sharpness"),
        SharpnessKind("adaptive_l2", "adaptive", "adaptive sharpness (L2)", p=2),
        SharpnessKind("adaptive_linf", "adaptive", "adaptive sharpness (Linf)", p=float("inf")),
        SharpnessKind("average_adaptive", "average", "average adaptive sharpness", sampled=True, adaptive=True),
        SharpnessKind("average_isotropic", "average", "average sharpness", sampled=True, adaptive=False),
    )
}
SHARPNESS_MEASURES: tuple[str, ...] = tuple(SHARPNESS)
SHARPNESS_KINDS: tuple[str, ...] = tuple(dict.fromkeys(k.family for k in SHARPNESS.values()))


def sharpness_name(family: str, *, p: float = 2, adaptive: bool = True) -> str:
    """The measure's name of a family and its parameter (``adaptive``, p=inf -> ``adaptive_linf``)."""
    for k in SHARPNESS.values():
        same = (family != "adaptive" or k.p == p) and (family != "average" or k.adaptive == adaptive)
        if k.family == family and same:
            return k.name
    if family == "adaptive":
        raise ValueError(f"p must be 2 or float('inf'), got {p!r}")
    raise ValueError(f"kind must be one of {SHARPNESS_KINDS}, got {family!r}")


def measure_sharpness(
    obj: Objective,
    name: str,
    *,
    rho: float = 0.05,
    eps: float = 1e-3,
    sigma: float = 0.01,
    steps: int = 10,
    num_samples: int = 50,
    m: int | None = None,
    antithetic: bool = False,
    epsilon_steps: int | None = None,
    generator: torch.Generator | None = None,
    progress: Progress | None = None,
) -> SharpnessResult:
    """The sharpness measure ``name`` (a key of :data:`SHARPNESS`) with its parameters: ``rho`` and ``steps``
    for SAM (with ``m``: m-sharpness) and adaptive; ``eps`` (and ``epsilon_steps`` L-BFGS-B iterations, default
    the function's) for epsilon; ``sigma``, ``num_samples`` and ``antithetic`` for average."""
    k = SHARPNESS.get(name)
    if k is None:
        raise ValueError(f"unknown sharpness measure {name!r}; choose from {', '.join(SHARPNESS_MEASURES)}")
    if k.family == "epsilon":
        kw = {} if epsilon_steps is None else {"max_iter": epsilon_steps}
        return epsilon_sharpness(obj, eps=eps, generator=generator, progress=progress, **kw)
    if k.family == "sam":
        return sam_sharpness(obj, rho=rho, steps=steps, m=m, generator=generator, progress=progress)
    if k.family == "adaptive":
        return adaptive_sharpness(obj, rho=rho, p=k.p, steps=steps, generator=generator, progress=progress)
    return average_sharpness(obj, sigma=sigma, adaptive=k.adaptive, num_samples=num_samples, generator=generator,
                             progress=progress, antithetic=antithetic)  # fmt: skip
