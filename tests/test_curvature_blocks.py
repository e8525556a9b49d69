"""Blocks of vectors per pass (``matmat``), SLQ in lockstep and the adaptive trace, against exact references."""

import numpy as np
import pytest
import torch
from test_curvature import explicit_hessian, known_spectrum, tiny_problem

from flatfl.analysis.density import slq
from flatfl.analysis.distributed import ShardedOperator
from flatfl.analysis.lanczos import lanczos_tridiagonal, lanczos_tridiagonal_block
from flatfl.analysis.operators import DenseOperator, HessianOperator, ModelLoss, matmat
from flatfl.analysis.trace import TRACE_ESTIMATORS, adaptive_trace, hutchinson, hutchpp


@pytest.mark.parametrize("method", ["double-backward", "fwd-rev", "cached"])
@pytest.mark.parametrize("block_mode", ["batched", "loop", "fwd-rev", "auto"])
def test_matmat_equals_the_explicit_hessian_times_v(method, block_mode):
    model, x, y = tiny_problem()
    H, _ = explicit_hessian(model, x, y)
    op = HessianOperator(ModelLoss(model, x, y, batch_size=7), method=method, block_mode=block_mode, max_block=3)
    V = torch.randn(op.size, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for _ in range(3):  # auto: each way is timed on the first calls, then the fastest is kept
        HV = op.matmat(V)
        assert HV.shape == V.shape
        torch.testing.assert_close(HV, H @ V, rtol=1e-10, atol=1e-12)
    assert op.num_matvecs == 24
    stacked = torch.stack([op.matvec(v) for v in V.T], dim=1)
    torch.testing.assert_close(HV, stacked, rtol=1e-10, atol=1e-12)
    if method != "fwd-rev" and block_mode == "auto":
        assert op.block_seconds["batched"] and op.block_seconds["loop"] and op.block_seconds["fwd-rev"]
    if block_mode != "auto":
        assert [m for m, t in op.block_seconds.items() if t] == [block_mode]


def recorded_blocks(op: HessianOperator) -> list[tuple[str, int]]:
    """The (block mode, vectors) of every ``hvp_block`` call ``op`` makes from now on, appended as they happen."""
    calls, inner = [], op.objective.hvp_block
    op.objective.hvp_block = lambda V, method, mode: calls.append((mode, V.shape[0])) or inner(V, method, mode)
    return calls


def test_auto_times_each_way_on_equal_trial_blocks_then_cuts_the_rest_evenly():
    model, x, y = tiny_problem()
    H, _ = explicit_hessian(model, x, y)
    op = HessianOperator(ModelLoss(model, x, y, batch_size=7), method="double-backward", max_block=8)
    calls = recorded_blocks(op)
    g = torch.Generator().manual_seed(3)
    V = torch.randn(op.size, 12, dtype=torch.float64, generator=g)
    torch.testing.assert_close(op.matmat(V), H @ V, rtol=1e-10, atol=1e-12)
    assert calls[:3] == [("batched", 3), ("loop", 3), ("fwd-rev", 3)] and calls[3][1] == 3 and len(calls) == 4
    calls.clear()
    fastest = min(op.block_seconds, key=lambda m: np.mean(op.block_seconds[m]))  # per vector
    V = torch.randn(op.size, 17, dtype=torch.float64, generator=g)
    torch.testing.assert_close(op.matmat(V), H @ V, rtol=1e-10, atol=1e-12)
    assert [n for _, n in calls] == [6, 6, 5]  # 17 columns in blocks of at most 8: three equal ones
    assert calls[0][0] == fastest


def test_trial_blocks_stay_small_on_a_wide_call():
    """A slow way costs at most TRIAL_WIDTH vectors: 40 columns -> trials of 4 each, the rest in one block."""
    from flatfl.analysis.operators import TRIAL_WIDTH

    model, x, y = tiny_problem()
    H, _ = explicit_hessian(model, x, y)
    op = HessianOperator(ModelLoss(model, x, y, batch_size=7), method="double-backward", max_block=64)
    calls = recorded_blocks(op)
    V = torch.randn(op.size, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(op.matmat(V), H @ V, rtol=1e-10, atol=1e-12)
    assert TRIAL_WIDTH == 4
    assert calls[:3] == [("batched", 4), ("loop", 4), ("fwd-rev", 4)] and [n for _, n in calls[3:]] == [28]


def test_block_size_is_bounded_by_the_memory_budget():
    model, x, y = tiny_problem()
    roomy = HessianOperator(ModelLoss(model, x, y, batch_size=7), memory_budget=1e9, max_block=16)
    assert roomy.method == "cached" and roomy.block_size() == 16
    # budget for the kept graphs plus about 2.5 vectors' worth of one batch's products
    per_vector = roomy.batch_graph_bytes + 3 * roomy.size * 8
    tight = HessianOperator(
        ModelLoss(model, x, y, batch_size=7), memory_budget=roomy.graph_bytes_estimate + 2.5 * per_vector
    )
    assert tight.method == "cached" and tight.block_size() == 2
    assert tight.block_size("loop") == int(2.5 * per_vector // (3 * tight.size * 8))  # loops hold only vectors
    assert HessianOperator(ModelLoss(model, x, y), memory_budget=100).block_size() == 1


def test_matmat_of_operators_without_one_and_of_the_sharded_operator():
    A, _ = known_spectrum(list(np.linspace(-1, 3, 30)), 30)

    class MatvecOnly:
        size, dtype, device = 30, torch.float64, torch.device("cpu")

        def matvec(self, v):
            return A @ v

    V = torch.randn(30, 5, dtype=torch.float64)
    torch.testing.assert_close(matmat(MatvecOnly(), V), A @ V, rtol=1e-12, atol=1e-12)
    sharded = ShardedOperator(DenseOperator(A), n_local=10, n_total=10)  # one process: the local operator
    torch.testing.assert_close(sharded.matmat(V), A @ V, rtol=1e-12, atol=1e-12)
    assert sharded.num_matvecs == 5


def test_lockstep_lanczos_runs_equal_single_runs():
    spread, _ = known_spectrum([5.0, 4.0, 4.0] + list(np.linspace(-1, 1, 37)), 40)
    V0 = torch.randn(3, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    V0[2, 20:] = 0  # this run's Krylov space differs
    low_rank, _ = known_spectrum([2.0] * 20 + [-1.0] * 20, 40)  # two eigenvalues: invariant after 2 steps
    for A, steps, expected in ((spread, 15, 15), (low_rank, 30, 2)):
        op = DenseOperator(A)
        block = lanczos_tridiagonal_block(op, V0, steps)
        for v, (a, b, m) in zip(V0, block):
            a1, b1, m1 = lanczos_tridiagonal(op, v, steps)
            assert m == m1 == expected
            np.testing.assert_allclose(a, a1, rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(b, b1, rtol=1e-10, atol=1e-12)


def test_slq_in_blocks_equals_slq_one_run_at_a_time_on_a_network():
    model, x, y = tiny_problem()
    op = HessianOperator(ModelLoss(model, x, y, batch_size=7))
    one = slq(op, num_runs=5, num_steps=12, generator=torch.Generator().manual_seed(0), block=1)
    blocks = slq(op, num_runs=5, num_steps=12, generator=torch.Generator().manual_seed(0), block=3)
    assert one.num_matvecs == blocks.num_matvecs == 60
    for a, b in zip(one.nodes + one.weights, blocks.nodes + blocks.weights):
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-10)


def bulk_and_outliers(n=200):
    """Two known spectra: a wide bulk, and one whose top 10 eigenvalues hold >= 90% of ||H||_F^2."""
    g = np.random.default_rng(0)
    bulk = g.uniform(-0.5, 2.0, n)
    outliers = np.concatenate([np.linspace(100, 40, 10), g.uniform(-0.5, 2.0, n - 10)])
    assert (outliers[:10] ** 2).sum() / (outliers**2).sum() >= 0.9
    return known_spectrum(list(bulk), n, seed=1), known_spectrum(list(outliers), n, seed=2)


def test_adaptive_trace_is_hutchinson_on_a_bulk_and_hutchpp_on_outliers():
    (A_bulk, _), (A_out, _) = bulk_and_outliers()
    seed = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    ad = adaptive_trace(DenseOperator(A_bulk), num_matvecs=60, generator=seed())
    h = hutchinson(DenseOperator(A_bulk), num_matvecs=60, generator=seed())
    assert not ad.deflated and ad.remainder_share > 1 / 3
    assert ad.estimate == pytest.approx(h.estimate, rel=1e-12) and ad.stderr == pytest.approx(h.stderr, rel=1e-12)
    ad = adaptive_trace(DenseOperator(A_out), num_matvecs=60, generator=seed())
    hp = hutchpp(DenseOperator(A_out), num_matvecs=60, generator=seed())
    assert ad.deflated and ad.remainder_share < 0.2
    assert ad.estimate == pytest.approx(hp.estimate, rel=1e-12) and ad.stderr == pytest.approx(hp.stderr, rel=1e-12)


@pytest.mark.parametrize("name", list(TRACE_ESTIMATORS))
def test_trace_standard_errors_cover_the_true_trace(name):
    """95% intervals (estimate +- 1.96 stderr) over 200 seeded repeats cover the exact trace 90-98% of the time."""
    for A, lam in bulk_and_outliers():
        exact, op = float(lam.sum()), DenseOperator(A)
        hits = 0
        for s in range(200):
            r = TRACE_ESTIMATORS[name](op, num_matvecs=60, generator=torch.Generator().manual_seed(s))
            hits += abs(r.estimate - exact) <= 1.96 * r.stderr
        assert 0.90 <= hits / 200 <= 0.98, (name, hits)


def test_gpu_check_script_parses_lists_its_steps_and_refuses_without_cuda(tmp_path):
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "bench" / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    dry = subprocess.run(["bash", str(script), "--dry-run"], capture_output=True, text=True)
    assert dry.returncode == 0 and "pytest -m gpu" in dry.stdout and "curvature_blocks.py --device cuda" in dry.stdout
    assert int(dry.stdout.strip().splitlines()[-1].split()[-1].rstrip("s")) < 8 * 60  # limits sum under 8 minutes
    if not torch.cuda.is_available():
        out = subprocess.run(["bash", str(script), str(tmp_path / "t.md")], capture_output=True, text=True)
        assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1 and "no CUDA" in out.stderr
        assert not (tmp_path / "t.md").exists()
