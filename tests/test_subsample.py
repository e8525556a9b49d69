"""``--samples auto``: growing subsets with a data-sampling error, against the exact full-data values."""

import numpy as np
import pytest
import torch
from test_curvature import explicit_hessian
from torch import nn

from flatfl.analysis.operators import HessianOperator, ModelLoss
from flatfl.analysis.subsample import SubsampleSettings, group_error, subsample
from flatfl.analysis.trace import _rademacher


def problem(n=3200, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    x = torch.randn(n, 4, dtype=torch.float64)
    y = (x[:, 0] + 0.5 * torch.randn(n, dtype=torch.float64) > 0).long() + (x[:, 1] > 1).long()
    return model, x, y


def exact_full_data(model, x, y, settings):
    """lambda_max of the full-data Hessian, and the Hutchinson trace with the subsampler's probes on it."""
    H, _ = explicit_hessian(model, x, y)
    Z = _rademacher(H.shape[0], settings.trace_matvecs, H, torch.Generator().manual_seed(settings.seed))
    return float(np.linalg.eigvalsh(H.numpy())[-1]), float((Z * (H @ Z.T).T).sum(1).mean())


def run(model, x, y, settings):
    make_op = lambda idx: HessianOperator(ModelLoss(model, x[idx], y[idx], batch_size=400), method="cached")  # noqa: E731
    return subsample(len(y), make_op, ("lambda_max", "trace"), settings)


def test_group_error_is_the_standard_error_of_a_mean_with_finite_population_factor():
    v, w = np.array([1.0, 2.0, 3.0, 6.0]), np.ones(4)
    assert group_error(v, w, 100, 10**9) == pytest.approx(np.std(v, ddof=1) / 2, rel=1e-6)
    assert group_error(v, w, 50, 100) == pytest.approx(np.std(v, ddof=1) / 2 * np.sqrt(0.5))
    assert group_error(v, w, 100, 100) == 0.0


def test_auto_subset_stops_early_and_its_error_bar_holds_the_full_data_value():
    model, x, y = problem()
    covered, used = 0, []
    for seed in range(3):
        st = SubsampleSettings(data_tol=0.05, start=100, groups=8, trace_matvecs=10, tol=1e-6, seed=seed)
        r = run(model, x, y, st)
        lam, tr = exact_full_data(model, x, y, st)
        assert r.converged and len(r.indices) == r.levels[-1]["samples"]
        used.append(len(r.indices))
        for q, exact in (("lambda_max", lam), ("trace", tr)):
            err, val = r.data_errors[q], r.values[q]
            assert 0 < err <= st.data_tol * abs(val)
            assert abs(val - exact) <= 4 * err, (seed, q, val, exact, err)
            covered += abs(val - exact) <= 2 * err
    assert max(used) < len(y)  # stopped before the full data every time
    assert covered >= 5, covered  # of 6 (about 92% expected for 2 standard errors with 7 dof)


def test_the_full_data_ends_the_growth_with_the_exact_values():
    model, x, y = problem(n=300)
    st = SubsampleSettings(data_tol=1e-9, start=64, groups=4, trace_matvecs=10, tol=1e-6)
    r = run(model, x, y, st)
    lam, tr = exact_full_data(model, x, y, st)
    assert len(r.indices) == 300 and [lv["samples"] for lv in r.levels] == [64, 128, 256, 300]
    assert r.data_errors == {"lambda_max": 0.0, "trace": 0.0}
    assert r.values["lambda_max"] == pytest.approx(lam, rel=1e-6)
    assert r.values["trace"] == pytest.approx(tr, rel=1e-10)


def test_the_whole_data_is_not_computed_twice_when_the_caller_measures_it():
    """``full_values=False`` (flatfl landscape's): reaching s = N ends the growth with data errors 0 and no
    values of its own -- no operator is made for the whole data, which the caller measures anyway."""
    model, x, y = problem(n=300)
    st = SubsampleSettings(data_tol=1e-9, start=64, groups=4, trace_matvecs=10, tol=1e-6, full_values=False)
    sizes = []

    def make_op(idx):
        sizes.append(len(idx))
        return HessianOperator(ModelLoss(model, x[idx], y[idx], batch_size=400), method="cached")

    r = subsample(len(y), make_op, ("lambda_max", "trace"), st)
    assert [lv["samples"] for lv in r.levels] == [64, 128, 256, 300] and r.converged
    assert r.data_errors == {"lambda_max": 0.0, "trace": 0.0} and r.values == {} and len(r.indices) == 300
    assert max(sizes) == 256  # the levels' subsets and groups only
