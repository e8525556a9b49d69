"""Loss surfaces: directions, grid evaluation against direct model evaluation, resume."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from flatfl.analysis.operators import ModelLoss
from flatfl.analysis.surfaces import (
    Surface,
    evaluate_grid,
    filter_normalized,
    interpolation,
    pca_directions,
    plane_through,
    random_directions,
)
from flatfl.config import DataConfig
from flatfl.data import load_dataset
from flatfl.models import build_model
from flatfl.runs.files import save_surface


@pytest.fixture(scope="module")
def cnn_problem():
    torch.manual_seed(0)
    model = build_model("smallcnn", in_channels=1, image_size=8, num_classes=10)
    ds = load_dataset(DataConfig())
    return model, ds.test.x[:150], ds.test.y[:150]


def direct_loss(model, flat, x, y):
    """Independent path: load the point into a copy of the model, plain forward."""
    m = copy.deepcopy(model).eval()
    torch.nn.utils.vector_to_parameters(flat, m.parameters())
    with torch.no_grad():
        out = m(x)
    return F.cross_entropy(out, y).item(), (out.argmax(1) == y).double().mean().item()


def test_filter_normalisation(cnn_problem):
    model, x, y = cnn_problem
    obj = ModelLoss(model, x, y)
    d = filter_normalized(obj, torch.randn(obj.size, generator=torch.Generator().manual_seed(0)))
    for name, di in obj.unflat(d).items():
        w = obj.params[name]
        if w.ndim == 1:
            assert torch.count_nonzero(di) == 0, name  # biases zeroed by default
        else:
            assert torch.allclose(di.reshape(len(di), -1).norm(dim=1), w.reshape(len(w), -1).norm(dim=1), rtol=1e-5)
    d = filter_normalized(obj, torch.randn(obj.size), include_1d=True)
    b = obj.unflat(d)["conv1.bias"]
    assert b.norm().item() == pytest.approx(obj.params["conv1.bias"].norm().item(), rel=1e-5)


def test_random_directions_are_orthogonal_after_normalisation(cnn_problem):
    model, x, y = cnn_problem
    obj = ModelLoss(model, x, y)
    g = torch.Generator().manual_seed(1)
    d1, d2 = random_directions(obj, 2, g)
    assert abs(float(d1 @ d2)) < 1e-4 * float(d1.norm() * d2.norm())
    # d1 is the filter-normalised draw itself (seeded); d2 keeps the norm it had after normalisation
    assert torch.allclose(d1, random_directions(obj, 1, torch.Generator().manual_seed(1))[0])
    g = torch.Generator().manual_seed(1)
    torch.randn(obj.size, generator=g, dtype=torch.float64)
    raw2 = filter_normalized(obj, torch.randn(obj.size, generator=g, dtype=torch.float64).float())
    assert float(d2.norm()) == pytest.approx(float(raw2.norm()), rel=1e-5)


@pytest.mark.parametrize(
    "budget,vectorize",
    [(2**30, True), (2**30, False), (2**30, None), (1, None)],  # vmap chunks, loop, auto, one point per chunk
)
def test_grid_matches_direct_evaluation_and_leaves_model_untouched(cnn_problem, budget, vectorize):
    model, x, y = cnn_problem
    model.train()
    before = [p.detach().clone() for p in model.parameters()]
    obj = ModelLoss(model, x, y, batch_size=64)
    d1, d2 = random_directions(obj, 2, torch.Generator().manual_seed(2))
    grid = np.linspace(-1, 1, 5)
    s = evaluate_grid(obj, [d1, d2], grid, grid, memory_budget=budget, vectorize=vectorize)
    assert s.loss.shape == (5, 5) and not np.isnan(s.loss).any()
    theta = obj.flat()
    for i, j in [(2, 2), (0, 4), (3, 1), (4, 4)]:
        lval, aval = direct_loss(model, theta + grid[i] * d1 + grid[j] * d2, x, y)
        assert s.loss[i, j] == pytest.approx(lval, rel=1e-5)
        assert s.accuracy[i, j] == pytest.approx(aval, abs=1e-12)
    assert model.training and all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_resume_fills_only_missing_points(cnn_problem):
    model, x, y = cnn_problem
    obj = ModelLoss(model, x, y)
    d1, d2 = random_directions(obj, 2, torch.Generator().manual_seed(3))
    grid = np.linspace(-0.5, 0.5, 4)
    full = evaluate_grid(obj, [d1, d2], grid, grid)
    partial = Surface(full.alphas, full.betas, full.loss.copy(), full.accuracy.copy())
    partial.loss[1:, :] = np.nan
    partial.loss[0, 0] = 123.0  # a computed point must not be recomputed
    calls = []
    again = evaluate_grid(obj, [d1, d2], grid, grid, resume_from=partial, on_chunk=lambda s, d, t: calls.append((d, t)))
    assert again.loss[0, 0] == 123.0
    np.testing.assert_allclose(again.loss[1:], full.loss[1:], rtol=1e-6)
    assert calls[-1] == (16, 16)


def test_plane_through_three_models_and_interpolation(cnn_problem):
    model, x, y = cnn_problem
    obj = ModelLoss(model, x, y)
    g = torch.Generator().manual_seed(4)
    a = obj.flat()
    b = a + 0.3 * torch.randn(obj.size, generator=g)
    c = a + 0.3 * torch.randn(obj.size, generator=g)
    d1, d2, coords = plane_through(a, b, c)
    s = evaluate_grid(obj, [d1, d2], np.array([0.0, 1.0, coords[2, 0]]), np.array([0.0, 1.0]), origin=a)
    assert s.loss[0, 0] == pytest.approx(direct_loss(model, a, x, y)[0], rel=1e-5)
    assert s.loss[1, 0] == pytest.approx(direct_loss(model, b, x, y)[0], rel=1e-5)
    assert s.loss[2, 1] == pytest.approx(direct_loss(model, c, x, y)[0], rel=1e-5)
    line = interpolation(obj, a, b, np.array([0.0, 0.5, 1.0]))
    assert line.loss[2] == pytest.approx(direct_loss(model, b, x, y)[0], rel=1e-5)
    assert line.loss[1] == pytest.approx(direct_loss(model, 0.5 * (a + b), x, y)[0], rel=1e-5)


def test_pca_of_a_planar_trajectory():
    g = torch.Generator().manual_seed(5)
    u, v = torch.randn(50, generator=g, dtype=torch.float64), torch.randn(50, generator=g, dtype=torch.float64)
    end = torch.randn(50, generator=g, dtype=torch.float64)
    ts = torch.linspace(0, 1, 8, dtype=torch.float64)
    traj = [end + (1 - t) * 3 * u + torch.sin(3 * t) * v for t in ts]
    d1, d2, coords, var = pca_directions(traj)
    assert var.sum() == pytest.approx(1.0, abs=1e-10)
    recon = torch.stack([traj[-1] + coords[i, 0] * d1 + coords[i, 1] * d2 for i in range(8)])
    assert torch.allclose(recon, torch.stack(traj), atol=1e-10)
    assert np.allclose(coords[-1], 0)


def test_surface_roundtrip(tmp_path):
    s = Surface(
        np.linspace(-1, 1, 3),
        np.linspace(-2, 2, 4),
        np.arange(12.0).reshape(3, 4),
        np.ones((3, 4)) / 2,
        {"kind": "random"},
        {"global": [0.0, 0.0]},
    )
    save_surface(s, tmp_path / "surface")
    t = Surface.load(tmp_path / "surface")
    assert np.array_equal(t.loss, s.loss) and np.array_equal(t.betas, s.betas)
    assert t.description == {"kind": "random"} and t.points == {"global": [0.0, 0.0]}


def test_vmap_unsupported_model_falls_back_to_a_loop():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 2)

        def forward(self, x):
            out = self.lin(x)
            if float(out.sum()) > 1e9:  # data-dependent control flow: vmap refuses .item()/float()
                return out * 0
            return out

    torch.manual_seed(0)
    m = Odd()
    x, y = torch.randn(10, 3), torch.randint(0, 2, (10,))
    obj = ModelLoss(m, x, y)
    (d,) = random_directions(obj, 1, torch.Generator().manual_seed(0))
    s = evaluate_grid(obj, [d], np.array([-1.0, 0.0, 1.0]))
    assert s.loss[1] == pytest.approx(F.cross_entropy(m(x), y).item(), rel=1e-6)


def test_chunk_size_follows_the_memory_budget(cnn_problem):
    from flatfl.analysis.surfaces import points_per_chunk

    model, x, y = cnn_problem
    small, big = ModelLoss(model, x, y, batch_size=10), ModelLoss(model, x, y, batch_size=150)
    # per point: parameters (13,706 floats) + one batch's activations (> 10 * 16*8*8 floats)
    per_point_small = 13706 * 4 + 10 * 16 * 8 * 8 * 4
    assert points_per_chunk(small, 100 * per_point_small) <= 100
    assert points_per_chunk(big, 2**30) < points_per_chunk(small, 2**30)
    assert points_per_chunk(big, 1) == 1
