"""The measure registry: one spec per measure (:class:`~flatfl.runs.measures.spec.MeasureSpec`).

``flatfl landscape`` (its flags, what it computes, the nothing-to-compute check), ``flatfl report`` (what each
checkpoint is measured with, the verdict rows, report.csv / verdict.csv / report.json columns, the settings
line, TensorBoard scalars) and ``--help`` iterate :data:`REGISTRY`. The built-in measures come in this order:
lambda_max, trace, spectral density, the six sharpness measures, GGN / empirical-Fisher curvature, per-layer
curvature, relative flatness, the Fisher-Rao norm, mode connectivity, the 1D widths; a measure registered
later comes after them.

Adding a measure: its numerics in :mod:`flatfl.analysis` (if new), then one module (here, or anywhere imported
before the command line is parsed) that calls :func:`register` with a spec; see docs/library.md.
"""

from __future__ import annotations

from flatfl.analysis.sharpness import SHARPNESS_MEASURES
from flatfl.runs.measures import (  # noqa: F401 - each registers its spec(s) on import
    connect,
    density,
    fisher_rao,
    gauss_newton,
    hessian,
    per_layer,
    relative_flatness,
    sharpness,
    trace,
    widths,
)
from flatfl.runs.measures.spec import (
    REGISTRY,
    Context,
    Flag,
    Meaning,
    MeasureSpec,
    describe_measures,
    off_flag,
    register,
    registered,
    reorder,
    report_defaults,
    unregister,
)

BUILTIN_ORDER = ("hessian", "trace", "density", *SHARPNESS_MEASURES, "ggn", "ef", "per_layer", "relative_flatness",
                 "fisher_rao", "connectivity", "widths")  # fmt: skip
reorder(BUILTIN_ORDER)

__all__ = [
    "REGISTRY", "Context", "Flag", "Meaning", "MeasureSpec", "describe_measures", "off_flag", "register",
    "registered", "report_defaults", "unregister",
]  # fmt: skip
