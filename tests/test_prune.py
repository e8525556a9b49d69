"""flatfl prune: thins a run's round files, never the ones a run needs, safely under a kill or a trainer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from flatfl import checkpoint as ckpt
from flatfl.faults import ENV, KILLED
from flatfl.rundir import RunDir
from flatfl.runs.run import Run
from tests.test_cli import _one_line_error
from tests.test_faults import flatfl_proc


@pytest.fixture(scope="module")
def run6(tmp_path_factory):
    """fedavg, rounds 0..6 every round, client files every round."""
    from flatfl.cli import main
    from tests.conftest import TINY

    out = tmp_path_factory.mktemp("prune") / "run"
    assert main(["train", *TINY, "--algo", "fedavg", "--rounds", "6", "--save-clients", "--out", str(out)]) == 0
    return out


@pytest.fixture
def copy(run6, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(run6, dst)
    return dst


def _clients(run):
    return sorted(int(p.stem.split("_")[1]) for p in run.glob("clients_*.safetensors"))


def test_prune_keeps_the_selection_round0_and_the_last(cli, copy, run6):
    metrics = (copy / ckpt.METRICS_FILE).read_bytes()
    code, out, err = cli("prune", copy, "--keep", "every:4,1", "--dry-run")
    assert code == 0, err
    assert "would delete 3 files" in out and ckpt.list_rounds(copy) == list(range(7))
    code, out, err = cli("prune", copy, "--keep", "every:4,1")
    assert code == 0, err
    assert ckpt.list_rounds(copy) == [0, 1, 4, 6]
    assert _clients(copy) == [1, 2, 3, 4, 5, 6]  # client files untouched without --keep-clients
    for r in (0, 1, 4, 6):  # what stays is unchanged
        assert ckpt.round_path(copy, r).read_bytes() == ckpt.round_path(run6, r).read_bytes()
    assert (copy / ckpt.METRICS_FILE).read_bytes() == metrics
    code, _, err = cli("prune", copy, "--keep", "5", "--keep-clients", "2-3")
    assert code == 0, err
    assert ckpt.list_rounds(copy) == [0, 6] and _clients(copy) == [2, 3]
    # the pruned run still resumes and extends, exactly as the straight run would
    code, _, err = cli("train", "--resume", copy, "--rounds", "7")
    assert code == 0, err
    assert ckpt.list_rounds(copy) == [0, 6, 7]


def test_prune_never_deletes_the_state_round_or_the_last_finite_round(copy):
    from flatfl.prune import Selection, protected_rounds, prune

    identity = json.loads((copy / ckpt.RUN_JSON).read_text())["identity"]
    # as a run killed after writing round 7's file, before its commit: the state is at round 6
    tensors, meta = ckpt.load_tensors(ckpt.round_path(copy, 6))
    ckpt.save_tensors(ckpt.round_path(copy, 7), tensors, meta | {"round": 7})
    (copy / ckpt.DIVERGED_JSON).write_text(json.dumps({"round": 4, "client": None, "last_finite_round": 3}))
    assert ckpt.load_state(copy, identity)[0] == 6
    assert protected_rounds(copy) == {0: "round 0", 7: "the last round", 6: "the round --resume continues from",
                                      3: "the last finite round"}  # fmt: skip
    prune(copy, Selection(), say=lambda s: None)
    assert ckpt.list_rounds(copy) == [0, 3, 6, 7]


def test_prune_killed_midway_leaves_a_consistent_run_and_finishes_when_run_again(cli, copy):
    proc = flatfl_proc("prune", copy, "--keep", "0", "--keep-clients", "6", env={ENV: "prune:delete:4"})
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == KILLED, err
    # clients files go first (1..5), then rounds: three deletions happened
    assert _clients(copy) == [4, 5, 6] and ckpt.list_rounds(copy) == list(range(7))
    assert not (copy / ".flatfl-replaced").exists() and not list(copy.glob(".*.tmp"))
    run = Run.open(copy)
    assert run.model(6) is not None and run.clients(6)[2]["round"] == 6
    code, _, err = cli("prune", copy, "--keep", "0", "--keep-clients", "6")
    assert code == 0, err
    assert ckpt.list_rounds(copy) == [0, 6] and _clients(copy) == [6]
    code, _, err = cli("train", "--resume", copy, "--rounds", "7")
    assert code == 0, err


def test_prune_bad_input_and_a_running_trainer_are_one_line(cli, copy, tmp_path):
    code, _, err = cli("prune", tmp_path / "missing", "--keep", "1")
    _one_line_error(code, err, "missing")
    (tmp_path / "empty").mkdir()
    code, _, err = cli("prune", tmp_path / "empty", "--keep", "1")
    _one_line_error(code, err, "run.json")
    assert not (tmp_path / "empty" / ".flatfl.lock").exists()
    code, _, err = cli("prune", copy, "--keep", "every:ten")
    _one_line_error(code, err, "--keep", "every:N")
    code, _, err = cli("prune", copy)
    _one_line_error(code, err, "--keep")
    for flag in ("--keep", "--keep-clients"):  # an empty list is refused, not read as the flag left off
        args = ["--keep", "0", flag, ""] if flag == "--keep-clients" else ["--keep", ""]
        code, _, err = cli("prune", copy, *args, "--dry-run")
        _one_line_error(code, err, flag, "''")
    lock = RunDir(copy)
    lock.open(create=False)  # a trainer holds the run
    try:
        code, _, err = cli("prune", copy, "--keep", "1")
        _one_line_error(code, err, "another flatfl process")
    finally:
        lock.close()
    assert ckpt.list_rounds(copy) == list(range(7))


# -- a range is never expanded past the files (fresh hostile pass) ----------------------------------------------------
def _capped(*args: object) -> tuple[int, str, str]:
    """``flatfl ARGS`` in a child whose heap is capped at 3 GB: a range expanded into a list of 10^11 rounds ends in a
    MemoryError there instead of taking the shared machine's memory."""
    import resource
    import subprocess
    import sys

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_DATA, (3 * 2**30, 3 * 2**30))

    proc = subprocess.run(
        [sys.executable, "-m", "flatfl", *map(str, args)], capture_output=True, text=True, timeout=300, preexec_fn=cap
    )
    return proc.returncode, proc.stdout, proc.stderr


def test_a_stray_round_file_with_a_huge_number_does_not_expand_keep(copy):
    shutil.copy(ckpt.round_path(copy, 6), copy / "round_99999999999.safetensors")  # a stray copy, mislabelled
    code, out, err = _capped("prune", copy, "--keep", "0-99999999999", "--dry-run")
    assert "MemoryError" not in err and "Traceback" not in err, err
    # the range selects the files inside it; the stray file is the highest, so it is 'the last round' that prune keeps,
    # and it says round 6: refused in one line, nothing deleted
    assert code == 2 and "round_99999999999.safetensors: not round 99999999999" in err, err
    (copy / "round_99999999999.safetensors").unlink()
    code, out, err = _capped("prune", copy, "--keep", "2-99999999999", "--keep-clients", "5-99999999999", "--dry-run")
    assert code == 0 and "would delete 5 files" in out, (out, err)  # rounds 1, clients 1-4


def test_a_run_folder_whose_name_is_not_utf8_is_pruned(copy, tmp_path):
    # safetensors opens UTF-8 paths only: its SafetensorError about the path was a traceback
    import os

    odd = Path(os.fsdecode(bytes(tmp_path) + b"/run-\xff\xfe"))
    copy.rename(odd)
    proc = flatfl_proc("prune", odd, "--keep", "2-4", errors="replace")  # its own process: stdout escapes the name
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0 and "deleted 2 files" in out, (out, err)  # rounds 1 and 5 (0 and the last stay)
    assert sorted(ckpt.list_rounds(odd)) == [0, 2, 3, 4, 6]


def test_keep_clients_on_a_run_without_clients_files_says_so(tiny, cli):
    """--keep-clients on a run trained without --save-clients thins nothing: one note, not silence."""
    run = tiny("noclients", rounds=2)
    code, out, err = cli("prune", run, "--keep", "1-2", "--keep-clients", "1", "--dry-run")
    assert code == 0 and "--keep-clients has nothing to thin" in err and "holds no clients files" in err, err
    run2 = tiny("withclients", "--save-clients", rounds=2)
    code, out, err = cli("prune", run2, "--keep", "1-2", "--keep-clients", "1", "--dry-run")
    assert code == 0 and "nothing to thin" not in err, err


@pytest.mark.parametrize("said", [4.0, "4"])
def test_a_round_number_of_another_json_type_is_refused_as_landscape_does(tiny, cli, tmp_path, said):
    """Metadata 'round' of 4.0 or "4" is not what flatfl writes: prune refuses it as landscape and resume do."""
    run = tmp_path / "run"
    shutil.copytree(tiny("roundtype", rounds=4), run)
    path = ckpt.round_path(run, 4)
    tensors, meta = ckpt.load_tensors(path)
    ckpt.save_tensors(path, tensors, meta | {"round": said})
    code, _, err = cli("prune", run, "--keep", "0", "--dry-run")
    assert code == 2 and "round_0004.safetensors" in err and "its metadata say" in err, err
