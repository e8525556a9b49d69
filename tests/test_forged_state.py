"""A state.safetensors edited back to an earlier round is refused by --resume, a real kill never is.

``--resume`` continues from the state file's round. Edited to round 2 in a finished 4-round run, it silently
trained rounds 3-4 again (it looks like a kill between two commits). ``flatfl.state_check`` holds the state's
round against what a kill can leave past it (round and clients files, metrics lines, client-state entries up to the
next saved round) and the algorithm's state against the run's files (FedMut's previous global model is round
s-1's, FedSWA's count of averaged models, SCAFFOLD's clients with a control variate). Each refusal: one line
naming the state file, exit 2, every file left as it was.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from flatfl import checkpoint as ckpt
from flatfl import state_check
from flatfl.faults import ENV, KILLED
from tests.conftest import TINY

ROUNDS = 4


def _train(tmp_path_factory, name: str, *extra: str) -> Path:
    from flatfl.cli import main

    out = tmp_path_factory.mktemp(name) / "run"
    assert main(["train", *TINY, "--rounds", str(ROUNDS), "--out", str(out), *extra]) == 0
    return out


@pytest.fixture(scope="module")
def fedmut(tmp_path_factory):
    return _train(tmp_path_factory, "fedmut", "--algo", "fedmut", "--save-clients")


@pytest.fixture(scope="module")
def scaffold(tmp_path_factory):
    return _train(tmp_path_factory, "scaffold", "--algo", "scaffold")


@pytest.fixture(scope="module")
def fedswa(tmp_path_factory):
    return _train(tmp_path_factory, "fedswa", "--algo", "fedswa", "--swa-start", "1", "--swa-cycle", "1")


def _files(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".flatfl.lock"}


def _edit_state(run: Path, meta_edit: Callable[[dict], None], tensors_edit: Callable[[dict], dict] | None = None):
    path = run / ckpt.STATE_FILE
    tensors, meta = ckpt.load_tensors(path)
    meta_edit(meta)
    ckpt.save_tensors(path, tensors_edit(tensors) if tensors_edit else tensors, meta)


def _round(r: int) -> Callable[[dict], None]:
    return lambda meta: meta.__setitem__("round", r)


def _cut_after(run: Path, r: int) -> None:
    """What a careful forger also does: the later rounds' files and lines removed (a run that stopped at r)."""
    for t in range(r + 1, ROUNDS + 1):
        ckpt.round_path(run, t).unlink(missing_ok=True)
        ckpt.clients_path(run, t).unlink(missing_ok=True)
    lines = (run / ckpt.METRICS_FILE).read_text().splitlines()
    (run / ckpt.METRICS_FILE).write_text("".join(x + "\n" for x in lines if json.loads(x)["round"] <= r))


def _refused(cli, run: Path, *needles: str) -> str:
    before = _files(run)
    code, out, err = cli("train", "--resume", run, "--rounds", str(ROUNDS))
    assert code == 2, (out, err)
    assert err.startswith("flatfl: error: ") and err.count("\n") == 1, err
    assert f"{run / ckpt.STATE_FILE}:" in err, err
    for needle in needles:
        assert needle in err, err
    assert _files(run) == before
    return err


@pytest.mark.parametrize("r", [0, 1, 2])
def test_state_round_edited_back_is_refused_by_the_later_rounds_files(fedmut, cli, tmp_path, r):
    run = tmp_path / "run"
    shutil.copytree(fedmut, run)
    _edit_state(run, _round(r))
    _refused(cli, run, f"metadata 'round' is {r}", "round_0004.safetensors", "edited or replaced")


def test_state_round_edited_back_is_refused_by_the_later_metrics_lines(fedmut, cli, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(fedmut, run)
    _edit_state(run, _round(2))
    for t in (3, 4):  # the files gone, the lines still there
        ckpt.round_path(run, t).unlink()
        ckpt.clients_path(run, t).unlink()
    _refused(cli, run, "metadata 'round' is 2", "metrics.jsonl records round 4")


@pytest.mark.parametrize("r", [1, 2, 3])
def test_fedmut_previous_model_of_another_round_is_refused(fedmut, cli, tmp_path, r):
    # round 3 needs no cutting: a kill after round 4's file and line, before its commit, leaves just that
    run = tmp_path / "run"
    shutil.copytree(fedmut, run)
    _edit_state(run, _round(r))
    if r < 3:
        _cut_after(run, r)
    _refused(cli, run, "prev_global/", f"is not round {r - 1}'s model")


def test_fedmut_state_of_round_0_with_a_previous_model_is_refused(fedmut, cli, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(fedmut, run)
    _edit_state(run, _round(0))
    _cut_after(run, 0)
    _refused(cli, run, "holds the previous global model at round 0")


def test_fedswa_model_count_of_another_round_is_refused(fedswa, cli, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(fedswa, run)
    assert ckpt.load_tensors(run / ckpt.STATE_FILE)[1]["algo_state"]["swa_n"] == ROUNDS - 1  # collects rounds 2..4
    _edit_state(run, _round(2))
    _cut_after(run, 2)
    _refused(cli, run, "swa_n is 3", "collect 1 models")


def test_scaffold_client_state_of_a_later_round_is_refused(scaffold, cli, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(scaffold, run)
    _edit_state(run, _round(2))
    _cut_after(run, 2)
    _refused(cli, run, "metadata 'client_state' names client", "after its round 2")


def test_scaffold_control_variates_of_other_clients_are_refused(scaffold, cli, tmp_path):
    # the client-state index rewritten too: every control variate inline in the state file, as with
    # incremental_state off, but those of the clients that took part in rounds 1..4
    run = tmp_path / "run"
    shutil.copytree(scaffold, run)
    records = ckpt.read_metrics(run)
    early = {c for rec in records[1:3] for c in rec["clients"]}
    assert {c for rec in records[3:] for c in rec["clients"]} - early  # rounds 3-4 brought in another client
    _, _, merged, _ = ckpt.load_state(run, json.loads((run / ckpt.RUN_JSON).read_text())["identity"])

    def meta_edit(meta: dict) -> None:
        meta["round"] = 2
        meta.pop("client_state")

    _edit_state(run, meta_edit, lambda t: dict(merged))
    _cut_after(run, 2)
    shutil.rmtree(run / ckpt.CLIENT_STATE_DIR)
    _refused(cli, run, "control variates are those of other clients", "rounds 1..2")


@pytest.mark.parametrize(
    ("storage", "rounds", "s", "want"),
    [
        ({}, 4, 2, 3),
        ({"save_every": 3}, 10, 0, 3),
        ({"save_every": 3}, 10, 9, 10),
        ({"save_every": 0, "save_rounds": [5, 7]}, 10, 5, 7),
        ({"save_every": 0}, 10, 2, 10),
        ({}, 4, 4, 5),  # a finished run: nothing past it
    ],
)
def test_next_saved_round(storage, rounds, s, want):
    assert state_check.next_saved(s, {"config": {"rounds": rounds}, "storage": storage or None}) == want


KILL_ARGS = [*TINY, "--algo", "fedmut", "--rounds", "5", "--save-clients"]


def _killed(forked, point: str, *args: str) -> None:
    """``flatfl train ARGS`` killed at ``point`` in a real process of its own (conftest's forked)."""
    proc = forked.run("train", *args, env={ENV: point})
    assert proc.returncode == KILLED, proc.stderr


def test_kills_around_a_resume_that_changes_save_every_are_not_taken_for_forgeries(cli, forked, tmp_path):
    # every 3rd round saved: killed after round 3's file, before its commit (state at 0; round_0003, lines 1-2);
    # resumed with every round saved, killed after round 1's file: round_0003 must not be left as a later
    # round's file, and the run ends as a straight one with every round saved
    straight = tmp_path / "straight"
    assert cli("train", *KILL_ARGS, "--out", straight)[0] == 0
    out = tmp_path / "run"
    _killed(forked, "round:commit:2", *KILL_ARGS, "--save-every", "3", "--out", str(out))
    assert ckpt.round_path(out, 3).is_file() and not ckpt.round_path(out, 1).is_file()
    _killed(forked, "round:commit:1", "--resume", str(out), "--save-every", "1")
    assert not ckpt.round_path(out, 3).is_file()  # the uncommitted round's file went before run.json changed
    code, _, err = cli("train", "--resume", out)
    assert code == 0, err
    for r in range(6):
        assert ckpt.round_path(out, r).read_bytes() == ckpt.round_path(straight, r).read_bytes()
    assert (out / ckpt.STATE_FILE).read_bytes() == (straight / ckpt.STATE_FILE).read_bytes()
    assert [r["round"] for r in ckpt.read_metrics(out)] == list(range(6))


@pytest.mark.parametrize("point", ["round:commit:3", "metrics:commit:3", "clients:commit:2"])
def test_a_kill_between_saved_rounds_resumes(cli, forked, tmp_path, point):
    # every 2nd round saved: the kill leaves the state at round 2 and round 3's (and maybe 4's) writes past it
    straight = tmp_path / "straight"
    assert cli("train", *KILL_ARGS, "--save-every", "2", "--out", straight)[0] == 0
    out = tmp_path / "run"
    _killed(forked, point, *KILL_ARGS, "--save-every", "2", "--out", str(out))
    code, _, err = cli("train", "--resume", out)
    assert code == 0, err
    assert _files(out).keys() == _files(straight).keys()
    for name in _files(out):
        if name != ckpt.METRICS_FILE:
            assert (out / name).read_bytes() == (straight / name).read_bytes(), name


@pytest.fixture(scope="module")
def fedavg(tmp_path_factory):
    return _train(tmp_path_factory, "fedavg")


@pytest.mark.parametrize(("which", "name"), [("fedavg", "prev_global/fc.weight"), ("fedmut", "scores")])
def test_a_state_tensor_the_algorithm_does_not_use_is_refused(request, cli, tmp_path, which, name):
    """Load then save must give back every tensor of the state file: a tensor no part of the algorithm reads
    (FedAvg keeps no state; FedAux's scores in a FedMut run) is a forgery or damage, not something to ignore."""
    run = tmp_path / "run"
    shutil.copytree(request.getfixturevalue(which), run)
    _edit_state(run, lambda meta: None, lambda t: {**t, name: torch.zeros(3)})
    _refused(cli, run, f"holds tensors {which} does not use ({name})")


@pytest.mark.parametrize(
    ("part", "key", "value", "needle"),
    [
        ("dataset", "num_classes", 3, "dataset.num_classes is 3, the run's config rebuilds 10"),
        ("dataset", "input_shape", "1x8x8", "dataset.input_shape is '1x8x8'"),
        ("model", "num_parameters", 5, "model.num_parameters is 5"),
        ("dataset", "n_train", "1438", "dataset.n_train is '1438', not a count"),
        ("dataset", None, None, "'dataset' is not an object"),
    ],
)
def test_run_json_description_edits_are_refused_by_resume(fedavg, cli, tmp_path, part, key, value, needle):
    """run.json's model/dataset records lie outside the identity digest: a resume compares them with what the
    config rebuilds (types checked by every reader)."""
    run = tmp_path / "run"
    shutil.copytree(fedavg, run)
    info = json.loads((run / ckpt.RUN_JSON).read_text())
    if key is None:
        info[part] = value
    else:
        info[part][key] = value
    (run / ckpt.RUN_JSON).write_text(json.dumps(info))
    before = _files(run)
    code, out, err = cli("train", "--resume", run, "--rounds", str(ROUNDS + 1))
    assert code == 2 and err.startswith("flatfl: error: ") and err.count("\n") == 1, err
    assert f"{run / ckpt.RUN_JSON}:" in err and needle in err, err
    assert _files(run) == before
