from __future__ import annotations

from pathlib import Path

import pytest

from flatfl.cli import main

# A run small enough for tests: 6 clients, m = 3 per round (odd: exercises FedMut's plain slot).
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
