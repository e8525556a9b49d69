"""flatfl's numeric analysis -- the ground floor, usable on any PyTorch model.

One call per question (:mod:`flatfl.analysis.api`)::

    from flatfl.analysis import hessian_eigenvalues, hessian_trace, loss_surface, plot_surface
    top = hessian_eigenvalues(model, loader, k=5, loss_fn=torch.nn.CrossEntropyLoss())
    surf = loss_surface(model, loader, directions="random", dims=2)
    plot_surface(surf, "surface")            # surface.png + surface.pdf

Underneath: curvature operators (:class:`ModelLoss`, :class:`HessianOperator`, any object with
``size/dtype/device/matvec``; ``op.to_scipy()`` for SciPy, and curvlinops or SciPy operators taken as they
are via :func:`as_operator`), keyword-only solvers (:func:`lanczos`, :func:`adaptive_trace`,
:func:`hutchpp`, :func:`hutchinson`, :func:`slq`), sharpness, surfaces, spread, verdict statistics and
plots. It imports nothing of flatfl's trainer side (run directories, checkpoints, CLI) and raises plain
exceptions; reading runs and writing files live in :mod:`flatfl.runs`.
"""

from typing import Any

from flatfl.analysis.api import (
    hessian_density,
    hessian_eigenvalues,
    hessian_trace,
    loss_surface,
    objective,
    sharpness,
)
from flatfl.analysis.connectivity import Connectivity, mode_connectivity
from flatfl.analysis.curvatures import BlockOperator, EFOperator, GGNOperator
from flatfl.analysis.density import SpectralDensity, slq
from flatfl.analysis.interop import as_operator, to_scipy
from flatfl.analysis.lanczos import EigenResult, lanczos
from flatfl.analysis.measures import (
    FisherRaoNorm,
    LayerCurvature,
    RelativeFlatness,
    fisher_rao_norm,
    layer_curvature,
    relative_flatness,
)
from flatfl.analysis.operators import DenseOperator, HessianOperator, LinearOperator, ModelLoss
from flatfl.analysis.sharpness import SharpnessResult
from flatfl.analysis.surfaces import Surface, evaluate_grid, random_directions
from flatfl.analysis.trace import TraceResult, adaptive_trace, hutchinson, hutchpp

__all__ = [
    # one call per question
    "objective",
    "hessian_eigenvalues",
    "hessian_trace",
    "hessian_density",
    "sharpness",
    "loss_surface",
    "layer_curvature",
    "relative_flatness",
    "fisher_rao_norm",
    "mode_connectivity",
    # results
    "EigenResult",
    "TraceResult",
    "SpectralDensity",
    "SharpnessResult",
    "Surface",
    "LayerCurvature",
    "RelativeFlatness",
    "FisherRaoNorm",
    "Connectivity",
    # operators and solvers
    "LinearOperator",
    "DenseOperator",
    "ModelLoss",
    "HessianOperator",
    "GGNOperator",
    "EFOperator",
    "BlockOperator",
    "as_operator",
    "to_scipy",
    "lanczos",
    "hutchinson",
    "hutchpp",
    "adaptive_trace",
    "slq",
    "evaluate_grid",
    "random_directions",
    # plots (imported on first use: matplotlib and plotly load only when asked for)
    "plot_surface",
    "plot_density",
    "surface_figures",
    "page_html",
]

_LAZY = {
    "plot_surface": "flatfl.analysis.plots",
    "plot_density": "flatfl.analysis.plots",
    "surface_figures": "flatfl.analysis.interactive",
    "page_html": "flatfl.analysis.interactive",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'flatfl.analysis' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
