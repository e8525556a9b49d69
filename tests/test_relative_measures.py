"""Relative flatness (Petzka et al. 2021) and the Fisher-Rao norm (Liang et al. 2019): exact references and
their behaviour under the function-preserving reparametrisations of ``bench/invariance_table.py``.

References: κ from the dense float64 Hessian of the output layer's weight (``torch.autograd.functional.hessian``)
and the paper's double sum; ||θ||_fr^2 as θ^T F θ and θ^T G θ with the dense empirical Fisher and GGN of
``tests/test_interop.py``, and Liang et al.'s closed form (L+1)^2 E<∂ℓ/∂f, f>^2 for a bias-free ReLU network.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_interop import _flat_fn, dense_ef, dense_ggn
from torch import nn
from torch.func import functional_call

from flatfl.analysis import fisher_rao_norm, relative_flatness
from flatfl.analysis.invariance import INVARIANT_TO
from tests.conftest import invariance_bench

ROOT = Path(__file__).resolve().parents[1]


_bench = invariance_bench


bench = _bench()


def _mlp(seed: int = 0, bias: bool = True) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 6, bias=bias), nn.ReLU(), nn.Linear(6, 5, bias=bias), nn.ReLU(),
                          nn.Linear(5, 3, bias=bias)).double()  # fmt: skip
    x = torch.randn(23, 4, generator=g, dtype=torch.float64)
    return model, x, torch.randint(0, 3, (23,), generator=g)


def dense_kappa(model: nn.Module, x, loss_of_out, layer: str = "4") -> float:
    """sum_{s,s'} <w_s, w_s'> sum_j H[(s,j),(s',j)] from the dense Hessian of the loss in ``layer``'s weight."""
    key = f"{layer}.weight"
    w = dict(model.named_parameters())[key].detach()
    rest = {n: p.detach() for n, p in model.named_parameters() if n != key}
    H = torch.autograd.functional.hessian(lambda W: loss_of_out(functional_call(model, {**rest, key: W}, (x,))), w)
    return float(torch.einsum("ab,ajbj->", w @ w.T, H))  # H: (d, m, d, m)


def test_relative_flatness_equals_the_dense_double_sum():
    model, x, y = _mlp()
    res = relative_flatness(model, (x, y), batch_size=7)
    assert res.layer == "4" and res.weight_shape == (3, 5)
    assert res.kappa == pytest.approx(dense_kappa(model, x, lambda o: F.cross_entropy(o, y)), rel=1e-10)
    t = torch.randn(23, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    mse = relative_flatness(model, (x, t), loss_fn=nn.MSELoss(), batch_size=5)
    assert mse.kappa == pytest.approx(dense_kappa(model, x, lambda o: F.mse_loss(o, t)), rel=1e-10)


def test_relative_flatness_of_a_named_inner_layer_is_refused():
    model, x, y = _mlp()
    with pytest.raises(ValueError, match="not the model's output"):
        relative_flatness(model, (x, y), layer="2")
    with pytest.raises(ValueError, match="not an nn.Linear"):
        relative_flatness(model, (x, y), layer="1")


def test_fisher_rao_norm_is_theta_f_theta_and_theta_g_theta():
    model, x, y = _mlp(2)
    w, _ = _flat_fn(model)
    emp = fisher_rao_norm(model, (x, y), batch_size=7)
    assert emp.squared == pytest.approx(float(w @ dense_ef(model, x, y) @ w), rel=1e-10)
    assert emp.norm == pytest.approx(emp.squared**0.5)
    mod = fisher_rao_norm(model, (x, y), labels="model", batch_size=7)
    assert mod.squared == pytest.approx(float(w @ dense_ggn(model, x) @ w), rel=1e-10)
    with pytest.raises(ValueError, match="labels='model' needs"):
        fisher_rao_norm(model, (x, y), labels="model", loss_fn=nn.CrossEntropyLoss(label_smoothing=0.1))


def test_fisher_rao_norm_of_a_bias_free_relu_net_is_liangs_closed_form():
    """<θ, ∇ℓ> = (L+1) <∂ℓ/∂f, f> with L = 2 hidden layers (Liang et al. 2019, Lemma 2)."""
    model, x, y = _mlp(3, bias=False)
    f = model(x).detach()
    dldf = torch.softmax(f, 1) - F.one_hot(y, 3).double()
    expected = float((((2 + 1) * (dldf * f).sum(1)) ** 2).mean())
    assert fisher_rao_norm(model, (x, y), batch_size=7).squared == pytest.approx(expected, rel=1e-10)


CASES = {c.name: (c.model, c.apply) for c in bench.CASES}  # the reparametrisations of tests/test_invariance.py
# what the library functions must do: the table test_invariance.py measures through the report's code, the
# model-label Fisher-Rao norm (not a verdict column) held to the empirical one's row
INVARIANT = {
    "relative_flatness": INVARIANT_TO["relative_flatness"],
    "fisher_rao_empirical": INVARIANT_TO["fisher_rao"],
    "fisher_rao_model": INVARIANT_TO["fisher_rao"],
}


def _measures(model, x, y) -> dict[str, float]:
    return {
        "relative_flatness": relative_flatness(model, (x, y)).kappa,
        "fisher_rao_empirical": fisher_rao_norm(model, (x, y)).squared,
        "fisher_rao_model": fisher_rao_norm(model, (x, y), labels="model").squared,
    }


@pytest.mark.parametrize("case", sorted(CASES))
def test_invariances_under_the_reparametrisations(case):
    build, reparam = CASES[case]
    model, x, y = build()
    base = _measures(model, x, y)
    for alpha in bench.ALPHAS:
        other = reparam(model, alpha)
        with torch.no_grad():
            assert float((other(x) - model(x)).abs().max()) <= 1e-12  # the same function
        for key, value in _measures(other, x, y).items():
            change = abs(value - base[key]) / abs(base[key])
            if case in INVARIANT[key]:
                assert change <= 1e-9, (key, alpha, change)
            else:
                assert change > 1e-3, (key, alpha, change)


@pytest.mark.parametrize("case", sorted(CASES))
def test_ggn_and_empirical_fisher_transform_as_t_inv_m_t_inv(case):
    """Why GGN and empirical-Fisher curvature change under every reparametrisation (tests/test_invariance.py): with
    w' = T w (T diagonal: alpha, 1/alpha or 1 per weight), J' = J T^-1 and g_i' = T^-1 g_i, so flatfl's operators on
    the reparametrised model are T^-1 M T^-1 of the original's, to rounding (checked on 6 random vectors; the
    dense lambda_max and trace that therefore change are in tests/test_invariance.py)."""
    from flatfl.analysis.curvatures import EFOperator, GGNOperator
    from flatfl.analysis.operators import ModelLoss

    build, reparam = CASES[case]
    model, x, y = build()
    other = reparam(model, 3.0)
    w = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    t_inv = torch.diag(w / torch.cat([p.detach().reshape(-1) for p in other.parameters()]))
    assert set(torch.round(t_inv.diagonal(), decimals=9).tolist()) <= {1.0, 3.0, round(1 / 3, 9)}
    V = torch.randn(len(w), 6, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    for op in (GGNOperator, EFOperator):
        a, b = (op(ModelLoss(m, x, y, batch_size=32, dtype=torch.float64)) for m in (model, other))
        expected = t_inv @ a.matmat(t_inv @ V)
        torch.testing.assert_close(b.matmat(V), expected, rtol=1e-9, atol=1e-12)
        assert float((expected - a.matmat(V)).abs().max()) > 1e-3 * float(expected.abs().max())  # T is not I here
