"""Odd paths on every path flag (#27): names the OS refuses are one argparse line naming the flag, before any
work; valid unicode, tab and newline names work end to end (train, landscape, prune)."""

from __future__ import annotations

import json

import pytest

from flatfl import checkpoint as ckpt
from tests.conftest import TINY
from tests.test_cli import _one_line_error

LONG_NAME = "n" * 256  # one byte over NAME_MAX
CUT = ["--samples", "40", "--hessian", "--topk", "1"]


def _long_path(tmp_path):
    return str(tmp_path) + "/" + "d/" * 2100 + "x"  # over PATH_MAX (4096 bytes)


# (flag named in the error, command with PATH where the odd path goes)
WHERE = [
    ("--out", ["train", *TINY, "--rounds", "1", "--out", "PATH"]),
    ("--ckpt", ["landscape", *CUT, "--ckpt", "PATH"]),
    ("--out", ["landscape", *CUT, "--ckpt", "RUN/round_0001.safetensors", "--out", "PATH"]),
    (
        "--to",
        [
            "landscape",
            "--ckpt",
            "RUN/round_0001.safetensors",
            "--surface",
            "1d",
            "--surface-dirs",
            "interp",
            "--to",
            "PATH",
        ],
    ),  # fmt: skip
    ("--weights", ["landscape", *CUT, "--model", "resnet18", "--data", "digits", "--weights", "PATH"]),
    ("RUN", ["report", "PATH", "--out", "OUT"]),
    ("--out", ["report", "RUN", "--out", "PATH"]),
    ("RUN", ["prune", "PATH", "--keep", "0", "--dry-run"]),
    ("--plot", ["partition", "--dataset", "digits", "--clients", "6", "--plot", "PATH"]),
]


@pytest.fixture(scope="module")
def run1(tmp_path_factory):
    from flatfl.cli import main

    out = tmp_path_factory.mktemp("run1") / "run"
    assert main(["train", *TINY, "--rounds", "1", "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("flag, cmd", WHERE, ids=[f"{c[0]}{f}" for f, c in WHERE])
@pytest.mark.parametrize("odd", ["name_max", "path_max", "empty"])
def test_path_the_os_refuses_is_one_line_naming_the_flag(cli, run1, tmp_path, flag, cmd, odd):
    """Before: ``OSError: [Errno 36] File name too long`` tracebacks (train --out, partition --plot), and an
    empty --out/--plot silently meaning the current folder."""
    path = {"name_max": LONG_NAME, "path_max": _long_path(tmp_path), "empty": ""}[odd]
    args = [path if a == "PATH" else str(run1) + a[3:] if a.startswith("RUN") else a for a in cmd]
    args = [str(tmp_path / "o") if a == "OUT" else a for a in args]
    code, _, err = cli(*args)
    needle = {"name_max": "a name of 256 bytes", "path_max": "bytes; the system allows 4095", "empty": "empty path"}
    _one_line_error(code, err, f"argument {flag}", needle[odd])
    assert not (tmp_path / "o").exists()


def test_too_long_name_made_from_a_valid_one_is_one_line(cli, tmp_path):
    """A name that passes the check but grows over NAME_MAX by a suffix flatfl adds (``--plot NAME`` gets
    ``.png``): the OS's ENAMETOOLONG is one line naming the file, not a traceback."""
    code, _, err = cli("partition", "--dataset", "digits", "--clients", "6", "--plot", tmp_path / ("p" * 253))
    _one_line_error(code, err, "ppppp", "File name too long", "shorter")


@pytest.mark.parametrize("name", ["é-😀-ריצה\u202e", "tab\there", "new\nline"], ids=["unicode", "tab", "newline"])
def test_unicode_tab_and_newline_names_work(cli, tmp_path, name):
    """Valid names are used as they are: a run, its landscape and its pruning under such a folder."""
    run = tmp_path / name / "run"
    code, _, err = cli("train", *TINY, "--rounds", "2", "--out", run)
    assert code == 0, err
    assert ckpt.list_rounds(run) == [0, 1, 2]
    out = tmp_path / name / f"land-{name}"
    code, _, err = cli("landscape", *CUT, "--ckpt", run / "round_0002.safetensors", "--out", out)
    assert code == 0, err
    assert json.loads((out / "landscape.json").read_text())["hessian"]["eigenvalues"]
    code, _, err = cli("prune", run, "--keep", "0")
    assert code == 0, err
    assert ckpt.list_rounds(run) == [0, 2]


@pytest.mark.parametrize("flag", ["--ckpt", "--to"])
def test_trailing_slash_on_a_file_is_refused(cli, run1, flag):
    """Before: pathlib dropped the '/' and ``--ckpt round_0001.safetensors/`` was analysed as the file."""
    ck = f"{run1}/round_0001.safetensors"
    extra = ["--ckpt", ck, "--surface", "1d", "--surface-dirs", "interp"] if flag == "--to" else CUT
    code, _, err = cli("landscape", *extra, flag, ck + "/")
    _one_line_error(code, err, f"argument {flag}", "is a file, but the path ends in '/'")


def test_a_newline_in_a_named_path_stays_on_one_line(cli, tmp_path):
    """Before: ``--ckpt 'a<newline>b'`` printed its 'does not exist' message over two lines."""
    code, _, err = cli("landscape", *CUT, "--ckpt", tmp_path / "a\nb.safetensors")
    _one_line_error(code, err, "--ckpt", "a\\nb.safetensors does not exist")


def test_weights_naming_a_folder_says_so(cli, run1):
    """Before: ``--weights RUN`` (a folder) said 'RUN does not exist'."""
    code, _, err = cli("landscape", *CUT, "--model", "resnet18", "--data", "digits", "--weights", run1)
    _one_line_error(code, err, "--weights", f"{run1} is a folder")
