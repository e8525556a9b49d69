"""The public library API on models flatfl did not train: checked against dense float64 Hessians.

Each test builds a small model whose full Hessian of the mean loss is computed directly
(``torch.func.hessian`` of a plain function of the flat parameters, float64) and compares what
``flatfl.analysis`` returns for it -- whatever the loss object, the batching, the batch format.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import flatfl.analysis as fa
from flatfl.analysis import (
    hessian_density,
    hessian_eigenvalues,
    hessian_trace,
    loss_surface,
    objective,
    sharpness,
)


def _dense_hessian(model: nn.Module, loss_of_params) -> torch.Tensor:
    """float64 Hessian of ``loss_of_params(params_dict)`` w.r.t. the flat parameters."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    numels = [p.numel() for _, p in model.named_parameters()]
    w = torch.cat([p.detach().double().reshape(-1) for p in model.parameters()])

    def f(v: torch.Tensor) -> torch.Tensor:
        parts = torch.split(v, numels)
        return loss_of_params({n: p.view(s) for n, p, s in zip(names, parts, shapes)})

    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.MATH]):  # the fused attention kernels have no second derivative
        return torch.autograd.functional.hessian(f, w)


def _mlp(out: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, out))


def _data(n: int = 60, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g)


def _loader(x, y, batch_size=7, shuffle=True):
    ds = torch.utils.data.TensorDataset(x, y)
    return torch.utils.data.DataLoader(
        ds, batch_size=batch_size, shuffle=shuffle, generator=torch.Generator().manual_seed(3)
    )


def _snapshot(model: nn.Module) -> tuple[dict, list[bool]]:
    return {k: v.clone() for k, v in model.state_dict().items()}, [m.training for m in model.modules()]


def _unchanged(model: nn.Module, snap) -> bool:
    state, modes = snap
    same = all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    return same and modes == [m.training for m in model.modules()]


@pytest.mark.parametrize("loss", [nn.CrossEntropyLoss(), F.cross_entropy, lambda o, t: F.cross_entropy(o, t)])
def test_eigenvalues_of_any_mean_loss_match_the_dense_hessian(loss):
    model, (x, y) = _mlp().double(), _data()
    x = x.double()
    H = _dense_hessian(model, lambda p: F.cross_entropy(functional_call(model, p, (x,)), y))
    exact = torch.linalg.eigvalsh(H).numpy()
    r = hessian_eigenvalues(model, _loader(x, y), k=3, smallest=True, loss_fn=loss, tol=1e-8)
    np.testing.assert_allclose(r.values, exact[::-1][:3], rtol=1e-6)
    assert r.smallest == pytest.approx(exact[0], rel=1e-6)
    assert (r.residuals < 1e-6).all() and r.settings["num_examples"] == 60 and r.settings["k"] == 3


def test_mse_regression_eigenvalues_trace_and_density():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2)).double()
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(50, 4, generator=g).double(), torch.randn(50, 2, generator=g).double()
    H = _dense_hessian(model, lambda p: F.mse_loss(functional_call(model, p, (x,)), y))
    exact = torch.linalg.eigvalsh(H).numpy()
    data = list(zip(x.split(8), y.split(8)))  # uneven last batch: the bookkeeping must weigh it by its size
    r = hessian_eigenvalues(model, data, k=2, loss_fn=nn.MSELoss(), tol=1e-8)
    np.testing.assert_allclose(r.values, exact[::-1][:2], rtol=1e-6)
    t = hessian_trace(model, data, loss_fn=nn.MSELoss(), num_matvecs=120)
    assert abs(t.estimate - float(np.trace(H.numpy()))) < 4 * t.stderr + 1e-9
    d = hessian_density(model, data, loss_fn=nn.MSELoss(), num_runs=3, num_steps=H.shape[0])
    # full-length Lanczos: the nodes are the exact eigenvalues, the support spans the spectrum
    assert d.support[0] == pytest.approx(exact[0], abs=1e-6) and d.support[1] == pytest.approx(exact[-1], rel=1e-6)
    assert d.settings["num_runs"] == 3


class TinyTextClassifier(nn.Module):
    """A dict-batch model: token ids + attention mask -> one label (HuggingFace style)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(11, 4)
        self.attn = nn.MultiheadAttention(4, 1, batch_first=True)
        self.head = nn.Linear(4, 2)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.emb(input_ids)
        h, _ = self.attn(h, h, h, key_padding_mask=attention_mask == 0, need_weights=False)
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        return self.head((h * m).sum(1) / m.sum(1))


def _dict_batches(n: int = 24, length: int = 5):
    g = torch.Generator().manual_seed(4)
    ids = torch.randint(0, 11, (n, length), generator=g)
    mask = torch.ones(n, length, dtype=torch.long)
    mask[::3, -2:] = 0
    labels = torch.randint(0, 2, (n,), generator=g)
    batches = [
        {"input_ids": ids[i : i + 8], "attention_mask": mask[i : i + 8], "labels": labels[i : i + 8]}
        for i in range(0, n, 8)
    ]
    return batches, (ids, mask, labels)


def test_dict_batches_with_forward_and_targets_hooks():
    model = TinyTextClassifier().double()
    batches, (ids, mask, labels) = _dict_batches()
    H = _dense_hessian(model, lambda p: F.cross_entropy(functional_call(model, p, (ids, mask)), labels))
    exact = torch.linalg.eigvalsh(H).numpy()
    snap = _snapshot(model)
    r = hessian_eigenvalues(
        model,
        batches,
        k=2,
        tol=1e-8,
        forward=lambda m, b: m(b["input_ids"], b["attention_mask"]),
        targets=lambda b: b["labels"],
    )
    np.testing.assert_allclose(r.values, exact[::-1][:2], rtol=1e-6)
    s = loss_surface(
        model, batches, dims=1, steps=5, forward=lambda m, b: m(b["input_ids"], b["attention_mask"]),
        targets=lambda b: b["labels"],
    )  # fmt: skip
    direct = float(F.cross_entropy(model(ids, mask), labels))
    assert s.at_origin() == pytest.approx(direct, rel=1e-9)
    assert np.isfinite(s.accuracy).all()  # integer labels: accuracy is measured
    assert _unchanged(model, snap)


def test_several_inputs_via_tuple_batches():
    class TwoInputs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.a, self.b = nn.Linear(3, 2), nn.Linear(2, 2)

        def forward(self, u, v):
            return self.a(u) + self.b(v)

    model = TwoInputs().double()
    g = torch.Generator().manual_seed(5)
    u, v, t = (
        torch.randn(30, 3, generator=g).double(),
        torch.randn(30, 2, generator=g).double(),
        torch.randint(0, 2, (30,), generator=g),
    )
    H = _dense_hessian(model, lambda p: F.cross_entropy(functional_call(model, p, (u, v)), t))
    batches = [(u[i : i + 10], v[i : i + 10], t[i : i + 10]) for i in range(0, 30, 10)]
    r = hessian_eigenvalues(model, batches, k=1, tol=1e-8, forward=lambda m, b: m(b[0], b[1]), targets=lambda b: b[2])
    assert r.values[0] == pytest.approx(float(torch.linalg.eigvalsh(H)[-1]), rel=1e-6)


def test_the_model_its_buffers_and_mode_are_left_as_they_were():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.Dropout(0.5), nn.Linear(8, 3)
    )
    model[1].running_mean.fill_(0.3)
    model.train()
    model[5].eval()  # mixed modes must come back mixed
    x, y = torch.randn(20, 1, 4, 4), torch.randint(0, 3, (20,))
    snap = _snapshot(model)
    obj = objective(model, (x, y), batch_size=8)
    hessian_eigenvalues(obj, k=1)
    hessian_trace(obj, num_matvecs=9)
    for kind in ("sam", "adaptive", "epsilon", "average"):
        sharpness(obj, kind=kind, steps=2, num_samples=2)
    loss_surface(obj, steps=3)
    loss_surface(obj, dims=1, steps=3, directions="eigen")
    assert _unchanged(model, snap)


def test_streamed_data_give_the_same_numbers_and_loader_batches_are_kept():
    model, (x, y) = _mlp(), _data()
    held = objective(model, _loader(x, y, shuffle=False))
    streamed = objective(model, _loader(x, y, shuffle=False), stream=True)
    assert streamed.streamed and not held.streamed
    assert len(held.batches) == math.ceil(60 / 7)  # the loader's own batches, not concatenated and re-split
    v = torch.randn(held.size, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(fa.HessianOperator(streamed, method="double-backward").matvec(v),
                               fa.HessianOperator(held, method="double-backward").matvec(v))  # fmt: skip
    assert streamed.loss() == pytest.approx(held.loss(), rel=1e-6)


def test_a_shuffling_loader_gives_the_mean_over_all_examples():
    model, (x, y) = _mlp(), _data()
    direct = float(F.cross_entropy(model(x), y))
    assert objective(model, _loader(x, y, batch_size=11)).loss() == pytest.approx(direct, rel=1e-6)
    assert objective(model, (x, y), loss_fn=nn.CrossEntropyLoss()).loss() == pytest.approx(direct, rel=1e-6)


def test_eigen_surface_curvature_at_the_model_is_lambda_max():
    model, (x, y) = _mlp().double(), _data()
    x = x.double()
    lam = hessian_eigenvalues(model, (x, y), tol=1e-10).values[0]
    wn = float(torch.cat([p.detach().reshape(-1) for p in model.parameters()]).norm())
    h = 1e-3 / wn  # directions are unit eigenvectors times ||w||
    s = loss_surface(model, (x, y), dims=1, directions="eigen", span=(-h, h), steps=3)
    second = (s.loss[0] - 2 * s.loss[1] + s.loss[2]) / (h * wn) ** 2
    assert s.alphas[1] == 0.0 and second == pytest.approx(lam, rel=1e-4)


def test_models_surface_passes_through_both_models_and_pca_marks_the_trajectory():
    a, b, c = _mlp(seed=0), _mlp(seed=1), _mlp(seed=2)
    x, y = _data()
    s = loss_surface(a, (x, y), dims=2, directions="models", towards=[b, c.state_dict()], span=(0.0, 1.0), steps=3)
    marks = {m["name"]: m for m in s.markers}
    assert marks["model 1"]["coords"] == pytest.approx([1.0, 0.0], abs=1e-6)
    assert s.loss[2, 0] == pytest.approx(float(F.cross_entropy(b(x), y)), rel=1e-5)  # alpha=1, beta=0 is b
    assert marks["model 2"]["loss"] == pytest.approx(float(F.cross_entropy(c(x), y)), rel=1e-5)
    assert marks["model 2"]["off_plane"] < 1e-4
    p = loss_surface(a, (x, y), directions="pca", trajectory=[b.state_dict(), c.state_dict()], steps=5)
    assert [m["group"] for m in p.markers] == ["trajectory", "trajectory"]
    reach = max(abs(v) for m in p.markers for v in m["coords"])
    assert p.alphas[-1] >= reach  # the default span covers the trajectory


def test_results_are_frozen_and_plots_take_results_only(tmp_path):
    model, data = _mlp(), _data()
    r = hessian_eigenvalues(model, data)
    with pytest.raises(AttributeError):
        r.values = None  # frozen dataclass
    obj = objective(model, data)
    grid = fa.evaluate_grid(
        obj, fa.api.random_directions(obj, 2, torch.Generator().manual_seed(0)), [-1, 0, 1], [-1, 0, 1]
    )
    fig = fa.plot_surface(grid)  # no description, no markers: a plain grid still plots
    assert fig.axes
    written = fa.plot_surface(loss_surface(model, data, dims=1, steps=3), tmp_path / "line")
    assert all(p.stat().st_size > 0 for p in written)
    page = fa.page_html("t", [("surface", fa.surface_figures([("s", grid)])[0])])
    assert "Plotly.newPlot" in page and "<script src" not in page  # plotly.js inlined: opens offline


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda m, d: hessian_eigenvalues(m, None), "data is required"),
        (lambda m, d: hessian_eigenvalues(m, torch.zeros(3)), "pass (inputs, targets)"),
        (lambda m, d: hessian_eigenvalues(m, 5), "iterable of batches"),
        (lambda m, d: hessian_eigenvalues(objective(m, d), d), "already holds its data"),
        (lambda m, d: sharpness(m, d, kind="nope"), "kind must be one of"),
        (lambda m, d: loss_surface(m, d, directions="nope"), "directions must be one of"),
        (lambda m, d: loss_surface(m, d, directions="models", dims=2, towards=[m]), "needs 2 model"),
        (lambda m, d: loss_surface(m, d, directions="models", dims=1, towards=[{"x": 1}]), "lacks parameters"),
        (lambda m, d: hessian_trace(m, d, estimator="nope"), "estimator must be one of"),
        (lambda m, d: hessian_eigenvalues(m, [(d[0][:0], d[1][:0])]), "empty data set"),
    ],
)
def test_bad_input_is_a_plain_exception_with_the_fix(call, message):
    model, data = _mlp(), _data()
    with pytest.raises((ValueError, TypeError), match=message.replace("(", r"\(").replace(")", r"\)")):
        call(model, data)


def test_public_api_is_documented_and_typed():
    for name in fa.__all__:
        obj = getattr(fa, name)
        assert obj.__doc__, name
    import importlib.resources

    assert importlib.resources.files("flatfl.analysis").joinpath("py.typed").is_file()
