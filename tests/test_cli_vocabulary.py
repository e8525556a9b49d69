"""One vocabulary across subcommands: renamed flags (old spellings still work, with a warning), an option
of a measure switches the measure on, and train's start-up header."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flatfl.cli import build_parser
from flatfl.cli.landscape import implied_measures
from flatfl.errors import UserError
from tests.conftest import TINY


def _parse(*args: str) -> dict:
    return vars(build_parser().parse_args(list(args)))


@pytest.mark.parametrize(
    ("new", "old", "dest", "value", "want"),
    [
        (["landscape", "--federated-clients", "0,2"], ["landscape", "--clients", "0,2"], "federated_clients", 0, "0,2"),
        (
            ["report", "r", "--out", "o", "--at-rounds", "4,2"],
            ["report", "r", "--out", "o", "--rounds", "4,2"],
            "at_rounds",
            0,
            (2, 4),
        ),  # fmt: skip
        (["partition", "--plot", "p.png"], ["partition", "--out", "p.png"], "plot", 0, "p.png"),
    ],
)
def test_renamed_flag_and_its_deprecated_alias(capsys, new, old, dest, value, want):
    assert str(_parse(*new)[dest]) == str(want)
    assert "deprecated" not in capsys.readouterr().err
    assert str(_parse(*old)[dest]) == str(want)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "deprecated" in err[0] and new[-2] in err[0], err
    command = build_parser()._subparsers._group_actions[0].choices[new[0]]
    assert old[-2] not in command.format_help()  # hidden from --help


def test_one_name_one_meaning_in_help():
    choices = build_parser()._subparsers._group_actions[0].choices
    assert "--frac" not in choices["partition"].format_help()  # partition draws no clients per round
    metavars = {a.option_strings[0]: a.metavar for a in choices["train"]._actions if a.option_strings}
    assert metavars["--radius"] != metavars["--dirichlet"]
    for name in ("landscape", "report"):
        assert "--clients" not in choices[name].format_help().replace("--federated-clients", "")


@pytest.mark.parametrize(
    ("args", "on"),
    [
        (["--topk", "3"], {"hessian"}),
        (["--tol", "1e-3"], {"hessian"}),
        (["--max-vectors", "20"], {"hessian"}),
        (["--trace-matvecs", "12"], {"trace"}),
        (["--trace-method", "hutchinson"], {"trace"}),
        (["--slq-runs", "2"], {"density"}),
        (["--slq-steps", "5", "--max-vectors", "20"], {"density"}),  # --max-vectors bounds SLQ here, not Lanczos
        (["--federated-clients", "all"], {"federated"}),
        (["--eps", "1e-3"], {"sharpness"}),
        (["--to", "mutant:0"], {"surface"}),
        (["--surface-dirs", "pca"], {"surface"}),
        (["--hessian"], {"hessian"}),
        (["--federated", "--tol", "1e-9"], {"federated"}),  # --tol steers the per-client Lanczos here
        (["--trace", "--max-vectors", "20"], {"trace"}),
        (["--topk", "3", "--federated"], {"hessian", "federated"}),
    ],
)
def test_an_option_switches_its_measure_on(args, on):
    ns = implied_measures(_parse("landscape", "--ckpt", "x", *args))
    measures = {"hessian", "trace", "density", "federated", "sharpness", "surface"}
    assert {m for m in measures if ns[m]} == on
    assert ns["topk"] == (3 if "--topk" in args else 5) and ns["levels"] is None  # the rest at their defaults


def test_implied_surface_dimension_and_sharpness():
    to = implied_measures(_parse("landscape", "--ckpt", "x", "--to", "a.safetensors"))
    assert (to["surface"], to["surface_dirs"]) == ("1d", "interp")  # --to alone is the line to it
    models = implied_measures(_parse("landscape", "--ckpt", "x", "--models", "a", "b"))
    assert (models["surface"], models["surface_dirs"]) == ("2d", "models")
    contradictions = [
        (("--surface", "1d", "--models", "a", "b"), "--models: the models surface is 2d"),
        (("--surface", "2d", "--to", "a"), "--to: the interp surface is 1d"),
        (("--to", "a", "--surface-dirs", "random"), "--to: only with --surface-dirs interp"),
        (("--surface", "1d", "--span", "2", "--range=-1,1"), "--span and --range"),
    ]
    for args, message in contradictions:
        with pytest.raises(UserError, match=message):
            implied_measures(_parse("landscape", "--ckpt", "x", *args))
    assert implied_measures(_parse("landscape", "--ckpt", "x", "--m", "32"))["sharpness"] == "sam"
    with pytest.raises(UserError, match="--grid.*--surface 1d or --surface 2d"):
        implied_measures(_parse("landscape", "--ckpt", "x", "--grid", "5"))
    with pytest.raises(UserError, match="--rho.*--sharpness"):
        implied_measures(_parse("landscape", "--ckpt", "x", "--rho", "0.1"))
    assert implied_measures(_parse("landscape", "--ckpt", "x", "--sharpness", "sam", "--rho", "0.1"))["rho"] == 0.1


def test_topk_alone_computes_the_hessian_and_train_prints_a_header(cli, tmp_path):
    code, out, err = cli("train", *TINY, "--rounds", "1", "--out", tmp_path / "r")
    assert code == 0, err
    head = out.splitlines()[:5]
    assert head[0].startswith("flatfl train: fedavg on cpu, seed 0 -> ") and str(tmp_path / "r") in head[0]
    info = json.loads((tmp_path / "r" / "run.json").read_text())
    n = info["model"]["num_parameters"]
    assert head[1] == f"  model    smallcnn, {n:,} parameters"
    assert f"{info['dataset']['n_train']:,} train / {info['dataset']['n_test']:,} test samples" in head[2]
    assert "dirichlet(0.5) over 6 clients" in head[2]
    assert head[3] == "  rounds   1, 3 clients per round (frac 0.5)"
    first = json.loads((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()[0])
    assert head[4] == f"  round 0  test_acc {first['test_acc']:.4f}  test_loss {first['test_loss']:.4f}"
    code, _, err = cli("landscape", "--ckpt", tmp_path / "r" / "round_0001.safetensors", "--topk", "2",
                       "--samples", "60", "--out", tmp_path / "l")  # fmt: skip
    assert code == 0, err
    rec = json.loads((tmp_path / "l" / "landscape.json").read_text())
    assert len(rec["hessian"]["eigenvalues"]) == 2 and "trace" not in rec


EXAMPLES = sorted(p for p in (Path(__file__).parents[1] / "examples").glob("*.py") if "argparse" in p.read_text())


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_flag_is_explained(path, monkeypatch):
    """``examples/X.py --help`` explains each flag: a help text, and a default for every flag that has one."""
    import argparse
    import runpy
    import sys

    seen = []

    def capture(self, *a, **k):
        seen.append(self)
        raise SystemExit(0)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    monkeypatch.setattr(sys, "argv", [str(path), "--help"])
    monkeypatch.syspath_prepend(str(path.parent))
    with pytest.raises(SystemExit):
        runpy.run_path(str(path), run_name="__main__")
    (parser,) = seen
    for action in parser._actions:
        if action.option_strings and action.help is not argparse.SUPPRESS and "-h" not in action.option_strings:
            assert action.help, f"{path.name} {action.option_strings[0]}: no help"
            if action.default not in (None, False):
                assert "default" in action.help, f"{path.name} {action.option_strings[0]}: default not stated"


@pytest.mark.parametrize(
    "args",
    [
        ["landscape", "--ckpt", "x", "--rho", "nan"],
        ["landscape", "--ckpt", "x", "--surface", "1d", "--range=-inf,1"],
        ["report", "r", "--out", "o", "--widths", "nan"],
        ["report", "r", "--out", "o", "--widths", "0.1,inf"],
    ],
)
def test_non_finite_numbers_are_refused_by_the_flag_types(args, capsys):
    with pytest.raises(SystemExit) as exit_:
        _parse(*args)
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1 and args[-1].split(",")[-1].split("=")[-1] in err


@pytest.mark.parametrize("args", [["--lr", "inf"], ["--dirichlet", "inf"], ["--radius", "nan"]])
def test_non_finite_numbers_are_refused_by_from_flags(args):
    """flatfl train's config flags are typed by RunConfig.from_flags (shared with the Flower app), not the parser."""
    from flatfl.cli.train import config_flags
    from flatfl.config import RunConfig
    from flatfl.errors import UserError

    what = "((non-negative|positive) number|concentration of at least 1e-06)"
    with pytest.raises(UserError, match=f"^{args[0]}: expected a {what}, got '{args[1]}'$"):
        RunConfig.from_flags(config_flags(_parse("train", "--algo", "fedmut", *args)))
