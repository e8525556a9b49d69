"""Issue #27's final hostile pass over the command line (session 12, helper hostile3): each test is a case the
pass found ending in a traceback, or accepted silently, on main as of b9e3f1e."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import TINY
from tests.test_cli import _one_line_error

FEDGEN = ["--algo", "fedgen", "--gen-epochs", "1", "--gen-iters", "1", "--gen-batch", "8", "--gen-hidden", "8"]


@pytest.mark.parametrize("flag", ["--gen-batch", "--gen-hidden", "--gen-noise"])
@pytest.mark.parametrize("value", [str(2**70), "1000001"])
def test_fedgen_sizes_beyond_a_tensor_dimension_are_one_line(cli, tmp_path, flag, value):
    """2**70 ended in torch's 'Overflow when unpacking long long' traceback after round 0 was written."""
    out = tmp_path / "run"
    code, _, err = cli("train", *TINY, *FEDGEN, "--rounds", "1", "--out", out, flag, value)
    _one_line_error(code, err, flag, value, "1,000,000")
    assert not out.exists()


REPORT_CHEAP = ["--at-rounds", "3", "--samples", "40", "--no-hessian", "--trace-matvecs", "0", "--sharpness", "none",
                "--no-match", "--no-fisher-rao", "--no-progress"]  # fmt: skip


def test_report_options_of_switched_off_sections_are_said_to_have_no_effect(cli, run3, tmp_path):
    """--grid with --no-surface, --spread-samples with --no-spread, --slice-radius/--widths with --slices 0 and
    --data-tol without --samples auto were ignored without a word."""
    off = ["--no-surface", "--grid", "5", "--span", "2", "--no-spread", "--spread-samples", "10", "--slices", "0",
           "--slice-radius", "2", "--widths", "0.5", "--data-tol", "0.1"]  # fmt: skip
    code, _, err = cli("report", run3, "--out", tmp_path / "r", *REPORT_CHEAP, *off)
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("flatfl: warning:")]
    assert warnings == [
        "flatfl: warning: --grid 5 has no effect: the loss surfaces are off (--no-surface)",
        "flatfl: warning: --span 2 has no effect: the loss surfaces are off (--no-surface)",
        "flatfl: warning: --spread-samples 10 has no effect: the spread is off (--no-spread)",
        "flatfl: warning: --slice-radius 2 has no effect: the 1D slices are off (--slices 0)",
        "flatfl: warning: --widths 0.5 has no effect: the 1D slices are off (--slices 0)",
        "flatfl: warning: --data-tol 0.1 has no effect: --samples is not auto",
    ]
    assert (tmp_path / "r" / "report.json").is_file()
    # a default given explicitly says nothing
    code, _, err = cli("report", run3, "--out", tmp_path / "r2", *REPORT_CHEAP, "--no-surface", "--grid", "21",
                       "--no-spread", "--spread-samples", "500", "--slices", "0")  # fmt: skip
    assert code == 0, err
    assert "warning" not in err


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--algo", "fedaux", "--distill-steps", "2", "--dp-delta", "0.1"], ["--dp-delta", "--dp-epsilon 0"]),
        (["--algo", "fedaux", "--distill-steps", "2", "--aux-pretrain-lr", "0.1"],
         ["--aux-pretrain-lr", "--aux-pretrain-steps 0"]),
        (["--cifar100-labels", "fine"], ["--cifar100-labels", "cifar100 only, not digits"]),
        (["--download"], ["--download", "digits"]),
        (["--clients-dtype", "bfloat16"], ["--clients-dtype", "no --save-clients"]),
    ],
)  # fmt: skip
def test_train_options_that_would_be_ignored_are_refused(cli, tmp_path, args, needles):
    """Each was accepted and had no effect on the run (recorded in run.json as if it had)."""
    out = tmp_path / "run"
    code, _, err = cli("train", *TINY, "--rounds", "1", "--out", out, *args)
    _one_line_error(code, err, *needles)
    assert not out.exists()


def test_partition_download_of_embedded_data_is_refused(cli, tmp_path):
    code, _, err = cli("partition", "--dataset", "digits", "--clients", "6", "--download", "--plot", tmp_path / "p.png")
    _one_line_error(code, err, "--download", "digits")


def test_resume_clients_dtype_of_a_run_without_client_files_is_refused(cli, tiny):
    run = tiny("r", rounds=1, algo="fedavg")
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    code, _, err = cli("train", "--resume", run, "--rounds", "2", "--clients-dtype", "bfloat16")
    _one_line_error(code, err, "--clients-dtype", "without --save-clients")
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--at-rounds", "2,,3"], "--at-rounds"),
        (["--at-rounds", "3,"], "--at-rounds"),
        (["--widths", "0.5,,1"], "--widths"),
        (["--sharpness", "sam,,epsilon"], "--sharpness sam,,epsilon"),
        (["--curvature", "ef,,ggn"], "--curvature ef,,ggn"),
    ],
)
def test_report_lists_with_an_empty_item_are_refused(cli, run3, tmp_path, args, needle):
    """'2,,3' measured rounds 2 and 3 and 'sam,,epsilon' two measures, without a word about the gap (--save-rounds
    and --keep already refused it)."""
    code, _, err = cli("report", run3, "--out", tmp_path / "r", *REPORT_CHEAP, *args)
    _one_line_error(code, err, needle, "empty item" if "rounds" in needle or "widths" in needle else "empty name")
    assert not (tmp_path / "r").exists()


def test_landscape_sharpness_with_an_empty_item_is_refused(cli, run3, tmp_path):
    code, _, err = cli("landscape", "--ckpt", run3 / "round_0003.safetensors", "--samples", "20",
                       "--sharpness", "epsilon,", "--out", tmp_path / "l")  # fmt: skip
    _one_line_error(code, err, "--sharpness epsilon,", "empty name")


def test_report_tensorboard_on_a_file_is_refused_before_measuring(cli, run3, tmp_path):
    """The refusal came after every measurement, with the report already written and exit code 2."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    code, _, err = cli("report", run3, "--out", tmp_path / "r", *REPORT_CHEAP, "--tensorboard", afile / "tb")
    _one_line_error(code, err, "--tensorboard", "is not a folder")
    assert not (tmp_path / "r").exists()


def test_partition_file_that_is_a_fifo_is_refused_without_blocking(tmp_path):
    """Reading a FIFO blocks until some process writes to it: flatfl train --partition-file FIFO hung for ever."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    proc = subprocess.run(
        [sys.executable, "-m", "flatfl", "train", "--dataset", "digits", "--clients", "6", "--rounds", "1",
         "--no-progress", "--partition-file", str(fifo), "--out",
         str(tmp_path / "run")],
        capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    _one_line_error(proc.returncode, proc.stderr, "--partition-file", "not a regular file (a FIFO)")
    assert not (tmp_path / "run").exists()


def test_diverged_fedgen_names_its_generator_step_size(cli, tmp_path):
    """A generator step of 2**70 diverges the run; the advice named only the local step's flags."""
    code, _, err = cli("train", *TINY, *FEDGEN, "--rounds", "3", "--gen-lr", str(2.0**70), "--out", tmp_path / "r")
    assert code == 1, err
    assert err.startswith("flatfl: diverged:") and "(fedgen: also --gen-lr)" in err, err


def test_resume_and_ckpt_of_a_fifo_or_device_say_what_it_is(cli, tmp_path):
    """'/dev/null does not exist' (it does: it is not a run folder, nor a checkpoint file)."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path in (fifo, "/dev/null"):
        code, _, err = cli("train", "--resume", path, "--rounds", "2")
        _one_line_error(code, err, f"--resume: {path} is not a folder")
        code, _, err = cli("landscape", "--ckpt", path, "--hessian", "--out", tmp_path / "l")
        _one_line_error(code, err, f"--ckpt: {path} is not a regular file")
