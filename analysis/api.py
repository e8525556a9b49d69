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
from flatfl.analysis import checks
from flatfl.analysis.curvatures import CURVATURES, curvature_operator
from flatfl.analysis.density import SpectralDensity, slq
from flatfl.analysis.lanczos import EigenResult, lanczos
from flatfl.analysis.operators import HessianOperator, ModelLoss
from flatfl.analysis.sharpness import SHARPNESS_KINDS, SharpnessResult, measure_sharpness, sharpness_name
from flatfl.analysis.surfaces import (
    Surface,
    axis,
    evaluate_grid,
    model_markers,
    pca_directions,
    random_directions,
)
from flatfl.analysis.trace import TRACE_ESTIMATORS, TraceResult

DIRECTION_KINDS = ("random", "eigen", "models", "pca")
HVP_METHODS = ("auto", "cached", "double-backward", "fwd-rev")
DEFAULT_MEMORY_BUDGET = 2 * 2**30


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
    memory_budget: float = DEFAULT_MEMORY_BUDGET,
    stream: bool | None = None,
) -> ModelLoss:
    """The mean loss of ``model`` over ``data``, as a function of the parameters -- the object every other
    call works on. ``data``: ``(x, y)`` tensors (split into batches of ``batch_size``) or any iterable of
    batches, read once. ``dtype``: analyse in another precision (``torch.float64`` for reference values;
    default the model's, but float32 for a float16/bfloat16 model). ``device``: default the model's.
    ``stream``: keep the data on the host and move one batch at a time to the device (default: when the
    data take more than half of ``memory_budget`` on an accelerator). Only parameters with
    ``requires_grad=True`` are variables; frozen ones are constants of the loss."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module or a ModelLoss, got {type(model).__name__}")
    checks.initialised(model)
    checks.integer("batch_size", batch_size, 1)
    checks.positive("memory_budget", memory_budget)
    return ModelLoss(
        model,
        batches=bt.as_batches(data, batch_size),
        dtype=checks.analysis_dtype(model, dtype),
        device=checks.device(device),
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


def _curvature(obj: ModelLoss, curvature: str, hvp: str, objective_kw: dict[str, Any]) -> Any:
    """The operator of ``curvature``: the Hessian (:func:`_operator`), the GGN or the empirical Fisher."""
    if curvature not in CURVATURES:
        raise ValueError(f"curvature must be one of {CURVATURES}, got {curvature!r}")
    return curvature_operator(obj, curvature, lambda: _operator(obj, hvp, objective_kw))


def _operator(obj: ModelLoss, hvp: str, objective_kw: dict[str, Any]) -> HessianOperator:
    """The Hessian of ``obj``, its HVP method chosen (``auto``) within the call's ``memory_budget``."""
    if hvp not in HVP_METHODS:
        raise ValueError(f"hvp must be one of {HVP_METHODS}, got {hvp!r}")
    return HessianOperator(obj, method=hvp, memory_budget=objective_kw.get("memory_budget", DEFAULT_MEMORY_BUDGET))


def _common(obj: ModelLoss, seed: Any) -> dict[str, Any]:
    return {
        "num_examples": obj.n,
        "num_parameters": obj.size,
        "dtype": str(obj.dtype).replace("torch.", ""),
        "device": str(obj.device),
        "loss": getattr(obj.loss_fn, "__name__", type(obj.loss_fn).__name__),
        "seed": int(seed) if not isinstance(seed, torch.Generator) else "generator",
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
    curvature: str = "hessian",
    seed: int | torch.Generator = 0,
    **objective_kw: Any,
) -> EigenResult:
    """The ``k`` largest Hessian eigenvalues (and with ``smallest`` the most negative one, λmin) by Lanczos
    with full reorthogonalisation, each with its residual ||H v - λ v||; ``tol`` is the accuracy relative to
    ``|λmax|``; ``exact_residuals`` recomputes them with k (+1) more products (else Lanczos' own estimates).
    The Hessian is that of the mean loss over all of ``data`` (not one mini-batch). ``curvature``:
    ``hessian`` (default), ``ggn`` -- the generalised Gauss-Newton matrix (1/W) sum_b J_b^T H_b J_b
    (Schraudolph 2002; Martens 2020) -- or ``ef``, the empirical Fisher (1/W) sum_i g_i g_i^T (Kunstner et
    al. 2019); :mod:`flatfl.analysis.curvatures` gives their exact definitions."""
    gen = checks.generator(seed)
    obj = _problem(model, data, objective_kw)
    op = _curvature(obj, curvature, hvp, objective_kw)
    res = lanczos(
        op,
        k=k,
        smallest=smallest,
        tol=tol,
        max_vectors=max_vectors,
        generator=gen,
        return_vectors=return_vectors,
        exact_residuals=exact_residuals,
    )
    settings = {"k": k, "smallest": smallest, "tol": tol, "hvp": op.method, **_common(obj, seed)}
    settings["curvature"] = curvature
    return replace(res, settings=settings)


def hessian_trace(
    model: nn.Module | ModelLoss,
    data: Any = None,
    *,
    num_matvecs: int = 99,
    estimator: str = "adaptive",
    hvp: str = "auto",
    curvature: str = "hessian",
    seed: int | torch.Generator = 0,
    **objective_kw: Any,
) -> TraceResult:
    """tr(H) with its standard error from ``num_matvecs`` Hessian-vector products: ``adaptive`` (default;
    Hutchinson or Hutch++, whichever the first third of the budget predicts is better), ``hutch++``
    (Meyer et al. 2021) or ``hutchinson`` (1989). ``curvature``: ``hessian``, ``ggn`` or ``ef``, as in
    :func:`hessian_eigenvalues` (tr(F) of the empirical Fisher is the mean squared per-example gradient norm)."""
    if estimator not in TRACE_ESTIMATORS:
        raise ValueError(f"estimator must be one of {sorted(TRACE_ESTIMATORS)}, got {estimator!r}")
    gen = checks.generator(seed)
    obj = _problem(model, data, objective_kw)
    op = _curvature(obj, curvature, hvp, objective_kw)
    res = TRACE_ESTIMATORS[estimator](op, num_matvecs=num_matvecs, generator=gen)
    settings = {"estimator": estimator, "num_matvecs": num_matvecs, "hvp": op.method, **_common(obj, seed)}
    settings["curvature"] = curvature
    return replace(res, settings=settings)


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
    checks.integer("num_runs", num_runs, 1)
    checks.integer("num_steps", num_steps, 1)
    gen = checks.generator(seed)
    obj = _problem(model, data, objective_kw)
    op = _operator(obj, hvp, objective_kw)
    res = slq(op, num_runs=num_runs, num_steps=num_steps, generator=gen)
    settings = {"num_runs": num_runs, "num_steps": num_steps, "hvp": op.method, **_common(obj, seed)}
    return replace(res, settings=settings)


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
    with ``m``, the mean over m-sample groups); ``adaptive`` -- the same in the ball ``||δ/|w| ||_p ≤ rho``
    (Kwon et al. 2021; ``p`` 2 or inf); ``epsilon`` -- Keskar et al.'s (2017) box measure of size ``eps``;
    ``average`` -- E L(w+δ) − L(w), δ ~ N(0, ``sigma``² diag(w²)) (``adaptive=False``: N(0, ``sigma``² I)),
    ``num_samples`` draws. ``settings`` holds the measure's parameters and, as every result's, the seed,
    dtype, device, number of examples and parameters."""
    if kind not in SHARPNESS_KINDS:
        raise ValueError(f"kind must be one of {SHARPNESS_KINDS}, got {kind!r}")
    if kind != "average":
        checks.integer("steps", steps, 1)
    name = sharpness_name(kind, p=p, adaptive=adaptive)
    gen = checks.generator(seed)
    obj = _problem(model, data, objective_kw)
    res = measure_sharpness(obj, name, rho=rho, eps=eps, sigma=sigma, steps=steps, num_samples=num_samples, m=m,
                            epsilon_steps=steps, generator=gen)  # fmt: skip
    return replace(res, settings={"kind": kind, **res.settings, **_common(obj, seed)})


def _state_dict(state: nn.Module | Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
    return state.state_dict() if isinstance(state, nn.Module) else state


def _flat_state(obj: ModelLoss, state: nn.Module | Mapping[str, torch.Tensor], label: str = "state") -> torch.Tensor:
    """A model or state dict as a flat parameter vector in ``obj``'s layout (buffers ignored); ``label`` names
    it in the errors (e.g. ``towards[0]``)."""
    sd = _state_dict(state)
    missing = [n for n in obj.names if n not in sd]
    if missing:
        raise ValueError(f"{label}: state dict lacks parameters {missing[:3]}{' ...' if len(missing) > 3 else ''}")
    for n, shape in zip(obj.names, obj.shapes):
        if tuple(sd[n].shape) != tuple(shape):
            raise ValueError(
                f"{label}: parameter {n!r} has shape {tuple(sd[n].shape)}, the model's has {tuple(shape)} "
                "(another architecture?)"
            )
    return torch.cat([sd[n].detach().reshape(-1).to(obj.device, obj.dtype) for n in obj.names])


def _state_buffers(obj: ModelLoss, state: nn.Module | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """The buffers (BatchNorm running statistics...) of a given model, in ``obj``'s layout: its own where it
    holds them, the analysed model's otherwise; None where none differs from the analysed model's."""
    sd = _state_dict(state)
    own = {
        n: sd[n].detach().to(obj.device, b.dtype) for n, b in obj.buffers.items() if n in sd and sd[n].shape == b.shape
    }
    if all(torch.equal(v, obj.buffers[n]) for n, v in own.items()):
        return None
    return {**obj.buffers, **own}


def _model_directions(obj: ModelLoss, towards: Sequence[Any], dims: int) -> tuple[list[torch.Tensor], list]:
    """Directions towards the ``towards`` models (2D: the plane through w and both), and their markers.
    A model equal to w, or three models on one line, span no line/plane: refused."""
    if len(towards) != dims:
        raise ValueError(f"directions='models' with dims={dims} needs {dims} model(s) in towards=, got {len(towards)}")
    w = obj.flat()
    flats = [_flat_state(obj, t, f"towards[{i}]") for i, t in enumerate(towards)]
    d1 = flats[0] - w
    if float(d1.norm()) == 0.0:
        raise ValueError("towards[0] has the same parameters as the model: no direction to go; pass another model")
    dirs = [d1]
    if dims == 2:
        u = flats[1] - w
        d2 = u - (u @ d1) / (d1 @ d1) * d1  # the plane through w and both models
        if float(d2.norm()) <= 100 * torch.finfo(obj.dtype).eps * max(float(u.norm()), float(d1.norm())):
            raise ValueError(
                "towards[1] lies on the line through the model and towards[0] (or equals one of them): "
                "the three models span no plane; pass a third model off that line, or use dims=1"
            )
        dirs.append(d2)
    return dirs, [(f"model {i + 1}", "models", f) for i, f in enumerate(flats)]


def _directions(
    obj: ModelLoss,
    kind: str,
    dims: int,
    towards: Sequence[Any],
    trajectory: Sequence[Any],
    gen: torch.Generator,
    budget: dict[str, Any],
) -> tuple[list[torch.Tensor], list[tuple[str, str, torch.Tensor]], dict[str, Any]]:
    """The surface's directions, the models to mark on it, and the description (axis names)."""
    w = obj.flat()
    if kind == "random":
        dirs = random_directions(obj, dims, gen)
        return dirs, [], {"kind": "random", "x_label": "random filter-normalised direction 1",
                          "y_label": "random direction 2 (orthogonalised)"}  # fmt: skip
    if kind == "eigen":
        res = lanczos(_operator(obj, "auto", budget), k=dims, generator=gen, return_vectors=True)
        dirs = [v.to(obj.device, obj.dtype) * w.norm() for v in res.vectors]  # x ||w||, as flatfl landscape
        return dirs, [], {"kind": "eigen", "eigenvalues": res.values.tolist(),
                          "x_label": f"top Hessian eigenvector 1 (x ||w||, λ={res.values[0]:.4g})",
                          "y_label": f"top Hessian eigenvector 2 (x ||w||, λ={res.values[-1]:.4g})"}  # fmt: skip
    if kind == "models":
        dirs, named = _model_directions(obj, towards, dims)
        labels = {"x_label": "towards model 1", "y_label": "towards model 2 (orthogonalised)"}
        return dirs, named, {"kind": "models", **labels}
    if kind == "pca":
        if dims != 2 or len(trajectory) < 2:
            raise ValueError("directions='pca' needs dims=2 and trajectory= with at least 2 models")
        path = [_flat_state(obj, t, f"trajectory[{i}]") for i, t in enumerate(trajectory)]
        d1, d2, coords, var = pca_directions(path + [w])
        if not np.isfinite(var).all() or var[1] <= 1e-12:
            raise ValueError("trajectory= and the model span no plane (the models coincide or lie on one line)")
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
    on the surface as markers, with their own loss and accuracy.

    ``steps``: points per axis (an int >= 2), evenly over ``span``; where the model (0) -- or, towards
    models, α = 1 -- falls between two of them it is added (a point more). Default ``span``: (-1, 1);
    (-0.5, 1.5) towards models; for ``pca`` 1.25 times the trajectory's reach.

    BatchNorm: every grid point is evaluated with the analysed model's running statistics (its buffers),
    as loss-landscapes does -- so towards a model B, the point α = 1 is B's weights with this model's
    statistics. Each marker's ``loss``/``accuracy`` is the given model's own, with its own buffers where
    it holds them (a model, or a full state dict)."""
    checks.integer("dims", dims, 1)
    if dims not in (1, 2):
        raise ValueError(f"dims must be 1 or 2, got {dims}")
    checks.integer("steps", steps, 2, " (points per axis)")
    if span is not None:
        _check_span(span)
    gen = checks.generator(seed)
    obj = _problem(model, data, objective_kw)
    dirs, named, desc = _directions(obj, directions, dims, towards, trajectory, gen, objective_kw)
    if span is None:
        reach = desc.pop("reach", 1.0)
        span = (-0.5, 1.5) if directions == "models" else (-reach, reach)
    must = (0.0, 1.0) if directions == "models" else (0.0,)  # the model itself (and the one it goes towards)
    alphas = axis(*span, steps, must)
    betas = axis(*span, steps, must) if dims == 2 else None
    surf = evaluate_grid(obj, dirs, alphas, betas)
    states = towards if directions == "models" else trajectory if directions == "pca" else ()
    buffers = [_state_buffers(obj, t) for t in states]
    markers = model_markers(obj, obj.flat(), dirs, named, buffers=buffers)
    settings = {"dims": dims, "span": list(span), "steps": steps, **_common(obj, seed)}
    return replace(surf, markers=markers, description={**desc, "settings": settings})


def _check_span(span: Any) -> None:
    """``span``: two finite numbers, low < high."""
    try:
        lo, hi = (float(v) for v in span)
    except (TypeError, ValueError):
        raise ValueError(f"span must be two numbers (low, high), got {span!r}") from None
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise ValueError(f"span must be two finite numbers with low < high, got {span!r}")
