"""The measure registry: a measure defined here, in a test module, reaches ``flatfl landscape``, ``flatfl report``
(landscape.json, report.csv, verdict.csv, report.html) and ``--help`` without a line changed anywhere else.

The toy measure is ``scale`` times the mean loss on the analysis data: its exact reference is the record's own
``loss`` (and report.csv's ``train_loss``), computed by a different code path (the base record).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from typing import Any

import pytest

from flatfl.runs.measures import REGISTRY, Context, Flag, Meaning, MeasureSpec, register, unregister
from flatfl.runs.problem import Problem


@dataclass(frozen=True)
class ToySettings:
    scale: float = 1.0


def _toy(problem: Problem, s: ToySettings, ctx: Context) -> dict[str, Any]:
    return {"value": s.scale * problem.objective.loss(), "scale": s.scale}


TOY = MeasureSpec(
    name="toy_loss",
    label="toy scaled loss",
    direction="lower",
    invariances=frozenset(),
    settings=ToySettings,
    compute=_toy,
    flags=(
        Flag(("--toy-loss",), {"action": "store_true", "help": "the toy measure: scale x the mean loss"}),
        Flag(("--toy-scale",), {"type": float, "metavar": "S", "help": "its scale (default: 1)"}, "scale"),
    ),
    # its page text, read by the report's "What the measures mean" section, and the work it cites
    meaning=lambda s, report: Meaning(
        f"toy(θ) = {s.scale:g} · L(θ), the mean loss scaled (a test measure).", "lower", "none (exact)", ("Toy 2026",)
    ),
    references={"Toy 2026": "A. Toy. A measure defined in a test module. Journal of Registries, 2026."},
)


@pytest.fixture
def toy():
    register(TOY)
    yield TOY
    unregister(TOY.name)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from tests.conftest import train_pair

    return train_pair(tmp_path_factory.mktemp("toy"), 2)


def test_a_registered_measure_reaches_landscape_and_its_help(toy, runs, cli, tmp_path):
    code, out, _ = cli("landscape", "--help")
    assert code == 0 and "--toy-loss" in out and "--toy-scale" in out
    # an option of the measure alone switches it on (as --topk does --hessian), and fills its settings
    code, _, err = cli("landscape", "--ckpt", runs / "fedmut" / "round_0002.safetensors", "--toy-scale", "2.5",
                       "--samples", "60", "--out", tmp_path / "land")  # fmt: skip
    assert code == 0, err
    rec = json.loads((tmp_path / "land" / "landscape.json").read_text())
    assert rec["toy_loss"]["scale"] == 2.5 and rec["toy_loss"]["seconds"] >= 0
    assert rec["toy_loss"]["value"] == pytest.approx(2.5 * rec["loss"], rel=1e-6)
    assert dict(rec["settings"]["measures"]) == {"toy_loss": {"scale": 2.5}}
    assert "hessian" not in rec and "sharpness" not in rec  # nothing else was asked for


def test_a_registered_measure_reaches_the_report(toy, runs, cli, tmp_path):
    out = tmp_path / "rep"
    code, stdout, err = cli(
        "report", runs / "fedavg", runs / "fedmut", "--out", out, "--toy-loss", "--no-hessian", "--trace-matvecs", "0",
        "--sharpness", "none", "--slices", "0", "--no-surface", "--no-spread", "--no-match", "--samples", "60",
        "--at-rounds", "2", "--no-progress",
    )  # fmt: skip
    assert code == 0, err
    assert "toy scaled loss" in stdout  # the printed verdict table
    cached = sorted((out / "runs").glob("*/round_0002/landscape.json"))
    assert len(cached) == 2
    for f in cached:
        rec = json.loads(f.read_text())
        assert rec["toy_loss"]["value"] == pytest.approx(rec["loss"], rel=1e-6)  # scale 1
    with open(out / "report.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and all(float(r["toy_loss"]) == pytest.approx(float(r["train_loss"]), rel=1e-6) for r in rows)
    with open(out / "verdict.csv") as f:
        verdict = [r for r in csv.DictReader(f) if r["measure"] == "toy_loss"]
    assert len(verdict) == 1 and verdict[0]["group_a"] == "fedavg" and verdict[0]["group_b"] == "fedmut"
    by_group = {r["run"]: float(r["toy_loss"]) for r in rows}
    assert float(verdict[0]["a_mean"]) == pytest.approx(by_group["fedavg"])
    assert float(verdict[0]["b_mean"]) == pytest.approx(by_group["fedmut"])
    html = (out / "report.html").read_text()
    assert "toy scaled loss" in html
    # its text in "What the measures mean" (from the spec, the page untouched), its anchor from the verdict
    # table, its citation linked to its bibliography entry
    glossary = html[html.index("What the measures mean") :]
    assert "<dt id='m-toy_loss'>" in glossary
    assert "toy(θ) = 1 · L(θ), the mean loss scaled (a test measure)." in glossary
    assert "A. Toy. A measure defined in a test module. Journal of Registries, 2026." in glossary
    assert "href='#ref-toy2026'" in glossary and "href='#m-toy_loss'" in html
    # not tested for invariance: the page claims none
    assert "not tested by flatfl's reparametrisation tests" in glossary
    rep = json.loads((out / "report.json").read_text())
    row = next(r for r in rep["verdict"][0]["rows"] if r["measure"] == "toy_loss")
    assert row["lower_is_better"] is True and row["invariant_to"] == []


def test_the_registry_refuses_a_second_measure_of_the_same_name_and_forgets_an_unregistered_one(toy, cli):
    with pytest.raises(ValueError, match="already registered"):
        register(TOY)
    unregister(TOY.name)
    assert TOY.name not in REGISTRY
    code, out, _ = cli("landscape", "--help")
    assert code == 0 and "--toy-loss" not in out
    with pytest.raises(ValueError, match="direction"):
        MeasureSpec("bad", "bad", "flatter", frozenset(), ToySettings, _toy)


def test_builtin_specs_declare_tested_invariances_only():
    from flatfl.analysis.invariance import INVARIANT_TO, invariant_to

    for spec in REGISTRY.values():
        claimed = spec.invariances
        key = "width" if spec.name == "widths" else spec.name if spec.name in ("trace",) else None
        if spec.name == "hessian":
            key = "lambda_max"
        elif spec.name in ("relative_flatness", "fisher_rao"):
            key = spec.name
        elif spec.path[:1] == ("sharpness",):
            key = f"sharpness_{spec.name}"
        if key is None:
            assert claimed == frozenset(), f"{spec.name}: claims {sorted(claimed)}, untested"
        else:
            assert claimed == INVARIANT_TO[key] == invariant_to(key), spec.name


def test_samples_zero_means_all_the_data_in_every_command():
    import argparse

    from flatfl.cli import build_parser
    from flatfl.cli.common import samples_setting, samples_t

    parser = build_parser()
    for cmd in (["landscape", "--hessian"], ["report", "somerun", "--out", "o"]):
        ns = vars(parser.parse_args([*cmd, "--samples", "0"]))
        assert samples_setting(ns["samples"]) == (None, False), cmd  # None: all of the selection
        assert samples_setting(vars(parser.parse_args([*cmd, "--samples", "auto"]))["samples"]) == (None, True)
        assert samples_setting(vars(parser.parse_args([*cmd, "--samples", "70"]))["samples"]) == (70, False)
    with pytest.raises(argparse.ArgumentTypeError, match="0 = all"):
        samples_t("-3")


def test_the_reports_default_set_and_its_off_switches():
    """relative flatness and the Fisher-Rao norm are in flatfl report's default set (measured cost:
    docs/landscapes.md); ``--no-NAME`` switches each off, and asking for a measure while switching it off is one
    line naming the flag."""
    from flatfl.cli import build_parser
    from flatfl.cli.report import _report_settings
    from flatfl.errors import UserError
    from flatfl.runs.measures import off_flag

    parser = build_parser()

    def measures(*flags: str) -> list[str]:
        ns = vars(parser.parse_args(["report", "somerun", "--out", "o", *flags]))
        return [name for name, _ in _report_settings(ns).landscape.measures]

    defaults = [s.name for s in REGISTRY.values() if s.report_default]
    assert defaults == ["relative_flatness", "fisher_rao"] and measures() == defaults
    assert [off_flag(REGISTRY[n]) for n in defaults] == ["--no-relative-flatness", "--no-fisher-rao"]
    assert measures("--no-fisher-rao") == ["relative_flatness"]
    assert measures("--no-relative-flatness", "--no-fisher-rao") == []
    # one flag away: the rest join in registry order
    assert measures("--curvature", "ggn", "--per-layer") == ["ggn", "per_layer", "relative_flatness", "fisher_rao"]
    ns = vars(parser.parse_args(["report", "r", "--out", "o", "--relative-flatness-layer", "fc2",
                                 "--no-relative-flatness"]))  # fmt: skip
    with pytest.raises(UserError, match="--no-relative-flatness"):
        _report_settings(ns)
