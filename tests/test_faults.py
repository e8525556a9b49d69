"""Nothing lost, nothing mixed: kills at every write point, corrupt files, two writers.

The trainer is killed (``os._exit``, as SIGKILL: no cleanup) at each write point of
``flatfl.checkpoint`` through the test-only hook ``FLATFL_FAULT_AT`` (``flatfl.faults``), then
continued; every file of the run must equal the straight run's byte for byte (metrics.jsonl
compared with its two timing fields, ``wall_time`` and ``round_time``, left out).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flatfl import checkpoint as ckpt
from flatfl.faults import ENV, KILLED
from flatfl.rundir import LOCK_FILE
from tests.conftest import TINY
from tests.forkserver import ForkServer

# The kills below run in processes forked from one that imported flatfl once (conftest's forked, tests/forkserver.py);
# the first kill test and the lock holder keep a fresh interpreter (flatfl_proc).

ROUNDS = 3
ARGS = [*TINY, "--algo", "fedmut", "--rounds", str(ROUNDS), "--save-clients"]
TIMING = ("wall_time", "round_time")

# Write order: round 0: run.json, partition.json, round, metrics, state (commit);
# round t >= 1: clients, round, metrics, state (commit). n counts passages per point: every
# point once, in round 2 for the per-round files (round 0's state is the test below).
CASES = [
    ("run.json:write", 1),
    ("run.json:commit", 1),
    ("partition.json:write", 1),
    ("partition.json:commit", 1),
    ("clients:write", 2),
    ("clients:commit", 2),
    ("round:write", 3),
    ("round:commit", 3),
    ("metrics:write", 3),  # half a line
    ("metrics:commit", 3),  # round 2's line written, round 2 not committed
    ("state:write", 3),
    ("state:commit", 3),
]


def flatfl_proc(*args: str | Path, env: dict[str, str] | None = None, **kw) -> subprocess.Popen:
    """flatfl in its own process, with Ctrl-C's default disposition: a test run started in the background by a
    shell ignores SIGINT, and a child inheriting that would never see the Ctrl-C the kill tests send."""
    user = kw.pop("preexec_fn", None)

    def preexec() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if user is not None:
            user()

    return subprocess.Popen(
        [sys.executable, "-m", "flatfl", *map(str, args)],
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=preexec,
        **kw,
    )


def metrics_without_timing(run: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in ckpt.read_metrics(run)]


def assert_same_run(a: Path, b: Path) -> None:
    names = sorted(str(p.relative_to(a)) for p in a.rglob("*") if p.is_file())  # client_state/ too
    assert names == sorted(str(p.relative_to(b)) for p in b.rglob("*") if p.is_file())
    for name in names:
        if name == ckpt.METRICS_FILE:
            assert metrics_without_timing(a) == metrics_without_timing(b)
        else:
            assert (a / name).read_bytes() == (b / name).read_bytes(), name


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    from flatfl.cli import main

    out = tmp_path_factory.mktemp("straight") / "run"
    assert main(["train", *ARGS, "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize(("point", "n"), CASES, ids=[f"{p}-{n}" for p, n in CASES])
def test_killed_at_every_write_point_then_continued_equals_straight_run(straight, forked, cli, tmp_path, point, n):
    out = tmp_path / "run"
    proc = forked.run("train", *ARGS, "--out", out, env={ENV: f"{point}:{n}"})
    assert proc.returncode == KILLED, proc.stderr
    # the straight run's command again: --resume when run.json made it, else the first command
    if (out / ckpt.RUN_JSON).is_file():
        code, _, err = cli("train", "--resume", out)
    else:
        code, _, err = cli("train", *ARGS, "--out", out)
    assert code == 0, err
    assert_same_run(straight, out)
    assert [r["round"] for r in ckpt.read_metrics(out)] == list(range(ROUNDS + 1))


def test_kill_before_round0_commit_is_no_dead_end(cli, tmp_path):
    """Killed before round 0 was saved: the first command starts it again (no --overwrite)."""
    out = tmp_path / "run"
    proc = flatfl_proc("train", *ARGS, "--out", out, env={ENV: "state:write:1"})
    proc.communicate(timeout=300)
    assert proc.returncode == KILLED
    assert (out / ckpt.RUN_JSON).is_file() and not (out / ckpt.STATE_FILE).is_file()
    assert any(p.name.endswith(".tmp") for p in out.iterdir())
    code, _, err = cli("train", *ARGS, "--rounds", "1", "--out", out)
    assert code == 0, err
    assert [r["round"] for r in ckpt.read_metrics(out)] == [0, 1]
    assert not any(p.name.endswith(".tmp") for p in out.iterdir())


# -- corrupt files: one line, exit 2, the file left as it was --------------------------------
def _cut(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])


def _json_edit(fn):
    def edit(p: Path) -> None:
        obj = json.loads(p.read_text())
        p.write_text(json.dumps(fn(obj)))

    return edit


def _swap_clients(obj):
    obj["clients"][0], obj["clients"][1] = obj["clients"][1], obj["clients"][0]
    return obj


def _metrics_lines(fn):
    def edit(p: Path) -> None:
        lines = p.read_bytes().split(b"\n")
        p.write_bytes(b"\n".join(fn(lines)))

    return edit


def _set_round_meta(value):
    def edit(p: Path) -> None:
        tensors, meta = ckpt.load_tensors(p)
        ckpt.save_tensors(p, tensors, meta | {"round": value})

    return edit


def _drop_state_tensor(p: Path) -> None:
    tensors, meta = ckpt.load_tensors(p)
    del tensors[sorted(tensors)[0]]
    ckpt.save_tensors(p, tensors, meta)


def _reshape_state_tensor(p: Path) -> None:
    tensors, meta = ckpt.load_tensors(p)
    k = sorted(tensors)[0]
    tensors[k] = tensors[k].flatten()[:-1].clone()
    ckpt.save_tensors(p, tensors, meta)


CORRUPT = {
    "run.json cut": ("run.json", _cut, "run.json: not valid JSON"),
    "run.json list": ("run.json", _json_edit(lambda o: [o]), "run.json: not a flatfl run.json"),
    "run.json null": ("run.json", _json_edit(lambda o: None), "run.json: not a flatfl run.json"),
    "run.json no config": ("run.json", _json_edit(lambda o: {k: v for k, v in o.items() if k != "config"}), "'config'"),
    "run.json text rounds": ("run.json", _json_edit(lambda o: o | {"config": o["config"] | {"rounds": "3"}}), "rounds"),
    "run.json text seed": ("run.json", _json_edit(lambda o: o | {"config": o["config"] | {"seed": "x"}}), "seed"),
    "partition cut": ("partition.json", _cut, "partition.json: SHA-256 differs"),
    "partition swapped": ("partition.json", _json_edit(_swap_clients), "partition.json: SHA-256 differs"),
    "round cut": ("round_0003.safetensors", _cut, "round_0003.safetensors: truncated"),
    "round text round": ("round_0003.safetensors", _set_round_meta("3"), "metadata 'round' is '3'"),
    "round list round": ("round_0003.safetensors", _set_round_meta([3]), "metadata 'round' is [3]"),
    "state cut": ("state.safetensors", _cut, "state.safetensors: truncated"),
    "state missing tensor": ("state.safetensors", _drop_state_tensor, "state.safetensors"),
    "state wrong shape": ("state.safetensors", _reshape_state_tensor, "state.safetensors"),
    "metrics list line": ("metrics.jsonl", _metrics_lines(lambda ls: ls[:1] + [b"[1, 2]"] + ls[2:]), "line 2"),
    "metrics text round": ("metrics.jsonl", _metrics_lines(lambda ls: ls[:1] + [b'{"round": "1"}'] + ls[2:]), "line 2"),
    "metrics not utf-8": ("metrics.jsonl", _metrics_lines(lambda ls: ls[:1] + [b"\xff\xfe"] + ls[2:]), "line 2"),
    "metrics cut line": ("metrics.jsonl", _metrics_lines(lambda ls: ls[:1] + [ls[1][:9]] + ls[2:]), "line 2"),
    "metrics duplicate": ("metrics.jsonl", _metrics_lines(lambda ls: ls[:2] + ls[1:]), "round 1 is out of order"),
}


@pytest.fixture(scope="module")
def finished(straight, tmp_path_factory):
    import shutil

    base = tmp_path_factory.mktemp("corrupt")

    def copy(name: str) -> Path:
        out = base / name.replace(" ", "_")
        shutil.copytree(straight, out)
        return out

    return copy


@pytest.mark.parametrize("case", list(CORRUPT))
def test_corrupt_run_file_is_one_line_and_left_untouched(finished, cli, case):
    name, corrupt, needle = CORRUPT[case]
    run = finished(case)
    corrupt(run / name)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    code, out, err = cli("train", "--resume", run, "--rounds", str(ROUNDS + 1))
    assert code == 2, (out, err)
    assert err.startswith("flatfl: error: ") and err.count("\n") == 1, err
    assert needle in err, err
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_missing_last_metrics_line_is_rebuilt_and_no_valid_record_deleted(finished, cli):
    run = finished("metrics-lost-line")
    lines = (run / ckpt.METRICS_FILE).read_bytes().splitlines(keepends=True)
    (run / ckpt.METRICS_FILE).write_bytes(b"".join(lines[:-1]))  # round 3's line lost (old kill)
    code, _, err = cli("train", "--resume", run, "--rounds", str(ROUNDS + 1))
    assert code == 0, err
    recs = ckpt.read_metrics(run)
    assert [r["round"] for r in recs] == list(range(ROUNDS + 2))
    assert recs[ROUNDS]["rebuilt"] is True
    old = json.loads(lines[-1])
    assert (recs[ROUNDS]["test_loss"], recs[ROUNDS]["test_acc"]) == (old["test_loss"], old["test_acc"])
    assert [json.dumps(r).encode() + b"\n" for r in recs[:ROUNDS]] == lines[:ROUNDS]


def test_noop_resume_writes_nothing(finished, cli):
    run = finished("noop")
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.iterdir() if p.name != LOCK_FILE}
    code, out, err = cli("train", "--resume", run, "--rounds", "1")
    assert code == 0 and "nothing to do" in out, err
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.iterdir() if p.name != LOCK_FILE} == before


def test_resume_changes_only_rounds_in_run_json(finished, cli):
    run = finished("rounds-only")
    before = json.loads((run / ckpt.RUN_JSON).read_text())
    assert len(before["partition_sha256"]) == 64
    code, _, err = cli("train", "--resume", run, "--rounds", str(ROUNDS + 1))
    assert code == 0, err
    after = json.loads((run / ckpt.RUN_JSON).read_text())
    before["config"]["rounds"] = ROUNDS + 1
    assert after == before


def test_failed_overwrite_keeps_the_old_run(finished, cli, tmp_path):
    run = finished("overwrite")
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    code, _, err = cli(
        "train", *ARGS, "--overwrite", "--out", run, "--dataset", "cifar10", "--data-root", tmp_path / "none"
    )
    assert code == 2 and "--data-root" in err, err
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_overwrite_killed_before_its_round0_commit_gives_the_old_run_back(finished, forked, cli):
    run = finished("overwrite-killed")
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.name != LOCK_FILE}
    proc = forked.run("train", *ARGS, "--seed", "1", "--overwrite", "--out", run, env={ENV: "state:write:1"})
    assert proc.returncode == KILLED
    code, _, err = cli("train", "--resume", run, "--rounds", "1")  # opening the run undoes the overwrite
    assert code == 0, err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.name != LOCK_FILE} == before


def test_failed_start_leaves_no_empty_folder(cli, tmp_path):
    out = tmp_path / "new"
    code, _, err = cli("train", *ARGS, "--out", out, "--dataset", "cifar10", "--data-root", tmp_path / "none")
    assert code == 2, err
    assert not out.exists()


def test_files_respect_the_umask(cli, tmp_path):
    old = os.umask(0o027)
    try:
        code, _, err = cli("train", *ARGS, "--rounds", "1", "--out", tmp_path / "run")
    finally:
        os.umask(old)
    assert code == 0, err
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "run").iterdir()}
    assert set(modes.values()) == {0o640}, modes


# -- two writers -------------------------------------------------------------------------------
def test_second_trainer_is_refused_naming_the_holder(finished, cli):
    run = finished("locked")
    holder = flatfl_proc("train", "--resume", run, "--rounds", "100000")
    try:
        deadline = time.monotonic() + 120
        while (run / LOCK_FILE).read_text().split("\n")[0] != str(holder.pid):  # then what it is doing
            assert holder.poll() is None and time.monotonic() < deadline, holder.communicate()
            time.sleep(0.05)
        for args in (["--resume", run], [*ARGS, "--overwrite", "--out", run]):
            code, _, err = cli("train", *args)
            assert code == 2 and f"PID {holder.pid}" in err, err
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.communicate()
    code, _, err = cli("train", "--resume", run, "--rounds", "1")  # the killed holder left no stale lock
    assert code == 0, err
    rounds = [r["round"] for r in ckpt.read_metrics(run)]
    assert (
        rounds == list(range(len(rounds)))
        and rounds[-1] == ckpt.load_state(run, json.loads((run / "run.json").read_text())["identity"])[0]
    )


# -- an --overwrite killed at each of its steps: every command that opens the run finishes or undoes it ------------
# (point, n, whether the new run's round 0 was committed). The previous run's 11 files are moved aside in name
# order (clients_*, metrics, partition, round_*, run.json, state): the 10th move leaves only the state behind.
OVERWRITE_KILLS = [
    ("overwrite:begin", 1, False),  # before the move
    ("overwrite:move", 10, False),  # during the move: run.json and every round file aside, the state not
    ("overwrite:moved", 1, False),  # after the move, nothing new written
    ("run.json:commit", 1, False),  # during round 0: the new run.json written
    ("round:commit", 1, False),  # during round 0: the new round 0 written, not committed
    ("state:commit", 1, True),  # after round 0's commit, before the previous run was deleted
]
LANDSCAPE_CHEAP = ["--samples", "20", "--surface", "1d", "--grid", "2"]
REPORT_CHEAP = ["--samples", "20", "--no-hessian", "--trace-matvecs", "0", "--sharpness", "none", "--slices", "0"]
REPORT_CHEAP += ["--grid", "2", "--no-spread", "--no-match", "--no-progress"]


def _files(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != LOCK_FILE}


@pytest.fixture(scope="module")
def overwrite_killed(straight, forked, tmp_path_factory):
    """point -> a run directory holding ``straight`` as it is left by ``--overwrite`` killed there (made once)."""
    import shutil

    made: dict[str, Path] = {}

    def at(point: str, n: int) -> Path:
        if point not in made:
            run = tmp_path_factory.mktemp("killed") / "run"
            shutil.copytree(straight, run)
            proc = forked.run("train", *ARGS, "--seed", "1", "--overwrite", "--out", run, env={ENV: f"{point}:{n}"})
            assert proc.returncode == KILLED, proc.stderr
            made[point] = run
        return made[point]

    return at


def _reader(name: str, cli, run: Path, tmp_path: Path, committed: bool) -> tuple[int, str]:
    """Run one command that opens ``run``; (exit code, stderr)."""
    at = 0 if committed else ROUNDS
    last = ckpt.round_path(run, at)
    if name == "flower":  # the Flower recorder's fresh start on a folder holding a run: refused, after settling it
        from flatfl.errors import UserError
        from tests.test_flower import flower_run

        with pytest.raises(UserError, match="already holds a run"):
            flower_run({"algo": "fedavg", "clients": 2, "frac": 1.0, "rounds": 1, "local-epochs": 1}, run, nodes=2)
        return 0, ""
    args = {
        "resume": ["train", "--resume", run, "--rounds", "1"],
        "train again": ["train", *ARGS, "--out", run],  # the first command again: refused, naming --resume
        "landscape": ["landscape", "--ckpt", last, *LANDSCAPE_CHEAP, "--out", tmp_path / "l"],
        "report": ["report", run, "--out", tmp_path / "r", "--at-rounds", str(at), *REPORT_CHEAP],
        "prune": ["prune", run, "--keep", "0", "--dry-run"],
    }[name]
    code, _, err = cli(*args)
    return code, err


@pytest.mark.parametrize("reader", ["resume", "train again", "landscape", "report", "prune", "flower"])
@pytest.mark.parametrize(("point", "n", "committed"), OVERWRITE_KILLS, ids=[p for p, _, _ in OVERWRITE_KILLS])
def test_an_overwrite_killed_at_each_step_is_settled_by_every_command(
    straight, overwrite_killed, cli, tmp_path, point, n, committed, reader
):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(overwrite_killed(point, n), run)
    code, err = _reader(reader, cli, run, tmp_path, committed)
    if reader == "train again":
        assert code == 2 and f"--resume {run}" in err, err
    else:
        assert code == 0, err
    assert not (run / ".flatfl-replaced").exists() and not (run / ".flatfl-replaced.partial").exists()
    if not committed:  # the previous run is back, byte for byte, and every command reads it
        assert _files(run) == _files(straight)
    else:  # the new run (seed 1) stands and the previous one is gone
        assert json.loads((run / ckpt.RUN_JSON).read_text())["config"]["seed"] == 1
        r0 = "round_0000.safetensors"
        assert ckpt.list_rounds(run)[0] == 0 and _files(run)[r0] != _files(straight)[r0]


def test_an_overwrite_that_cannot_be_settled_says_where_the_previous_run_is(finished, cli):
    """A trainer replacing the run right now holds its lock: readers say where the previous run waits and the
    command that restores it, and touch nothing."""
    from flatfl.rundir import lock_dir, unlock_dir

    run = finished("overwrite-in-progress")
    (run / ".flatfl-replaced").mkdir()
    for p in list(run.iterdir()):
        if p.name not in (".flatfl-replaced", LOCK_FILE):
            p.rename(run / ".flatfl-replaced" / p.name)
    fd = lock_dir(run, "training this run")  # this process plays the trainer
    try:
        before = _files(run)
        for args in (["train", "--resume", run], ["prune", run, "--keep", "0", "--dry-run"]):
            code, _, err = cli(*args)
            assert code == 2 and err.count("\n") == 1, err
            assert f"{run}/.flatfl-replaced/" in err and f"flatfl prune {run} --keep 0 --dry-run" in err, err
        assert _files(run) == before
    finally:
        unlock_dir(fd)
    code, _, err = cli("prune", run, "--keep", "0", "--dry-run")  # the command named: the run is back
    assert code == 0, err
    assert (run / ckpt.RUN_JSON).is_file() and not (run / ".flatfl-replaced").exists()


@pytest.mark.parametrize("moved", ["rounds", "all but the state"])
def test_files_moved_aside_by_hand_are_not_settled_nor_deleted(finished, cli, tmp_path, moved):
    """``mkdir RUN/.flatfl-replaced`` and files moved into it by hand, ``state.safetensors`` left: not what an
    --overwrite leaves (it moves the whole run, the state last), so no command deletes the set-aside rounds as a
    replaced run's nor moves them back over the run: one line, nothing changed."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished(f"moved by hand {moved}"), run)
    aside = run / ".flatfl-replaced"
    aside.mkdir()
    for p in list(run.iterdir()):
        if p.name.startswith("round_") if moved == "rounds" else p.name not in (aside.name, ckpt.STATE_FILE):
            p.rename(aside / p.name)
    before = _files(run)
    for args in (
        ["train", "--resume", run],
        ["prune", run, "--keep", "0", "--dry-run"],
        ["report", run, "--out", tmp_path / "r", *REPORT_CHEAP],
    ):
        code, _, err = cli(*args)
        assert code == 2 and err.count("\n") == 1 and "nothing was changed" in err, err
        assert str(aside) in err, err
    assert _files(run) == before


# -- Ctrl-C during an --overwrite: the message is true and the command it names does what it says ------------------
# (module whose write point raises KeyboardInterrupt, point, n, whether the new run's round 0 was committed)
CTRL_C = [
    ("rundir", "overwrite:move", 3, False),  # during the move (.flatfl-replaced.partial)
    ("rundir", "overwrite:moved", 1, False),  # the previous run set aside, nothing new written (said "nothing saved")
    ("atomic", "run.json:commit", 1, False),  # the new run.json written (said "continue with --resume")
    ("atomic", "round:commit", 1, False),  # the new round 0 written, not committed
    ("atomic", "state:commit", 1, True),  # round 0 committed, the previous run not yet deleted
]


@pytest.mark.parametrize(("module", "point", "n", "committed"), CTRL_C, ids=[p for _, p, _, _ in CTRL_C])
def test_ctrl_c_during_an_overwrite_says_where_the_run_is_and_the_next_command_works(
    straight, cli, tmp_path, monkeypatch, module, point, n, committed
):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(straight, run)
    seen: dict[str, int] = {}

    def ctrl_c(name: str, before_exit=None) -> None:
        seen[name] = seen.get(name, 0) + 1
        if (name, seen[name]) == (point, n):
            raise KeyboardInterrupt

    monkeypatch.setattr(f"flatfl.{module}.fault_point", ctrl_c)
    code, _, err = cli("train", *ARGS, "--seed", "1", "--overwrite", "--out", run)
    monkeypatch.undo()
    assert code == 130 and err.count("\n") == 1 and "nothing was saved" not in err, err
    assert f"flatfl train --resume {run}" in err, err
    assert not [p for p in run.iterdir() if p.name.startswith(".flatfl-replaced")]
    if committed:  # the new run (seed 1) stands; --resume continues it
        assert json.loads((run / ckpt.RUN_JSON).read_text())["config"]["seed"] == 1
    else:  # put back at once, byte for byte, and said so
        assert "the --overwrite was undone" in err and "previous run again" in err, err
        assert _files(run) == _files(straight)
    code, _, err = cli("train", "--resume", run, "--rounds", str(ROUNDS + 1))  # what the message says to run
    assert code == 0, err
    assert ckpt.list_rounds(run)[-1] == ROUNDS + 1


def test_a_replaced_run_whose_deletion_was_interrupted_is_removed_by_the_next_command(finished, cli):
    # the set-aside run is renamed before it is deleted: a half-deleted one never reads as a whole run to put back
    run = finished("deleting")
    half = run / ".flatfl-replaced.delete"
    half.mkdir()
    (half / "round_0001.safetensors").write_bytes(b"rest")
    before = _files(run)
    code, _, err = cli("prune", run, "--keep", "0", "--dry-run")
    assert code == 0, err
    assert not half.exists() and {k: v for k, v in before.items() if not k.startswith(half.name)} == _files(run)


def test_ctrl_c_in_an_overwrite_that_cannot_put_the_run_back_names_where_it_is(cli, tmp_path, monkeypatch, straight):
    import shutil

    from flatfl import rundir

    def ctrl_c(name: str, before_exit=None) -> None:
        if name == "overwrite:moved":
            raise KeyboardInterrupt

    def refused(self) -> list[str]:
        raise PermissionError(13, "Permission denied")

    run = tmp_path / "run"
    shutil.copytree(straight, run)
    monkeypatch.setattr(rundir, "fault_point", ctrl_c)
    monkeypatch.setattr(rundir.RunDir, "recover", refused)
    code, _, err = cli("train", *ARGS, "--seed", "1", "--overwrite", "--out", run)
    monkeypatch.undo()
    assert code == 130 and f"{run}/.flatfl-replaced/" in err and f"flatfl prune {run} --keep 0 --dry-run" in err, err
    assert cli("prune", run, "--keep", "0", "--dry-run")[0] == 0  # the command named puts it back
    assert _files(run) == _files(straight)


# -- a kill while an opening settles the --overwrite (moving the previous run back, or deleting it) -----------------
# A real SIGKILL between two file operations of the settling itself: os.replace (moving back) or os.unlink (deleting)
# is made to end the process after its n-th call, in a child process, whatever code path makes those calls.
DIE_AFTER = """
import os, sys
name, n = sys.argv[1], int(sys.argv[2])
real, calls = getattr(os, name), []
def dying(*a, **kw):
    real(*a, **kw)
    calls.append(1)
    if len(calls) == n:
        os._exit(137)
setattr(os, name, dying)
from flatfl.cli import main
raise SystemExit(main(sys.argv[3:]))
"""


def _die_after(forked: ForkServer, call: str, n: int, *args: str | Path) -> None:
    proc = forked.run(call, str(n), *args, code=DIE_AFTER)
    assert proc.returncode == KILLED, proc.stderr


@pytest.mark.parametrize("n", [1, 10])
def test_a_kill_while_the_previous_run_moves_back_is_settled_by_the_next_command(
    straight, overwrite_killed, forked, cli, tmp_path, n
):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(overwrite_killed("round:commit", 1), run)  # the new run's round 0 written, not committed
    # its opening moves the previous run back; a kill there left files moved back that the next opening took for the
    # new run's and deleted (n = 1), or a set-aside run without its run.json that stopped every command (n = 10)
    _die_after(forked, "replace", n, "prune", run, "--keep", "0", "--dry-run")
    for reader in ("prune", "landscape", "resume"):
        code, err = _reader(reader, cli, run, tmp_path, committed=False)
        assert code == 0, (reader, err)
    assert not any(p.name.startswith(".flatfl-replaced") for p in run.iterdir())
    assert_same_run(straight, run)


@pytest.mark.parametrize("n", [1, 8])
def test_a_kill_while_the_replaced_run_is_deleted_is_settled_by_the_next_command(straight, forked, cli, tmp_path, n):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(straight, run)
    # the first unlinks of an --overwrite are those deleting the previous run, after the new round 0's commit; a kill
    # once run.json was deleted left a set-aside run without it, which stopped every command (n = 8)
    _die_after(forked, "unlink", n, "train", *ARGS, "--rounds", "1", "--seed", "1", "--overwrite", "--out", run)
    assert (run / ckpt.STATE_FILE).is_file()
    for reader in ("prune", "landscape", "resume"):
        code, err = _reader(reader, cli, run, tmp_path, committed=True)
        assert code == 0, (reader, err)
    assert not any(p.name.startswith(".flatfl-replaced") for p in run.iterdir())
    assert json.loads((run / ckpt.RUN_JSON).read_text())["config"]["seed"] == 1
