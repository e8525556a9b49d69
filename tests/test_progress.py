"""The solvers' progress callbacks: one call per unit of work, ending at done == total == the work done,
and the same numbers with and without a callback."""

from __future__ import annotations

import pytest
import torch

from flatfl.analysis.density import slq
from flatfl.analysis.lanczos import lanczos
from flatfl.analysis.operators import DenseOperator
from flatfl.analysis.sharpness import adaptive_sharpness, average_sharpness, epsilon_sharpness, sam_sharpness
from flatfl.analysis.trace import adaptive_trace, hutchinson, hutchpp
from tests.test_sharpness import Quadratic, W, spd


class Calls(list):
    def __call__(self, done: int, total: int) -> None:
        self.append((done, total))

    def check(self, work: int) -> None:
        assert self and self[-1] == (work, work), self[-3:]
        dones = [d for d, _ in self]
        assert dones == sorted(dones) and all(d <= t for d, t in self), self


def _op(n=40):
    values = torch.linspace(-1.0, 10.0, n, dtype=torch.float64)
    return DenseOperator(spd(values.tolist(), seed=1))


def test_lanczos_reports_every_matvec():
    calls = Calls()
    r = lanczos(_op(), k=3, smallest=True, tol=1e-8, progress=calls, generator=torch.Generator().manual_seed(0))
    calls.check(r.num_matvecs)
    assert len(calls) == r.num_vectors + 1  # one per Lanczos step, then (done, done) with the residual matvecs
    plain = lanczos(_op(), k=3, smallest=True, tol=1e-8, generator=torch.Generator().manual_seed(0))
    assert r.values.tolist() == plain.values.tolist()


@pytest.mark.parametrize("estimator", [hutchinson, hutchpp, adaptive_trace])
def test_trace_estimators_report_their_matvecs(estimator):
    calls = Calls()
    r = estimator(_op(), num_matvecs=60, generator=torch.Generator().manual_seed(0), progress=calls)
    calls.check(60)
    assert len(calls) >= 5 and all(t == 60 for _, t in calls)  # chunks: an ETA long before the end
    plain = estimator(_op(), num_matvecs=60, generator=torch.Generator().manual_seed(0))
    assert r.estimate == pytest.approx(plain.estimate, rel=1e-12)


def test_slq_reports_each_lanczos_step():
    calls = Calls()
    d = slq(_op(), num_runs=3, num_steps=8, generator=torch.Generator().manual_seed(0), block=2, progress=calls)
    calls.check(d.num_matvecs)
    assert d.num_matvecs == 24 and calls[0] == (2, 24)  # two runs in lockstep: two matvecs a step


@pytest.mark.parametrize(
    ("measure", "kwargs", "work"),
    [
        (sam_sharpness, {"rho": 0.1, "steps": 4}, 6),
        (adaptive_sharpness, {"rho": 0.1, "steps": 3}, 5),
        (average_sharpness, {"sigma": 0.1, "num_samples": 7}, 7),
    ],
)
def test_sharpness_reports_its_loss_evaluations(measure, kwargs, work):
    calls = Calls()
    measure(
        Quadratic(spd([1.0, 2, 3, 4, 5, 6]), W), generator=torch.Generator().manual_seed(0), progress=calls, **kwargs
    )
    calls.check(work)
    assert len(calls) == work


def test_epsilon_sharpness_reports_each_evaluation():
    calls = Calls()
    r = epsilon_sharpness(Quadratic(spd([1.0, 2, 3, 4, 5, 6]), W), eps=0.1, progress=calls,
                          generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert len(calls) == r.num_loss_evals - 1  # every L-BFGS-B evaluation (the first loss is not one)
    assert [d for d, _ in calls] == list(range(1, len(calls) + 1))


def test_cli_bars_only_on_a_terminal(monkeypatch):
    import io
    import sys

    from flatfl.runs.curvature import tqdm_bars

    with tqdm_bars("trace (HVPs)") as progress:
        assert progress is None  # pytest's stderr is not a terminal: no bar, no callback, no extra work

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stderr", Terminal())
    with tqdm_bars("trace (HVPs)") as progress:
        progress(3, 12)
        progress(12, 12)
    assert "trace (HVPs)" in sys.stderr.getvalue() and "12/12" in sys.stderr.getvalue()


def test_federated_view_has_a_bar_per_lanczos_run(tiny):
    """``--federated``: one bar per Lanczos run (the global top eigenvector, each client at the global
    model and at its returned model), each fed the run's HVP counts."""
    from contextlib import contextmanager

    from flatfl.runs.federated import federated_view
    from flatfl.runs.landscape import LandscapeSettings
    from flatfl.runs.problem import of_checkpoint

    run = tiny("fed", "--save-clients", rounds=1)
    settings = LandscapeSettings(samples=60, federated=True, clients="sampled", tol=1e-3)
    calls: dict[str, list[tuple[int, int]]] = {}

    @contextmanager
    def bars(desc: str):
        calls[desc] = []
        yield lambda done, total: calls[desc].append((done, total))

    view = federated_view(of_checkpoint(run / "round_0001.safetensors", settings), settings, None, lambda s: None, bars)
    clients = [row["client"] for row in view["clients"]]
    want = ["federated: global top eigenvector (HVPs)"]
    want += [
        f"federated: client {c} at {m} (HVPs)" for c in clients for m in ("the global model", "its returned model")
    ]
    assert list(calls) == want and clients
    for row in view["clients"]:
        counted = sum(calls[f"federated: client {row['client']} at {m} (HVPs)"][-1][0]
                      for m in ("the global model", "its returned model"))  # fmt: skip
        assert counted == row["num_hvps"]
