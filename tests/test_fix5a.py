"""fix5a: findings of the hostile pass hostile-probe12/hostile3 (issue #27).

1. a flag given twice: the last one counts (argparse), said in every --help and in one stderr note;
2. flatfl report's leftovers (--sharpness '', --connect-lr far too large, help naming flags report lacks);
3. wording of files that cannot be read, FIFOs and devices, and of resumed runs' settings.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from flatfl.cli import build_parser
from flatfl.cli.common import REPEAT_RULE, repeat_notes


def _notes(*args: str) -> list[str]:
    parser = build_parser()
    parser.parse_args(list(args))
    return repeat_notes(parser)


def _subparsers(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, argparse.ArgumentParser]:
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found[f"{prefix}{name}"] = sub
                found.update(_subparsers(sub, f"{prefix}{name} "))
    return found


# -- 1. a flag given twice ------------------------------------------------------------------------------------
def test_a_flag_given_twice_with_different_values_gets_one_note_naming_both():
    notes = _notes("train", "--dataset", "digits", "--lr", "1", "--lr=2", "--rounds", "3")
    assert notes == ["flatfl: note: --lr given twice (1, then 2): 2 counts"]
    notes = _notes("landscape", "--ckpt", "x", "--grid", "5", "--grid", "7", "--grid", "9")
    assert notes == ["flatfl: note: --grid given 3 times (5, 7, then 9): 9 counts"]
    # an abbreviation argparse accepts is the same flag, named in full
    assert _notes("landscape", "--ckpt", "x", "--grid", "5", "--gri", "7") == [
        "flatfl: note: --grid given twice (5, then 7): 7 counts"
    ]


def test_a_parser_used_again_forgets_the_last_parse():
    parser = build_parser()
    parser.parse_args(["landscape", "--ckpt", "x", "--grid", "5", "--grid", "7"])
    parser.parse_args(["prune", "r", "--keep", "1"])
    assert repeat_notes(parser) == []


def test_a_flag_repeated_with_the_same_value_and_repeatable_flags_are_silent():
    assert _notes("train", "--lr", "1", "--lr", "1", "--no-progress", "--no-progress", "--weighted", "--weighted") == []
    # --label is action='append': every use counts
    assert _notes("report", "r", "--out", "o", "--label", "r=a", "--label", "s=b") == []
    assert _notes("report", "r", "--out", "o", "--grid", "5") == []


def test_an_old_alias_and_its_flag_both_given_is_a_flag_given_twice(capsys):
    notes = _notes("report", "r", "--out", "o", "--at-rounds", "2", "--rounds", "4")
    assert notes == ["flatfl: note: --at-rounds given twice (--at-rounds 2, then --rounds 4): --rounds 4 counts"]
    capsys.readouterr()
    notes = _notes("partition", "--dataset", "digits", "--plot", "a.png", "--out", "b.png")
    assert len(notes) == 1 and notes[0].startswith("flatfl: note: --plot given twice") and "b.png counts" in notes[0]


def test_the_note_comes_before_the_commands_output_and_a_refusal_stays_one_line(cli, two_runs, capsys):
    import sys

    from flatfl.cli import main

    order = []
    real_out, real_err = sys.stdout, sys.stderr

    class Tee:  # the order in which lines reach stdout and stderr
        def __init__(self, stream, name):
            self.stream, self.name = stream, name

        def write(self, text):
            order.append((self.name, text))
            return self.stream.write(text)

        def __getattr__(self, name):
            return getattr(self.stream, name)

    sys.stdout, sys.stderr = Tee(real_out, "out"), Tee(real_err, "err")
    try:
        code = main(["prune", str(two_runs / "fedavg"), "--keep", "0", "--keep=1", "--dry-run"])
    finally:
        sys.stdout, sys.stderr = real_out, real_err
    assert code == 0 and order[0] == ("err", "flatfl: note: --keep given twice (0, then 1): 1 counts\n"), order
    assert any(name == "out" for name, _ in order[1:]), order
    capsys.readouterr()
    # a command line the command refuses: its one-line error alone (the note would be a second line)
    code, _, err = cli("train", "--dataset", "digits", "--gen-batch", "8", "--gen-batch", "0", "--algo", "fedgen")
    assert code == 2 and err.count("\n") == 1 and err.startswith("flatfl: error: --gen-batch"), err
    # the note once, whatever the command writes after it
    code, out, err = cli("prune", two_runs / "fedavg", "--keep", "0", "--keep", "1", "--dry-run")
    assert code == 0 and err == "flatfl: note: --keep given twice (0, then 1): 1 counts\n" and out, (out, err)


def test_a_refused_command_line_prints_its_error_alone(cli, tmp_path):
    code, _, err = cli("train", "--lr", "1", "--lr", "2", "--no-such-flag")
    assert code == 2 and err.count("\n") == 1 and err.startswith("flatfl: error: unrecognized"), err


def test_every_subcommand_help_states_that_the_last_value_counts():
    subs = _subparsers(build_parser())
    assert {"train", "partition", "data", "landscape", "report", "prune"} <= set(subs)
    for name, sub in subs.items():
        text = " ".join(sub.format_help().split())
        assert " ".join(REPEAT_RULE.split()) in text, name


@pytest.mark.parametrize("flag", ["--seed", "--device", "--out"])
def test_notes_name_the_flag_the_user_typed(flag):
    notes = _notes("landscape", "--ckpt", "x", flag, "1", f"{flag}=2")
    assert notes == [f"flatfl: note: {flag} given twice (1, then 2): 2 counts"]


# -- 2. flatfl report's leftovers -----------------------------------------------------------------------------
TRAIN = ["train", "--dataset", "digits", "--clients", "6", "--frac", "0.5", "--local-epochs", "1", "--rounds", "1",
         "--no-progress"]  # fmt: skip
REPORT = ["--samples", "20", "--no-hessian", "--trace-matvecs", "0", "--sharpness", "none", "--slices", "0",
          "--grid", "2", "--no-spread", "--no-match", "--no-progress", "--no-relative-flatness",
          "--no-fisher-rao"]  # fmt: skip


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    from flatfl.cli import main

    root = tmp_path_factory.mktemp("fix5a")
    for algo in ("fedavg", "fedmut"):
        assert main([*TRAIN, "--algo", algo, "--out", str(root / algo)]) == 0
    return root


@pytest.mark.parametrize("command", ["report", "landscape"])
@pytest.mark.parametrize("flag", ["--sharpness", "--curvature"])
@pytest.mark.parametrize("empty", ["", " ", " , "])
def test_an_empty_measure_list_is_refused_not_read_as_none(cli, two_runs, tmp_path, command, flag, empty):
    head = ["report", two_runs / "fedavg", "--out", tmp_path / "r", *REPORT] if command == "report" else \
        ["landscape", "--ckpt", two_runs / "fedavg" / "round_0001.safetensors", "--surface", "1d", "--grid", "2",
         "--samples", "20", "--out", tmp_path / "l"]  # fmt: skip
    code, _, err = cli(*[a for a in head if a not in ("--sharpness", "none")], flag, empty)
    assert code == 2 and err.count("\n") == 1 and err.startswith(f"flatfl: error: {flag} ") and "empty" in err, err
    if command == "report" and flag == "--sharpness" and "," not in empty:
        assert "--sharpness none" in err  # the spelling of 'measure none'
    assert not (tmp_path / "r").exists() and not (tmp_path / "l").exists()


def test_a_bend_trained_with_a_diverging_lr_is_said_on_stderr_page_and_csv(cli, two_runs, tmp_path):
    import csv

    args = ["report", two_runs / "fedavg", two_runs / "fedmut", "--out", tmp_path / "r", *REPORT, "--connect",
            "--connect-steps", "5", "--at-rounds", "1", "--connect-lr", "1e21"]  # fmt: skip
    for _ in range(2):  # computed, then read back from the cache: said both times
        code, _, err = cli(*args)
        assert code == 0, err
        assert "flatfl: warning: curve training diverged at --connect-lr 1e+21" in err, err
    rows = list(csv.DictReader((tmp_path / "r" / "connectivity.csv").open()))
    assert len(rows) == 1 and rows[0]["curve_barrier"] == "nan" and rows[0]["curve_diverged"] == "True", rows
    assert float(rows[0]["line_barrier"]) >= 0  # the straight line does not depend on the bend
    page = (tmp_path / "r" / "report.html").read_text()
    assert "curve training diverged at --connect-lr 1e+21" in page
    from flatfl.runs.measures.connect import curve_diverged

    assert curve_diverged([2.3, 2.5, 2.3], 0.01) is None  # finite losses along the curve: nothing to say
    assert "--connect-lr 0.5" in curve_diverged([2.3, float("inf"), 2.3], 0.5)


def test_landscape_connect_says_a_diverged_bend(cli, two_runs, tmp_path):
    ckpt = two_runs / "fedavg" / "round_0001.safetensors"
    other = two_runs / "fedmut" / "round_0001.safetensors"
    code, _, err = cli("landscape", "--ckpt", ckpt, "--connect", other, "--connect-steps", "5", "--connect-lr",
                       "1e21", "--samples", "20", "--out", tmp_path / "l")  # fmt: skip
    assert code == 0 and "curve training diverged at --connect-lr 1e+21" in err, err


# flags a help names that belong to another program or command, said so in the text
FOREIGN = {
    ("train", "description"): {"--nproc", "--nnodes", "--node-rank", "--rdzv-endpoint"},  # torchrun's
    ("landscape", "description"): {"--nproc"},  # torchrun's
    ("data shakespeare", "description"): {"--dataset", "--data-root"},  # "then train with: flatfl train ..."
    ("landscape", "--federated"): {"--save-clients"},  # flatfl train's, "(needs --save-clients)"
    ("report", "--label"): {"--save-clients", "--save-every", "--eval-batch-size"},  # what runs stored (train's)
    ("report", "--connect"): {"--save-clients"},  # "runs trained with --save-clients"
    ("prune", "description"): {"--resume"},  # flatfl train --resume
    ("prune", "--keep-clients"): {"--save-clients"},  # the files flatfl train --save-clients writes
}


def test_every_flag_a_help_names_exists_on_that_command():
    import re

    wrong = []
    for name, p in _subparsers(build_parser()).items():
        own = set(p._option_string_actions)
        texts = [("description", p.description or ""), ("epilog", p.epilog or "")]
        texts += [(a.option_strings[0] if a.option_strings else a.dest, a.help or "") for a in p._actions
                  if a.help != argparse.SUPPRESS]  # fmt: skip
        for where, text in texts:
            for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", text):
                if flag not in own and flag not in FOREIGN.get((name, where), ()):
                    wrong.append(f"{name} {where}: {flag}")
    assert not wrong, wrong
    assert "--tol" not in _subparsers(build_parser())["report"].format_help()


def test_said_before_output_waits_for_output_and_is_dropped_by_a_refusal(capsys):
    import sys

    from flatfl.cli.common import said_before_output

    with said_before_output(["flatfl: note: n\n"]):
        pass  # nothing written: said at the end
    assert capsys.readouterr().err == "flatfl: note: n\n"
    with pytest.raises(ValueError), said_before_output(["flatfl: note: n\n"]):
        raise ValueError("refused")
    assert capsys.readouterr().err == ""
    with said_before_output(["flatfl: note: n\n"]):
        print("out")
        print("more", file=sys.stderr)
    got = capsys.readouterr()
    assert got.out == "out\n" and got.err == "flatfl: note: n\nmore\n", got


# -- 3. wording: files that cannot be read, FIFOs and devices, resumed settings --------------------------------
def test_access_error_text_tells_a_refused_read_from_a_refused_write(tmp_path, monkeypatch):
    import errno

    from flatfl.atomic import access_error_text

    f = tmp_path / "sub" / "a.json"
    f.parent.mkdir()
    f.write_text("{}")
    denied = PermissionError(errno.EACCES, "Permission denied", str(f))
    can = {}  # path -> the modes os.access refuses there (root may do everything: simulated)
    monkeypatch.setattr(os, "access", lambda p, mode: not (mode & can.get(str(p), 0)))
    assert access_error_text(denied).startswith(f"{f}: cannot write (Permission denied); free space or fix")
    can[str(f)] = os.R_OK
    assert access_error_text(denied) == f"{f}: cannot read (Permission denied); fix its permissions, then run the " \
        "command again"  # fmt: skip
    can.clear()
    can[str(f.parent)] = os.X_OK
    text = access_error_text(denied)
    assert f"cannot read (Permission denied); fix the permissions of the folder {f.parent}," in text, text
    full = OSError(errno.ENOSPC, "No space left on device", str(f))
    assert "cannot write (No space left on device)" in access_error_text(full)


def test_fifos_and_devices_are_named_for_what_they_are(cli, two_runs, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path, kind in ((fifo, "a FIFO"), (Path("/dev/null"), "a character device")):
        code, _, err = cli("prune", path, "--keep", "1")
        assert code == 2 and err == f"flatfl: error: {path}: {kind}, not a run folder (prune takes the folder " \
            "flatfl train --out wrote)\n", err  # fmt: skip
        code, _, err = cli("landscape", "--model", "flatfl.models.cnn:SmallCNN", "--weights", path, "--data",
                           "digits", "--hessian", "--samples", "20", "--out", tmp_path / "l")  # fmt: skip
        assert code == 2 and err.count("\n") == 1, err
        assert f"--weights: {path} is not a regular file ({kind})" in err and "does not exist" not in err, err
        code, _, err = cli("landscape", "--ckpt", path, "--hessian")
        assert code == 2 and f"--ckpt: {path} is not a regular file ({kind})" in err, err
        code, _, err = cli("train", "--resume", path, "--rounds", "3")
        assert code == 2 and f"--resume: {path} is not a folder ({kind})" in err, err


def test_a_resumed_runs_settings_are_said_as_flags(cli, two_runs):
    run = two_runs / "fedavg"  # no preset, weighted (FedAvg's default)
    code, _, err = cli("train", "--resume", run, "--rounds", "3", "--preset", "paper")
    assert code == 2 and "--preset paper differs from the resumed run, which has no preset (" in err, err
    assert "None" not in err, err
    code, _, err = cli("train", "--resume", run, "--rounds", "3", "--unweighted")
    assert code == 2 and "--unweighted differs from the resumed run, which has --weighted (" in err, err
    assert "False" not in err and "True" not in err, err
    code, _, err = cli("train", "--resume", run, "--rounds", "3", "--augment")
    assert code == 2 and "--augment differs from the resumed run, which has no --augment (" in err, err
