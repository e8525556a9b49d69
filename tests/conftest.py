from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest
import torch

from flatfl.cli import main

# A run small enough for tests: 6 clients, m = 3 per round (odd: exercises FedMut's plain slot).
ROOT = Path(__file__).resolve().parents[1]

TINY = [
    "--dataset",
    "digits",
    "--clients",
    "6",
    "--frac",
    "0.5",
    "--local-epochs",
    "1",
    "--dirichlet",
    "0.5",
    "--lr",
    "0.05",
    "--no-progress",
]


@pytest.fixture
def cli(capsys):
    """Run ``flatfl`` in-process; return (exit code, stdout, stderr)."""

    def run(*args: str | Path) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.fixture
def tiny(cli, tmp_path):
    """Train a tiny run into tmp_path/name and return its directory."""

    def run(name: str, *extra: str, rounds: int = 3, algo: str = "fedmut") -> Path:
        out = tmp_path / name
        code, _, err = cli("train", *TINY, "--algo", algo, "--rounds", str(rounds), "--out", out, *extra)
        assert code == 0, err
        return out

    return run


def train_pair(root: Path, rounds: int, *extra: str) -> Path:
    """FedAvg and FedMut on :data:`TINY` for ``rounds`` rounds (``extra``: more train flags), in ``root/fedavg``
    and ``root/fedmut``; returns ``root``."""
    for algo in ("fedavg", "fedmut"):
        assert main(["train", *TINY, "--rounds", str(rounds), "--algo", algo, *extra, "--out", str(root / algo)]) == 0
    return root


def assert_same_rounds(a: Path, b: Path, rounds: int, atol: float = 0.0) -> None:
    """Rounds 0..rounds of two run directories hold the same tensors (bit for bit with atol=0)."""
    from flatfl import checkpoint as ckpt

    for r in range(rounds + 1):
        sa, _ = ckpt.load_round(ckpt.round_path(a, r))
        sb, _ = ckpt.load_round(ckpt.round_path(b, r))
        assert sa.keys() == sb.keys(), r
        for k in sa:
            torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=atol, msg=f"round {r} {k}")


@pytest.fixture(scope="module")
def run3(tmp_path_factory):
    """A 3-round FedMut run with its client models (TINY), trained once per test module; copy it before editing."""
    from flatfl.cli import main

    out = tmp_path_factory.mktemp("run3") / "run"
    assert main(["train", *TINY, "--algo", "fedmut", "--rounds", "3", "--save-clients", "--out", str(out)]) == 0
    return out


def copy_run(run: Path, tmp_path: Path) -> Path:
    """A copy of ``run`` under ``tmp_path``/copy, to damage without touching the shared one."""
    out = tmp_path / "copy"
    shutil.copytree(run, out)
    return out


def invariance_bench():
    """bench/invariance_table.py as a module, loaded once (dataclasses resolve the module by name)."""
    if "invariance_table" in sys.modules:
        return sys.modules["invariance_table"]
    spec = importlib.util.spec_from_file_location("invariance_table", ROOT / "bench" / "invariance_table.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["invariance_table"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def forked():
    """Real ``python -m flatfl`` processes forked from one that imported flatfl once (tests/forkserver.py): a kill
    test's process ends on its own, without paying the interpreter's start-up each time."""
    from tests.forkserver import ForkServer

    server = ForkServer()
    yield server
    server.close()
