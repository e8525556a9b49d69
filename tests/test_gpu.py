"""CUDA paths against the CPU float64 references (marked ``gpu``; run by bench/gpu_check.sh).

Skipped where no CUDA device is visible (they have never run on this project's CPU machines)."""

import numpy as np
import pytest
import torch
from test_curvature import explicit_hessian, tiny_problem

from flatfl.analysis.density import slq
from flatfl.analysis.lanczos import lanczos
from flatfl.analysis.operators import HessianOperator, ModelLoss
from flatfl.analysis.trace import TRACE_ESTIMATORS

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize("block_mode", ["batched", "loop", "fwd-rev"])
@pytest.mark.parametrize("method", ["double-backward", "cached", "fwd-rev"])
def test_cuda_matmat_equals_the_explicit_hessian(method, block_mode):
    model, x, y = tiny_problem()
    H, _ = explicit_hessian(model, x, y)
    op = HessianOperator(ModelLoss(model, x, y, batch_size=7, device="cuda"), method=method, block_mode=block_mode)
    V = torch.randn(op.size, 6, dtype=torch.float64)
    torch.testing.assert_close(op.matmat(V.cuda()).cpu(), H @ V, rtol=1e-10, atol=1e-12)


def test_cuda_eigenvalues_trace_and_slq_match_the_cpu():
    model, x, y = tiny_problem()
    H, _ = explicit_hessian(model, x, y)
    evals = np.linalg.eigvalsh(H.numpy())
    op = HessianOperator(ModelLoss(model, x, y, device="cuda"))
    r = lanczos(op, k=2, tol=1e-10, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(r.values, evals[::-1][:2], rtol=1e-8)
    cpu = HessianOperator(ModelLoss(model, x, y))
    for name, est in TRACE_ESTIMATORS.items():
        a = est(op, num_matvecs=30, generator=torch.Generator().manual_seed(1))
        b = est(cpu, num_matvecs=30, generator=torch.Generator().manual_seed(1))
        assert a.estimate == pytest.approx(b.estimate, rel=1e-9), name
    d_gpu = slq(op, num_runs=3, num_steps=10, generator=torch.Generator().manual_seed(2))
    d_cpu = slq(cpu, num_runs=3, num_steps=10, generator=torch.Generator().manual_seed(2))
    for a, b in zip(d_gpu.nodes, d_cpu.nodes):
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-10)


def test_cuda_surface_points_match_the_cpu():
    from flatfl.analysis.surfaces import points_loss

    model, x, y = tiny_problem()
    P = torch.randn(4, sum(p.numel() for p in model.parameters()), dtype=torch.float64) * 0.1
    cpu = ModelLoss(model, x, y)
    P = P + cpu.flat()
    lc, ac = points_loss(cpu, P)
    lg, ag = points_loss(ModelLoss(model, x, y, device="cuda"), P.cuda())
    torch.testing.assert_close(lg.cpu(), lc, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ag.cpu(), ac)


@pytest.mark.parametrize("method", ["double-backward", "cached"])
def test_cuda_streamed_data_stay_on_the_host_and_match_the_explicit_hessian(method):
    model, x, y = tiny_problem()
    H, _ = explicit_hessian(model, x, y)
    batches = [(x[i : i + 7], y[i : i + 7]) for i in range(0, len(y), 7)]
    obj = ModelLoss(model, batches=batches, device="cuda", stream=True)
    assert obj.streamed and all(b[0].device.type == "cpu" for b in obj.batches)
    V = torch.randn(obj.size, 4, dtype=torch.float64)
    HV = HessianOperator(obj, method=method).matmat(V.cuda()).cpu()
    torch.testing.assert_close(HV, H @ V, rtol=1e-10, atol=1e-12)
    budget = ModelLoss(model, x, y, device="cuda", memory_budget=1.0)  # data larger than half the budget
    assert budget.streamed
