"""The package as users install it: a wheel built from this tree, installed into a fresh virtual environment.

The fresh environment borrows the test environment's third-party packages (torch, numpy, ...) through a
``.pth`` line -- nothing is downloaded -- but not its editable flatfl: only the wheel's files are
importable, from a folder outside the repository, so a module that is not in the wheel cannot be found.
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-build-isolation",
            "--no-deps",
            "-q",
            "-w",
            str(tmp / "dist"),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (whl,) = (tmp / "dist").glob("flatfl-*.whl")
    env = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    py = env / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())  # fmt: skip
    borrowed = sysconfig.get_paths()["purelib"]  # torch & co. of the test environment; its .pth files stay unread
    (site / "borrowed.pth").write_text(borrowed + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(whl)],
        check=True,
        capture_output=True,
    )
    return whl, py, env


def _run(py: Path, code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(py), "-c", code], capture_output=True, text=True, cwd=cwd, timeout=600)


def test_wheel_holds_flatfl_analysis_and_no_top_level_analysis(wheel_env):
    whl, _, _ = wheel_env
    names = zipfile.ZipFile(whl).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"flatfl", whl.name.split("-")[0] + "-" + whl.name.split("-")[1] + ".dist-info"}, tops
    for needed in ("flatfl/analysis/api.py", "flatfl/analysis/py.typed", "flatfl/py.typed", "flatfl/data/digits.csv.gz",
                   "flatfl/runs/foreign.py"):  # fmt: skip
        assert needed in names, needed


def test_installed_wheel_imports_runs_the_api_and_the_cli(wheel_env, tmp_path):
    _, py, env = wheel_env
    code = "\n".join(
        [
            "import flatfl, flatfl.analysis as fa, torch, importlib.util",
            f"assert flatfl.__file__.startswith({str(env)!r}), flatfl.__file__",
            "assert importlib.util.find_spec('analysis') is None, 'a top-level analysis is importable'",
            "m = torch.nn.Linear(3, 2); x, y = torch.randn(20, 3), torch.randint(0, 2, (20,))",
            "print(fa.hessian_eigenvalues(m, (x, y)).values[0] > 0)",
        ]
    )
    proc = _run(py, code, tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == "True", proc.stderr[-2000:]
    cli = subprocess.run([str(py), "-m", "flatfl", "--version"], capture_output=True, text=True, cwd=tmp_path)
    assert cli.returncode == 0 and cli.stdout.strip().endswith("0.1.0"), cli.stderr
    train = subprocess.run(
        [str(py), "-m", "flatfl", "train", "--dataset", "digits", "--clients", "4", "--rounds", "1",
         "--local-epochs", "1", "--no-progress", "--out", str(tmp_path / "run")],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert train.returncode == 0, train.stderr[-2000:]
    land = subprocess.run(
        [str(py), "-m", "flatfl", "landscape", "--ckpt", str(tmp_path / "run" / "round_0001.safetensors"),
         "--samples", "50", "--hessian", "--topk", "1", "--tol", "1e-2"],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert land.returncode == 0, land.stderr[-2000:]
