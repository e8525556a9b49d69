"""Eigenvalues, trace and spectral density against exact references.

Ladder: matrices with a known spectrum -> the explicit float64 Hessian of a small network
(torch.autograd.functional.hessian of a hand-written loss + numpy.linalg.eigh).
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.integrate import trapezoid
from torch import nn

from flatfl.analysis.density import slq
from flatfl.analysis.lanczos import lanczos
from flatfl.analysis.operators import DenseOperator, HessianOperator, ModelLoss
from flatfl.analysis.trace import hutchinson, hutchpp


def known_spectrum(values, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    lam = torch.as_tensor(values, dtype=torch.float64)
    return (U * lam) @ U.T, lam


def test_top5_has_no_ghosts_on_the_reported_failure_spectrum():
    # the spectrum where hessian-eigenthings 1.0 without reorthogonalisation returned 5 x 34.5
    g = torch.Generator().manual_seed(1)
    bulk = torch.rand(395, generator=g, dtype=torch.float64) * 2 - 0.5
    A, lam = known_spectrum(torch.cat([torch.tensor([34.5, 18.5, 11.2, 11.0, 8.7], dtype=torch.float64), bulk]), 400)
    op = DenseOperator(A)
    res = lanczos(op, k=5, smallest=True, tol=1e-10, generator=torch.Generator().manual_seed(0))
    assert res.converged
    np.testing.assert_allclose(res.values, [34.5, 18.5, 11.2, 11.0, 8.7], rtol=1e-9)
    assert res.smallest == pytest.approx(float(lam.min()), rel=1e-8)
    # residuals reported = true residuals, vectors orthonormal
    V = res.vectors
    true_res = (A @ V.T - V.T * torch.as_tensor(res.values)).norm(dim=0).numpy()
    assert np.all(true_res <= 1e-8 * 34.5)
    np.testing.assert_allclose(res.residuals, true_res, atol=1e-9)
    assert torch.allclose(V @ V.T, torch.eye(5, dtype=torch.float64), atol=1e-10)
    assert res.num_matvecs == op.num_matvecs < 400


def test_small_eigengap_still_converges():
    A, _ = known_spectrum([10.0, 9.999, 5.0] + [1.0 - i / 200 for i in range(197)], 200, seed=3)
    res = lanczos(DenseOperator(A), k=2, tol=1e-10, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(res.values, [10.0, 9.999], rtol=1e-9)


def test_negative_curvature_and_invariant_subspace():
    A, lam = known_spectrum([3.0, -7.0, 1.0, 0.5], 4)
    res = lanczos(DenseOperator(A), k=2, smallest=True, tol=1e-12)
    np.testing.assert_allclose(res.values, [3.0, 1.0], rtol=1e-10)
    assert res.smallest == pytest.approx(-7.0, rel=1e-10)
    assert res.num_matvecs <= 4 + 3 and res.converged  # <= n Lanczos steps + 3 residual checks


def test_max_vectors_bounds_memory_and_reports_non_convergence():
    A, _ = known_spectrum(list(np.linspace(1, 1.1, 300)), 300)
    res = lanczos(DenseOperator(A), k=3, tol=1e-14, max_vectors=10)
    assert res.num_vectors == 10 and not res.converged


# -- a small network, explicit Hessian ----------------------------------------------------------
def tiny_problem(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    x = torch.randn(40, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (40,))
    return model, x, y


def explicit_hessian(model, x, y):
    """Hessian of a hand-written mean cross-entropy of the MLP in flat parameter order."""
    shapes = [p.shape for p in model.parameters()]
    w0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def f(w):
        parts, i = [], 0
        for s in shapes:
            n = int(np.prod(s))
            parts.append(w[i : i + n].view(s))
            i += n
        W1, b1, W2, b2 = parts
        logits = torch.tanh(x @ W1.T + b1) @ W2.T + b2
        return -(logits.log_softmax(1)[torch.arange(len(y)), y]).mean()

    return torch.autograd.functional.hessian(f, w0), w0


@pytest.mark.parametrize("method", ["double-backward", "fwd-rev", "cached"])
def test_hvp_equals_explicit_hessian_times_v(method):
    model, x, y = tiny_problem()
    H, _ = explicit_hessian(model, x, y)
    op = HessianOperator(ModelLoss(model, x, y, batch_size=7), method=method)  # uneven batches
    for _ in range(2):  # the cached graph is reused by the second product
        v = torch.randn(op.size, dtype=torch.float64)
        assert torch.allclose(op.matvec(v), H @ v, rtol=1e-10, atol=1e-12)


def test_auto_method_respects_the_memory_budget():
    model, x, y = tiny_problem()
    big = HessianOperator(ModelLoss(model, x, y), memory_budget=1e9)
    small = HessianOperator(ModelLoss(model, x, y), memory_budget=100)
    assert big.method == "cached" and small.method == "double-backward"
    # estimate = bytes autograd saves, roughly linear in the samples: 40 samples, 6 hidden units
    assert 40 * 6 * 8 < big.graph_bytes_estimate < 1e7


def test_model_hessian_eigenvalues_trace_match_explicit():
    model, x, y = tiny_problem()
    H, _ = explicit_hessian(model, x, y)
    evals = np.linalg.eigh(H.numpy())[0]
    op = HessianOperator.from_model(model, x, y)
    assert op.size == H.shape[0] == 4 * 6 + 6 + 6 * 3 + 3
    res = lanczos(op, k=3, smallest=True, tol=1e-10, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(res.values, evals[::-1][:3], rtol=1e-6)
    assert res.smallest == pytest.approx(evals[0], rel=1e-6)
    exact = float(np.trace(H.numpy()))
    for est in (
        hutchinson(op, num_matvecs=60, generator=torch.Generator().manual_seed(1)),
        hutchpp(op, num_matvecs=60, generator=torch.Generator().manual_seed(1)),
    ):
        assert abs(est.estimate - exact) <= 4 * est.stderr, (est.method, est.estimate, exact, est.stderr)
        assert est.stderr > 0


def test_model_is_left_untouched():
    model, x, y = tiny_problem()
    model.train()
    before = [p.detach().clone() for p in model.parameters()]
    op = HessianOperator.from_model(model, x, y)
    lanczos(op, k=2)
    assert model.training and all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_batchnorm_model_uses_running_statistics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 2)).double()
    model.train()
    model(torch.randn(64, 3, dtype=torch.float64))  # move running stats away from (0, 1)
    x, y = torch.randn(20, 3, dtype=torch.float64), torch.randint(0, 2, (20,))
    op = HessianOperator.from_model(model, x, y)
    params = dict(model.named_parameters())
    names = list(params)
    w0 = torch.cat([p.detach().reshape(-1) for p in params.values()])

    def f(w):
        i, d = 0, {}
        for n in names:
            k = params[n].numel()
            d[n] = w[i : i + k].view(params[n].shape)
            i += k
        model.eval()
        out = torch.func.functional_call(model, d, (x,))
        return F.cross_entropy(out, y)

    H = torch.autograd.functional.hessian(f, w0)
    v = torch.randn(op.size, dtype=torch.float64)
    assert torch.allclose(op.matvec(v), H @ v, rtol=1e-9, atol=1e-12)


def test_hutchpp_beats_hutchinson_on_a_dominated_spectrum():
    A, lam = known_spectrum([100.0 / (i + 1) ** 2 for i in range(300)], 300)
    op = DenseOperator(A)
    h = hutchinson(op, num_matvecs=90, generator=torch.Generator().manual_seed(0))
    hp = hutchpp(op, num_matvecs=90, generator=torch.Generator().manual_seed(0))
    exact = float(lam.sum())
    assert abs(hp.estimate - exact) <= 4 * hp.stderr and abs(h.estimate - exact) <= 4 * h.stderr
    assert hp.stderr < h.stderr / 3


def test_slq_is_gauss_quadrature_and_a_density():
    A, lam = known_spectrum(list(np.linspace(-1, 5, 120) ** 3 / 10), 120)
    op = DenseOperator(A)
    res = slq(op, num_runs=8, num_steps=15, generator=torch.Generator().manual_seed(0))
    for w in res.weights:
        assert w.sum() == pytest.approx(1.0, abs=1e-12)
    # exactness: each run's quadrature reproduces v^T A^p v for p <= 2m-1 -> moments are unbiased
    exact = [float((lam**p).mean()) for p in (1, 2, 3)]
    for p, ex in zip((1, 2, 3), exact):
        est, se = res.moment(p)
        assert abs(est - ex) <= 4 * se + 1e-12, (p, est, ex, se)
    lo, hi = res.support
    grid = np.linspace(lo - 5, hi + 5, 4001)
    dens = res.density(grid, sigma=0.2)
    assert trapezoid(dens, grid) == pytest.approx(1.0, abs=1e-6)  # scipy: numpy < 2 has no np.trapezoid
    assert res.num_matvecs == 8 * 15


def test_slq_full_steps_recovers_exact_moments_per_run():
    A, lam = known_spectrum([1.0, 2.0, 3.0, 4.0, 5.0, -1.0], 6)
    res = slq(DenseOperator(A), num_runs=1, num_steps=6, generator=torch.Generator().manual_seed(2))
    np.testing.assert_allclose(np.sort(res.nodes[0]), np.sort(lam.numpy()), atol=1e-10)


def test_lstm_hvp_matches_explicit_hessian():
    """Recurrent models (the Shakespeare LSTM family) get exact HVPs too."""

    class TinyLSTM(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(5, 3)
            self.lstm = nn.LSTM(3, 4, batch_first=True)
            self.fc = nn.Linear(4, 5)

        def forward(self, x):
            h, _ = self.lstm(self.emb(x))
            return self.fc(h[:, -1])

    torch.manual_seed(0)
    model = TinyLSTM().double()
    x, y = torch.randint(0, 5, (12, 6)), torch.randint(0, 5, (12,))
    op = HessianOperator.from_model(model, x, y, batch_size=5)
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    w0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def f(w):
        d, i = {}, 0
        for n, s in zip(names, shapes):
            k = int(np.prod(s))
            d[n] = w[i : i + k].view(s)
            i += k
        return F.cross_entropy(torch.func.functional_call(model, d, (x,)), y)

    H = torch.autograd.functional.hessian(f, w0)
    v = torch.randn(op.size, dtype=torch.float64)
    assert torch.allclose(op.matvec(v), H @ v, rtol=1e-9, atol=1e-12)
    res = lanczos(op, k=2, smallest=True, tol=1e-12)
    ev = np.linalg.eigh(H.numpy())[0]
    np.testing.assert_allclose(res.values, ev[::-1][:2], rtol=1e-6)


def test_data_loader_api_gives_the_same_operator():
    from torch.utils.data import DataLoader, TensorDataset

    model, x, y = tiny_problem()
    loader = DataLoader(TensorDataset(x, y), batch_size=9, shuffle=True)
    v = torch.randn(sum(p.numel() for p in model.parameters()), dtype=torch.float64)
    a = HessianOperator(ModelLoss.from_loader(model, loader)).matvec(v)
    b = HessianOperator(ModelLoss(model, x, y)).matvec(v)
    assert torch.allclose(a, b, rtol=1e-10, atol=1e-13)
