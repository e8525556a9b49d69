"""The public library calls on inputs at and past their edges: plain refusals naming the argument, and the
behaviours the reference review asked for (memory budget, settings, half precision, frozen parameters,
BatchNorm markers), each against an exact float64 reference."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from flatfl.analysis import hessian_density, hessian_eigenvalues, hessian_trace, loss_surface, objective, sharpness


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))


def _data(n: int = 60) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g)


def _hessian(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Dense float64 Hessian of the mean cross-entropy w.r.t. the trainable parameters (frozen: constants)."""
    m = copy.deepcopy(model).double()
    names = [n for n, p in m.named_parameters() if p.requires_grad]
    fixed = {n: p.detach() for n, p in m.named_parameters() if not p.requires_grad}
    shapes = [dict(m.named_parameters())[n].shape for n in names]
    w = torch.cat([dict(m.named_parameters())[n].detach().reshape(-1) for n in names])

    def f(v: torch.Tensor) -> torch.Tensor:
        parts = torch.split(v, [s.numel() for s in shapes])
        params = {n: p.view(s) for n, p, s in zip(names, parts, shapes)}
        return F.cross_entropy(functional_call(m, {**params, **fixed}, (x.double(),)), y)

    return torch.autograd.functional.hessian(f, w)


def _cuda_gone(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def _lazy(m, d):
    return hessian_eigenvalues(nn.Sequential(nn.LazyLinear(3)), d)


BAD = [
    (lambda m, d: hessian_density(m, d, num_runs=0), ValueError, "num_runs must be an int >= 1, got 0"),
    (lambda m, d: hessian_density(m, d, num_steps=0), ValueError, "num_steps must be an int >= 1, got 0"),
    (lambda m, d: loss_surface(m, d, steps=1), ValueError, r"steps must be an int >= 2 \(points per axis\), got 1"),
    (lambda m, d: loss_surface(m, d, steps=-3), ValueError, "steps must be an int >= 2"),
    (lambda m, d: loss_surface(m, d, span=(1, 1)), ValueError, "span must be two finite numbers with low < high"),
    (lambda m, d: sharpness(m, d, rho=0.0), ValueError, "rho must be a finite number > 0, got 0.0"),
    (lambda m, d: sharpness(m, d, kind="adaptive", rho=-1.0), ValueError, "rho must be a finite number > 0"),
    (lambda m, d: sharpness(m, d, steps=0), ValueError, "steps must be an int >= 1, got 0"),
    (lambda m, d: sharpness(m, d, kind="average", num_samples=0), ValueError, "num_samples must be an int >= 1"),
    (lambda m, d: sharpness(m, d, kind="average", sigma=0), ValueError, "sigma must be a finite number > 0"),
    (lambda m, d: sharpness(m, d, kind="epsilon", eps=-1e-3), ValueError, "eps must be a finite number > 0"),
    (lambda m, d: sharpness(m, d, m=61), ValueError, r"m must be an int in \[1, 60\] \(the number of examples\)"),
    (lambda m, d: hessian_eigenvalues(m, d, seed=1.7), TypeError, "seed must be an int or a torch.Generator"),
    (lambda m, d: hessian_trace(m, d, seed=True), TypeError, "seed must be an int or a torch.Generator, got bool"),
    (lambda m, d: hessian_eigenvalues(m, d, tol=0), ValueError, "tol must be a finite number > 0"),
    (lambda m, d: hessian_trace(m, d, num_matvecs=-5), ValueError, "num_matvecs must be an int >= 6 for the adapt"),
    (lambda m, d: hessian_trace(m, d, estimator="hutchinson", num_matvecs=1.5), TypeError, "num_matvecs must be"),
    (lambda m, d: hessian_eigenvalues(m, d, hvp="nope"), ValueError, "hvp must be one of"),
    (lambda m, d: hessian_eigenvalues(m, d, dtype=torch.int32), TypeError, "dtype must be a floating torch.dtype"),
    (lambda m, d: objective(m, d, device="tpu0"), ValueError, "device='tpu0' is not a torch device"),
    (lambda m, d: objective(m, d, batch_size=0), ValueError, "batch_size must be an int >= 1, got 0"),
    (lambda m, d: objective(m, (d[0], d[1][:50])), ValueError, r"data=\(x, y\): x holds 60 examples but y 50"),
    (_lazy, ValueError, r"uninitialised lazy parameters \(0.weight, 0.bias\): run one forward pass"),
]


@pytest.mark.parametrize(("call", "kind", "message"), BAD)
def test_bad_arguments_are_refused_naming_the_argument_and_its_range(call, kind, message):
    with pytest.raises(kind, match=message):
        call(_mlp(), _data())


def test_cuda_without_cuda_is_one_clear_message(monkeypatch):
    _cuda_gone(monkeypatch)
    with pytest.raises(ValueError, match=r"device='cuda' but CUDA is not available here .*use device='cpu'"):
        hessian_eigenvalues(_mlp(), _data(), device="cuda")


def test_towards_models_of_other_shapes_or_spanning_no_plane_are_refused():
    a, b = _mlp(0), _mlp(1)
    other = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3))
    with pytest.raises(ValueError, match=r"towards\[0\]: parameter '0.weight' has shape \(6, 5\), the model's has"):
        loss_surface(a, _data(), dims=1, directions="models", towards=[other])
    with pytest.raises(ValueError, match="towards\\[0\\] has the same parameters as the model"):
        loss_surface(a, _data(), dims=1, directions="models", towards=[a])
    with pytest.raises(ValueError, match="span no plane"):  # was MKL's DGELSY message and an INTERNAL ASSERT
        loss_surface(a, _data(), dims=2, directions="models", towards=[b, copy.deepcopy(b)])
    with pytest.raises(ValueError, match="trajectory= and the model span no plane"):
        loss_surface(a, _data(), directions="pca", trajectory=[a, a.state_dict()])


def test_steps_are_points_per_axis_holding_the_model_and_the_model_towards():
    m, d = _mlp(), _data()
    np.testing.assert_array_equal(loss_surface(m, d, dims=1, steps=2).alphas, [-1.0, 0.0, 1.0])  # 0 added
    np.testing.assert_allclose(loss_surface(m, d, dims=1, steps=4).alphas, [-1, -1 / 3, 0, 1 / 3, 1], atol=1e-15)
    assert len(loss_surface(m, d, dims=1, steps=5).alphas) == 5
    b = _mlp(1)
    line = loss_surface(m, d, dims=1, directions="models", towards=[b], steps=4)  # -0.5, 1/6, 5/6, 1.5
    assert len(line.alphas) == 6 and 0.0 in line.alphas.tolist() and 1.0 in line.alphas.tolist()
    own = _eval_loss(b, *d)
    assert line.loss[line.alphas.tolist().index(1.0)] == pytest.approx(own, rel=1e-6)


def test_one_sample_or_one_group_has_a_nan_stderr_without_warnings():
    m, d = _mlp(), _data()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        avg = sharpness(m, d, kind="average", num_samples=1)
        whole = sharpness(m, d, m=60, steps=3)
    assert np.isfinite(avg.value) and np.isnan(avg.stderr)
    assert np.isnan(whole.stderr)
    assert whole.value == pytest.approx(sharpness(m, d, steps=3).value, rel=1e-5)  # one group: all the data


def test_trace_and_density_choose_the_hvp_within_the_memory_budget():
    m, (x, y) = _mlp(), _data()
    H = _hessian(m, x, y)
    n, exact = H.shape[0], torch.linalg.eigvalsh(H).numpy()
    kw = {"dtype": torch.float64, "batch_size": 16}
    tiny = hessian_trace(m, (x, y), estimator="hutch++", num_matvecs=3 * n + 3, memory_budget=1000, **kw)
    assert tiny.settings["hvp"] == "double-backward"
    assert hessian_trace(m, (x, y), num_matvecs=9, **kw).settings["hvp"] == "cached"
    assert tiny.estimate == pytest.approx(float(H.trace()), rel=1e-9)  # the sketch spans R^n: exact
    d = hessian_density(m, (x, y), num_runs=1, num_steps=n, memory_budget=1000, **kw)
    assert d.settings["hvp"] == "double-backward"
    assert d.support == pytest.approx((exact[0], exact[-1]), rel=1e-7, abs=1e-10)
    e = hessian_eigenvalues(m, (x, y), tol=1e-10, memory_budget=1000, **kw)
    assert e.settings["hvp"] == "double-backward" and e.values[0] == pytest.approx(exact[-1], rel=1e-9)


COMMON = {"seed": 5, "dtype": "float64", "device": "cpu", "num_examples": 60, "num_parameters": 51}


def test_every_result_records_seed_dtype_device_and_data_size():
    m, d = _mlp(), _data()
    kw = {"seed": 5, "dtype": torch.float64}
    results = [
        hessian_eigenvalues(m, d, **kw),
        hessian_trace(m, d, num_matvecs=9, **kw),
        hessian_density(m, d, num_runs=2, num_steps=4, **kw),
        *[sharpness(m, d, kind=k, steps=2, num_samples=2, **kw) for k in ("sam", "adaptive", "epsilon", "average")],
    ]
    settings = [r.settings for r in results] + [loss_surface(m, d, steps=2, **kw).description["settings"]]
    for s in settings:
        assert {k: s[k] for k in COMMON} == COMMON and s["loss"] == "cross_entropy"
    assert [s["kind"] for s in settings[3:7]] == ["sam", "adaptive", "epsilon", "average"]
    assert settings[3]["rho"] == 0.05 and settings[6]["num_samples"] == 2


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_half_precision_models_are_analysed_in_float32_unless_told(half):
    m, (x, y) = _mlp().to(half), _data()
    exact = float(torch.linalg.eigvalsh(_hessian(m, x, y))[-1])  # of the half weights, in float64
    r = hessian_eigenvalues(m, (x, y), tol=1e-8)
    assert r.settings["dtype"] == "float32" and r.values[0] == pytest.approx(exact, rel=1e-5)  # half: ~1e-3 off
    assert next(m.parameters()).dtype == half  # the model itself is left in half precision
    s = loss_surface(m, (x, y), dims=1, steps=2)
    ref = float(F.cross_entropy(copy.deepcopy(m).double()(x.double()), y))
    assert s.description["settings"]["dtype"] == "float32" and s.at_origin() == pytest.approx(ref, rel=1e-6)
    assert hessian_eigenvalues(m, (x, y), dtype=half, k=1).settings["dtype"] == str(half).replace("torch.", "")


def test_frozen_parameters_are_constants_of_the_loss():
    m, (x, y) = _mlp().double(), _data()
    m[0].requires_grad_(False)
    H = _hessian(m, x, y)
    assert H.shape[0] == 21  # the second layer only
    r = hessian_eigenvalues(m, (x, y), k=2, tol=1e-10)
    assert r.settings["num_parameters"] == 21
    np.testing.assert_allclose(r.values, torch.linalg.eigvalsh(H).numpy()[::-1][:2], rtol=1e-9)


class BNNet(nn.Module):
    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.lin, self.bn, self.head = nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Linear(5, 3)
        self.train()
        with torch.no_grad():
            for _ in range(3):
                self(torch.randn(16, 4) * (1 + seed) + seed)  # different running statistics per model
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.bn(self.lin(x))))


def _eval_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float(F.cross_entropy(copy.deepcopy(model).double().eval()(x.double()), y))


def test_batchnorm_markers_use_each_models_own_statistics_the_grid_the_analysed_ones():
    a, b, (x, y) = BNNet(0), BNNet(1), _data()
    line = loss_surface(a, (x, y), dims=1, directions="models", towards=[b], span=(0, 1), steps=3, dtype=torch.float64)
    hybrid = copy.deepcopy(b)  # b's weights with a's running statistics: what the grid evaluates at alpha = 1
    hybrid.bn.load_state_dict({k: v for k, v in a.bn.state_dict().items()})
    hybrid.bn.weight.data, hybrid.bn.bias.data = b.bn.weight.data.clone(), b.bn.bias.data.clone()
    assert line.loss[0] == pytest.approx(_eval_loss(a, x, y), rel=1e-12)
    assert line.loss[-1] == pytest.approx(_eval_loss(hybrid, x, y), rel=1e-12)
    assert line.markers[0]["loss"] == pytest.approx(_eval_loss(b, x, y), rel=1e-12)  # b's own loss
    assert abs(_eval_loss(b, x, y) - _eval_loss(hybrid, x, y)) > 1e-3  # the two differ: the test can fail
    params_only = {n: p for n, p in b.named_parameters()}  # no buffers given: the analysed model's are used
    line2 = loss_surface(a, (x, y), dims=1, directions="models", towards=[params_only], span=(0, 1), steps=3,
                         dtype=torch.float64)  # fmt: skip
    assert line2.markers[0]["loss"] == pytest.approx(_eval_loss(hybrid, x, y), rel=1e-12)
