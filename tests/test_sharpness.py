"""Sharpness measures against closed forms on quadratic and linear losses, and the
reparameterisation (in)variance of Dinh et al. (2017) on a ReLU network."""

import numpy as np
import pytest
import torch
from torch import nn

from flatfl.analysis.lanczos import lanczos
from flatfl.analysis.operators import HessianOperator, ModelLoss
from flatfl.analysis.sharpness import adaptive_sharpness, average_sharpness, epsilon_sharpness, sam_sharpness


class Quadratic:
    """L(w) = 1/2 (w - w*)^T A (w - w*) + g^T (w - w*) + c, evaluated in float64."""

    def __init__(self, A, w_star, g=None, c=0.0):
        self.A, self.w_star = A, w_star
        self.g = torch.zeros_like(w_star) if g is None else g
        self.c = c
        self.size, self.dtype, self.device = len(w_star), torch.float64, torch.device("cpu")
        self.batches = [None]

    def flat(self):
        return self.w_star.clone()

    def loss(self, w=None, batches=None):
        d = (self.w_star if w is None else w) - self.w_star
        return float(0.5 * d @ self.A @ d + self.g @ d + self.c)

    def loss_and_gradient(self, w=None, batches=None):
        d = (self.w_star if w is None else w) - self.w_star
        return self.loss(w), self.A @ d + self.g


def spd(values, seed=0):
    g = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(len(values), len(values), generator=g, dtype=torch.float64))
    return (U * torch.as_tensor(values, dtype=torch.float64)) @ U.T


W = torch.tensor([0.5, -2.0, 1.5, 0.1, -0.7, 3.0], dtype=torch.float64)


def test_sam_at_a_minimum_is_half_rho_squared_lambda_max():
    A = spd([10.0, 4.0, 2.0, 1.0, 0.5, 0.1])
    r = sam_sharpness(Quadratic(A, W), rho=0.1, steps=60, generator=torch.Generator().manual_seed(0))
    assert r.value == pytest.approx(0.5 * 0.1**2 * 10.0, rel=1e-6)


def test_sam_and_adaptive_linf_on_a_linear_loss():
    g = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0, -1.0], dtype=torch.float64)
    q = Quadratic(torch.zeros(6, 6, dtype=torch.float64), W, g=g)
    assert sam_sharpness(q, rho=0.2, steps=3).value == pytest.approx(0.2 * float(g.norm()), rel=1e-12)
    r = adaptive_sharpness(q, rho=0.2, p=float("inf"), steps=3)
    assert r.value == pytest.approx(0.2 * float((W.abs() * g.abs()).sum()), rel=1e-12)


def test_adaptive_l2_at_a_minimum_uses_the_scaled_hessian():
    A = spd([6.0, 3.0, 2.0, 1.0, 0.5, 0.2], seed=1)
    D = torch.diag(W.abs())
    lam = float(torch.linalg.eigvalsh(D @ A @ D)[-1])
    r = adaptive_sharpness(Quadratic(A, W), rho=0.05, p=2, steps=200, generator=torch.Generator().manual_seed(0))
    assert r.value == pytest.approx(0.5 * 0.05**2 * lam, rel=1e-5)


def test_epsilon_sharpness_closed_forms():
    g = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0, -1.0], dtype=torch.float64)
    eps = 1e-2
    lin = Quadratic(torch.zeros(6, 6, dtype=torch.float64), W, g=g, c=0.3)
    expected = 100 * eps * float(((W.abs() + 1) * g.abs()).sum()) / 1.3
    assert epsilon_sharpness(lin, eps=eps).value == pytest.approx(expected, rel=1e-9)
    # a diagonal quadratic at its minimum: every corner of the box is a maximiser
    a = torch.tensor([4.0, 1.0, 2.0, 0.5, 3.0, 1.0], dtype=torch.float64)
    quad = Quadratic(torch.diag(a), W)
    expected = 100 * 0.5 * float((a * (eps * (W.abs() + 1)) ** 2).sum())
    r = epsilon_sharpness(quad, eps=eps, max_iter=50, generator=torch.Generator().manual_seed(0))
    assert r.value == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("adaptive", [False, True])
def test_average_sharpness_closed_form(adaptive):
    A = spd([5.0, 3.0, 2.0, 1.0, 0.5, 0.2], seed=2)
    sigma = 0.1
    scale = W.abs() if adaptive else torch.ones(6, dtype=torch.float64)
    expected = 0.5 * sigma**2 * float((torch.diag(A) * scale**2).sum())
    r = average_sharpness(
        Quadratic(A, W), sigma=sigma, adaptive=adaptive, num_samples=400, generator=torch.Generator().manual_seed(0)
    )
    assert abs(r.value - expected) <= 4 * r.stderr
    assert r.ci95[0] < r.value < r.ci95[1]


def _relu_net():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3)).double()
    x = torch.randn(60, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (60,))
    return model, x, y


def test_reparameterisation_changes_lambda_max_but_not_adaptive_sharpness():
    """Scale a ReLU layer pair by (a, 1/a): same function (Dinh et al. 2017)."""
    model, x, y = _relu_net()
    scaled, _, _ = _relu_net()
    a = 5.0
    with torch.no_grad():
        scaled[0].weight.mul_(a)
        scaled[0].bias.mul_(a)
        scaled[2].weight.div_(a)
    assert torch.allclose(model(x), scaled(x), atol=1e-12)
    lm = [lanczos(HessianOperator.from_model(m, x, y), k=1, tol=1e-8).values[0] for m in (model, scaled)]
    assert abs(lm[0] - lm[1]) / lm[0] > 0.5  # lambda_max is NOT invariant
    for kw in ({"p": 2}, {"p": float("inf")}):
        r = [adaptive_sharpness(ModelLoss(m, x, y), rho=0.05, steps=5, **kw).value for m in (model, scaled)]
        assert r[0] == pytest.approx(r[1], rel=1e-7), kw
    avg = [
        average_sharpness(
            ModelLoss(m, x, y), sigma=0.05, num_samples=20, generator=torch.Generator().manual_seed(3)
        ).value
        for m in (model, scaled)
    ]
    assert avg[0] == pytest.approx(avg[1], rel=1e-7)
    eps = [
        epsilon_sharpness(ModelLoss(m, x, y), eps=1e-2, generator=torch.Generator().manual_seed(0)).value
        for m in (model, scaled)
    ]
    assert abs(eps[0] - eps[1]) / eps[0] > 0.05  # epsilon-sharpness is not invariant either


def test_m_sharpness_upper_bounds_full_batch_sharpness():
    model, x, y = _relu_net()
    obj = ModelLoss(model, x, y)
    full = sam_sharpness(obj, rho=0.05, steps=10)
    m = sam_sharpness(obj, rho=0.05, steps=10, m=12)
    assert m.settings["m"] == 12 and m.stderr is not None
    assert m.value >= full.value * 0.99  # mean of per-batch maxima >= max of the mean
    assert np.isfinite(m.value) and full.value > 0


def test_average_sharpness_in_blocks_equals_one_draw_at_a_time():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 3)).double()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(30, 1, 4, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (30,), generator=g)
    obj = ModelLoss(model, x, y, batch_size=8)

    class OneByOne:  # the same objective without losses(): the draws go one at a time
        size, dtype, device, batches = obj.size, obj.dtype, obj.device, obj.batches
        flat, loss = obj.flat, obj.loss

    W = obj.flat() + 0.01 * torch.randn(5, obj.size, generator=g, dtype=torch.float64)
    direct = [obj.loss(w) for w in W]
    for vec in (True, False):
        np.testing.assert_allclose(obj.losses(W, vectorize=vec), direct, rtol=1e-12)
    kw = dict(sigma=0.05, num_samples=12)
    blocked = average_sharpness(obj, generator=torch.Generator().manual_seed(3), block=5, **kw)
    single = average_sharpness(OneByOne(), generator=torch.Generator().manual_seed(3), **kw)
    assert blocked.value == pytest.approx(single.value, rel=1e-10) and blocked.stderr == pytest.approx(single.stderr)


def test_antithetic_average_sharpness_cancels_the_gradient_term():
    """On a quadratic with a gradient, each antithetic pair's rise is exactly 1/2 delta^T A delta: the same
    expectation as the plain estimate, without the g^T delta noise (which dominates for small sigma)."""
    A = spd([5.0, 3.0, 2.0, 1.0, 0.5, 0.2], seed=2)
    g = torch.tensor([3.0, -1.0, 2.0, 0.5, -2.0, 1.0], dtype=torch.float64)
    quad, sigma, n = Quadratic(A, W, g=g), 0.01, 40
    expected = 0.5 * sigma**2 * float((torch.diag(A) * W.abs() ** 2).sum())
    anti = average_sharpness(quad, sigma=sigma, num_samples=n, generator=torch.Generator().manual_seed(0),
                             antithetic=True)  # fmt: skip
    plain = average_sharpness(quad, sigma=sigma, num_samples=n, generator=torch.Generator().manual_seed(0))
    draws = torch.Generator().manual_seed(0)
    deltas = [sigma * W.abs() * torch.randn(6, generator=draws, dtype=torch.float64) for _ in range(n)]
    exact = np.mean([0.5 * float(d @ A @ d) for d in deltas])  # the pairs' rises, no linear term
    assert anti.value == pytest.approx(exact, rel=1e-9) and anti.num_loss_evals == 2 * n + 1
    assert anti.settings["antithetic"] and not plain.settings["antithetic"]
    assert abs(anti.value - expected) <= 4 * anti.stderr
    assert anti.stderr < plain.stderr / 20  # the first-order term made the plain estimate noisy
