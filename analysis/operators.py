"""Curvature as a linear operator: ``size``, ``dtype``, ``device``, ``matvec(v)``.

Eigen-solvers, trace estimators and spectral density (``analysis.lanczos``,
``analysis.trace``, ``analysis.density``) take any object with this interface
(as curvlinops and hessian-eigenthings 1.0 do), so they are tested on matrices with a known
spectrum and used on a network's Hessian unchanged. One job per module, curvlinops style; this module
gathers their names (``from flatfl.analysis.operators import ModelLoss, HessianOperator`` keeps working):

* :mod:`flatfl.analysis.linear` -- the interface (:class:`LinearOperator`), :class:`DenseOperator`,
  :func:`matmat`, :func:`eval_mode`, :func:`twice_differentiable`;
* :mod:`flatfl.analysis.model_loss` -- :class:`ModelLoss`, the mean loss of a model over a fixed data set as a
  function of its parameters, and its exact Hessian-vector products (double backward, forward-over-reverse,
  kept first-order graphs; blocks of vectors);
* :mod:`flatfl.analysis.hessian_operator` -- :class:`HessianOperator`, the Hessian of the mean loss as an
  operator (method and block mode chosen by measurement).
"""

from __future__ import annotations

from flatfl.analysis.hessian_operator import TRIAL_WIDTH, HessianOperator
from flatfl.analysis.linear import (
    NOT_FINITE,
    DenseOperator,
    LinearOperator,
    ScipyExport,
    eval_mode,
    matmat,
    twice_differentiable,
)
from flatfl.analysis.model_loss import BLOCK_MODES, ForwardFn, ModelLoss, TargetsFn

__all__ = [
    "BLOCK_MODES",
    "NOT_FINITE",
    "TRIAL_WIDTH",
    "DenseOperator",
    "ForwardFn",
    "HessianOperator",
    "LinearOperator",
    "ModelLoss",
    "ScipyExport",
    "TargetsFn",
    "eval_mode",
    "matmat",
    "twice_differentiable",
]
