"""--threads: every command takes it; cores divided among torchrun ranks; one warning line when oversubscribed."""

import pytest
import torch

from flatfl.cli import COMMANDS, build_parser
from flatfl.cli import common as cli_common
from flatfl.cli.common import threads_per_process


def test_threads_are_divided_among_processes_and_oversubscription_is_named():
    assert threads_per_process(None, 16, 1) == (16, None)
    assert threads_per_process(None, 16, 4) == (4, None)  # torchrun: the cores divided among the ranks
    assert threads_per_process(8, 16, 4) == (2, None)  # --threads is the command's total
    assert threads_per_process(None, 2, 3)[0] == 1  # at least one each ...
    per, warning = threads_per_process(32, 16, 1)
    assert per == 32 and "--threads 32" in warning and "16 cores" in warning and "sched_getaffinity" in warning
    assert threads_per_process(None, 2, 3)[1] is not None  # ... and then they are oversubscribed


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_takes_threads(command):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert any("--threads" in a.option_strings for a in sub.choices[command]._actions)


def test_threads_are_applied_and_oversubscription_warns_in_one_line(cli, monkeypatch, tmp_path):
    before = torch.get_num_threads()
    monkeypatch.setattr(cli_common, "available_cores", lambda: 1)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    try:
        code, _, err = cli("landscape", "--threads", "2", "--ckpt", tmp_path / "missing.safetensors", "--hessian")
        assert torch.get_num_threads() == 2
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 2
        assert lines[0].startswith("flatfl: warning: --threads 2") and "1 cores" in lines[0]
        assert "--ckpt" in lines[1]
        code, _, err = cli("landscape", "--threads", "1", "--ckpt", tmp_path / "missing.safetensors", "--hessian")
        assert torch.get_num_threads() == 1 and "warning" not in err
        cli("landscape", "--ckpt", tmp_path / "missing.safetensors", "--hessian")  # no flag, one process: unchanged
        assert torch.get_num_threads() == 1
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # a torchrun rank on a 1-core machine: one thread, a warning
        code, _, err = cli("landscape", "--ckpt", tmp_path / "missing.safetensors", "--hessian")
        assert torch.get_num_threads() == 1 and err.startswith("flatfl: warning:")
    finally:
        torch.set_num_threads(before)


def test_a_resumed_run_takes_threads(cli, tmp_path):
    from tests.conftest import TINY

    threads = torch.get_num_threads()
    try:
        assert cli("train", *TINY, "--rounds", "1", "--out", tmp_path / "r", "--threads", "1")[0] == 0
        code, _, err = cli("train", "--resume", tmp_path / "r", "--rounds", "2", "--threads", "1", "--no-progress")
        assert code == 0, err  # a runtime choice, like --device: free on --resume
    finally:
        torch.set_num_threads(threads)
