"""``flatfl report --per-layer``: the per-layer figure (PNG + PDF, on the page) and every block in report.json.

Exact reference: the dense float64 Hessian of the mean cross-entropy with respect to one parameter tensor alone
(``torch.autograd.functional.hessian`` of the loss as a function of that tensor, the others fixed) on the same
analysis data -- its largest eigenvalue and its trace are the block's λmax and trace.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from tests.conftest import TINY

GROUPS = ("fedavg", "fedmut")
SEEDS = (0, 1)
SAMPLES = 60


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    from flatfl.cli import main

    root = tmp_path_factory.mktemp("per-layer")
    runs = []
    for algo in GROUPS:
        for seed in SEEDS:
            out = root / f"{algo}-s{seed}"
            args = ["train", *TINY, "--rounds", "2", "--algo", algo, "--seed", str(seed), "--out", str(out)]
            assert main(args) == 0
            runs.append(out)
    out = root / "report"
    args = ["report", *map(str, runs), "--out", str(out), "--per-layer", "--no-hessian", "--trace-matvecs", "0",
            "--sharpness", "none", "--slices", "0", "--no-surface", "--no-spread", "--no-match", "--samples",
            str(SAMPLES), "--at-rounds", "2", "--no-progress", "--no-relative-flatness", "--no-fisher-rao"]  # fmt: skip
    for r in runs:
        args += ["--label", f"{r}={r.name.split('-')[0]}"]
    assert main(args) == 0
    return root, out


def _dense_block(run_dir, rnd: int, name: str) -> tuple[float, float]:
    """λmax and trace of the dense float64 Hessian block of parameter ``name`` on the report's analysis data."""
    from flatfl.runs.landscape import select_data
    from flatfl.runs.run import Run

    run = Run.open(run_dir)
    model = run.model(rnd).double().eval()
    x, y, _ = select_data(run, "train", SAMPLES, 0)
    x = x.double()
    params = {n: p.detach() for n, p in model.named_parameters()}
    buffers = dict(model.named_buffers())

    def loss(w: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(model, {**params, name: w, **buffers}, (x,)), y)

    H = torch.autograd.functional.hessian(loss, params[name])
    n = params[name].numel()
    H = H.reshape(n, n)
    return float(torch.linalg.eigvalsh(H)[-1]), float(H.diagonal().sum())


def test_report_json_holds_every_block_and_they_match_the_dense_hessian(report):
    root, out = report
    rep = json.loads((out / "report.json").read_text())
    rows = rep["per_layer"]
    from flatfl.runs.run import Run

    names = [n for n, _ in Run.open(root / "fedavg-s0").model(2).named_parameters()]
    # one row per group, seed and block, blocks in model order
    assert [(r["group"], r["seed"]) for r in rows[:: len(names)]] == [(g, s) for g in GROUPS for s in SEEDS]
    assert [r["block"] for r in rows[: len(names)]] == names
    assert all(r["round"] == 2 and r["grouping"] == "parameter" and r["curvature"] == "hessian" for r in rows)
    # the same numbers as each checkpoint's cached landscape.json
    cached = json.loads(next((out / "runs").glob("fedmut-s1/round_0002/landscape.json")).read_text())
    blocks = cached["literature"]["per_layer"]["blocks"]
    mine = [r for r in rows if r["group"] == "fedmut" and r["seed"] == 1]
    assert [(r["lambda_max"], r["trace"]) for r in mine] == [(b["lambda_max"], b["trace"]) for b in blocks]
    # the exact reference for the blocks small enough to hold densely (their traces exact: at most 30 parameters)
    for r in mine:
        if r["size"] > 700:
            continue
        lam, tr = _dense_block(root / "fedmut-s1", 2, r["block"])
        assert r["lambda_max"] == pytest.approx(lam, rel=1e-3, abs=1e-6), r["block"]
        if r["size"] <= 30:
            assert r["trace_stderr"] == 0.0 and r["trace"] == pytest.approx(tr, rel=1e-4, abs=1e-6), r["block"]
        else:
            assert abs(r["trace"] - tr) <= 4 * r["trace_stderr"] + 1e-4 * abs(tr), r["block"]


def test_the_figure_is_written_and_on_the_page(report):
    root, out = report
    png, pdf = out / "per_layer.png", out / "per_layer.pdf"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and pdf.read_bytes()[:5] == b"%PDF-"
    html = (out / "report.html").read_text()
    assert "Per-layer curvature (round 2)" in html and "alt='per-layer curvature: λmax and trace" in html
    assert "fedavg: 2 seeds" in html and "fedmut: 2 seeds" in html
    # the means table names every block
    for name in ("conv1.weight", "fc2.bias"):
        assert f"<td>{name}</td>" in html


def test_without_the_flag_no_section_and_no_entry(tmp_path, report):
    """A report without --per-layer has no figure, no section and no ``per_layer`` in report.json."""
    from flatfl.cli import main

    root, _ = report
    out = tmp_path / "plain"
    args = ["report", str(root / "fedavg-s0"), str(root / "fedmut-s0"), "--out", str(out), "--no-hessian",
            "--trace-matvecs", "0", "--sharpness", "none", "--slices", "0", "--no-surface", "--no-spread",
            "--no-match", "--samples", str(SAMPLES), "--at-rounds", "2", "--no-progress",
            "--no-fisher-rao"]  # fmt: skip
    assert main(args) == 0
    assert "per_layer" not in json.loads((out / "report.json").read_text())
    assert not (out / "per_layer.png").exists() and "Per-layer curvature" not in (out / "report.html").read_text()


def test_the_figure_shares_axes_across_groups_and_names_every_block():
    """Groups side by side on one axis per row (λmax, trace), the blocks named under the bottom row, every seed a
    point, a log axis where all values are positive and a symmetric-log one where a trace is negative."""
    from flatfl.analysis.plots import plot_per_layer

    panels = {
        "fedavg": {"a.weight": [(0, 2.0, 5.0), (1, 3.0, 6.0)], "a.bias": [(0, 0.01, 0.02), (1, 0.02, 0.03)]},
        "fedmut": {"a.weight": [(0, 1.0, 4.0), (1, 1.5, -0.5)], "a.bias": [(0, 0.03, 0.04), (1, 0.01, 0.02)]},
    }
    fig = plot_per_layer(panels, {"fedavg": "#0072B2", "fedmut": "#D55E00"}, None)
    axes = fig.axes
    top, bottom = axes[:2], axes[2:]
    assert [a.get_title() for a in top] == ["fedavg", "fedmut"]
    assert top[0].get_ylim() == top[1].get_ylim() and bottom[0].get_ylim() == bottom[1].get_ylim()  # shared
    assert all(a.get_yscale() == "log" for a in top) and all(a.get_yscale() == "symlog" for a in bottom)
    assert [t.get_text() for t in bottom[0].get_xticklabels()] == ["a.weight", "a.bias"]
    # one marker per seed and block (the means are line collections, not markers)
    for ax, g in zip(top, panels):
        ys = sorted(float(line.get_ydata()[0]) for line in ax.lines)
        assert ys == sorted(p[1] for pts in panels[g].values() for p in pts)
    import matplotlib.pyplot as plt

    plt.close(fig)
