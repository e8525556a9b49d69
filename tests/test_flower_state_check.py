"""The Flower recorder's resume makes the state checks ``flatfl train --resume`` makes (flatfl.state_check).

``RunRecorder.start(..., resume=True)`` continues from ``state.safetensors``'s round. Edited back to an earlier
round (the later rounds' files still there), or holding another round's previous global model, it silently trained
the rounds again. The recorder commits a round as ``flatfl train`` does (clients, round, metrics line, state), so
the same :func:`flatfl.state_check.check_resume_state` holds: a forgery is one line naming the state file, every
file left as it was; a real kill (fault injected at the round's last writes) still resumes, bit for bit the
uninterrupted run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("flwr")

import torch  # noqa: E402

from flatfl import checkpoint as ckpt  # noqa: E402
from flatfl.errors import UserError  # noqa: E402
from flatfl.faults import ENV, KILLED  # noqa: E402
from tests.test_flower import flower_run  # noqa: E402
from tests.test_forged_state import _cut_after, _edit_state, _files, _round  # noqa: E402
from tests.test_layering import ROOT  # noqa: E402

ROUNDS = 3
CONFIG = {"algo": "fedmut", "clients": 2, "frac": 1.0, "rounds": ROUNDS, "local-epochs": 1, "seed": 0,
          "save-clients": 1}  # fmt: skip


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("flower") / "run"
    flower_run(CONFIG, out, nodes=2)
    return out


def _resume(run: Path) -> None:
    flower_run(dict(CONFIG, resume=True), run, nodes=2)


def _refused(run: Path, *needles: str) -> None:
    before = _files(run)
    with pytest.raises(UserError) as info:
        _resume(run)
    msg = str(info.value)
    assert "\n" not in msg and f"{run / ckpt.STATE_FILE}:" in msg, msg
    for needle in needles:
        assert needle in msg, msg
    assert _files(run) == before


def test_state_round_edited_back_is_refused(straight, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(straight, run)
    _edit_state(run, _round(1))  # round 3's files are there: a kill leaves nothing past round 2
    _refused(run, "metadata 'round' is 1", "round_0003.safetensors", "edited or replaced")


def test_state_round_edited_back_is_refused_by_the_later_metrics_line(straight, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(straight, run)
    _edit_state(run, _round(1))
    for t in (2, 3):  # the later files gone, the lines kept
        ckpt.round_path(run, t).unlink()
        ckpt.clients_path(run, t).unlink()
    _refused(run, "metadata 'round' is 1", "metrics.jsonl records round 3")


def test_previous_global_model_of_another_round_is_refused(straight, tmp_path):
    # round 3's state says round 2, the later files removed too: its previous model is round 2's, not round 1's
    run = tmp_path / "run"
    shutil.copytree(straight, run)
    _edit_state(run, _round(2))
    _cut_after(run, 2)
    _refused(run, "prev_global/", "is not round 1's model")


def test_round_0_state_with_a_previous_model_is_refused(straight, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(straight, run)
    _edit_state(run, _round(0))
    _cut_after(run, 0)
    _refused(run, "holds the previous global model at round 0")


def test_nonfinite_state_is_refused(straight, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(straight, run)
    _edit_state(run, lambda meta: None, lambda t: {k: torch.full_like(v, float("nan")) for k, v in t.items()})
    _refused(run, "holds NaN or Inf")


@pytest.mark.parametrize("point", ["state:write:3", "metrics:write:3"])
def test_a_kill_at_a_rounds_last_writes_resumes_bit_for_bit(straight, tmp_path, point):
    """Killed in round 2 with its clients and round files written (and its metrics line, for the state): the
    state stays at round 1, the half-written file is a temporary one or a torn line; resume finishes the run
    as the uninterrupted one. The child takes this process's threads: float sums differ across thread counts."""
    out = tmp_path / "k"
    script = f"from tests.test_flower import flower_run; flower_run({CONFIG!r}, {str(out)!r}, nodes=2)"
    env = dict(os.environ, **{ENV: point, "OMP_NUM_THREADS": str(torch.get_num_threads())})
    proc = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == KILLED, proc.stderr[-2000:]
    assert ckpt.load_tensors(out / ckpt.STATE_FILE)[1]["round"] == 1
    assert ckpt.round_path(out, 2).is_file() and ckpt.clients_path(out, 2).is_file()
    _resume(out)
    got, want = _files(out), _files(straight)
    assert got.keys() == want.keys()
    for name in got:
        if name != ckpt.METRICS_FILE:
            assert got[name] == want[name], name
    drop = ("wall_time",)
    rows = [[{k: v for k, v in m.items() if k not in drop} for m in ckpt.read_metrics(r)] for r in (out, straight)]
    assert rows[0] == rows[1]
