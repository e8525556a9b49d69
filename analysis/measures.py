"""Measures the flatness literature asks for beyond the Hessian's top eigenvalue and trace.

* :func:`layer_curvature` -- λmax and trace of each layer's diagonal curvature block H[I_l, I_l]
  (one parameter tensor, or one module's parameters), for the Hessian, the GGN or the empirical Fisher.
* :func:`relative_flatness` -- Petzka, Kamp, Adilova, Sminchisescu & Boley, "Relative Flatness and
  Generalization", NeurIPS 2021, Definition 3 (the trace version):
      κ_Tr(w) = sum_{s,s'=1..d} <w_s, w_s'> Tr(H_{s,s'}(w)),
  w ∈ R^{d x m} the weight matrix of the layer that maps the feature layer φ(x) ∈ R^m to the output
  (w_s its s-th row), H_{s,s'} the m x m block of the Hessian of the mean loss w.r.t. w_s and w_s'.
* :func:`fisher_rao_norm` -- Liang, Poggio, Rakhlin & Stokes, "Fisher-Rao Metric, Geometry, and Complexity of
  Neural Networks", AISTATS 2019, Definition 2: ||θ||_fr^2 = <θ, I(θ) θ> = E[<θ, ∇_θ ℓ(f_θ(x), y)>^2],
  with y the data's labels (``labels="empirical"``) or drawn from the model's softmax (``"model"``).

Each returns a frozen result with the numbers, their cost and ``settings``; the model is left untouched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import jvp

from flatfl.analysis import checks
from flatfl.analysis.api import _common, _curvature, _problem
from flatfl.analysis.curvatures import BlockOperator, exact_trace, parameter_blocks, per_example_losses
from flatfl.analysis.lanczos import lanczos
from flatfl.analysis.operators import ModelLoss, eval_mode
from flatfl.analysis.trace import adaptive_trace


@dataclass(frozen=True)
class LayerCurvature:
    """λmax and trace of each diagonal block of a curvature matrix (one row per layer)."""

    names: tuple[str, ...]
    sizes: tuple[int, ...]
    lambda_max: tuple[float, ...]
    lambda_residual: tuple[float, ...]
    trace: tuple[float, ...]
    trace_stderr: tuple[float, ...]  # 0 where the block's diagonal was computed exactly
    num_matvecs: int
    settings: dict = field(default_factory=dict)

    def rows(self) -> list[dict[str, Any]]:
        """One dict per block (for JSON and tables)."""
        keys = ("size", "lambda_max", "lambda_residual", "trace", "trace_stderr")
        cols = (self.sizes, self.lambda_max, self.lambda_residual, self.trace, self.trace_stderr)
        return [{"name": n, **dict(zip(keys, vals))} for n, *vals in zip(self.names, *cols)]


def layer_curvature(
    model: nn.Module | ModelLoss,
    data: Any = None,
    *,
    group: str = "parameter",
    curvature: str = "hessian",
    num_matvecs: int = 30,
    tol: float = 1e-3,
    hvp: str = "auto",
    seed: int | torch.Generator = 0,
    **objective_kw: Any,
) -> LayerCurvature:
    """λmax and trace of each layer's diagonal block of the curvature, H_l = H[I_l, I_l], where I_l are the
    indices of one parameter tensor (``group="parameter"``) or of one module's own parameters (``"module"``).
    H_l is the operator v -> (H pad(v))[I_l] (:class:`~flatfl.analysis.curvatures.BlockOperator`) fed to the
    same Lanczos (accuracy ``tol`` relative to |λmax|) and trace estimators as the whole matrix: a block of at
    most ``num_matvecs`` parameters has its trace exactly (its diagonal from the unit vectors, stderr 0), a
    larger one by :func:`~flatfl.analysis.trace.adaptive_trace` with ``num_matvecs`` products. The blocks
    show where the curvature sits (e.g. Sankar et al., "A Deeper Look at the Hessian Eigenspectrum of Deep
    Neural Networks and its Applications to Regularization", AAAI 2021: layer-wise Hessians). ``curvature``:
    ``hessian``, ``ggn`` or ``ef`` (:func:`~flatfl.analysis.api.hessian_eigenvalues`). Costs about
    (Lanczos steps + min(size, ``num_matvecs``)) products per block."""
    checks.integer("num_matvecs", num_matvecs, 6)
    gen = checks.generator(seed)
    obj = _problem(model, data, objective_kw)
    op = _curvature(obj, curvature, hvp, objective_kw)
    rows = []
    spent = 0
    for name, idx in parameter_blocks(obj, group):
        block = BlockOperator(op, idx, name)
        eig = lanczos(block, k=1, tol=tol, generator=gen, return_vectors=False)
        if block.size <= num_matvecs:
            tr, se = float(exact_trace(block).sum()), 0.0
        else:
            res = adaptive_trace(block, num_matvecs=num_matvecs, generator=gen)
            tr, se = res.estimate, res.stderr
        rows.append((name, block.size, float(eig.values[0]), float(eig.residuals[0]), tr, se))
        spent += block.num_matvecs
    cols = list(zip(*rows))
    settings = {"group": group, "curvature": curvature, "num_matvecs": num_matvecs, "tol": tol}
    return LayerCurvature(*(tuple(c) for c in cols), num_matvecs=spent,
                          settings={**settings, "hvp": getattr(op, "method", curvature), **_common(obj, seed)})  # fmt: skip
