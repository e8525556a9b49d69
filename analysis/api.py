"""One call per question, on any PyTorch model and data.

Every function takes a model (any ``nn.Module``) and data -- ``(x, y)`` tensors, a DataLoader or any
iterable of batches -- or, instead of both, a :class:`~flatfl.analysis.operators.ModelLoss` built once
with :func:`objective` and reused across calls. The loss is ``loss_fn`` with mean reduction (default
cross-entropy; ``nn.CrossEntropyLoss()``, ``nn.MSELoss()`` or a plain function work the same:
flatfl sums per-batch means weighted by batch size, so the loss is the mean over all examples).
``forward(model, batch)`` and ``targets(batch)`` take dict batches and models with several inputs.
The model -- its parameters, buffers and train/eval mode -- is left exactly as it was: the analysis
works on detached copies, in eval mode.

Each function returns a frozen result holding the numbers, what they cost (operator applications)
and ``settings``, the values used.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from flatfl.analysis import batches as bt
from flatfl.analysis.density import SpectralDensity, slq
from flatfl.analysis.lanczos import EigenResult, lanczos
from flatfl.analysis.operators import HessianOperator, ModelLoss
from flatfl.analysis.sharpness import (
    SharpnessResult,
    adaptive_sharpness,
    average_sharpness,
    epsilon_sharpness,
    sam_sharpness,
)
from flatfl.analysis.surfaces import Surface, axis, evaluate_grid, pca_directions, random_directions
from flatfl.analysis.trace import TRACE_ESTIMATORS, TraceResult

SHARPNESS_KINDS = ("sam", "adaptive", "epsilon", "average")
DIRECTION_KINDS = ("random", "eigen", "models", "pca")


def objective(
    model: nn.Module,
    data: Any,
    *,
    loss_fn: Callable[..., torch.Tensor] = F.cross_entropy,
    forward: Callable[[nn.Module, Any], Any] | None = None,
    targets: Callable[[Any], Any] | None = None,
    batch_size: int = 250,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    memory_budget: float = 2 * 2**30,
    stream: bool | None = None,
) -> ModelLoss:
    """The mean loss of ``model`` over ``data``, as a function of the parameters -- the object every other
    call works on. ``data``: ``(x, y)`` tensors (split into batches of ``batch_size``) or any iterable of
    batches, read once. ``dtype``: analyse in another precision (``torch.float64`` for reference values).
    ``stream``: keep the data on the host and move one batch at a time to the device (default: when the
    data take more than half of ``memory_budget`` on an accelerator)."""
    return ModelLoss(
        model,
        batches=bt.as_batches(data, batch_size),
        dtype=dtype,
        device=device,
        loss_fn=loss_fn,
        forward=forward,
        targets=targets,
        memory_budget=memory_budget,
        stream=stream,
    )


def _problem(model: nn.Module | ModelLoss, data: Any, kw: dict[str, Any]) -> ModelLoss:
    if isinstance(model, ModelLoss):
        if data is not None or kw:
            raise ValueError("a ModelLoss already holds its data and loss: pass no data or objective options")
        return model
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module or a ModelLoss, got {type(model).__name__}")
    if data is None:
        raise ValueError("data is required with a model")
    return objective(model, data, **kw)


def _generator(seed: int | torch.Generator) -> torch.Generator:
    return seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(int(seed))


def _common(obj: ModelLoss, seed: Any) -> dict[str, Any]:
    return {
        "num_examples": obj.n,
        "num_parameters": obj.size,
        "dtype": str(obj.dtype).replace("torch.", ""),
        "device": str(obj.device),
        "loss": getattr(obj.loss_fn, "__name__", type(obj.loss_fn).__name__),
        "seed": seed if isinstance(seed, int) else "generator",
    }


def hessian_eigenvalues(
    model: nn.Module | ModelLoss,
    data: Any = None,
    *,
    k: int = 1,
    smallest: bool = False,
    tol: float = 1e-4,
    max_vectors: int | None = None,
    return_vectors: bool = False,
    exact_residuals: bool = True,
    hvp: str = "auto",
    seed: int | torch.Generator = 0,
    **objective_kw: Any,
) -> EigenResult:
    """The ``k`` largest Hessian eigenvalues (and with ``smallest`` the most negative one, λmin) by Lanczos
    with full reorthogonalisation, each with its residual ||H v - λ v||; ``tol`` is the accuracy relative to
    |λmax|; ``exact_residuals`` recomputes them with k (+1) more products (else Lanczos' own estimates).
    The Hessian is that of the mean loss over all of ``data`` (not one mini-batch)."""
    obj = _problem(model, data, objective_kw)
    op = HessianOperator(obj, method=hvp, memory_budget=objective_kw.get("memory_budget", 2 * 2**30))
    res = lanczos(
        op,
        k=k,
        smallest=smallest,
        tol=tol,
        max_vectors=max_vectors,
        generator=_generator(seed),
        return_vectors=return_vectors,
        exact_residuals=exact_residuals,
    )
    settings = {"k": k, "smallest": smallest, "tol": tol, "hvp": op.method, **_common(obj, seed)}
    return replace(res, settings=settings)


def hessian_trace(
    model: nn.Module | ModelLoss,
    data: Any = None,
    *,
    num_matvecs: int = 99,
    estimator: str = "adaptive",
    hvp: str = "auto",
    seed: int | torch.Generator = 0,
    **objective_kw: Any,
) -> TraceResult:
    """tr(H) with its standard error from ``num_matvecs`` Hessian-vector products: ``adaptive`` (default;
    Hutchinson or Hutch++, whichever the first third of the budget predicts is better), ``hutch++``
    (Meyer et al. 2021) or ``hutchinson`` (1989)."""
    if estimator not in TRACE_ESTIMATORS:
        raise ValueError(f"estimator must be one of {sorted(TRACE_ESTIMATORS)}, got {estimator!r}")
    obj = _problem(model, data, objective_kw)
    op = HessianOperator(obj, method=hvp)
    res = TRACE_ESTIMATORS[estimator](op, num_matvecs=num_matvecs, generator=_generator(seed))
    return replace(res, settings={"estimator": estimator, "num_matvecs": num_matvecs, **_common(obj, seed)})


def hessian_density(
    model: nn.Module | ModelLoss,
    data: Any = None,
    *,
    num_runs: int = 10,
    num_steps: int = 80,
    hvp: str = "auto",
    seed: int | torch.Generator = 0,
    **objective_kw: Any,
) -> SpectralDensity:
    """The Hessian's spectral density by stochastic Lanczos quadrature (Ghorbani et al. 2019): ``num_runs``
    Rademacher starts, ``num_steps`` Lanczos steps each. ``.density(grid, sigma)`` gives the smoothed curve."""
    obj = _problem(model, data, objective_kw)
    op = HessianOperator(obj, method=hvp)
    res = slq(op, num_runs=num_runs, num_steps=num_steps, generator=_generator(seed))
    return replace(res, settings={"num_runs": num_runs, "num_steps": num_steps, **_common(obj, seed)})


def sharpness(
    model: nn.Module | ModelLoss,
    data: Any = None,
    *,
    kind: str = "sam",
    rho: float = 0.05,
    steps: int = 10,
    m: int | None = None,
    p: float = 2,
    eps: float = 1e-3,
    sigma: float = 0.01,
    num_samples: int = 50,
    adaptive: bool = True,
    seed: int | torch.Generator = 0,
    **objective_kw: Any,
) -> SharpnessResult:
    """One sharpness measure: ``sam`` -- max over ||δ||₂ ≤ ``rho`` of L(w+δ) − L(w) (Foret et al. 2021;
    with ``m``, the mean over m-sample groups); ``adaptive`` -- the same in the ball ||δ/|w| ||_p ≤ ``rho``
    (Kwon et al. 2021; ``p`` 2 or inf); ``epsilon`` -- Keskar et al.'s (2017) box measure of size ``eps``;
    ``average`` -- E L(w+δ) − L(w), δ ~ N(0, ``sigma``² diag(w²)) (``adaptive=False``: N(0, ``sigma``² I)),
    ``num_samples`` draws."""
    obj = _problem(model, data, objective_kw)
    gen = _generator(seed)
    if kind == "sam":
        return sam_sharpness(obj, rho=rho, steps=steps, m=m, generator=gen)
    if kind == "adaptive":
        return adaptive_sharpness(obj, rho=rho, p=p, steps=steps, generator=gen)
    if kind == "epsilon":
        return epsilon_sharpness(obj, eps=eps, max_iter=steps, generator=gen)
    if kind == "average":
        return average_sharpness(obj, sigma=sigma, adaptive=adaptive, num_samples=num_samples, generator=gen)
    raise ValueError(f"kind must be one of {SHARPNESS_KINDS}, got {kind!r}")


def _flat_state(obj: ModelLoss, state: nn.Module | Mapping[str, torch.Tensor]) -> torch.Tensor:
    """A model or state dict as a flat parameter vector in ``obj``'s layout (buffers ignored)."""
    sd = state.state_dict() if isinstance(state, nn.Module) else state
    missing = [n for n in obj.names if n not in sd]
    if missing:
        raise ValueError(f"state dict lacks parameters {missing[:3]}{' ...' if len(missing) > 3 else ''}")
    return torch.cat([sd[n].detach().reshape(-1).to(obj.device, obj.dtype) for n in obj.names])


def _directions(
    obj: ModelLoss, kind: str, dims: int, towards: Sequence[Any], trajectory: Sequence[Any], gen: torch.Generator
) -> tuple[list[torch.Tensor], list[tuple[str, str, torch.Tensor]], dict[str, Any]]:
    """The surface's directions, the models to mark on it, and the description (axis names)."""
    w = obj.flat()
    if kind == "random":
        dirs = random_directions(obj, dims, gen)
        return dirs, [], {"kind": "random", "x_label": "random filter-normalised direction 1",
                          "y_label": "random direction 2 (orthogonalised)"}  # fmt: skip
    if kind == "eigen":
        res = lanczos(HessianOperator(obj), k=dims, generator=gen, return_vectors=True)
        dirs = [v.to(obj.device, obj.dtype) * w.norm() for v in res.vectors]  # x ||w||, as flatfl landscape
        return dirs, [], {"kind": "eigen", "eigenvalues": res.values.tolist(),
                          "x_label": f"top Hessian eigenvector 1 (x ||w||, λ={res.values[0]:.4g})",
                          "y_label": f"top Hessian eigenvector 2 (x ||w||, λ={res.values[-1]:.4g})"}  # fmt: skip
    if kind == "models":
        if len(towards) != dims:
            raise ValueError(
                f"directions='models' with dims={dims} needs {dims} model(s) in towards=, got {len(towards)}"
            )
        flats = [_flat_state(obj, t) for t in towards]
        d1 = flats[0] - w
        dirs = [d1]
        if dims == 2:
            u = flats[1] - w
            dirs.append(u - (u @ d1) / (d1 @ d1) * d1)  # the plane through w and both models
        named = [(f"model {i + 1}", "models", f) for i, f in enumerate(flats)]
        labels = {"x_label": "towards model 1", "y_label": "towards model 2 (orthogonalised)"}
        return dirs, named, {"kind": "models", **labels}
    if kind == "pca":
        if dims != 2 or len(trajectory) < 2:
            raise ValueError("directions='pca' needs dims=2 and trajectory= with at least 2 models")
        path = [_flat_state(obj, t) for t in trajectory]
        d1, d2, coords, var = pca_directions(path + [w])
        named = [(f"trajectory {i}", "trajectory", f) for i, f in enumerate(path)]
        reach = float(np.abs(coords).max()) * 1.25 or 1.0
        return [d1, d2], named, {"kind": "pca", "explained_variance": var.tolist(), "reach": reach,
                                 "x_label": f"PC1 ({var[0]:.0%} of the trajectory's variance)",
                                 "y_label": f"PC2 ({var[1]:.0%})"}  # fmt: skip
    raise ValueError(f"directions must be one of {DIRECTION_KINDS}, got {kind!r}")


def loss_surface(
    model: nn.Module | ModelLoss,
    data: Any = None,
    *,
    directions: str = "random",
    dims: int = 2,
    span: tuple[float, float] | None = None,
    steps: int = 21,
    towards: Sequence[nn.Module | Mapping[str, torch.Tensor]] = (),
    trajectory: Sequence[nn.Module | Mapping[str, torch.Tensor]] = (),
    seed: int | torch.Generator = 0,
    **objective_kw: Any,
) -> Surface:
    """Loss and accuracy on a line (``dims=1``) or plane (``dims=2``) through the model:
    L(w + α d1 (+ β d2)) for ``steps`` values of α (and β) over ``span``.

    ``directions``: ``random`` -- Gaussian, filter-normalised and orthogonalised (Li et al. 2018);
    ``eigen`` -- the top Hessian eigenvectors, scaled to ||w|| (as ``flatfl landscape``); ``models`` --
    towards the models or state dicts in ``towards`` (1D: α = 1 is the model, the line is the
    interpolation; 2D: the plane through w and both); ``pca`` -- the top-2 principal directions of
    ``trajectory`` (state dicts or models, e.g. saved during training) around w. Given models are drawn
    on the surface as markers. Default ``span``: (-1, 1); (-0.5, 1.5) towards models; for ``pca`` 1.25
    times the trajectory's reach."""
    if dims not in (1, 2):
        raise ValueError(f"dims must be 1 or 2, got {dims}")
    obj = _problem(model, data, objective_kw)
    gen = _generator(seed)
    dirs, named, desc = _directions(obj, directions, dims, towards, trajectory, gen)
    if span is None:
        reach = desc.pop("reach", 1.0)
        span = (-0.5, 1.5) if directions == "models" else (-reach, reach)
    alphas = axis(*span, steps)  # holds 0 (the model itself) exactly
    betas = axis(*span, steps) if dims == 2 else None
    w = obj.flat()
    surf = evaluate_grid(obj, dirs, alphas, betas)
    from flatfl.analysis.surfaces import model_markers

    settings = {"dims": dims, "span": list(span), "steps": steps, **_common(obj, seed)}
    return replace(surf, markers=model_markers(obj, w, dirs, named), description={**desc, "settings": settings})
