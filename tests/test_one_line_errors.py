"""Cases that used to end in a traceback: one line naming the file or flag, exit 2; Ctrl-C."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time

import pytest

from flatfl import checkpoint as ckpt
from tests.conftest import TINY
from tests.test_cli import _one_line_error
from tests.test_faults import flatfl_proc


@pytest.fixture(scope="module")
def run3(tmp_path_factory):
    from flatfl.cli import main

    out = tmp_path_factory.mktemp("run3") / "run"
    assert main(["train", *TINY, "--algo", "fedmut", "--rounds", "3", "--save-clients", "--out", str(out)]) == 0
    return out


def _copy(run3, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(run3, out)
    return out


def test_ckpt_directory_names_its_latest_round(cli, run3):
    code, _, err = cli("landscape", "--ckpt", run3, "--hessian")
    _one_line_error(code, err, "is a directory", "round_0003.safetensors")


def test_round_in_file_differs_from_its_name(cli, run3, tmp_path):
    run = _copy(run3, tmp_path)
    tensors, meta = ckpt.load_tensors(run / "round_0003.safetensors")
    ckpt.save_tensors(run / "round_0003.safetensors", tensors, meta | {"round": 1})
    code, _, err = cli("landscape", "--ckpt", run / "round_0003.safetensors", "--hessian")
    _one_line_error(code, err, "round_0003.safetensors", "metadata say round 1, its name round 3")


def test_non_finite_checkpoint_is_named(cli, run3, tmp_path):
    run = _copy(run3, tmp_path)
    tensors, meta = ckpt.load_tensors(run / "round_0003.safetensors")
    key = sorted(tensors)[1]
    tensors[key] = tensors[key].clone()
    tensors[key].view(-1)[0] = float("nan")
    ckpt.save_tensors(run / "round_0003.safetensors", tensors, meta)
    code, _, err = cli("landscape", "--ckpt", run / "round_0003.safetensors", "--hessian")
    _one_line_error(code, err, "round_0003.safetensors", key, "NaN or Inf")
    code, _, err = cli("train", "--resume", run, "--rounds", "4")
    _one_line_error(code, err, "round_0003.safetensors", key, "NaN or Inf")
    assert "last finite" not in err


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--hessian", "--topk", "20000", "--max-vectors", "20000"], ["--topk 20000", "parameters"]),
        (["--surface", "1d", "--grid", "1"], ["--grid 1", "at least 2"]),
        (["--sharpness", "sam", "--m", "51"], ["--m 51", "at most the 50 analysed samples"]),
        (["--surface", "2d", "--grid", "100000000"], ["--grid 100000000", "GiB"]),
        (["--surface", "1d", "--surface-dirs", "interp", "--to", "mutant:\u00b2"], ["mutant:\u00b2"]),
    ],
)
def test_landscape_flags_out_of_range(cli, run3, args, needles):
    code, _, err = cli("landscape", "--ckpt", run3 / "round_0002.safetensors", "--samples", "50", *args)
    _one_line_error(code, err, *needles)


def test_cut_surface_cache_is_recomputed(cli, run3, tmp_path):
    args = ["landscape", "--ckpt", run3 / "round_0002.safetensors", "--samples", "50", "--surface", "1d"]
    code, _, err = cli(*args, "--grid", "3", "--out", tmp_path / "s")
    assert code == 0, err
    want = json.loads((tmp_path / "s" / "surface.json").read_text())
    for name in ("surface.npz", "surface.json"):
        path = tmp_path / "s" / name
        path.write_bytes(path.read_bytes()[:20])
        code, _, err = cli(*args, "--grid", "3", "--out", tmp_path / "s")
        assert code == 0, err
        assert json.loads((tmp_path / "s" / "surface.json").read_text())["points"] == want["points"]


def test_filesystem_errors_name_the_path(cli, tmp_path):
    (tmp_path / "file").write_text("x")
    code, _, err = cli("train", *TINY, "--rounds", "1", "--out", tmp_path / "file" / "run")
    _one_line_error(code, err, "file/run", "Not a directory")
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        code, _, err = cli("train", *TINY, "--rounds", "1", "--out", ro)
        _one_line_error(code, err, str(ro), "Permission denied")


def test_sigint_stops_and_prints_the_resume_command(cli, tmp_path):
    out = tmp_path / "run with space"
    proc = flatfl_proc("train", *TINY, "--rounds", "100000", "--out", out)
    deadline = time.monotonic() + 120
    while len(ckpt.read_metrics(out)) < 3 or not (out / ckpt.STATE_FILE).exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1].endswith(f"continue with: flatfl train --resume '{out}'"), err
    identity = json.loads((out / ckpt.RUN_JSON).read_text())["identity"]
    done = ckpt.load_state(out, identity)[0]
    assert [r["round"] for r in ckpt.read_metrics(out)] == list(range(done + 1))
    code, _, err = cli("train", "--resume", out, "--rounds", str(done + 1))
    assert code == 0, err
    assert [r["round"] for r in ckpt.read_metrics(out)] == list(range(done + 2))


def test_report_out_is_a_file(cli, run3, tmp_path):
    (tmp_path / "f").write_text("x")
    code, _, err = cli("report", run3, "--out", tmp_path / "f")
    _one_line_error(code, err, "--out", "is a file")


def test_debug_shows_the_traceback(tmp_path):
    from flatfl.cli import main
    from flatfl.errors import UserError

    assert main(["train", "--resume", str(tmp_path / "none")]) == 2
    with pytest.raises(UserError, match="does not exist"):
        main(["--debug", "train", "--resume", str(tmp_path / "none")])


def test_file_size_limit_is_one_line_and_the_run_resumes(cli, tmp_path):
    """A write that the OS refuses (here RLIMIT_FSIZE: EFBIG, as a full disk gives ENOSPC) stops the trainer with
    one line naming the file and the reason; the rounds already committed stay, and --resume finishes the run."""
    import resource

    def limit() -> None:  # in the child: clients files (3 clients x 2 x 55 kB) exceed 150 kB, round files do not
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (150_000, 150_000))

    out = tmp_path / "run"
    args = ["train", *TINY, "--algo", "fedmut", "--rounds", "3", "--out", out]
    proc = flatfl_proc(*args, "--save-clients", "2", preexec_fn=limit)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err
    lines = [s for s in err.strip().splitlines() if s.startswith("flatfl:")]
    assert len(lines) == 1 and "File too large" in lines[0] and "clients_0001" in lines[0], err
    assert "Traceback" not in err
    assert ckpt.list_rounds(out) == [0]  # round 0 committed; round 1 never was (its clients file failed)
    code, _, err = cli("train", "--resume", out, "--rounds", "3")
    assert code == 0, err
    assert ckpt.list_rounds(out) == [0, 1, 2, 3] and [m["round"] for m in ckpt.read_metrics(out)] == [0, 1, 2, 3]


@pytest.mark.parametrize("key", ["identity", "model"])
def test_landscape_on_a_run_json_without_a_key(cli, run3, tmp_path, key):
    out = _copy(run3, tmp_path)
    info = json.loads((out / "run.json").read_text())
    info.pop(key)
    (out / "run.json").write_text(json.dumps(info))
    code, _, err = cli("landscape", "--ckpt", out / "round_0003.safetensors", "--hessian", "--samples", "50")
    _one_line_error(code, err, "run.json", key)


@pytest.mark.parametrize("key", ["round", "algo", "algo_state", "run_identity"])
def test_state_metadata_without_a_key(cli, run3, tmp_path, key):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    out = _copy(run3, tmp_path)
    path = out / ckpt.STATE_FILE
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    inner = json.loads(meta[ckpt.META_KEY])
    inner.pop(key)
    meta[ckpt.META_KEY] = json.dumps(inner)
    save_file(load_file(str(path)), str(path), metadata=meta)
    code, _, err = cli("train", "--resume", out, "--rounds", "4", "--no-progress")
    _one_line_error(code, err, "state.safetensors")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--no-match", "--match-loss", "2"], "--no-match"),
        (
            ["--no-hessian", "--trace-matvecs", "0", "--sharpness", "none", "--slices", "0", "--no-surface"]
            + ["--no-spread"],
            "nothing to measure",
        ),
        (["--grid", "1"], "--grid 1"),
    ],
)
def test_report_flags_that_contradict_or_measure_nothing(cli, run3, tmp_path, args, needle):
    code, _, err = cli("report", run3, "--out", tmp_path / "r", *args)
    _one_line_error(code, err, needle)
    assert not (tmp_path / "r").exists()  # refused before anything is written
