"""The operator interface: ``size``, ``dtype``, ``device``, ``matvec(v)`` (and optionally ``matmat(V)``).

Eigen-solvers, trace estimators and spectral density (``analysis.lanczos``,
``analysis.trace``, ``analysis.density``) take any object with this interface
(as curvlinops and hessian-eigenthings 1.0 do), so they are tested on matrices with a known
spectrum (:class:`DenseOperator`) and used on a network's Hessian unchanged
(:class:`flatfl.analysis.hessian_operator.HessianOperator`). Also the evaluation helpers every operator on a
model shares: :func:`eval_mode` and :func:`twice_differentiable`.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Protocol

import torch
from torch import nn


class LinearOperator(Protocol):
    """A symmetric linear map on R^size, given by its action on vectors."""

    size: int
    dtype: torch.dtype
    device: torch.device

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """The product A v of the operator with a vector ``v`` of length ``size`` (same dtype and device)."""
        ...


class ScipyExport:
    """Base of flatfl's operators: ``op.to_scipy()``, a ``scipy.sparse.linalg.LinearOperator`` (see interop)."""

    def to_scipy(self):
        from flatfl.analysis.interop import to_scipy  # interop imports this module

        return to_scipy(self)


class DenseOperator(ScipyExport):
    """A symmetric matrix as an operator (reference problems with a known spectrum)."""

    def __init__(self, matrix: torch.Tensor) -> None:
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError("square matrix expected")
        self.matrix = matrix
        self.size = int(matrix.shape[0])
        self.dtype = matrix.dtype
        self.device = matrix.device
        self.num_matvecs = 0

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """A v; counts one product in ``num_matvecs``."""
        self.num_matvecs += 1
        return self.matrix @ v

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        """A V for V of shape ``(size, b)``; counts b products in ``num_matvecs``."""
        self.num_matvecs += V.shape[1]
        return self.matrix @ V


def matmat(op: LinearOperator, V: torch.Tensor) -> torch.Tensor:
    """H V (V: size x b) by the operator's own ``matmat`` when it has one, else column by column."""
    if hasattr(op, "matmat"):
        return op.matmat(V)
    return torch.stack([op.matvec(v) for v in V.T], dim=1)


def twice_differentiable():
    """Attention through PyTorch's math kernel while gradients are recorded: the fused scaled-dot-product
    kernels (flash, memory-efficient) have no second derivative, so Hessian-vector products through
    ``nn.MultiheadAttention``/``F.scaled_dot_product_attention`` would fail; the math kernel computes the
    same function with differentiable primitives. Forward-only evaluation (surfaces) keeps the fast kernels."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH])


@contextmanager
def eval_mode(model: nn.Module):
    """Put ``model`` in eval mode and restore each submodule's mode afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.train(training)


NOT_FINITE = (
    "the operator returned NaN or inf: the loss is not finite at these parameters (NaN/inf in the data or the "
    "weights, or a loss that overflows)"
)
