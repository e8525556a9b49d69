"""Work shared between the report's measures (flatfl.runs.share): fewer loss evaluations, the same numbers."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import flatfl.analysis.points as points
from flatfl.analysis.slices import random_slices, symmetric_grid
from flatfl.runs import share
from flatfl.runs.landscape import LandscapeSettings
from flatfl.runs.problem import of_checkpoint
from flatfl.runs.surface import measure_surface

CKPT = Path("checkpoints/reference/digits-fedavg/round_0005.safetensors")


@pytest.fixture
def evaluated(monkeypatch):
    """Counts the points whose loss is evaluated (rows given to points_loss)."""
    count = [0]
    real = points.points_loss

    def counting(obj, P, *a, **kw):
        count[0] += P.shape[0]
        return real(obj, P, *a, **kw)

    monkeypatch.setattr(points, "points_loss", counting)
    return count


def test_slices_evaluate_the_checkpoint_once_with_the_same_curves(evaluated):
    obj = of_checkpoint(CKPT, LandscapeSettings(samples=80)).objective
    ts = symmetric_grid(1.0, 3)  # 7 points
    shared = random_slices(obj, ts, num_directions=4, seed=3)
    assert evaluated[0] == 4 * 7 - 3  # L(theta) once, not once per direction
    alone = random_slices(obj, ts, num_directions=4, seed=3, share_origin=False)
    assert evaluated[0] == 4 * 7 - 3 + 4 * 7
    np.testing.assert_allclose(shared.delta, alone.delta, rtol=0, atol=1e-6 * shared.loss0)
    np.testing.assert_allclose(shared.loss, alone.loss, rtol=1e-6)
    np.testing.assert_array_equal(shared.accuracy, alone.accuracy)
    assert (shared.delta[:, 3] == 0).all() and shared.loss0 == alone.loss0


def test_surface_takes_its_first_row_from_slice_0_with_the_same_grid(evaluated, tmp_path, monkeypatch):
    ls = LandscapeSettings(samples=80, surface="2d", grid=5, span=1.0, markers=False, seed=2)
    problem = of_checkpoint(CKPT, ls)
    sl = random_slices(problem.objective, symmetric_grid(1.0, 4), num_directions=2, seed=2)
    known = share.surface_from_slices(problem, ls, sl)
    assert known is not None and np.isfinite(known.loss).sum() == 5  # the row b = 0: a in -1, -0.5, 0, 0.5, 1
    assert np.isfinite(known.loss[:, 2]).all()
    before = evaluated[0]
    with_row = measure_surface(problem, ls, tmp_path / "a", known=known)
    assert evaluated[0] - before == 25 - 5
    before = evaluated[0]
    fresh = measure_surface(problem, ls, tmp_path / "b")
    assert evaluated[0] - before == 25
    np.testing.assert_allclose(with_row.loss, fresh.loss, rtol=1e-6)
    np.testing.assert_array_equal(with_row.accuracy, fresh.accuracy)
    # nothing shared where the points are not the same: another seed, direction kind, or sharing off
    assert share.surface_from_slices(problem, replace(ls, seed=3), sl) is None
    assert share.surface_from_slices(problem, replace(ls, surface_dirs="pca"), sl) is None
    assert share.surface_from_slices(problem, ls, replace(sl, loss=None)) is None  # slices read from a cache
    monkeypatch.setenv("FLATFL_SHARE_WORK", "0")
    assert share.surface_from_slices(problem, ls, sl) is None
