"""The GGN and the empirical Fisher of models without forward-mode autodiff (PyTorch's LSTM kernels), against dense
float64 references, and "not measured" with the reason when neither product path works.

PyTorch has no forward-mode rule for its fused RNN kernels (``mkldnn_rnn_layer``, the CPU's float32 LSTM;
``_cudnn_rnn`` and ``_thnn_fused_lstm_cell`` on CUDA), so J v by ``torch.func.jvp`` raises NotImplementedError on
the Shakespeare model. The operators then form J v by reverse over reverse (d/du <J^T u, v>) on the native
kernels. References: ``dense_ggn`` / ``dense_ef`` of ``tests/test_interop.py`` (``torch.func.jacrev`` on all the
data at once), in float64, on the project's own ``CharLSTM`` made tiny.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_interop import _flat_fn, dense_ef, dense_ggn
from torch import nn

from flatfl.analysis.curvatures import EFOperator, GGNOperator
from flatfl.analysis.linear import DenseOperator
from flatfl.analysis.operators import ModelLoss
from flatfl.analysis.trace import TRACE_ESTIMATORS
from flatfl.models.lstm import CharLSTM
from flatfl.runs.measures import REGISTRY, Context
from flatfl.runs.measures.gauss_newton import CurvatureSettings
from flatfl.runs.problem import Problem
from flatfl.runs.settings import LandscapeSettings

OPS = {"ggn": GGNOperator, "ef": EFOperator}


def _lstm(seed: int = 0, hidden: int = 2) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The Shakespeare model's architecture (embedding, 2-layer LSTM, linear head on the last step), tiny (116
    parameters with ``hidden=2``); 7 sequences of 4 characters."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = CharLSTM(vocab_size=4, embed_dim=2, hidden=hidden, layers=2).double()
    return model, torch.randint(0, 4, (7, 4), generator=g), torch.randint(0, 4, (7,), generator=g)


def _dense(model, x, y, kind: str) -> torch.Tensor:
    """The dense float64 GGN or empirical Fisher of the mean cross-entropy, with Jacobians by a loop of reverse
    passes (``jacrev``'s vmap over the LSTM takes ~10 s, and refuses an ``autograd.Function`` without
    ``setup_context``)."""
    w, logits = _flat_fn(model)
    if kind == "ef":
        G = torch.autograd.functional.jacobian(lambda f: F.cross_entropy(logits(f, x), y, reduction="none"), w)
        return G.T @ G / len(x)
    J = torch.autograd.functional.jacobian(lambda f: logits(f, x), w)  # (N, C, P)
    p = torch.softmax(logits(w, x), dim=1)
    H_out = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    return torch.einsum("nca,ncd,ndb->ab", J, H_out, J) / len(x)


def test_the_loop_jacobians_are_the_interop_references():
    model, x, y = _lstm(hidden=1)
    torch.testing.assert_close(_dense(model, x, y, "ggn"), dense_ggn(model, x), rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(_dense(model, x, y, "ef"), dense_ef(model, x, y), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("kind", sorted(OPS))
def test_reverse_over_reverse_products_equal_the_dense_matrices(kind):
    """Forced onto the fallback path in float64 (where forward mode works too): the same products as the dense
    reference and as the forward-mode path, in unequal batches."""
    model, x, y = _lstm()
    ref = _dense(model, x, y, kind)
    obj = ModelLoss(model, x, y, batch_size=3, dtype=torch.float64)
    V = torch.randn(obj.size, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    forward, reverse = OPS[kind](obj), OPS[kind](obj)
    reverse.jv_method = "reverse"
    Fw, R = forward.matmat(V), reverse.matmat(V)
    assert forward.jv_method == "forward" and reverse.jv_method == "reverse"
    torch.testing.assert_close(R, ref @ V, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(Fw, ref @ V, rtol=1e-10, atol=1e-13)
    assert float((ref @ V).abs().max()) > 1e-3  # a real product, not zeros on both sides


@pytest.mark.parametrize("kind", sorted(OPS))
def test_float32_lstm_falls_back_and_matches_the_float64_reference(kind):
    """The report's default dtype: on the CPU oneDNN runs the float32 LSTM (no forward-mode rule); the operator
    switches to reverse over reverse, says why, and agrees with the dense float64 matrix to float32 rounding."""
    model, x, y = _lstm(1)
    ref = _dense(model, x, y, kind)
    obj = ModelLoss(model, x, y, batch_size=3, dtype=torch.float32)
    V = torch.randn(obj.size, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    op = OPS[kind](obj)
    M = op.matmat(V.float()).double()
    if torch.backends.mkldnn.is_available():
        assert op.jv_method == "reverse" and "mkldnn_rnn_layer" in op.forward_error
    assert float((M - ref @ V).abs().max() / (ref @ V).abs().max()) < 1e-5
    assert torch.backends.mkldnn.enabled == torch.backends.mkldnn.is_available()  # the switch restored


def _problem(model, x, y, dtype=torch.float32) -> Problem:
    obj = ModelLoss(model, x, y, batch_size=4, dtype=dtype)
    return Problem(model, obj, obj, {"data": {}}, "rnn")


@pytest.mark.parametrize("kind", sorted(OPS))
def test_the_measure_on_the_lstm_is_the_dense_matrix_lambda_max_and_trace(kind):
    """``flatfl landscape --curvature ggn,ef``'s record (float32, the default) on the LSTM: the dense float64
    matrix's lambda_max, and the trace estimator's value on the dense matrix with the same probes."""
    model, x, y = _lstm(2)
    ref = _dense(model, x, y, kind)
    ls = LandscapeSettings(tol=1e-6, trace_matvecs=30)
    ctx = Context(ls)
    rec = REGISTRY[kind].compute(_problem(model, x, y), CurvatureSettings(kind), ctx)
    assert rec["lambda_max"] == pytest.approx(float(torch.linalg.eigvalsh(ref)[-1]), rel=1e-4)
    same_probes = TRACE_ESTIMATORS[ls.trace_method](DenseOperator(ref), num_matvecs=30, generator=ctx.generator(903))
    assert rec["trace"] == pytest.approx(same_probes.estimate, rel=1e-4)
    assert abs(rec["trace"] - float(ref.trace())) < 4 * rec["trace_stderr"] + 1e-4 * float(ref.trace())
    assert "not_measured" not in rec and rec["jv"] in ("forward", "reverse")
    if torch.backends.mkldnn.is_available():
        assert rec["jv"] == "reverse" and "forward AD" in rec["forward_mode_error"]


class _OldStyleTanh(torch.autograd.Function):
    """tanh as an old-style ``autograd.Function`` (no ``setup_context``: torch.func refuses it) whose backward is
    made of differentiable operations."""

    @staticmethod
    def forward(ctx, x):
        y = torch.tanh(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g * (1 - y * y)


class _NoSecondDerivative(_OldStyleTanh):
    """The same with a first derivative only: the backward cannot be differentiated."""

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g * (1 - y * y)


class _Act(nn.Module):
    def __init__(self, fn: type[torch.autograd.Function]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn.apply(x)


def _mlp(fn: type[torch.autograd.Function]) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), _Act(fn), nn.Linear(4, 2)).double()
    return model, torch.randn(6, 3, dtype=torch.float64), torch.randint(0, 2, (6,))


@pytest.mark.parametrize("kind", sorted(OPS))
def test_an_operation_torch_func_refuses_falls_back_too(kind):
    """torch.func refuses an old-style autograd.Function (a RuntimeError, not NotImplementedError): the products
    fall back to reverse over reverse and are the dense matrix's."""
    model, x, y = _mlp(_OldStyleTanh)
    obj = ModelLoss(model, x, y, batch_size=4, dtype=torch.float64)
    op = OPS[kind](obj)
    M = op.matmat(torch.eye(obj.size, dtype=torch.float64))
    assert op.jv_method == "reverse" and "setup_context" in op.forward_error
    torch.testing.assert_close(M, _dense(model, x, y, kind), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("kind", sorted(OPS))
def test_not_measured_with_the_reason_when_no_product_works(kind):
    """A layer with neither a forward-mode rule nor a second derivative: reverse over reverse would silently drop
    its part of J v (autograd returns no error there); the adjoint check catches it, and the record says "not
    measured" and why (landscape.json), its report.csv / verdict columns are empty, and the model is unchanged."""
    model, x, y = _mlp(_NoSecondDerivative)
    before = [p.detach().clone() for p in model.parameters()]
    spec = REGISTRY[kind]
    rec = spec.compute(_problem(model, x, y, torch.float64), CurvatureSettings(kind), Context(LandscapeSettings()))
    assert rec["lambda_max"] is None and rec["trace"] is None
    assert "cannot differentiate the backward pass" in rec["not_measured"], rec
    why = rec["not_measured"]
    assert spec.row(rec, CurvatureSettings(kind)) == {f"{kind}_lambda_max": None, f"{kind}_lambda_max_residual": None,
                                                      f"{kind}_trace": None, f"{kind}_trace_stderr": None,
                                                      f"{kind}_lambda_max_not_measured": why,
                                                      f"{kind}_trace_not_measured": why}  # fmt: skip
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_fisher_rao_norm_of_the_float32_lstm():
    """The Fisher-Rao norm (in the report's default set) on the LSTM: J θ by reverse over reverse where forward mode
    fails; θᵀFθ and θᵀGθ with the dense float64 empirical Fisher and GGN."""
    from flatfl.analysis import fisher_rao_norm

    model, x, y = _lstm(3)
    w, _ = _flat_fn(model)
    obj = ModelLoss(model, x, y, batch_size=3, dtype=torch.float32)
    emp, mod = fisher_rao_norm(obj), fisher_rao_norm(obj, labels="model")
    assert emp.squared == pytest.approx(float(w @ _dense(model, x, y, "ef") @ w), rel=1e-5)
    assert mod.squared == pytest.approx(float(w @ _dense(model, x, y, "ggn") @ w), rel=1e-5)
    if torch.backends.mkldnn.is_available():
        assert emp.settings["jv"] == mod.settings["jv"] == "reverse"
    f64 = ModelLoss(model, x, y, batch_size=3, dtype=torch.float64)
    assert fisher_rao_norm(f64).settings["jv"] == "forward"  # PyTorch's native float64 LSTM has forward mode


def test_fisher_rao_not_measured_when_no_product_works():
    model, x, y = _mlp(_NoSecondDerivative)
    rec = REGISTRY["fisher_rao"].compute(_problem(model, x, y, torch.float64), None, Context(LandscapeSettings()))
    assert rec["squared_empirical"] is None and "cannot differentiate the backward pass" in rec["not_measured"]


@pytest.mark.parametrize("kind", sorted(OPS))
def test_out_of_memory_is_raised_not_taken_for_a_missing_rule(kind, monkeypatch):
    """A device out of memory in forward mode is not a missing forward-mode rule: no fallback (it needs more memory
    still), no "not measured" -- the error reaches the user (whose --batch-size / --samples can fix it)."""
    import flatfl.analysis.curvatures as curvatures

    def oom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(curvatures, "jvp", oom)
    _, x, y = _mlp(_OldStyleTanh)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    problem = _problem(model, x, y, torch.float64)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        REGISTRY[kind].compute(problem, CurvatureSettings(kind), Context(LandscapeSettings()))
