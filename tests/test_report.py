"""flatfl report: FedAvg vs FedMut side by side, against the per-checkpoint tools it combines."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.sparse.linalg import LinearOperator, eigsh

from flatfl.analysis.operators import HessianOperator, ModelLoss
from flatfl.runs.landscape import select_data
from flatfl.runs.run import Run
from tests.test_cli import _one_line_error


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    from tests.conftest import train_pair

    return train_pair(tmp_path_factory.mktemp("rep"), 4, "--save-clients")


REPORT = ["--at-rounds", "2,4", "--samples", "150", "--grid", "5", "--trace-matvecs", "12",
          "--sharpness", "sam,average_isotropic", "--spread-samples", "100", "--no-match", "--slices", "2",
          "--no-progress"]  # fmt: skip


def test_report_writes_html_csv_json_and_matches_eigsh(cli, pair, tmp_path):
    out = tmp_path / "rep"
    code, stdout, err = cli("report", pair / "fedavg", pair / "fedmut", "--out", out, *REPORT)
    assert code == 0, err
    for name in ("report.html", "report.csv", "verdict.csv", "curves.csv", "report.json", "surfaces.png", "spread.png",
                 "slices.png", "slices.pdf"):  # fmt: skip
        assert (out / name).is_file(), name
    # the report's own settings (not landscape's defaults), printed and in the answer's section, under the verdict
    # table (#29: the headline, then the table)
    said = "report settings (not flatfl landscape's defaults): up to 150 train samples; lambda_max: Lanczos top-1, "
    said += "tol 0.0001"
    assert said in stdout
    page = (out / "report.html").read_text()
    body = page[page.index("<body>") :]
    at = body.index(said.replace("'", "&#x27;"))
    table, where = body.index("<table class='verdict'>"), body.index("<h2 id='where-each")
    assert body.index("<p class='answer'>") < table < at < where
    rows = list(csv.DictReader(open(out / "report.csv")))
    assert [(r["run"], r["round"]) for r in rows] == [
        ("fedavg", "2"),
        ("fedavg", "4"),
        ("fedmut", "2"),
        ("fedmut", "4"),
    ]
    # lambda_max of every row against an independent eigensolver on the same data
    for r in rows:
        run = Run.open(pair / r["run"])
        x, y, _ = select_data(run, "train", 150, 0)
        op = HessianOperator(ModelLoss(run.model(int(r["round"])), x, y, dtype=torch.float64))
        A = LinearOperator(
            (op.size, op.size), matvec=lambda v, op=op: op.matvec(torch.as_tensor(v).reshape(-1)).numpy()
        )
        want = eigsh(A, k=1, which="LA", tol=1e-10)[0][0]
        assert float(r["lambda_max"]) == pytest.approx(want, rel=1e-3)
        assert float(r["trace_stderr"]) > 0 and r["sharpness_sam"] != ""
        metrics = {m["round"]: m for m in run.metrics()}
        assert float(r["test_acc"]) == pytest.approx(metrics[int(r["round"])]["test_acc"])
    # spread: FedAvg's sent models are the global model; FedMut's mutants are not (from round 2 on)
    curves = list(csv.DictReader(open(out / "curves.csv")))
    avg = [c for c in curves if c["run"] == "fedavg" and c["spread_sent_l2_mean"] != ""]
    mut = [c for c in curves if c["run"] == "fedmut" and c["spread_sent_l2_mean"] != ""]
    assert len(avg) == len(mut) == 4
    assert all(float(c["spread_sent_l2_mean"]) == 0.0 for c in avg)
    assert all(float(c["spread_sent_l2_mean"]) > 0 for c in mut if int(c["round"]) >= 2)
    html = (out / "report.html").read_text()
    # plotly.js inlined once, no outside script; every figure is a box with its JSON, drawn by the page's script
    assert "<script src" not in html and html.count("<div class='plot'") >= 5
    assert "flatfl report" in html and "dirichlet" in html  # the command and every run's config
    rep = json.loads((out / "report.json").read_text())
    assert rep["settings"]["landscape"]["samples"] == 150 and len(rep["rounds"]) == 4
    for pdf in ("slices.pdf", "surfaces.pdf", "spread.pdf"):  # TrueType fonts: venues refuse Type 3
        data = (out / pdf).read_bytes()
        assert b"/FontFile2" in data and b"/Type3" not in data, pdf  # embedded TrueType outlines
    assert "one seed: no interval" in stdout and "equal round (4)" in stdout  # the verdict table is printed
    # a rerun reuses every cached checkpoint result and writes the same table
    before = (out / "report.csv").read_bytes()
    code, _, err = cli("report", pair / "fedavg", pair / "fedmut", "--out", out, *REPORT)
    assert code == 0 and err.count("reusing") == 4, err
    assert (out / "report.csv").read_bytes() == before


def test_report_surfaces_share_one_set_of_delta_levels(pair, tmp_path):
    from flatfl.analysis.interactive import delta_range
    from flatfl.analysis.surfaces import Surface
    from flatfl.cli import main

    out = tmp_path / "r"
    assert main(["report", str(pair / "fedavg"), str(pair / "fedmut"), "--out", str(out), "--at-rounds", "4",
                 "--samples", "100", "--grid", "3", "--no-hessian", "--trace-matvecs", "0", "--sharpness", "none",
                 "--no-spread", "--no-match", "--slices", "0", "--no-progress"]) == 0  # fmt: skip
    surfs = [Surface.load(p.with_suffix("")) for p in sorted((out / "runs").glob("*/round_0004/surface.npz"))]
    assert len(surfs) == 2
    lo, hi = delta_range(surfs)
    assert lo == min(0.0, *[np.nanmin(s.loss - s.loss[1, 1]) for s in surfs])  # the grid holds the checkpoint
    assert hi == pytest.approx(np.median([np.nanmax(s.loss - s.loss[1, 1]) for s in surfs]))
    html = (out / "report.html").read_text()
    ticks = re.findall(r'"ticktext":\[([^\]]*)\]', html)  # the colour bars' ticks are the contour levels
    assert len(ticks) == 2 and ticks[0] == ticks[1] and ticks[0].split(",")[-1] == f'"{hi:.3g}"'  # both the same
    rows = list(csv.DictReader(open(out / "report.csv")))
    assert "lambda_max" not in rows[0] and "trace" not in rows[0]


def test_report_bad_input(cli, pair, tmp_path):
    code, _, err = cli("report", tmp_path, "--out", tmp_path / "o")
    _one_line_error(code, err, str(tmp_path), "run.json")
    code, _, err = cli("report", pair / "fedavg", "--out", tmp_path / "o", "--at-rounds", "9")
    _one_line_error(code, err, "--at-rounds", "9")
    import shutil

    shutil.copytree(pair / "fedmut", tmp_path / "hole")  # a run missing a round file the others have
    (tmp_path / "hole" / "round_0003.safetensors").unlink()
    code, _, err = cli("report", pair / "fedavg", tmp_path / "hole", "--out", tmp_path / "o", "--at-rounds", "3")
    _one_line_error(code, err, "--at-rounds", "hole", "[3]")
    code, _, err = cli("report", pair / "fedavg", "--out", tmp_path / "o", "--sharpness", "bogus")
    _one_line_error(code, err, "--sharpness")
    code, _, err = cli("report", pair / "fedavg", "--out", tmp_path / "o", "--at-rounds", "x")
    _one_line_error(code, err, "--at-rounds")
    code, _, err = cli("report", pair / "fedavg", "--out", tmp_path / "o", "--trace-matvecs", "4")
    _one_line_error(code, err, "--trace-matvecs", "6")


def test_report_cache_is_keyed_on_the_checkpoint_bytes(tiny, cli, tmp_path):
    """A run retrained in place (--overwrite) must be measured again, not read from the cache."""
    flags = ["--at-rounds", "2", "--samples", "100", "--no-surface", "--no-spread", "--trace-matvecs", "0",
             "--sharpness", "none", "--no-progress"]  # fmt: skip
    run = tiny("r", rounds=2, algo="fedavg")
    code, _, err = cli("report", run, "--out", tmp_path / "rep", *flags)
    assert code == 0, err
    first = list(csv.DictReader(open(tmp_path / "rep" / "report.csv")))[0]["lambda_max"]
    tiny("r", "--overwrite", "--lr", "0.2", rounds=2, algo="fedavg")
    code, _, err = cli("report", run, "--out", tmp_path / "rep", *flags)
    assert code == 0 and "reusing" not in err, err
    assert list(csv.DictReader(open(tmp_path / "rep" / "report.csv")))[0]["lambda_max"] != first


def test_samples_auto_puts_the_data_error_next_to_the_numbers(monkeypatch, tmp_path):
    import flatfl.cli
    from flatfl.runs.report import checkpoint_row
    from flatfl.runs.report_page import KEY_COLUMNS

    seen = {}
    monkeypatch.setattr(
        "flatfl.runs.report.build_report", lambda runs, settings, out, **kw: seen.update(s=settings) or {}
    )
    ref = "checkpoints/reference/digits-fedavg"
    assert flatfl.cli.main(["report", ref, "--out", str(tmp_path), "--samples", "auto", "--data-tol", "0.02"]) == 0
    assert seen["s"].landscape.samples_auto and seen["s"].landscape.data_tol == 0.02
    assert seen["s"].landscape.samples is None
    res = {"loss": 1.0, "gradient_norm": 0.1, "hessian": {"eigenvalues": [5.0], "smallest": -0.1, "data_error": 0.04},
           "trace": {"estimate": 30.0, "stderr": 1.0, "data_error": 0.3}}  # fmt: skip
    row = checkpoint_row(res, {}, None, ())
    assert row["lambda_max_data_error"] == 0.04 and row["trace_data_error"] == 0.3
    assert KEY_COLUMNS.index("lambda_max_data_error") == KEY_COLUMNS.index("lambda_max") + 1


def test_storage_and_runtime_settings_do_not_split_groups():
    """--save-clients, the eval batch size, a preset's name and the data's location leave the group as it is;
    every RunConfig field is either such a setting or part of what a group is (a new field must be sorted)."""
    import dataclasses

    from flatfl.config import DataConfig, RunConfig
    from flatfl.runs.groups import NOT_IDENTITY, group_key

    base = json.loads(Path("checkpoints/reference/digits-fedavg/run.json").read_text())["config"]
    same = json.loads(json.dumps(base))
    same.update(save_clients=0, eval_batch_size=64, preset="paper", seed=7, rounds=9)
    same["data"].update(data_root="/elsewhere", partition_file="/x/p.json")
    assert group_key(same) == group_key(base)
    for path, value in (("frac", 0.123), ("local.lr", 0.123), ("data.num_clients", 77), ("model", "mlp")):
        other = json.loads(json.dumps(base))
        *head, last = path.split(".")
        (other[head[0]] if head else other)[last] = value
        assert group_key(other) != group_key(base), path
    splits = {"algo", "algo_config", "model", "model_kwargs", "data", "local", "frac"}
    top = {f.name for f in dataclasses.fields(RunConfig)}
    assert top == splits | {k for k in NOT_IDENTITY if "." not in k}
    data_free = {k.split(".", 1)[1] for k in NOT_IDENTITY if k.startswith("data.")}
    assert data_free == {"data_root", "partition_file"} <= {f.name for f in dataclasses.fields(DataConfig)}


def test_straight_line_figure_tells_seeds_apart():
    from flatfl.analysis.report_figures import line_figure

    ln = {"ts": [0.0, 0.5, 1.0], "loss": [1.0, 1.5, 1.1], "barrier": 0.45}
    fig = line_figure({"fedmut": {0: ln, 1: ln, 2: ln}}, "fedavg", {"fedmut": "#d62728"})
    styles = {(t.line.color, t.line.dash, t.marker.symbol) for t in fig.data}
    assert len({c for c, _, _ in styles}) == 3 and len(styles) == 3  # a colour (and dash, marker) per seed
    assert [t.name for t in fig.data][0] == "fedavg → fedmut, seed 0 (barrier 0.45)"


def test_markers_far_off_the_plane_are_not_drawn():
    """in_plane = ||a d1 + b d2|| exactly; a model farther off the plane than that is left out and counted."""
    from flatfl.analysis.operators import ModelLoss
    from flatfl.analysis.surfaces import Surface, model_markers, near_plane

    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    obj = ModelLoss(net, torch.randn(8, 3), torch.randint(0, 2, (8,)), dtype=torch.float64)
    w = obj.flat()
    d1, d2 = torch.randn_like(w), torch.randn_like(w)
    q, _ = torch.linalg.qr(torch.stack([d1, d2, torch.randn_like(w)], 1))
    perp = q[:, 2] * (q[:, 2] @ q[:, 2]) ** -0.5  # orthogonal to both directions
    near = w + 0.3 * d1 + 0.2 * d2 + 0.01 * perp
    far = w + 1e-4 * d1 + 0.5 * perp
    ms = model_markers(obj, w, [d1, d2], [("near", "clients", near), ("far", "clients", far)])
    assert ms[0]["in_plane"] == pytest.approx(float((0.3 * d1 + 0.2 * d2).norm()), rel=1e-9)
    assert ms[0]["off_plane"] == pytest.approx(0.01, rel=1e-6) and ms[1]["off_plane"] == pytest.approx(0.5, rel=1e-6)
    assert [near_plane(m) for m in ms] == [True, False]
    old = {k: v for k, v in ms[1].items() if k != "in_plane"}  # a marker saved before in_plane existed
    assert not near_plane(old)
    surf = Surface(np.zeros(3), np.zeros(3), np.zeros((3, 3)), np.zeros((3, 3)), markers=ms)
    groups, hidden = surf.drawn_marker_groups()
    assert [m["name"] for m in groups["clients"]] == ["near"] and hidden == 1
    from flatfl.runs.figure_sections import markers_note

    assert "1 of 2 are not drawn" in markers_note([surf])
    from flatfl.analysis.interactive import surface_figures

    surf = Surface(np.linspace(-1, 1, 3), np.linspace(-1, 1, 3), np.ones((3, 3)), np.ones((3, 3)), markers=ms)
    for fig in surface_figures([("round 1", surf)]):
        assert "(1 of 2 models far off the plane not drawn)" in fig.layout.title.text
        assert [len(t.x) for t in fig.data if t.name == "returned client models"] == [1]
    assert markers_note(
        [Surface(np.zeros(3), np.zeros(3), np.zeros((3, 3)), np.zeros((3, 3)), markers=ms[1:])]
    ).startswith("No client model is drawn: all 1 ")


def test_help_and_page_state_the_same_verdict_rule(capsys):
    from flatfl.analysis.verdict import VERDICT_RULE
    from flatfl.cli import main
    from flatfl.runs.report import ReportSettings
    from flatfl.runs.report_page import _settings_note

    assert main(["report", "--help"]) == 0
    flat = lambda t: " ".join(t.split())  # noqa: E731 (argparse wraps lines)
    assert flat(VERDICT_RULE) in flat(capsys.readouterr().out)
    assert VERDICT_RULE in _settings_note(ReportSettings())
