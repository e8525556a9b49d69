"""The faster evaluation of many points (1D slices, surfaces' loop): the values of the code before it.

``random_slices(fast=True)`` sends the points of all directions through one plan, one point at a time on a
private model copy written in place (flatfl.analysis.private); ``fast=False`` is the code before (one
``evaluate_grid`` per direction, ``functional_call`` per batch). In float64 the two agree to 1e-12, give the
same widths, and the user's model is left as it was.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from flatfl.analysis.operators import ModelLoss
from flatfl.analysis.points import points_loss
from flatfl.analysis.slices import random_slices, symmetric_grid, width


class GreyCNN(nn.Module):
    """conv-relu-pool twice on one-channel 8x8 images, then a linear head (the demo's SmallCNN in small)."""

    def __init__(self, flatten_by_view: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.fc = nn.Linear(6 * 2 * 2, 3)
        self.flatten_by_view = flatten_by_view

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
        # .view() refuses a channels-last tensor: the private copy must fall back to functional_call
        return self.fc(x.view(x.shape[0], -1) if self.flatten_by_view else x.flatten(1))


class Tied(nn.Module):
    """Two layers sharing one weight (named_parameters lists it once)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(5, 5)
        self.b = nn.Linear(5, 5)
        self.b.weight = self.a.weight
        self.head = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.b(torch.tanh(self.a(x)))))


def _data(shape: tuple[int, ...], n: int = 48, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g), torch.randint(0, 3, (n,), generator=g)


def _model(cls: type[nn.Module], *args) -> nn.Module:
    torch.manual_seed(1)
    return cls(*args)


@pytest.mark.parametrize("flatten_by_view", [False, True])
def test_fast_slices_equal_the_per_direction_ones_in_float64(flatten_by_view):
    model = _model(GreyCNN, flatten_by_view).double()
    x, y = _data((1, 8, 8))
    obj = ModelLoss(model, x.double(), y, batch_size=16)
    ts = symmetric_grid(1.0, 4)
    new = random_slices(obj, ts, num_directions=3, seed=5, fast=True)
    old = random_slices(obj, ts, num_directions=3, seed=5, fast=False)
    np.testing.assert_allclose(new.loss, old.loss, rtol=1e-12, atol=0)
    np.testing.assert_allclose(new.delta, old.delta, rtol=0, atol=1e-12 * old.loss0)
    np.testing.assert_array_equal(new.accuracy, old.accuracy)
    assert new.loss0 == pytest.approx(old.loss0, rel=1e-12) and (new.delta[:, 4] == 0).all()
    assert np.ptp(old.loss) > 1e-3 * old.loss0  # the curves are not flat: a wrong point would show
    lined = [type(m).__name__ for m, _ in obj._private_model._first] if obj._private_model else []
    assert lined == ([] if flatten_by_view else ["Conv2d"])  # the first convolution combined along each line
    for tau in (0.01, 0.1):
        assert width(ts, new.mean, tau) == pytest.approx(width(ts, old.mean, tau), rel=1e-9)


def test_private_copy_keeps_tied_weights_and_leaves_the_model_alone():
    model = _model(Tied).double()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = _data((5,))
    obj = ModelLoss(model, x.double(), y, batch_size=20)
    g = torch.Generator().manual_seed(3)
    P = obj.flat() + 0.3 * torch.randn(4, obj.size, generator=g, dtype=torch.float64)
    new_loss, new_acc = points_loss(obj, P, False, private=True)
    old_loss, old_acc = points_loss(obj, P, False, private=False)
    torch.testing.assert_close(new_loss, old_loss, rtol=1e-12, atol=0)
    torch.testing.assert_close(new_acc, old_acc, rtol=0, atol=0)
    # a closed form for one point: the loss of the perturbed model itself
    ref = ModelLoss(model, x.double(), y, batch_size=20).loss(P[2])
    assert float(new_loss[2]) == pytest.approx(ref, rel=1e-12)
    assert obj._private_model  # the private copy was used (not the fallback)
    assert model.training and model.b.weight is model.a.weight
    assert not model._forward_hooks and not model.a._forward_hooks
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_fast_slices_are_bit_reproducible_in_float32():
    model = _model(GreyCNN)
    x, y = _data((1, 8, 8), n=64)
    runs = [
        random_slices(ModelLoss(model, x, y, batch_size=16), symmetric_grid(0.5, 3), num_directions=2, seed=2)
        for _ in range(2)
    ]
    np.testing.assert_array_equal(runs[0].loss, runs[1].loss)
    np.testing.assert_array_equal(runs[0].accuracy, runs[1].accuracy)


def test_a_forward_hook_keeps_functional_call():
    model = _model(GreyCNN).double()
    x, y = _data((1, 8, 8))
    batches = [{"img": x[i : i + 16].double(), "label": y[i : i + 16]} for i in range(0, 48, 16)]
    obj = ModelLoss(model, batches=batches, forward=lambda m, b: m(b["img"]), targets=lambda b: b["label"])
    plain = ModelLoss(model, x.double(), y, batch_size=16)
    ts = symmetric_grid(1.0, 2)
    hooked = random_slices(obj, ts, num_directions=2, seed=1)
    np.testing.assert_allclose(hooked.loss, random_slices(plain, ts, num_directions=2, seed=1).loss, rtol=1e-12)
    assert getattr(obj, "_private_model", None) is None  # never made: the hook may close over the user's model


def test_first_layer_combined_along_a_line_equals_the_point_in_float64():
    """On a line theta + t d the first layer's output is A + t B (computed once per direction): the same loss as
    the layer evaluated at the point, here for a linear first layer whose weight is tied to a later layer."""
    model = _model(Tied).double()
    x, y = _data((5,))
    obj = ModelLoss(model, x.double(), y, batch_size=20)
    ts = symmetric_grid(2.0, 3)
    new = random_slices(obj, ts, num_directions=2, seed=4, fast=True)
    old = random_slices(obj, ts, num_directions=2, seed=4, fast=False)
    first = obj._private_model._first
    assert [m for m, _ in first] == [obj._private_model.net.a]  # the line was used, on the input layer only
    np.testing.assert_allclose(new.loss, old.loss, rtol=1e-12, atol=0)
    np.testing.assert_array_equal(new.accuracy, old.accuracy)
    assert np.ptp(old.loss) > 1e-3 * old.loss0
