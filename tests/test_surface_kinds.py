"""Surfaces between models, PCA planes, markers, BatchNorm re-estimation and the offline HTML."""

from __future__ import annotations

import copy
import json
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from flatfl.analysis.operators import ModelLoss
from flatfl.analysis.surfaces import BatchNormReestimator, Surface, evaluate_grid
from flatfl.runs.run import Run
from tests.test_cli import _one_line_error


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from tests.conftest import train_pair

    return train_pair(tmp_path_factory.mktemp("kinds"), 4, "--save-clients")


def _loss_of(run: Run, state: dict, x, y) -> tuple[float, float]:
    """Independent path: a fresh model with the state loaded, plain forward pass."""
    m = run.build()
    m.load_state_dict(state)
    m.eval()
    with torch.no_grad():
        out = m(x)
    return F.cross_entropy(out, y).item(), (out.argmax(1) == y).double().mean().item()


def _test_data(run: Run, n: int = 120):
    from flatfl.runs.landscape import select_data

    x, y, _ = select_data(run, "test", n, 0)
    return x, y


def test_interpolation_between_fedavg_and_fedmut(cli, runs, tmp_path):
    a, b = runs / "fedavg" / "round_0004.safetensors", runs / "fedmut" / "round_0004.safetensors"
    code, _, err = cli(
        "landscape", "--ckpt", a, "--surface", "1d", "--surface-dirs", "interp", "--to", b,
        "--data", "test", "--samples", "120", "--grid", "5", "--range", "0,1", "--out", tmp_path / "i",
    )  # fmt: skip
    assert code == 0, err
    s = Surface.load(tmp_path / "i" / "surface")
    ra, rb = Run.open(runs / "fedavg"), Run.open(runs / "fedmut")
    x, y = _test_data(ra)
    # t = 0 is FedAvg's model, t = 1 FedMut's (same partition and seed: same data)
    assert s.loss[0] == pytest.approx(_loss_of(ra, ra.global_state(4), x, y)[0], rel=1e-5)
    assert s.loss[-1] == pytest.approx(_loss_of(rb, rb.global_state(4), x, y)[0], rel=1e-5)
    mid = {k: 0.5 * (ra.global_state(4)[k] + rb.global_state(4)[k]) for k in ra.global_state(4)}
    mid = {k: v.to(ra.global_state(4)[k].dtype) for k, v in mid.items()}
    # buffers: the origin's (this model has none); the midpoint of the parameters
    assert s.loss[2] == pytest.approx(_loss_of(ra, mid, x, y)[0], rel=1e-4)
    html = (tmp_path / "i" / "surface.html").read_text()
    assert "<script src" not in html  # offline: plotly.js is inlined
    assert (tmp_path / "i" / "surface.png").is_file()


def test_plane_through_checkpoint_and_two_mutants(cli, runs, tmp_path):
    ck = runs / "fedmut" / "round_0002.safetensors"
    code, _, err = cli(
        "landscape", "--ckpt", ck, "--surface", "2d", "--surface-dirs", "models", "--models", "mutant:0", "mutant:1",
        "--data", "test", "--samples", "120", "--grid", "5", "--range=-1,1", "--out", tmp_path / "m",
    )  # fmt: skip
    assert code == 0, err
    s = Surface.load(tmp_path / "m" / "surface")
    run = Run.open(runs / "fedmut")
    sent, _, info = run.clients(3)  # the models sent in round 3 are the mutants of round 2's global model
    x, y = _test_data(run)
    named = [m for m in s.markers if m["group"] == "models"]
    assert [m["coords"][1] for m in named] == pytest.approx([0.0, 1.0], abs=1e-6)
    assert named[0]["coords"][0] == pytest.approx(1.0, abs=1e-6)
    assert max(m["off_plane"] for m in named) < 1e-4
    # the grid point (1, 0) is mutant 0 itself (parameters; buffers of the checkpoint -- none here)
    loss0, acc0 = _loss_of(run, sent[0], x, y)
    assert s.loss[4, 2] == pytest.approx(loss0, rel=1e-4)
    assert named[0]["loss"] == pytest.approx(loss0, rel=1e-4) and named[0]["accuracy"] == pytest.approx(acc0)
    # all mutants of round 3 and the returned models of round 2 are drawn
    groups = [m["group"] for m in s.markers]
    assert groups.count("mutants") == len(info["clients"]) and groups.count("clients") == 3


def test_pca_plane_of_the_trajectory(cli, runs, tmp_path):
    ck = runs / "fedavg" / "round_0004.safetensors"
    code, _, err = cli(
        "landscape", "--ckpt", ck, "--surface", "2d", "--surface-dirs", "pca", "--data", "test",
        "--samples", "120", "--grid", "5", "--no-markers", "--out", tmp_path / "p",
    )  # fmt: skip
    assert code == 0, err
    s = Surface.load(tmp_path / "p" / "surface")
    traj = [m for m in s.markers if m["group"] == "trajectory"]
    assert [m["name"] for m in traj] == [f"round {r}" for r in range(5)]
    assert traj[-1]["coords"] == pytest.approx([0.0, 0.0], abs=1e-9)  # the checkpoint is the origin
    assert 0 < sum(s.description["explained_variance"]) <= 1 + 1e-9
    # the grid covers the projected trajectory
    xs = [m["coords"][0] for m in traj]
    assert s.alphas[0] <= min(xs) and s.alphas[-1] >= max(xs)


def test_surface_kind_errors(cli, runs, tmp_path):
    ck = runs / "fedavg" / "round_0004.safetensors"
    base = ["landscape", "--ckpt", ck, "--out", tmp_path / "x", "--samples", "50"]

    def err(*args, needle):
        code, out, e = cli(*base, *args)
        _one_line_error(code, e, needle)
        assert not (tmp_path / "x" / "landscape.json").exists()  # refused before computing anything

    err("--surface", "1d", "--surface-dirs", "interp", needle="--to")
    err("--surface", "2d", "--surface-dirs", "interp", "--to", ck, needle="1d")
    err("--surface", "2d", "--surface-dirs", "models", "--models", "mutant:0", "x", needle="'x'")
    err("--surface", "1d", "--surface-dirs", "interp", "--to", "nowhere.safetensors", needle="nowhere")
    err("--surface", "1d", "--range", "1,0", needle="--range")
    err("--surface", "2d", "--surface-dirs", "models", "--models", "mutant:9", "mutant:0", needle="mutant:9")
    ck2 = runs / "fedmut" / "round_0002.safetensors"
    code, _, e = cli(
        *base[:2], ck2, *base[3:], "--surface", "2d", "--surface-dirs", "models", "--models", "mutant:0", "mutant:0"
    )
    _one_line_error(code, e, "one line")


class BNNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 8)
        self.bn = nn.BatchNorm1d(8)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.bn(self.fc1(x))))


def test_batchnorm_reestimation_matches_update_bn():
    torch.manual_seed(0)
    model = BNNet()
    x, y = torch.randn(64, 6), torch.randint(0, 3, (64,))
    xtrain = torch.randn(90, 6) * 2 + 1
    with torch.no_grad():  # some running statistics to start from
        model.train()
        model(xtrain)
    model.eval()
    before = copy.deepcopy(model.state_dict())
    obj = ModelLoss(model, x, y, batch_size=32)
    d = torch.randn(obj.size, generator=torch.Generator().manual_seed(1)) * 0.3
    bn = BatchNormReestimator(model, [xtrain[:40], xtrain[40:]])
    s = evaluate_grid(obj, [d], np.array([-1.0, 0.0, 1.0]), bn=bn)
    for i, a in enumerate((-1.0, 0.0, 1.0)):
        # reference: torch.optim.swa_utils.update_bn on a copy carrying the perturbed weights
        ref = copy.deepcopy(model)
        torch.nn.utils.vector_to_parameters(obj.flat() + a * d, ref.parameters())
        loader = [xtrain[:40], xtrain[40:]]
        torch.optim.swa_utils.update_bn(loader, ref)
        ref.eval()
        with torch.no_grad():
            want = F.cross_entropy(ref(x), y).item()
        assert s.loss[i] == pytest.approx(want, rel=1e-5)
    # statistics really changed the answer, and the user's model is untouched
    plain = evaluate_grid(obj, [d], np.array([0.0]))
    assert abs(plain.loss[0] - s.loss[1]) > 1e-3
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert model.bn.momentum == 0.1 and not model.training


def test_surface_html_has_a_round_slider_and_markers(runs, tmp_path):
    from flatfl.analysis.interactive import surface_figures
    from flatfl.runs.files import write_page

    a = np.linspace(-1, 1, 5)
    mk = {"name": "mutant 0", "group": "mutants", "coords": [0.2, 0.1], "off_plane": 0.5, "off_plane_relative": 0.1,
          "loss": 2.0, "accuracy": 0.5}  # fmt: skip
    frames = [
        (f"round {r}", Surface(a, a, np.add.outer(a**2, a**2) + r, np.ones((5, 5)), {"round": r}, {}, [mk]))
        for r in (1, 2, 3)
    ]
    contour, scene = surface_figures(frames)
    path = write_page(tmp_path / "s.html", "t", [("contour", contour), ("3d", scene)])
    text = path.read_text()
    assert "<script src" not in text and len(text) > 3_000_000  # plotly.js inlined
    # each figure's JSON in its own <script type='application/json'>, drawn by the page's script at the end
    specs = [
        json.loads(m.group(1))["fig"]["data"]
        for m in re.finditer(r"<script type='application/json' id='fig\d+-json'>(.*?)</script>", text, re.S)
    ]
    kinds = [[t["type"] for t in spec] for spec in specs]
    assert "surface" not in kinds[0] and kinds[0].count("contour") == 3  # the contour figure needs no WebGL
    assert kinds[1].count("surface") == 3
    assert sum(1 for t in specs[0] if t.get("name") == "mutants (sent next round)") == 3
    assert "round 3" in text and "sliders" in text
    # the slider opens at the last round; the checkpoint star is drawn after (above) every other trace
    assert contour.layout.sliders[0].active == 2
    visible = [t for t in contour.data if t.visible]
    assert visible[-1].name == "checkpoint" and visible[0].customdata[2][2] == 0.0  # Δloss is 0 at the checkpoint
    # the same levels for every frame, and the colour bar's ticks are those levels
    bars = {tuple(t.colorbar.ticktext) for t in contour.data if t.type == "contour"}
    assert len(bars) == 1 and next(iter(bars))[0] == "0"
    assert contour.layout.yaxis.scaleanchor == "x"  # equal aspect
