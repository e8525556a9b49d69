"""fix5a: a file or folder this process may not read is said as a read, not as a refused write (real processes
run as a user the permissions apply to; the wording itself: tests/test_fix5a.py)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def one_run(tmp_path_factory):
    from flatfl.cli import main

    out = tmp_path_factory.mktemp("fix5a-read") / "run"
    args = ["train", "--dataset", "digits", "--clients", "6", "--frac", "0.5", "--local-epochs", "1", "--rounds", "1",
            "--no-progress", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    return out


def _as_nobody(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    """``flatfl ARGS`` as a user the permissions apply to (root reads everything): nobody under root."""
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [sys.executable, "-m", "flatfl", *args]
    if os.geteuid() == 0:
        cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
    return subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def open_tmp(tmp_path):
    """A folder every user may enter (pytest's tmp_path is root's own under root)."""
    import shutil
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="fix5a-", dir="/tmp"))
    d.chmod(0o777)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_a_file_or_folder_that_cannot_be_read_is_said_as_a_read(one_run, open_tmp):
    import shutil

    run = open_tmp / "run"
    shutil.copytree(one_run, run)
    for p in [run, *run.rglob("*")]:
        p.chmod(0o777 if p.is_dir() else 0o666)
    (run / "round_0001.safetensors").chmod(0o000)
    proc = _as_nobody(open_tmp, "landscape", "--ckpt", str(run / "round_0001.safetensors"), "--hessian",
                      "--samples", "20", "--out", str(open_tmp / "l"))  # fmt: skip
    err = proc.stderr
    assert proc.returncode == 2 and err.count("\n") == 1 and "cannot write" not in err, err
    assert err.startswith(f"flatfl: error: {run / 'round_0001.safetensors'}: cannot read (Permission denied); ")
    assert "fix its permissions" in err and "free space" not in err, err
    run.chmod(0o700)  # a run folder nobody may enter
    proc = _as_nobody(open_tmp, "prune", str(run), "--keep", "1")
    err = proc.stderr
    assert proc.returncode == 2 and err.count("\n") == 1 and "cannot read (Permission denied)" in err, err
    assert "cannot write" not in err and "no such run directory" not in err, err
