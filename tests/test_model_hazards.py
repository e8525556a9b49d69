"""Models and losses that used to give wrong numbers or change the model, against a dense float64 Hessian.

Each case came from probing the library on models outside flatfl's zoo: a model left in train mode
(BatchNorm, dropout), a forward that updates a buffer, ``torch.no_grad()`` inside forward, frozen parameters
with another analysis dtype, class-weighted and ``ignore_index`` cross-entropy, summed losses, and layers
without a second derivative.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from flatfl.analysis import hessian_eigenvalues, hessian_trace, loss_surface, objective
from flatfl.analysis.operators import HessianOperator, ModelLoss


def dense_hessian(model, x, loss_of_output):
    """Hessian of loss_of_output(model(x)) over the trainable parameters (flat, in order), eval mode, float64."""
    ref = copy.deepcopy(model).double().eval()
    names = [n for n, p in ref.named_parameters() if p.requires_grad]
    params = dict(ref.named_parameters())
    w0 = torch.cat([params[n].detach().reshape(-1) for n in names])

    def f(w):
        parts, i = dict(params), 0
        for n in names:
            k = params[n].numel()
            parts[n] = w[i : i + k].view(params[n].shape)
            i += k
        return loss_of_output(functional_call(ref, parts, (x.double(),)))

    return torch.autograd.functional.hessian(f, w0)


def state(model):
    return {k: v.clone() for k, v in model.state_dict(keep_vars=False).items()}


def same_state(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_model_in_train_mode_is_analysed_in_eval_mode_and_left_as_it_was():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Dropout(0.3), nn.Linear(4, 3))
    x, y = torch.randn(24, 3), torch.randint(0, 3, (24,))
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 3))  # running statistics away from their initial values
    model.train()
    before = state(model)
    H = dense_hessian(model, x, lambda out: F.cross_entropy(out, y))
    n = H.shape[0]
    for hvp in ("auto", "cached", "double-backward"):
        tr = hessian_trace(model, (x, y), num_matvecs=3 * n + 3, estimator="hutch++", dtype=torch.float64, hvp=hvp)
        assert tr.estimate == pytest.approx(float(H.trace()), rel=1e-10), hvp  # 3n+3 HVPs: exact
    assert same_state(before, state(model)) and model.training and all(m.training for m in model.modules())


def test_a_forward_that_updates_a_buffer_leaves_the_model_alone():
    class Counting(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 2)
            self.register_buffer("calls", torch.zeros(()))

        def forward(self, x):
            self.calls += 1
            return self.lin(x)

    model = Counting()
    x, y = torch.randn(10, 3), torch.randint(0, 2, (10,))
    hessian_eigenvalues(model, (x, y), k=1)
    loss_surface(model, (x, y), dims=1, steps=3)
    assert float(model.calls) == 0


class NoGradTrunk(nn.Module):
    def __init__(self, whole: bool = False):
        super().__init__()
        self.trunk, self.head, self.whole = nn.Linear(4, 5), nn.Linear(5, 3), whole

    def forward(self, x):
        with torch.no_grad():
            h = torch.tanh(self.trunk(x))
            if self.whole:
                return self.head(h)
        return self.head(h)


@pytest.mark.parametrize("hvp", ["auto", "double-backward", "fwd-rev"])
def test_no_grad_inside_forward_is_refused_not_answered_wrongly(hvp):
    torch.manual_seed(0)
    x, y = torch.randn(20, 4), torch.randint(0, 3, (20,))
    with pytest.raises(ValueError, match="torch.no_grad"):
        hessian_eigenvalues(NoGradTrunk(), (x, y), k=1, hvp=hvp)
    with pytest.raises(ValueError, match="does not depend on the model's parameters"):
        hessian_eigenvalues(NoGradTrunk(whole=True), (x, y), k=1, hvp=hvp)
    frozen = NoGradTrunk()
    frozen.trunk.requires_grad_(False)  # what the message says to do: then the trunk is a constant
    H = dense_hessian(frozen, x, lambda out: F.cross_entropy(out, y))
    top = hessian_eigenvalues(frozen, (x, y), k=1, dtype=torch.float64, hvp=hvp, tol=1e-12)
    assert top.values[0] == pytest.approx(float(torch.linalg.eigvalsh(H)[-1]), rel=1e-9)


def test_frozen_parameters_are_constants_in_any_analysis_dtype():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3))
    model[0].requires_grad_(False)
    x, y = torch.randn(16, 3), torch.randint(0, 3, (16,))
    H = dense_hessian(model, x, lambda out: F.cross_entropy(out, y))
    assert H.shape[0] == sum(p.numel() for p in model[2].parameters())
    top = hessian_eigenvalues(model, (x, y), k=1, dtype=torch.float64, tol=1e-12)
    assert top.values[0] == pytest.approx(float(torch.linalg.eigvalsh(H)[-1]), rel=1e-9)
    with pytest.raises(ValueError, match="requires_grad=False"):
        hessian_eigenvalues(model.requires_grad_(False), (x, y), k=1)


def test_class_weights_and_ignored_labels_give_the_whole_data_mean_whatever_the_batching():
    torch.manual_seed(2)
    model = nn.Linear(3, 3)
    x, y = torch.randn(30, 3), torch.randint(0, 3, (30,))
    y[::4] = -100  # HuggingFace-style padding labels
    w = torch.tensor([1.0, 3.0, 0.5])
    kept = y != -100
    cases = [  # the loss flatfl gets, and PyTorch's own mean of all the data in one batch (float64 weights)
        (F.cross_entropy, lambda out: F.cross_entropy(out, y)),
        (nn.CrossEntropyLoss(), lambda out: F.cross_entropy(out, y)),
        (
            nn.CrossEntropyLoss(weight=w, label_smoothing=0.1),  # float32 weights in a float64 analysis
            lambda out: F.cross_entropy(out, y, weight=w.double(), label_smoothing=0.1),
        ),
    ]
    for loss_fn, exact in cases:
        H = dense_hessian(model, x, exact)
        with torch.no_grad():
            value = float(exact(copy.deepcopy(model).double()(x.double())))
        for batch_size in (7, 30):
            obj = objective(model, (x, y), loss_fn=loss_fn, batch_size=batch_size, dtype=torch.float64)
            assert obj.loss() == pytest.approx(value, rel=1e-12)
            top = hessian_eigenvalues(obj, k=1, tol=1e-12)
            assert top.values[0] == pytest.approx(float(torch.linalg.eigvalsh(H)[-1]), rel=1e-9)
    surf = loss_surface(model, (x, y), dims=1, steps=3)
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y)[kept].double().mean())
    assert surf.at_origin("accuracy") == pytest.approx(acc, abs=1e-12)  # over the labelled examples


@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_a_loss_that_does_not_take_the_mean_is_refused(reduction):
    x, y = torch.randn(10, 3), torch.randint(0, 3, (10,))
    with pytest.raises(ValueError, match=f"reduction='{reduction}'"):
        objective(nn.Linear(3, 3), (x, y), loss_fn=nn.CrossEntropyLoss(reduction=reduction))
    per_example = objective(nn.Linear(3, 3), (x, y), loss_fn=lambda out, t: F.cross_entropy(out, t, reduction="none"))
    with pytest.raises(ValueError, match="not one number"):
        per_example.loss()


def test_inputs_it_cannot_take_get_plain_messages():
    x, y = torch.randn(10, 3), torch.randint(0, 3, (10,))
    with pytest.raises(ValueError, match="no parameters"):
        objective(nn.ReLU(), (x, y))
    with pytest.raises(ValueError, match="x holds 10 examples but y 7"):
        ModelLoss(nn.Linear(3, 3), x, y[:7])
    with pytest.raises(ValueError, match="batch_size must be an int >= 1, got 0"):
        ModelLoss(nn.Linear(3, 3), x, y, batch_size=0)
    with pytest.raises(ValueError, match="uninitialised lazy parameters"):
        objective(nn.LazyLinear(3), (x, y))
    with pytest.raises(ValueError, match="targets="):
        objective(nn.Linear(3, 3), [{"x": x, "y": y}])


def test_a_layer_without_a_second_derivative_is_named():
    class Bag(nn.Module):
        def __init__(self):
            super().__init__()
            self.bag, self.out = nn.EmbeddingBag(10, 4, mode="mean"), nn.Linear(4, 2)

        def forward(self, ids):
            return self.out(self.bag(ids))

    ids, y = torch.randint(0, 10, (8, 5)), torch.randint(0, 2, (8,))
    with pytest.raises(NotImplementedError, match="cannot be differentiated twice"):
        HessianOperator(objective(Bag(), (ids, y)))


def test_a_loss_that_is_not_finite_is_named_not_passed_to_the_eigensolver():
    from flatfl.analysis import hessian_density

    x, y = torch.randn(12, 3), torch.randint(0, 3, (12,))
    x[3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        hessian_eigenvalues(nn.Linear(3, 3), (x, y), k=1)  # was scipy's "array must not contain infs or NaNs"
    with pytest.raises(ValueError, match="NaN or inf"):
        hessian_density(nn.Linear(3, 3), (x, y), num_runs=2, num_steps=4)
    for estimator in ("hutchinson", "hutch++", "adaptive"):  # was a NaN estimate
        with pytest.raises(ValueError, match="NaN or inf"):
            hessian_trace(nn.Linear(3, 3), (x, y), estimator=estimator, num_matvecs=9)


def test_a_near_perfect_fit_in_float32_is_not_taken_for_a_no_grad_forward():
    """At per-example losses ~1e-6 float32 forms 1 - p in both autograd modes and g.v is rounding-sized: the
    reverse/forward-mode check must not refuse such a model (the calibration suite's small-batch checkpoint
    was refused), while the no_grad trunk above still is (same check, same precision)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
    x = torch.randn(64, 4)
    with torch.no_grad():
        y = net(x).argmax(1)
        net[2].weight.mul_(200.0)
        net[2].bias.mul_(200.0)
        obj = ModelLoss(net, x, y)
        assert float(obj.loss()) < 0.02  # a near-perfect fit: the probe's first two examples at ~1e-6 each
    obj.check_differentiable()  # no ValueError
    with pytest.raises(ValueError, match="torch.no_grad"):
        ModelLoss(NoGradTrunk(), x, torch.randint(0, 3, (64,))).check_differentiable()
