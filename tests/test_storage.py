"""Storage that scales: --save-every/--save-rounds, incremental per-client state, bfloat16 client files.

References are exact: a run saving every round with the whole state in one file (the layout
before these options) gives the tensors every other layout must hold, bit for bit.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from flatfl import checkpoint as ckpt
from flatfl import client_state
from flatfl.faults import ENV, KILLED
from tests.conftest import TINY
from tests.test_checkpoint import _files
from tests.test_cli import _one_line_error
from tests.test_faults import metrics_without_timing

ROUNDS = 5
SCAFFOLD = [*TINY, "--algo", "scaffold", "--rounds", str(ROUNDS)]


def _train(out: Path, *extra: str, storage=None) -> Path:
    """In-process ``flatfl train`` (or, with ``storage``, the trainer API with that StorageConfig)."""
    from flatfl.cli import main

    if storage is None:
        assert main(["train", *SCAFFOLD, "--out", str(out), *extra]) == 0
        return out
    from flatfl.cli import build_parser
    from flatfl.cli.train import config_flags
    from flatfl.config import RunConfig
    from flatfl.trainer import train

    ns = vars(build_parser().parse_args(["train", *SCAFFOLD, *extra]))
    cfg = RunConfig.from_flags(config_flags(ns))
    train(cfg, out, device="cpu", progress=False, log=lambda s: None, storage=storage)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """scaffold, 6 clients: whole state every round (the reference), incremental every round, --save-every 2."""
    from flatfl.storage import StorageConfig

    root = tmp_path_factory.mktemp("storage")
    whole = _train(root / "whole", storage=StorageConfig(incremental_state=False))
    return {
        "whole": whole,
        "every1": _train(root / "every1"),
        "every2": _train(root / "every2", "--save-every", "2"),
    }


def _state(run: Path) -> dict[str, torch.Tensor]:
    identity = json.loads((run / ckpt.RUN_JSON).read_text())["identity"]
    return ckpt.load_state(run, identity)[2]


def _assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def test_save_every_keeps_round_0_multiples_and_the_last(runs):
    every1, every2 = runs["every1"], runs["every2"]
    assert ckpt.list_rounds(every2) == [0, 2, 4, 5]
    for r in (0, 2, 4, 5):  # the same global models, byte for byte
        assert ckpt.round_path(every2, r).read_bytes() == ckpt.round_path(every1, r).read_bytes()
    assert metrics_without_timing(every2) == metrics_without_timing(every1)  # every round keeps its line
    _assert_same_tensors(_state(every2), _state(every1))
    assert json.loads((every2 / ckpt.RUN_JSON).read_text())["storage"]["save_every"] == 2


def test_incremental_state_equals_the_whole_state_and_holds_each_client_once(runs):
    whole, every1 = runs["whole"], runs["every1"]
    for r in range(ROUNDS + 1):
        assert ckpt.round_path(whole, r).read_bytes() == ckpt.round_path(every1, r).read_bytes()
    whole_tensors, _ = ckpt.load_tensors(whole / ckpt.STATE_FILE)
    assert any(k.startswith("c_client/") for k in whole_tensors)
    inline, _ = ckpt.load_tensors(every1 / ckpt.STATE_FILE)
    assert inline and not any(k.startswith("c_client/") for k in inline)  # only c in the state file itself
    _assert_same_tensors(_state(every1), whole_tensors)
    # one file per client, from the last round it took part in (metrics.jsonl's clients)
    last_seen = {c: m["round"] for m in ckpt.read_metrics(every1) for c in m.get("clients", [])}
    names = sorted(p.name for p in (every1 / client_state.DIR).iterdir())
    assert names == sorted(client_state.path_of(every1, c, r).name for c, r in last_seen.items())
    # --save-every 2: from the first saved round at or after that
    saved = ckpt.list_rounds(runs["every2"])
    names2 = sorted(p.name for p in (runs["every2"] / client_state.DIR).iterdir())
    want = {c: next(s for s in saved if s >= r) for c, r in last_seen.items()}
    assert names2 == sorted(client_state.path_of(runs["every2"], c, r).name for c, r in want.items())


def test_each_save_writes_only_the_clients_that_took_part(tmp_path, monkeypatch):
    """Per save, the client-state files written are exactly the clients sampled since the last save."""
    written: list[tuple[int, int]] = []
    real = client_state.save

    def spy(run_dir, round, groups, identity):
        written.extend((round, k) for k in groups)
        real(run_dir, round, groups, identity)

    monkeypatch.setattr(client_state, "save", spy)
    run = _train(tmp_path / "r", "--save-every", "2")
    took_part: dict[int, set[int]] = {}
    for m in ckpt.read_metrics(run):
        if m["round"]:
            save = next(s for s in ckpt.list_rounds(run) if s >= m["round"])
            took_part.setdefault(save, set()).update(m["clients"])
    assert sorted(written) == sorted((r, c) for r, cs in took_part.items() for c in cs)


KILLS = [
    ("metrics:commit", 4),  # round 3's line written, its save (round 4) not begun: redo 3 and 4
    ("client_state:commit", 4),  # a client file of a save that never committed
    ("state:commit", 3),  # round 4 committed, the files it superseded not yet deleted
]


@pytest.mark.parametrize(("point", "n"), KILLS, ids=[f"{p}-{n}" for p, n in KILLS])
def test_killed_save_every_run_resumes_to_the_straight_run(runs, forked, cli, tmp_path, point, n):
    out = tmp_path / "run"
    proc = forked.run("train", *SCAFFOLD, "--save-every", "2", "--out", out, env={ENV: f"{point}:{n}"})
    assert proc.returncode == KILLED, proc.stderr
    code, _, err = cli("train", "--resume", out)
    assert code == 0, err
    assert _files(out) == _files(runs["every2"])
    assert metrics_without_timing(out) == metrics_without_timing(runs["every2"])


def test_clusamp_resumed_equals_straight(tmp_path):
    """CluSamp's per-client gradients (float64, incremental) survive a resume bit for bit."""
    from flatfl.cli import main

    args = [*TINY, "--algo", "clusamp", "--save-every", "2"]
    assert main(["train", *args, "--rounds", "4", "--out", str(tmp_path / "a")]) == 0
    assert main(["train", *args, "--rounds", "3", "--out", str(tmp_path / "b")]) == 0
    assert main(["train", "--resume", str(tmp_path / "b"), "--rounds", "4"]) == 0
    for r in (0, 2, 4):
        assert ckpt.round_path(tmp_path / "a", r).read_bytes() == ckpt.round_path(tmp_path / "b", r).read_bytes()
    _assert_same_tensors(_state(tmp_path / "a"), _state(tmp_path / "b"))
    assert any(k.startswith("gradient/") for k in _state(tmp_path / "a"))


def test_save_rounds_and_bad_storage_flags(cli, tmp_path):
    code, _, err = cli("train", *TINY, "--rounds", "4", "--save-rounds", "1,3", "--out", tmp_path / "r")
    assert code == 0, err
    assert ckpt.list_rounds(tmp_path / "r") == [0, 1, 3, 4]
    for flags, needle in [
        (["--save-rounds", "3-1"], "--save-rounds"),
        (["--save-rounds", "every:0"], "every:0"),
        (["--save-rounds", "five"], "--save-rounds"),
        (["--save-rounds", "every:2", "--save-every", "3"], "--save-every"),
        (["--save-every", "-1"], "--save-every"),
        (["--clients-dtype", "float16"], "--clients-dtype"),
    ]:
        code, _, err = cli("train", *TINY, "--rounds", "2", "--out", tmp_path / "bad", *flags)
        _one_line_error(code, err, needle)
        assert not (tmp_path / "bad").exists()


def test_clients_dtype_bfloat16_rounds_each_weight_once(cli, tmp_path):
    """bfloat16 client files hold float32 weights rounded to nearest bfloat16, nothing else changes."""
    base = [*TINY, "--algo", "fedmut", "--rounds", "2", "--save-clients"]
    assert cli("train", *base, "--out", tmp_path / "f32")[0] == 0
    assert cli("train", *base, "--clients-dtype", "bfloat16", "--out", tmp_path / "bf16")[0] == 0
    for r in (0, 1, 2):
        assert ckpt.round_path(tmp_path / "f32", r).read_bytes() == ckpt.round_path(tmp_path / "bf16", r).read_bytes()
    for r in (1, 2):
        a, b = ckpt.clients_path(tmp_path / "f32", r), ckpt.clients_path(tmp_path / "bf16", r)
        assert b.stat().st_size < 0.55 * a.stat().st_size
        sa, ra, ia = ckpt.load_clients(a)
        sb, rb, ib = ckpt.load_clients(b)
        assert ia["clients"] == ib["clients"]
        for xa, xb in zip(sa + ra, sb + rb):
            for k in xa:
                want = xa[k].to(torch.bfloat16).float() if xa[k].is_floating_point() else xa[k]
                assert xb[k].dtype == xa[k].dtype and torch.equal(xb[k], want), k
                if xa[k].is_floating_point():  # round to nearest: relative error <= 2^-8 (8 significant bits)
                    assert torch.all((xb[k] - xa[k]).abs() <= xa[k].abs() * 2.0**-8)


def test_storage_flags_given_on_resume_replace_the_recorded_ones(cli, tmp_path):
    run = tmp_path / "r"
    assert cli("train", *TINY, "--rounds", "3", "--out", run)[0] == 0
    code, _, err = cli("train", "--resume", run, "--rounds", "6", "--save-every", "2")
    assert code == 0, err
    assert ckpt.list_rounds(run) == [0, 1, 2, 3, 4, 6]
    storage = json.loads((run / ckpt.RUN_JSON).read_text())["storage"]
    assert storage["save_every"] == 2 and storage["clients_dtype"] == "float32"
    code, _, err = cli("train", "--resume", run, "--rounds", "8")  # kept: every 2
    assert code == 0, err
    assert ckpt.list_rounds(run) == [0, 1, 2, 3, 4, 6, 8]


def test_a_save_rounds_range_of_more_rounds_than_can_be_listed_is_refused(tmp_path):
    """--rounds 10^11 --save-rounds 1-10^11: the range was expanded in memory until the process was killed; --rounds
    is now at most 10^6 (so a range cut at it lists at most 10^6 rounds) and 10^11 is refused in one line first."""
    from tests.test_prune import _capped

    code, _, err = _capped("train", *TINY, "--rounds", "100000000000", "--save-rounds", "1-100000000000",
                           "--out", tmp_path / "run")  # fmt: skip
    _one_line_error(code, err, "--rounds", "from 1 to 1,000,000")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("frac", ["1e-9", "0.9999"])
def test_a_digits_split_with_no_test_or_no_training_image_is_refused(cli, tmp_path, frac):
    # --test-frac 1e-9 rounded to 0 test images: every round was evaluated to loss 0.0, accuracy 0.0 without a word
    code, _, err = cli("train", *TINY, "--rounds", "1", "--test-frac", frac, "--out", tmp_path / "run")
    _one_line_error(code, err, f"--test-frac {float(frac):g}: gives", "a run needs both splits")
    assert not (tmp_path / "run").exists()


def test_an_allocation_the_machine_cannot_hold_is_one_line(cli, tmp_path):
    # FedGen's generator with 10^6 noise inputs and 10^6 hidden units (the most of each) asks torch for 3.6 TiB: a
    # RuntimeError traceback from its allocator
    code, _, err = cli("train", *TINY, "--algo", "fedgen", "--gen-hidden", "1000000", "--gen-noise", "1000000",
                       "--rounds", "1", "--out", tmp_path / "run")  # fmt: skip
    _one_line_error(code, err, "out of memory (tried to allocate", "GiB); lower the size flags")
