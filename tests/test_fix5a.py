"""fix5a: findings of the hostile pass hostile-probe12/hostile3 (issue #27).

1. a flag given twice: the last one counts (argparse), said in every --help and in one stderr note;
2. flatfl report's leftovers (--sharpness '', --connect-lr far too large, help naming flags report lacks);
3. wording of files that cannot be read, FIFOs and devices, and of resumed runs' settings.
"""

from __future__ import annotations

import argparse

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


def test_the_note_is_printed_by_the_command_before_it_runs(cli, tmp_path):
    code, _, err = cli("report", tmp_path / "none", "--out", tmp_path / "o", "--at-rounds", "2", "--at-rounds", "3")
    lines = err.strip().splitlines()
    assert code == 2 and lines[0] == "flatfl: note: --at-rounds given twice (2, then 3): 3 counts", err
    assert lines[1].startswith("flatfl: error: ") and len(lines) == 2, err


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
