"""Per-layer curvature (``--per-layer``) on the Shakespeare LSTM's architecture and on a BatchNorm net, against the
diagonal blocks of the dense float64 Hessian (``torch.autograd.functional.hessian``): lambda_max by ``eigvalsh`` of
the block, the trace as the block's diagonal sum. Both work: the Hessian products (double backward) exist for
PyTorch's LSTM and for BatchNorm in eval mode (its running statistics are buffers, not blocks); the GGN's blocks
(``curvature="ggn"``) reach the LSTM through the reverse-over-reverse fallback (tests/test_curvature_rnn.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_interop import _flat_fn
from torch import nn

from flatfl.analysis import layer_curvature
from flatfl.analysis.curvatures import parameter_blocks
from flatfl.analysis.operators import ModelLoss
from flatfl.models.lstm import CharLSTM
from flatfl.runs.measures import REGISTRY, Context
from flatfl.runs.measures.per_layer import PER_BLOCK_MATVECS, PerLayerSettings
from flatfl.runs.problem import Problem
from flatfl.runs.settings import LandscapeSettings
from tests.conftest import invariance_bench

ROOT = Path(__file__).resolve().parents[1]


_bench = invariance_bench


def _lstm() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """CharLSTM made tiny: embedding 4x2, 2-layer LSTM(2), Linear(2, 4) -- 116 parameters in 11 tensors."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = CharLSTM(vocab_size=4, embed_dim=2, hidden=2, layers=2).double()
    return model, torch.randint(0, 4, (7, 4), generator=g), torch.randint(0, 4, (7,), generator=g)


def _cnn_bn() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The invariance bench's Conv2d - BatchNorm2d - ReLU - MaxPool - Linear net (trained; eps back at 1e-5)."""
    model, x, y = _bench().cnn_bn()
    model[1].eps = 1e-5
    return model, x, y


MODELS = {"lstm": _lstm, "cnn_bn": _cnn_bn}


def _dense_hessian(model, x, y) -> torch.Tensor:
    w, logits = _flat_fn(model.eval())  # the analysis runs BatchNorm in eval mode (its running statistics)
    return torch.autograd.functional.hessian(lambda f: F.cross_entropy(logits(f, x), y), w)


def _check(rows, blocks, H, exact_trace: bool, rel: float) -> None:
    assert [r["name"] for r in rows] == [n for n, _ in blocks]
    for r, (_, idx) in zip(rows, blocks):
        B = H[idx][:, idx]
        lam = float(torch.linalg.eigvalsh(B)[-1])
        assert r["lambda_max"] == pytest.approx(lam, rel=rel, abs=1e-9), r["name"]
        if exact_trace or len(idx) <= PER_BLOCK_MATVECS:
            assert r["trace"] == pytest.approx(float(B.trace()), rel=rel, abs=1e-9), r["name"]
        else:  # a stochastic estimate: within 4 of its own standard errors
            assert abs(r["trace"] - float(B.trace())) <= 4 * r["trace_stderr"] + 1e-9, r["name"]


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("group", ["parameter", "module"])
def test_per_layer_measure_is_the_dense_hessians_blocks(name, group):
    """The measure as ``flatfl landscape --per-layer`` runs it (float32, the landscape's tolerance, 30 products per
    block's trace): every block's lambda_max to float32 rounding, traces exact for blocks of at most 30 parameters.
    By module, the LSTM is one block (nn.LSTM holds both layers' tensors); by parameter, each tensor is its own."""
    model, x, y = MODELS[name]()
    H = _dense_hessian(model, x, y)
    obj = ModelLoss(model, x, y, batch_size=4, dtype=torch.float32)
    ctx = Context(LandscapeSettings())
    rec = REGISTRY["per_layer"].compute(Problem(model, obj, obj, {"data": {}}, name), PerLayerSettings(group), ctx)
    blocks = parameter_blocks(obj, group)
    _check(rec["blocks"], blocks, H, exact_trace=False, rel=1e-4)
    names = [r["name"] for r in rec["blocks"]]
    if name == "lstm":
        assert names == (["embed", "lstm", "fc"] if group == "module" else [n for n, _ in model.named_parameters()])
    else:
        assert ("1" if group == "module" else "1.weight") in names  # BatchNorm's scale is a block; its statistics not


@pytest.mark.parametrize("name", sorted(MODELS))
def test_per_layer_library_exact_in_float64(name):
    """The library function in float64 with a trace budget above every block's size: all traces exact."""
    model, x, y = MODELS[name]()
    H = _dense_hessian(model, x, y)
    obj = ModelLoss(model, x, y, batch_size=4, dtype=torch.float64)
    big = max(len(idx) for _, idx in parameter_blocks(obj, "module"))
    r = layer_curvature(obj, group="module", num_matvecs=big, tol=1e-10)
    _check(r.rows(), parameter_blocks(obj, "module"), H, exact_trace=True, rel=1e-8)


def test_per_layer_ggn_blocks_of_the_float32_lstm():
    """``curvature="ggn"``: the blocks of the GGN on the float32 LSTM (forward mode fails on oneDNN's LSTM; the
    operator falls back to reverse over reverse) equal the dense float64 GGN's blocks."""
    from test_curvature_rnn import _dense

    model, x, y = _lstm()
    G = _dense(model, x, y, "ggn")
    obj = ModelLoss(model, x, y, batch_size=4, dtype=torch.float32)
    r = layer_curvature(obj, group="module", curvature="ggn", num_matvecs=100, tol=1e-6)
    _check(r.rows(), parameter_blocks(obj, "module"), G, exact_trace=True, rel=1e-4)


def test_per_layer_blocks_under_a_layer_wise_rescaling():
    """w -> T w maps H to T^-1 H T^-1, so a block on which T is alpha is divided by alpha^2 and a block T leaves
    alone is unchanged: under the bench's layer-wise rescaling ((W_1, b_1) alpha, W_2 / alpha) the first layer's
    blocks shrink by alpha^2, W_2's grows by alpha^2, the rest (b_2, the output layer) keep their numbers. No
    per-layer number is invariant to the rescalings that touch its block (the spec claims none)."""
    bench = _bench()
    model, x, y = bench.mlp()
    alpha = 3.0
    rows = []
    for m in (model, bench.layer(model, alpha)):
        obj = ModelLoss(m, x, y, dtype=torch.float64)
        rows.append({r["name"]: r for r in layer_curvature(obj, num_matvecs=100, tol=1e-12).rows()})
    factor = {"0.weight": alpha**-2, "0.bias": alpha**-2, "2.weight": alpha**2, "2.bias": 1, "4.weight": 1, "4.bias": 1}
    assert set(factor) == set(rows[0])
    for name, f in factor.items():
        for key in ("lambda_max", "trace"):
            assert rows[1][name][key] == pytest.approx(f * rows[0][name][key], rel=1e-8), (name, key)
    assert REGISTRY["per_layer"].invariances == frozenset()
