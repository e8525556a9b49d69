"""The GGN, the empirical Fisher and per-layer blocks as operators, against dense float64 references.

References: J^T H_out J and G^T G / W from ``torch.func.jacrev`` / ``torch.autograd.functional.hessian`` on
the whole data at once (independent of flatfl's batching and its vjp/jvp products), and curvlinops'
``GGNLinearOperator`` / ``EFLinearOperator``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_interop import _flat_fn, batches, dense_ef, dense_ggn, dense_hessian
from torch import nn
from torch.func import jacrev

from flatfl.analysis import hessian_eigenvalues, hessian_trace, layer_curvature
from flatfl.analysis.curvatures import BlockOperator, EFOperator, GGNOperator, exact_trace, parameter_blocks
from flatfl.analysis.operators import HessianOperator, ModelLoss

N, D, HIDDEN, C = 23, 4, 5, 3  # 43 parameters; 23 examples in batches of 7: unequal batches


def _problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(D, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, C)).double()
    x = torch.randn(N, D, generator=g, dtype=torch.float64)
    y = torch.randint(0, C, (N,), generator=g)
    return model, x, y


def _dense(op, n: int) -> torch.Tensor:
    return op.matmat(torch.eye(n, dtype=torch.float64))


def _generic_ggn(model, x, loss_of_out) -> torch.Tensor:
    """J^T (d^2 L / d out^2) J for the loss L(out) of all the data at once (any loss)."""
    w, logits = _flat_fn(model)
    J = jacrev(logits)(w, x).reshape(-1, len(w))  # (N*C, P)
    out = logits(w, x)
    H = torch.autograd.functional.hessian(lambda o: loss_of_out(o.reshape(out.shape)), out.reshape(-1))
    return J.T @ H @ J


def test_ggn_and_ef_match_the_dense_references_with_unequal_batches():
    model, x, y = _problem()
    obj = ModelLoss(model, x, y, batch_size=7)
    G, Fe = _dense(GGNOperator(obj), obj.size), _dense(EFOperator(obj), obj.size)
    torch.testing.assert_close(G, dense_ggn(model, x), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(Fe, dense_ef(model, x, y), rtol=1e-10, atol=1e-12)
    v = torch.randn(obj.size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(GGNOperator(obj).matvec(v), G @ v, rtol=1e-10, atol=1e-12)


def test_ggn_of_class_weighted_label_smoothed_cross_entropy_and_of_mse():
    model, x, y = _problem(1)
    w = torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64)
    ce = nn.CrossEntropyLoss(weight=w, label_smoothing=0.1)
    obj = ModelLoss(model, x, y, batch_size=7, loss_fn=ce)
    torch.testing.assert_close(_dense(GGNOperator(obj), obj.size), _generic_ggn(model, x, lambda o: ce(o, y)),
                               rtol=1e-10, atol=1e-12)  # fmt: skip
    # the empirical Fisher of the weighted loss: s_i = w[y_i] l_i, over W = sum_i w[y_i]
    wm, logits = _flat_fn(model)
    Gs = jacrev(lambda f: F.cross_entropy(logits(f, x), y, weight=w, label_smoothing=0.1, reduction="none"))(wm)
    torch.testing.assert_close(_dense(EFOperator(obj), obj.size), Gs.T @ Gs / w[y].sum(), rtol=1e-10, atol=1e-12)
    t = torch.randn(N, C, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    mse = ModelLoss(model, x, t, batch_size=7, loss_fn=nn.MSELoss())
    torch.testing.assert_close(_dense(GGNOperator(mse), mse.size), _generic_ggn(model, x, lambda o: F.mse_loss(o, t)),
                               rtol=1e-10, atol=1e-12)  # fmt: skip
    Gm = jacrev(lambda f: ((logits(f, x) - t) ** 2).mean(1))(wm)  # per-example MSE, mean over outputs
    torch.testing.assert_close(_dense(EFOperator(mse), mse.size), Gm.T @ Gm / N, rtol=1e-10, atol=1e-12)


def test_ggn_equals_the_hessian_for_a_linear_model():
    """f linear in w: the network's second derivatives vanish and G = H exactly."""
    model, x, y = _problem(2)
    lin = nn.Linear(D, C).double()
    obj = ModelLoss(lin, x, y, batch_size=7)
    torch.testing.assert_close(_dense(GGNOperator(obj), obj.size), dense_hessian(lin, x, y), rtol=1e-10, atol=1e-12)


def test_ggn_and_ef_agree_with_curvlinops():
    from curvlinops import EFLinearOperator, GGNLinearOperator

    model, x, y = _problem(3)
    obj = ModelLoss(model, x, y, batch_size=7)
    params = list(model.parameters())
    ggn = GGNLinearOperator(model, nn.CrossEntropyLoss(), params, batches(x, y, 7))
    ef = EFLinearOperator(model, nn.CrossEntropyLoss(), params, batches(x, y, 7))
    eye = torch.eye(obj.size, dtype=torch.float64)
    torch.testing.assert_close(_dense(GGNOperator(obj), obj.size), ggn @ eye, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(_dense(EFOperator(obj), obj.size), ef @ eye, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("curvature", ["ggn", "ef"])
def test_public_eigenvalues_and_trace_of_ggn_and_ef(curvature):
    model, x, y = _problem(4)
    ref = dense_ggn(model, x) if curvature == "ggn" else dense_ef(model, x, y)
    eig = np.linalg.eigvalsh(ref.numpy())[::-1]
    res = hessian_eigenvalues(model, (x, y), k=2, curvature=curvature, batch_size=7, tol=1e-8)
    np.testing.assert_allclose(res.values, eig[:2], rtol=1e-6)
    assert res.settings["curvature"] == curvature
    # 3 x rank (at most N*(C-1) = 46 > 43 = P) products: Hutch++ sketches the whole range, the trace is exact
    tr = hessian_trace(model, (x, y), num_matvecs=3 * 43 + 3, estimator="hutch++", curvature=curvature, batch_size=7)
    assert tr.estimate == pytest.approx(float(torch.trace(ref)), rel=1e-8)
    with pytest.raises(ValueError, match="curvature must be one of"):
        hessian_trace(model, (x, y), curvature="fisher")


def test_per_layer_blocks_are_the_dense_hessians_diagonal_blocks():
    model, x, y = _problem(5)
    H = dense_hessian(model, x, y)
    obj = ModelLoss(model, x, y, batch_size=7)
    op = HessianOperator(obj)
    blocks = parameter_blocks(obj, "parameter")
    assert [n for n, _ in blocks] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert [n for n, _ in parameter_blocks(obj, "module")] == ["0", "2"]
    for name, idx in blocks:
        B = BlockOperator(op, idx, name)
        torch.testing.assert_close(_dense(B, B.size), H[idx][:, idx], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(exact_trace(B, chunk=4), torch.diagonal(H[idx][:, idx]), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("group", ["parameter", "module"])
@pytest.mark.parametrize("curvature", ["hessian", "ggn"])
def test_layer_curvature_lambda_max_and_trace_per_block(group, curvature):
    model, x, y = _problem(6)
    ref = dense_hessian(model, x, y) if curvature == "hessian" else dense_ggn(model, x)
    res = layer_curvature(model, (x, y), group=group, curvature=curvature, num_matvecs=30, tol=1e-9, batch_size=7)
    obj = ModelLoss(model, x, y)
    blocks = parameter_blocks(obj, group)
    assert res.names == tuple(n for n, _ in blocks)
    for i, (_, idx) in enumerate(blocks):
        sub = ref[idx][:, idx]
        assert res.sizes[i] == len(idx)
        assert res.lambda_max[i] == pytest.approx(float(torch.linalg.eigvalsh(sub)[-1]), rel=1e-6, abs=1e-12)
        if len(idx) <= 30:  # small blocks: the exact diagonal
            assert res.trace_stderr[i] == 0.0
            assert res.trace[i] == pytest.approx(float(torch.trace(sub)), rel=1e-10, abs=1e-12)
        else:  # an estimate within 5 standard errors
            assert res.trace_stderr[i] > 0
            assert abs(res.trace[i] - float(torch.trace(sub))) <= 5 * res.trace_stderr[i]
    rows = res.rows()
    assert rows[0]["name"] == res.names[0] and set(rows[0]) >= {"size", "lambda_max", "trace", "trace_stderr"}
    assert res.settings["curvature"] == curvature and res.settings["group"] == group


def test_layer_curvature_shared_probes_are_the_blocks_of_the_same_hutchinson_samples():
    """The shared estimate of block I is the mean of z[I]^T (H z)[I] over the whole-model probes, computed
    here densely from the same seeded Rademacher vectors; within 5 standard errors of the block's trace."""
    from flatfl.analysis.trace import _rademacher

    model, x, y = _problem(7)
    H = dense_hessian(model, x, y)
    res = layer_curvature(model, (x, y), num_matvecs=200, shared_probes=True, seed=3, batch_size=7)
    Z = _rademacher(len(H), 200, HessianOperator(ModelLoss(model, x, y)), torch.Generator().manual_seed(3))
    HZ = H @ Z.T
    for i, (_, idx) in enumerate(parameter_blocks(ModelLoss(model, x, y))):
        samples = (Z[:, idx] * HZ[idx].T).sum(1)
        assert res.trace[i] == pytest.approx(float(samples.mean()), rel=1e-9, abs=1e-12)
        assert res.trace_stderr[i] == pytest.approx(float(samples.std() / 200**0.5), rel=1e-9)
        assert abs(res.trace[i] - float(torch.trace(H[idx][:, idx]))) <= 5 * res.trace_stderr[i]
    assert res.settings["shared_probes"] is True
