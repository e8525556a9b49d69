"""Confounds shown and removable (which settings besides the seed tell two groups apart), and the scale
context under the verdict (||θ||₂ per group, per tensor, and the ratio of norms), on real tiny runs."""

from __future__ import annotations

import html
import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from flatfl import checkpoint as ckpt
from flatfl.runs.groups import Group, confound_sentence, differences, group_runs, reference_group
from flatfl.runs.run import Run
from flatfl.runs.verdict_page import text_html
from tests.conftest import TINY, assert_same_rounds
from tests.test_cli import _one_line_error

CHEAP = ["--at-rounds", "3", "--samples", "50", "--no-surface", "--no-spread", "--trace-matvecs", "0",
         "--sharpness", "none", "--slices", "0", "--no-match", "--no-progress"]  # fmt: skip


@pytest.fixture(scope="module")
def arms(tmp_path_factory):
    """Seed 0, 3 rounds: FedAvg sample-weighted (as FedAvg's paper), FedAvg plain mean (FedMut's
    aggregation), FedMut, and FedProx with mu = 0 (FedAvg sample-weighted under another name)."""
    from flatfl.cli import main

    root = tmp_path_factory.mktemp("arms")
    for name, extra in (("avg-w", ["--algo", "fedavg"]), ("avg-mean", ["--algo", "fedavg", "--unweighted"]),
                        ("mut", ["--algo", "fedmut"]), ("prox0", ["--algo", "fedprox", "--mu", "0"])):  # fmt: skip
        assert main(["train", *TINY, "--rounds", "3", *extra, "--out", str(root / name)]) == 0
    return root


def _comparisons(out: Path) -> tuple[dict, dict]:
    rep = json.loads((out / "report.json").read_text())
    return rep, rep["verdict"][0]["comparisons"]


def test_fedmut_radius_zero_is_plain_mean_fedavg_bit_for_bit(arms, tiny):
    """FedMut without mutation is FedAvg with FedMut's aggregation: the same tensors in every round file."""
    assert_same_rounds(tiny("mut0", "--radius", "0", rounds=3), arms / "avg-mean", 3)
    # the aggregation alone changes the models (so the equality above is not vacuous)
    a, b = Run.open(arms / "avg-w").global_state(3), Run.open(arms / "avg-mean").global_state(3)
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_one_extra_flag_is_listed_and_named_in_the_headline(cli, arms, tmp_path):
    out = tmp_path / "r1"
    code, stdout, err = cli("report", arms / "mut", arms / "avg-w", arms / "avg-mean", "--out", out, *CHEAP)
    assert code == 0, err
    rep, comps = _comparisons(out)
    # printed in the groups' order, not report.json's sorted one
    assert rep["group_order"] == ["fedmut", "fedavg weighted=True", "fedavg weighted=False"]
    assert stdout.index("weighted=False vs fedmut): ") < stdout.index("weighted=False vs fedavg weighted=True): ")
    # the default reference: the FedAvg group with FedMut's aggregation (no setting but the algorithm apart)
    assert rep["verdict"][0]["reference"] == "fedavg weighted=False"
    plain = comps["fedmut"]
    assert {d["key"] for d in plain["differs_by"]} == {"algo", *(f"algo_config.{k}" for k in
                                                        ("radius", "mut_acc_rate", "mut_bound", "mutate"))}  # fmt: skip
    assert all(d["algorithm"] for d in plain["differs_by"]) and plain["confounds"] == ""
    assert "differs" not in plain["headline"]
    agg = comps["fedavg weighted=True"]
    assert [(d["key"], d["value"], d["reference"]) for d in agg["differs_by"]] == [
        ("algo_config.weighted", True, False)
    ]
    said = "fedavg weighted=True differs from fedavg weighted=False by: aggregation sample-weighted "
    said += "(fedavg weighted=False: plain mean)."
    assert agg["headline"].endswith(said)
    assert said in stdout
    page = (out / "report.html").read_text()
    assert text_html(plain["differs_by_text"]) in page and html.escape(said) in page
    assert plain["differs_by_text"].startswith("fedmut differs from fedavg weighted=False by the algorithm alone: ")
    assert "radius 4" in plain["differs_by_text"]
    # FedMut's own settings in words with their flag, the flag kept on one line on the page
    assert "mutation acceleration β₀ (--mut-acc-rate) 0.3" in plain["differs_by_text"]
    assert "round β reaches 0 (--mut-bound) 50" in plain["differs_by_text"]
    assert "(<span style='white-space:nowrap'>--mut-bound</span>) 50" in page and "mut_acc_rate 0.3" not in page


def test_a_confound_is_named_in_the_answer_and_norm_ratio_of_a_rescaled_copy(cli, arms, tmp_path):
    """FedMut against FedAvg as its paper runs it: the aggregation is named in the answer. A copy of
    FedProx(mu = 0) -- FedAvg's models -- with every parameter doubled has twice FedAvg's weight norm."""
    twice = tmp_path / "prox0x2"
    shutil.copytree(arms / "prox0", twice)
    info = ckpt.read_run_json(twice)
    for r in ckpt.list_rounds(twice):
        state, meta = ckpt.load_tensors(ckpt.round_path(twice, r))
        state = {k: v * 2 if k in info["model"]["parameters"] else v for k, v in state.items()}
        ckpt.save_round(twice, r, state, meta["config"], info["identity"])
    out = tmp_path / "r2"
    runs = [arms / "avg-w", arms / "mut", twice]
    code, stdout, err = cli("report", *runs, "--out", out, "--reference", "fedavg", *CHEAP)
    assert code == 0, err
    rep, comps = _comparisons(out)
    said = "fedmut also differs by: aggregation plain mean (fedavg: sample-weighted)."
    assert comps["fedmut"]["headline"].endswith(said) and said in stdout
    page = (out / "report.html").read_text()
    assert html.escape(said) in page
    assert "<table class='context'>" in page and "‖θ<sub>l</sub>‖₂ per parameter tensor" in page  # under the verdict
    assert page.index("table class='verdict'") < page.index("<table class='context'>")
    assert comps["fedprox"]["confounds"] == ""  # mu = 0 is FedProx's own setting
    # ||θ||₂ recomputed from the round file: float64 over run.json's parameters
    state = Run.open(arms / "avg-w").global_state(3)
    want = math.sqrt(sum(float((state[k].double() ** 2).sum()) for k in info["model"]["parameters"]))
    ctx = rep["verdict"][0]["context"]
    assert [c["measure"] for c in ctx] == ["weight_norm"] and ctx[0]["vote"] is False
    assert ctx[0]["groups"]["fedavg"]["seeds"]["0"] == pytest.approx(want, rel=1e-12)
    assert comps["fedprox"]["norm_ratio"] == pytest.approx(2.0, rel=1e-12)
    layers = ctx[0]["layers"]
    assert layers["fedprox"]["0"].keys() == set(info["model"]["parameters"])
    for k, v in layers["fedavg"]["0"].items():
        assert layers["fedprox"]["0"][k] == pytest.approx(2 * v, rel=1e-12), k
    assert "weight_norm" not in {r["measure"] for r in rep["verdict"][0]["rows"]}  # context, not a vote
    assert "context (not a verdict): ‖θ‖₂ of the global model" in stdout
    assert "; ‖θ‖₂ fedprox/fedavg ×2\n" in stdout  # the last comparison's ratio ends the line


def _group(label: str, algo: str, **changes: dict) -> Group:
    config = json.loads(Path("checkpoints/reference/digits-fedavg/run.json").read_text())["config"]
    config = {**config, "algo": algo, "algo_config": {"weighted": True}}
    for part, values in changes.items():
        config[part] = {**config[part], **values}
    g = Group(label, "", algo)
    g.runs[0] = Run(Path(label), {"config": config})
    return g


def test_differences_in_words():
    ref = _group("fedavg", "fedavg")
    lr = differences(ref, _group("fast", "fedavg", local={"lr": 0.1}))
    assert [(d.key, d.value, d.reference, d.side, d.text) for d in lr] == [
        ("local.lr", 0.1, 0.05, "both", "local lr 0.1 (fedavg: 0.05)")
    ]
    assert confound_sentence(ref, _group("fast", "fedavg", local={"lr": 0.1})) == (
        "fast differs from fedavg by: local lr 0.1 (fedavg: 0.05)."
    )
    mut = _group("fedmut", "fedmut", algo_config={"weighted": False, "radius": 4.0}, model_kwargs={"width": 8})
    texts = [d.text for d in differences(ref, mut)]
    assert texts == ["algorithm FedMut (FedAvg)", "aggregation plain mean (fedavg: sample-weighted)",
                     "radius 4", "model_kwargs.width=8"]  # fmt: skip
    assert confound_sentence(ref, mut) == (
        "fedmut also differs by: aggregation plain mean (fedavg: sample-weighted); model_kwargs.width=8."
    )
    same = _group("twin", "fedavg", data={"data_root": "/elsewhere"})  # NOT_IDENTITY: not a difference
    assert differences(ref, same) == []


def test_reference_choice():
    w, mean = _group("fedavg w", "fedavg"), _group("fedavg mean", "fedavg", algo_config={"weighted": False})
    mut = _group("fedmut", "fedmut", algo_config={"weighted": False, "radius": 4.0})
    assert reference_group([w, mean, mut]) is mean  # no confound with FedMut
    assert reference_group([w, mut]) is w


def test_bad_reference_is_one_line(cli, arms, tmp_path):
    code, _, err = cli("report", arms / "avg-w", arms / "mut", "--out", tmp_path / "o", "--reference", "nope", *CHEAP)
    _one_line_error(code, err, "--reference nope", "'fedavg'", "'fedmut'")
    # --reference by a run's path, or by a label
    runs = [Run.open(arms / "avg-w"), Run.open(arms / "mut")]
    assert reference_group(group_runs(runs, reference=str(arms / "mut"))).label == "fedmut"
    assert reference_group(group_runs(runs, reference="fedmut")).label == "fedmut"
    assert reference_group(group_runs(runs)).label == "fedavg"
