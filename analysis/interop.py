"""Interop: flatfl operators as SciPy operators, and other libraries' operators in flatfl's solvers.

flatfl's solvers (:func:`~flatfl.analysis.lanczos.lanczos`, the trace estimators of
:mod:`flatfl.analysis.trace`, :func:`~flatfl.analysis.density.slq`) work on the
:class:`~flatfl.analysis.operators.LinearOperator` protocol: ``size``, ``dtype``, ``device`` and
``matvec(v)`` on torch vectors (``matmat(V)`` on ``size x b`` blocks where the operator has one).

* :func:`to_scipy` (the ``.to_scipy()`` method of every flatfl operator) returns a
  ``scipy.sparse.linalg.LinearOperator`` of shape (size, size) and the NumPy dtype of ``dtype``
  whose products convert NumPy arrays to torch tensors on the operator's device, apply the
  operator (blocks through its ``matmat``) and convert back -- so ``scipy.sparse.linalg.eigsh``,
  ``cg``, ``lobpcg`` etc. run on a network's Hessian. The operator is symmetric, so the adjoint
  products are the same products.
* :func:`as_operator`, called at the entry of each solver, turns a foreign symmetric operator
  into the protocol: a PyTorch linear operator with ``shape``, ``device``, ``dtype`` and ``A @ X``
  on torch vectors and matrices -- curvlinops 3.x (``HessianLinearOperator``,
  ``GGNLinearOperator``, ``EFLinearOperator``, ``FisherMCLinearOperator``, ``KFACLinearOperator``,
  Dangel, Tatzel & Hennig, curvlinops, 2024) --, a ``scipy.sparse.linalg.LinearOperator``, a NumPy
  array or SciPy sparse matrix, or a square torch matrix. Objects that already follow the protocol
  are returned unchanged. The solvers assume symmetry; a non-symmetric operator is not detected.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse
import scipy.sparse.linalg as sla
import torch

from flatfl.analysis.operators import DenseOperator, LinearOperator, ScipyExport, matmat


def numpy_dtype(dtype: torch.dtype) -> np.dtype:
    """The NumPy dtype of a torch dtype (float32 for bfloat16, which NumPy lacks)."""
    if dtype == torch.bfloat16:
        return np.dtype(np.float32)
    return torch.empty((), dtype=dtype).numpy().dtype


def torch_dtype(dtype: np.dtype | None) -> torch.dtype:
    """The real floating torch dtype of a NumPy dtype (integers and None: float64)."""
    dtype = np.dtype(np.float64 if dtype is None else dtype)
    if dtype.kind == "c":
        raise ValueError(f"a complex operator ({dtype}) cannot be used: flatfl's solvers are real symmetric")
    if dtype.kind != "f":
        dtype = np.dtype(np.float64)
    return torch.from_numpy(np.empty(0, dtype=dtype)).dtype


def _to_numpy(t: torch.Tensor, dtype: np.dtype) -> np.ndarray:
    t = t.detach()
    if t.dtype == torch.bfloat16:
        t = t.float()
    return t.cpu().numpy().astype(dtype, copy=False)


def to_scipy(op: LinearOperator) -> sla.LinearOperator:
    """``op`` as a ``scipy.sparse.linalg.LinearOperator`` (shape (size, size), NumPy dtype of ``op.dtype``).

    Products move the NumPy input to ``op.device``/``op.dtype``, apply ``op.matvec`` (a vector) or
    ``op``'s ``matmat`` (a matrix: one block product, see :func:`flatfl.analysis.operators.matmat`)
    and return a NumPy array on the CPU. ``rmatvec``/``rmatmat`` are the same maps (``op`` is symmetric).
    """
    dtype = numpy_dtype(op.dtype)

    def _torch(x: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.array(x, dtype=dtype)).to(op.device, op.dtype)

    def mv(x: np.ndarray) -> np.ndarray:
        return _to_numpy(op.matvec(_torch(x).reshape(-1)), dtype)

    def mm(X: np.ndarray) -> np.ndarray:
        return _to_numpy(matmat(op, _torch(X)), dtype)

    return sla.LinearOperator((op.size, op.size), matvec=mv, rmatvec=mv, matmat=mm, rmatmat=mm, dtype=dtype)


class _Wrapped(ScipyExport):
    """Base of the adapters: the protocol's attributes, a product counter and ``to_scipy``."""

    def __init__(self, source: Any, size: int, dtype: torch.dtype, device: torch.device) -> None:
        self.source, self.size, self.dtype, self.device = source, size, dtype, device
        self.num_matvecs = 0

    def _apply(self, X: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        self.num_matvecs += 1
        return self._apply(v.to(self.device, self.dtype))

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        self.num_matvecs += V.shape[1]
        return self._apply(V.to(self.device, self.dtype))


class TorchMatmulOperator(_Wrapped):
    """A square PyTorch linear operator (``shape``, ``device``, ``dtype``, ``A @ X``; e.g. curvlinops')."""

    def _apply(self, X: torch.Tensor) -> torch.Tensor:
        return self.source @ X


class ScipyOperator(_Wrapped):
    """A square ``scipy.sparse.linalg.LinearOperator``; products on the CPU in its dtype."""

    def _apply(self, X: torch.Tensor) -> torch.Tensor:
        x = X.detach().cpu().numpy()
        out = self.source.matvec(x) if X.ndim == 1 else self.source.matmat(x)
        return torch.as_tensor(np.asarray(out)).to(self.device, self.dtype)


def _square(shape: Any, what: str) -> int:
    try:
        rows, cols = (int(s) for s in shape)
    except (TypeError, ValueError):
        raise ValueError(f"as_operator: {what} has shape {shape!r}, not (n, n)") from None
    if rows != cols or rows < 1:
        raise ValueError(f"as_operator: {what} has shape {(rows, cols)}; a square (n, n) operator is needed")
    return rows


def _is_protocol(obj: Any) -> bool:
    return (
        isinstance(getattr(obj, "size", None), (int, np.integer))
        and isinstance(getattr(obj, "dtype", None), torch.dtype)
        and callable(getattr(obj, "matvec", None))
        and hasattr(obj, "device")
    )


def _torch_attrs(obj: Any) -> tuple[torch.dtype, torch.device] | None:
    """(dtype, device) of a PyTorch-style operator (``shape``, ``@``, a torch ``dtype``, ``device``), else None."""
    if not (hasattr(obj, "shape") and callable(getattr(type(obj), "__matmul__", None))):
        return None
    try:
        dtype, device = obj.dtype, obj.device  # curvlinops infers both from the parameters (may raise)
    except AttributeError:
        return None
    except (RuntimeError, NotImplementedError) as e:
        raise ValueError(f"as_operator: {type(obj).__name__} has no single dtype/device ({e})") from None
    if not isinstance(dtype, torch.dtype):
        return None
    if not dtype.is_floating_point:
        raise ValueError(f"as_operator: {type(obj).__name__} has dtype {dtype}; a floating dtype is needed")
    return dtype, torch.device(device)


def as_operator(obj: Any) -> LinearOperator:
    """``obj`` as a flatfl :class:`~flatfl.analysis.operators.LinearOperator` (see the module docstring).

    Raises ValueError naming what was given and what is accepted when ``obj`` is none of those.
    """
    if _is_protocol(obj):
        return obj
    if isinstance(obj, torch.Tensor):
        if obj.ndim != 2:
            raise ValueError(f"as_operator: a tensor of shape {tuple(obj.shape)} is not a square matrix")
        _square(obj.shape, "the tensor")
        return DenseOperator(obj)
    if isinstance(obj, np.ndarray) or scipy.sparse.issparse(obj):
        obj = sla.aslinearoperator(obj)
    if isinstance(obj, sla.LinearOperator):
        return ScipyOperator(obj, _square(obj.shape, type(obj).__name__), torch_dtype(obj.dtype), torch.device("cpu"))
    attrs = _torch_attrs(obj)
    if attrs is not None:
        return TorchMatmulOperator(obj, _square(obj.shape, type(obj).__name__), *attrs)
    raise ValueError(
        f"as_operator: cannot use a {type(obj).__module__}.{type(obj).__name__} as a linear operator: expected a "
        "flatfl operator (size, dtype, device, matvec), a square PyTorch linear operator (shape, dtype, device, "
        "A @ x; e.g. curvlinops' GGNLinearOperator), a scipy.sparse.linalg.LinearOperator or a square matrix"
    )
