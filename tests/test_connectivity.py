"""Mode connectivity (Garipov et al. 2018): the Bézier curve's training against a closed form on a quadratic
loss, the barrier on a loss with a hump on the straight line, reproducibility and untouched models."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from flatfl.analysis import mode_connectivity
from flatfl.analysis.connectivity import barrier, bezier


def _regression(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(40, 3, generator=g, dtype=torch.float64)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]], dtype=torch.float64) + 0.3 * torch.randn(
        40, 1, generator=g, dtype=torch.float64
    )
    torch.manual_seed(seed)
    a, b = nn.Linear(3, 1).double(), nn.Linear(3, 1).double()
    with torch.no_grad():
        b.weight.add_(2.0)
    return a, b, x, y


def _flat(m: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in m.parameters()])


def test_bezier_and_barrier_closed_forms():
    a, c, b = torch.tensor([0.0]), torch.tensor([1.0]), torch.tensor([4.0])
    assert float(bezier(a, c, b, 0.5)) == 0.25 * 0 + 0.5 * 1 + 0.25 * 4
    t = np.linspace(0, 1, 5)
    assert barrier(t, 1 + t) == 0.0  # linear between the endpoints: no excess
    assert barrier(t, np.array([0, 1, 3, 1, 2.0])) == pytest.approx(3 - 1.0)


def test_convex_problem_line_has_no_barrier_and_the_bend_reaches_the_closed_form():
    """L quadratic: min_c E_t L(φ_c(t)) = 2.5 w* - 0.75 (a + b) (E[β] = 1/3, E[β^2] = 2/15, E[αβ] = 1/10,
    β = 2t(1-t)); the trained curve's mean loss is below the line's."""
    a, b, x, y = _regression()
    res = mode_connectivity(a, b, (x, y), loss_fn=nn.MSELoss(), steps=400, lr=0.05, num_points=41, seed=1)
    assert res.line_barrier <= 1e-12  # convex along the line: never above the chord
    assert res.curve_loss.mean() < res.line_loss.mean()
    X = torch.cat([x, torch.ones(40, 1, dtype=torch.float64)], 1)
    w_star = torch.linalg.lstsq(X, y).solution.reshape(-1)
    c_star = 2.5 * w_star - 0.75 * (_flat(a) + _flat(b))
    c0 = (_flat(a) + _flat(b)) / 2
    assert float((res.control - c_star).norm()) <= 0.05 * float((c0 - c_star).norm())
    np.testing.assert_array_equal(res.curve_loss[[0, -1]], res.line_loss[[0, -1]])  # the same endpoints


class Ring(nn.Module):
    """Output ||w||^2 for every example; MSE against 1 makes L(w) = (||w||^2 - 1)^2: a ring of minima with a
    hump of height 1 at the centre."""

    def __init__(self, w: tuple[float, float]) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.w**2).sum() * torch.ones(len(x), 1, dtype=x.dtype)


def test_the_curve_goes_round_the_hump_the_line_crosses():
    th = 0.3
    a, b = Ring((math.cos(th), math.sin(th))), Ring((-math.cos(th), math.sin(th)))  # two minima
    data = (torch.zeros(8, 1, dtype=torch.float64), torch.ones(8, 1, dtype=torch.float64))
    res = mode_connectivity(a, b, data, loss_fn=nn.MSELoss(), steps=300, lr=0.05, seed=0)
    assert res.line_barrier == pytest.approx(math.cos(th) ** 4, rel=1e-12)  # at (0, sin th)
    assert res.curve_barrier < 0.1 * res.line_barrier
    assert float(res.control[1]) > math.sin(th)  # bent outwards, towards the ring


def test_seeded_runs_are_identical_and_the_models_are_left_alone():
    a, b, x, y = _regression(2)
    a.train()
    before = (copy.deepcopy(a.state_dict()), copy.deepcopy(b.state_dict()))
    kw = dict(loss_fn=nn.MSELoss(), steps=30, batch_size=8, seed=5)
    r1, r2 = mode_connectivity(a, b, (x, y), **kw), mode_connectivity(a, b, (x, y), **kw)
    np.testing.assert_array_equal(r1.curve_loss, r2.curve_loss)
    np.testing.assert_array_equal(r1.train_loss, r2.train_loss)
    assert torch.equal(r1.control, r2.control)
    r3 = mode_connectivity(a, b, (x, y), **{**kw, "seed": 6})
    assert not np.array_equal(r1.train_loss, r3.train_loss)
    for m, sd in zip((a, b), before):
        assert all(torch.equal(m.state_dict()[k], v) for k, v in sd.items())
    assert a.training and all(p.requires_grad for p in a.parameters())
    with pytest.raises(ValueError, match="same parameters"):
        mode_connectivity(a, a, (x, y), loss_fn=nn.MSELoss())
