"""Interop: ``.to_scipy()`` on flatfl's operators, curvlinops' operators in flatfl's solvers.

References are exact and independent of the code under test: dense float64 Hessians from
``torch.autograd.functional.hessian``, dense GGNs J^T H_out J and empirical Fishers G^T G / N from
``torch.func.jacrev``, and curvlinops' own ``HessianLinearOperator`` (curvlinops-for-pytorch is in
the ``test`` extra, so these tests run against the real package).
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse
import torch
import torch.nn.functional as F
from scipy.sparse.linalg import LinearOperator as ScipyLinearOperator
from scipy.sparse.linalg import aslinearoperator, eigsh
from torch import nn
from torch.func import functional_call, jacrev

from flatfl.analysis.density import slq
from flatfl.analysis.distributed import ShardedOperator
from flatfl.analysis.interop import ScipyOperator, TorchMatmulOperator, as_operator, to_scipy
from flatfl.analysis.lanczos import lanczos
from flatfl.analysis.operators import DenseOperator, HessianOperator, ModelLoss
from flatfl.analysis.trace import adaptive_trace, hutchinson, hutchpp

N, D, HIDDEN, C = 24, 4, 6, 3  # 51 parameters


@pytest.fixture(scope="module")
def problem() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(D, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, C)).double()
    x = torch.randn(N, D, generator=g, dtype=torch.float64)
    y = torch.randint(0, C, (N,), generator=g)
    return model, x, y


def _flat_fn(model: nn.Module):
    """(flat parameters, f(flat) -> logits of a batch) for the dense references."""
    names = [n for n, _ in model.named_parameters()]
    params = [p.detach() for _, p in model.named_parameters()]
    shapes, numels = [p.shape for p in params], [p.numel() for p in params]
    w = torch.cat([p.reshape(-1) for p in params])

    def logits(flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        parts = {n: t.view(s) for n, t, s in zip(names, torch.split(flat, numels), shapes)}
        return functional_call(model, parts, (x,))

    return w, logits


def dense_hessian(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    w, logits = _flat_fn(model)
    return torch.autograd.functional.hessian(lambda f: F.cross_entropy(logits(f, x), y), w)


def dense_ggn(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(1/N) sum_n J_n^T (diag(p_n) - p_n p_n^T) J_n: the GGN of the mean cross-entropy."""
    w, logits = _flat_fn(model)
    J = jacrev(logits)(w, x)  # (N, C, P)
    p = torch.softmax(logits(w, x), dim=1)
    H_out = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    return torch.einsum("nca,ncd,ndb->ab", J, H_out, J) / len(x)


def dense_ef(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(1/N) sum_n g_n g_n^T with g_n the gradient of sample n's cross-entropy (the empirical Fisher)."""
    w, logits = _flat_fn(model)
    G = jacrev(lambda f: F.cross_entropy(logits(f, x), y, reduction="none"))(w)  # (N, P)
    return G.T @ G / len(x)


def flatfl_hessian(model, x, y, batch_size: int = 7) -> HessianOperator:
    return HessianOperator(ModelLoss(model, x, y, batch_size=batch_size, dtype=torch.float64))


def batches(x, y, size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(zip(x.split(size), y.split(size)))


# -- .to_scipy() ---------------------------------------------------------------------------------


def test_to_scipy_shape_dtype_and_products_of_every_operator(problem):
    model, x, y = problem
    H = dense_hessian(model, x, y)
    rng = np.random.default_rng(1)
    v, V = rng.standard_normal(len(H)), rng.standard_normal((len(H), 5))
    ops = {
        "dense": DenseOperator(H.clone()),
        "hessian": flatfl_hessian(model, x, y),
        "sharded": ShardedOperator(flatfl_hessian(model, x, y), N, N),  # one process: the whole data
        "wrapped": as_operator(aslinearoperator(H.numpy())),
    }
    for name, op in ops.items():
        A = op.to_scipy()
        assert isinstance(A, ScipyLinearOperator), name
        assert A.shape == (len(H), len(H)) and A.dtype == np.float64, name
        np.testing.assert_allclose(A @ v, H.numpy() @ v, rtol=1e-9, atol=1e-12, err_msg=name)
        np.testing.assert_allclose(A.matmat(V), H.numpy() @ V, rtol=1e-9, atol=1e-12, err_msg=name)
        np.testing.assert_allclose(A.rmatvec(v), H.numpy() @ v, rtol=1e-9, atol=1e-12, err_msg=name)


def test_to_scipy_blocks_go_through_the_operators_matmat_on_its_device_and_dtype():
    M = torch.diag(torch.arange(1.0, 7.0))  # float32
    op = DenseOperator(M)
    seen = []
    op.matmat = lambda V: seen.append((V.shape, V.dtype, V.device)) or M @ V
    A = to_scipy(op)
    assert A.dtype == np.float32
    out = A.matmat(np.ones((6, 4)))
    assert seen == [((6, 4), torch.float32, torch.device("cpu"))]  # one block product, not 4 matvecs
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, np.arange(1.0, 7.0)[:, None] * np.ones((1, 4)))


def test_eigsh_on_to_scipy_agrees_with_lanczos_and_the_dense_hessian(problem):
    model, x, y = problem
    op = flatfl_hessian(model, x, y)
    exact = np.linalg.eigvalsh(dense_hessian(model, x, y).numpy())[::-1][:3]
    ours = lanczos(op, k=3, tol=1e-10, generator=torch.Generator().manual_seed(0)).values
    scipys = np.sort(eigsh(op.to_scipy(), k=3, which="LA", tol=1e-12)[0])[::-1]
    np.testing.assert_allclose(scipys, ours, rtol=1e-6)
    np.testing.assert_allclose(ours, exact, rtol=1e-6)


# -- curvlinops ------------------------------------------------------------------------------------


def test_hessian_operator_matches_curvlinops_hessian(problem):
    from curvlinops import HessianLinearOperator

    model, x, y = problem
    params = [p for p in model.parameters() if p.requires_grad]
    # flatfl: the mean loss, in batches of 7; curvlinops: mean reduction, weighting each batch
    # mean by batch size / N, in batches of 5 (the last one smaller)
    theirs = HessianLinearOperator(model, nn.CrossEntropyLoss(reduction="mean"), params, batches(x, y, 5))
    ours = flatfl_hessian(model, x, y, batch_size=7)
    V = torch.randn(ours.size, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    theirs_V = theirs @ V
    torch.testing.assert_close(ours.matmat(V), theirs_V, rtol=1e-6, atol=1e-12)
    for v, hv in zip(V.T, theirs_V.T):
        torch.testing.assert_close(ours.matvec(v), hv, rtol=1e-6, atol=1e-12)
    wrapped = as_operator(theirs)  # and through the adapter
    assert isinstance(wrapped, TorchMatmulOperator) and wrapped.size == ours.size
    torch.testing.assert_close(wrapped.matvec(V[:, 0]), ours.matvec(V[:, 0]), rtol=1e-6, atol=1e-12)


def test_flatfl_solvers_on_curvlinops_ggn_match_the_dense_ggn(problem):
    from curvlinops import GGNLinearOperator

    model, x, y = problem
    params = list(model.parameters())
    ggn = GGNLinearOperator(model, nn.CrossEntropyLoss(), params, batches(x, y, 10))
    G = dense_ggn(model, x)
    eig = np.linalg.eigvalsh(G.numpy())[::-1]
    rank = int((eig > 1e-10 * eig[0]).sum())  # <= N (C - 1) = 48 of 51
    res = lanczos(ggn, k=3, smallest=True, tol=1e-10, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(res.values, eig[:3], rtol=1e-6)
    assert abs(res.smallest) < 1e-6 * eig[0]  # the GGN is positive semi-definite
    # a sketch of 3 * rank products spans the GGN's range: Hutch++'s deflated trace is exact
    tr = hutchpp(ggn, num_matvecs=3 * rank + 3, generator=torch.Generator().manual_seed(1))
    assert tr.estimate == pytest.approx(float(torch.trace(G)), rel=1e-8)
    est = hutchinson(ggn, num_matvecs=30, generator=torch.Generator().manual_seed(1))
    assert abs(est.estimate - float(torch.trace(G))) <= 3 * est.stderr
    # SLQ with as many steps as parameters: each run's Krylov space is invariant, so every
    # quadrature node is an eigenvalue; with the same seed (same start vectors) each run's
    # quadrature gives the same moments v^T G^p v as SLQ on the dense GGN
    dens = slq(ggn, num_runs=4, num_steps=len(eig), generator=torch.Generator().manual_seed(2))
    ref = slq(DenseOperator(G), num_runs=4, num_steps=len(eig), generator=torch.Generator().manual_seed(2))
    nodes = np.concatenate(dens.nodes)
    assert np.abs(nodes[:, None] - eig[None, :]).min(1).max() < 1e-6 * eig[0]
    for p in (1, 2, 3):
        ours = [(w * th**p).sum() for th, w in zip(dens.nodes, dens.weights)]
        exact = [(w * th**p).sum() for th, w in zip(ref.nodes, ref.weights)]
        np.testing.assert_allclose(ours, exact, rtol=1e-6)


def test_adaptive_trace_on_curvlinops_empirical_fisher_is_exact_on_its_low_rank(problem):
    from curvlinops import EFLinearOperator

    model, x, y = problem
    x8, y8 = x[:8], y[:8]  # rank <= 8
    ef = EFLinearOperator(model, nn.CrossEntropyLoss(), list(model.parameters()), batches(x8, y8, 3))
    E = dense_ef(model, x8, y8)
    res = adaptive_trace(ef, num_matvecs=30, generator=torch.Generator().manual_seed(0))
    assert res.deflated  # the first 10 products span the whole range: it measures rho ~ 0 and deflates
    assert res.estimate == pytest.approx(float(torch.trace(E)), rel=1e-8)
    top = lanczos(ef, k=2, tol=1e-10, generator=torch.Generator().manual_seed(0)).values
    np.testing.assert_allclose(top, np.linalg.eigvalsh(E.numpy())[::-1][:2], rtol=1e-6)


# -- the adapter -------------------------------------------------------------------------------------


def test_as_operator_keeps_flatfl_operators_and_wraps_scipy_and_matrices():
    M = torch.diag(torch.tensor([3.0, 1.0, -2.0], dtype=torch.float64))
    dense = DenseOperator(M)
    assert as_operator(dense) is dense
    dense.size = np.int64(3)  # a protocol object with a NumPy integer size is still one
    assert as_operator(dense) is dense
    assert isinstance(as_operator(M), DenseOperator)
    for obj in (aslinearoperator(M.numpy()), M.numpy(), scipy.sparse.csr_matrix(M.numpy())):
        op = as_operator(obj)
        assert isinstance(op, ScipyOperator) and op.size == 3 and op.dtype == torch.float64
        res = lanczos(obj, k=1, smallest=True, generator=torch.Generator().manual_seed(0))
        assert res.values[0] == pytest.approx(3.0) and res.smallest == pytest.approx(-2.0)
    assert as_operator(scipy.sparse.eye(4, dtype=np.int64, format="csr")).dtype == torch.float64


@pytest.mark.parametrize(
    "bad, words",
    [
        (object(), "cannot use a builtins.object"),
        ("H", "cannot use a builtins.str"),
        (torch.ones(3), "not a square matrix"),
        (torch.ones(3, 4), "shape (3, 4)"),
        (aslinearoperator(np.ones((3, 2))), "shape (3, 2)"),
        (aslinearoperator(np.eye(3) * 1j), "complex"),
    ],
)
def test_as_operator_rejects_what_it_cannot_use_in_one_value_error(bad, words):
    with pytest.raises(ValueError, match="as_operator|complex") as e:
        as_operator(bad)
    assert words in str(e.value)
    with pytest.raises(ValueError):
        lanczos(bad, k=1)


def test_as_operator_rejects_a_non_square_curvlinops_operator(problem):
    from curvlinops import JacobianLinearOperator

    model, x, y = problem
    J = JacobianLinearOperator(model, list(model.parameters()), batches(x, y, 8))
    with pytest.raises(ValueError, match=r"JacobianLinearOperator has shape \(72, 51\)"):
        as_operator(J)


def test_the_interop_example_in_the_docs_runs():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "curvature.md").read_text()
    section = text.split("## Interop", 1)[1].split("\n## ", 1)[0]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    scope: dict = {}
    exec(compile(code, "docs/curvature.md (Interop)", "exec"), scope)
    assert len(scope["top3"]) == 3 and len(scope["density"].nodes) == 5
