"""Run folders with hostile files in them (issue #27, hostile pass 11): a lock file or metrics.jsonl that is a FIFO,
links at --overwrite's folders, clients files of another run. One line naming the file, exit 2, nothing outside
the run touched."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.conftest import TINY
from tests.conftest import copy_run as _copy
from tests.test_cli import _one_line_error


@pytest.mark.parametrize("kind", ["fifo", "symlink"])
def test_lock_file_that_is_not_a_file(cli, run3, tmp_path, kind):
    """A FIFO opens read-write without blocking but cannot be truncated (EINVAL); a symlink would have the
    lock (and the PID written into it) land outside the run. Both are named in one line, nothing follows."""
    run = _copy(run3, tmp_path)
    lock = run / ".flatfl.lock"
    lock.unlink(missing_ok=True)
    outside = tmp_path / "outside"
    os.mkfifo(lock) if kind == "fifo" else lock.symlink_to(outside)
    want = "a FIFO" if kind == "fifo" else "symbolic link"
    code, _, err = cli("train", "--resume", run, "--rounds", "4")
    _one_line_error(code, err, ".flatfl.lock", want)
    code, _, err = cli("prune", run, "--keep", "0", "--dry-run")
    _one_line_error(code, err, ".flatfl.lock", want)
    code, _, err = cli("report", run, "--out", tmp_path / "rep", "--no-hessian", "--trace-matvecs", "0",
                       "--sharpness", "none", "--slices", "0", "--no-surface")  # fmt: skip
    assert "Traceback" not in err
    assert not outside.exists()
    assert sorted(p.name for p in run.glob("round_*.safetensors")) == sorted(
        p.name for p in run3.glob("round_*.safetensors")
    )


@pytest.fixture(scope="module")
def other3(tmp_path_factory):
    from flatfl.cli import main

    out = tmp_path_factory.mktemp("other3") / "run"
    args = ["train", *TINY, "--algo", "fedmut", "--rounds", "3", "--save-clients", "--seed", "7", "--out", str(out)]
    assert main(args) == 0
    return out


@pytest.mark.parametrize("source", ["other run", "other round"])
def test_clients_file_of_another_run_or_round(cli, run3, other3, tmp_path, source):
    """Round files of another run are refused; so are clients files, by every reader (landscape --to,
    report's spread), and a clients file renamed to another round."""
    run = _copy(run3, tmp_path)
    src = other3 / "clients_0003.safetensors" if source == "other run" else run3 / "clients_0002.safetensors"
    shutil.copyfile(src, run / "clients_0003.safetensors")
    want = "different run" if source == "other run" else "its name round 3"
    code, _, err = cli("landscape", "--ckpt", run / "round_0003.safetensors", "--samples", "50", "--surface", "1d",
                       "--grid", "3", "--to", "returned:0", "--out", tmp_path / "l")  # fmt: skip
    _one_line_error(code, err, "clients_0003.safetensors", want)
    code, _, err = cli("report", run, "--out", tmp_path / "rep", "--samples", "50", "--no-hessian",
                       "--trace-matvecs", "0", "--sharpness", "none", "--slices", "0", "--no-surface",
                       "--no-relative-flatness", "--no-fisher-rao")  # fmt: skip
    _one_line_error(code, err, "clients_0003.safetensors", want)


def test_metrics_file_that_is_a_fifo_is_not_read_as_missing(cli, run3, tmp_path):
    """A FIFO at metrics.jsonl used to count as "no records": --resume rebuilt every round's record (training
    losses lost) and replaced the FIFO, exit 0. Now it is named in one line and the run is left as it was."""
    run = _copy(run3, tmp_path)
    (run / "metrics.jsonl").unlink()
    os.mkfifo(run / "metrics.jsonl")
    code, _, err = cli("train", "--resume", run, "--rounds", "4")
    _one_line_error(code, err, "metrics.jsonl", "a FIFO")
    assert (run / "metrics.jsonl").is_fifo() and not (run / "round_0004.safetensors").exists()


@pytest.mark.parametrize("name", [".flatfl-replaced", ".flatfl-replaced.partial", ".flatfl-replaced.delete"])
def test_overwrite_folders_that_are_links_touch_nothing_outside(cli, run3, tmp_path, name):
    """A link at one of --overwrite's folders: ``.partial`` used to move every file of the link's target into
    the run (emptying another run), the others ended in an rmtree traceback. Now one line, nothing moved."""
    run = _copy(run3, tmp_path)
    other = tmp_path / "other"
    shutil.copytree(run3, other)
    before = sorted(p.name for p in other.iterdir())
    (run / name).symlink_to(other)
    for args in (["train", "--resume", run, "--rounds", "4"], ["prune", run, "--keep", "0", "--dry-run"],
                 ["landscape", "--ckpt", run / "round_0003.safetensors", "--samples", "50", "--hessian"]):  # fmt: skip
        code, _, err = cli(*args)
        _one_line_error(code, err, name, "symbolic link")
    assert sorted(p.name for p in other.iterdir()) == before
    assert not (run / "round_0004.safetensors").exists()


def test_landscape_rerun_leaves_no_density_of_an_earlier_run(cli, run3, tmp_path):
    args = ["landscape", "--ckpt", run3 / "round_0003.safetensors", "--samples", "50", "--out", tmp_path / "l"]
    code, _, err = cli(*args, "--density", "--slq-runs", "2", "--slq-steps", "5")
    assert code == 0 and (tmp_path / "l" / "density.png").is_file(), err
    code, out, err = cli(*args, "--hessian", "--topk", "1")
    assert code == 0, err
    assert not (tmp_path / "l" / "density.png").exists() and not (tmp_path / "l" / "density.pdf").exists()
    assert "removed" in out and "density.png" in out
