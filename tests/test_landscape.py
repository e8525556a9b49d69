"""flatfl landscape on a real checkpoint, against scipy's eigsh as an independent oracle."""

import json
import shutil

import numpy as np
import pytest
import torch
from scipy.sparse.linalg import LinearOperator, eigsh

from flatfl.analysis.operators import ModelLoss
from flatfl.runs.files import save_surface
from flatfl.runs.run import Run
from tests.conftest import TINY
from tests.test_cli import _one_line_error


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from flatfl.cli import main

    out = tmp_path_factory.mktemp("ls") / "run"
    assert main(["train", *TINY, "--rounds", "3", "--algo", "fedmut", "--out", str(out)]) == 0
    return out


def test_landscape_matches_eigsh_and_writes_everything(cli, run_dir, tmp_path):
    ckpt = run_dir / "round_0003.safetensors"
    code, out, err = cli(
        "landscape",
        "--ckpt",
        ckpt,
        "--data",
        "test",
        "--samples",
        "120",
        "--dtype",
        "float64",
        "--hessian",
        "--topk",
        "3",
        "--tol",
        "1e-8",
        "--trace",
        "--trace-matvecs",
        "30",
        "--density",
        "--slq-runs",
        "2",
        "--slq-steps",
        "20",
        "--sharpness",
        "sam,adaptive_l2",
        "--out",
        tmp_path / "o",
    )
    assert code == 0, err
    res = json.loads((tmp_path / "o" / "landscape.json").read_text())
    assert (tmp_path / "o" / "density.png").stat().st_size > 10_000 and (tmp_path / "o" / "density.pdf").exists()
    assert res["round"] == 3 and res["data"]["samples"] == 120 and res["data"]["selection"] == "test"

    # independent oracle: ARPACK on exact HVPs of the same model and data
    run = Run.open(run_dir)
    ds = run.dataset()
    idx = torch.randperm(len(ds.test.y), generator=torch.Generator().manual_seed(0))[:120].sort().values
    obj = ModelLoss(run.model(3), ds.test.x[idx], ds.test.y[idx], dtype=torch.float64)
    lin = LinearOperator((obj.size, obj.size), matvec=lambda v: obj.hvp(torch.as_tensor(v.ravel())).numpy())
    ref = np.sort(eigsh(lin, k=3, which="LA", tol=1e-10)[0])[::-1]
    np.testing.assert_allclose(res["hessian"]["eigenvalues"], ref, rtol=1e-6)
    assert max(res["hessian"]["residuals"]) <= 1e-6 * ref[0]
    assert res["hessian"]["smallest"] <= 0 and res["hessian"]["num_hvps"] > 0
    assert res["trace"]["stderr"] > 0 and res["trace"]["num_hvps"] == 30
    assert set(res["sharpness"]) == {"sam", "adaptive_l2"}
    assert res["sharpness"]["sam"]["settings"]["rho"] == 0.05 and res["sharpness"]["sam"]["value"] > 0


def test_landscape_client_selection(cli, run_dir, tmp_path):
    code, _, err = cli(
        "landscape",
        "--ckpt",
        run_dir / "round_0002.safetensors",
        "--data",
        "client:4",
        "--hessian",
        "--topk",
        "1",
        "--out",
        tmp_path / "c",
    )
    assert code == 0, err
    res = json.loads((tmp_path / "c" / "landscape.json").read_text())
    sizes = Run.open(run_dir).info["partition"]["sizes"]
    assert res["data"]["samples"] == sizes[4] and res["data"]["selection"] == "client:4"


def test_landscape_bad_input(cli, run_dir, tmp_path):
    ckpt = run_dir / "round_0001.safetensors"
    code, _, err = cli("landscape", "--ckpt", tmp_path / "nope.safetensors", "--hessian")
    _one_line_error(code, err, "--ckpt", "nope.safetensors")
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(ckpt, lone / "round_0001.safetensors")
    code, _, err = cli("landscape", "--ckpt", lone / "round_0001.safetensors", "--hessian")
    _one_line_error(code, err, "run.json")
    code, _, err = cli("landscape", "--ckpt", ckpt, "--hessian", "--data", "client:99")
    _one_line_error(code, err, "--data", "client 99")
    code, _, err = cli("landscape", "--ckpt", ckpt, "--hessian", "--samples", "-1")
    _one_line_error(code, err, "--samples")
    code, _, err = cli("landscape", "--ckpt", ckpt)
    _one_line_error(code, err, "nothing to compute")
    code, _, err = cli("landscape", "--ckpt", ckpt, "--sharpness", "flatness")
    _one_line_error(code, err, "--sharpness", "flatness")
    code, _, err = cli("landscape", "--ckpt", ckpt, "--trace", "--trace-matvecs", "4")
    _one_line_error(code, err, "--trace-matvecs", "hutchinson")
    # a run.json whose model does not match the checkpoint's tensors
    bad = tmp_path / "bad"
    shutil.copytree(run_dir, bad)
    info = json.loads((bad / "run.json").read_text())
    info["model"]["kwargs"]["num_classes"] = 7
    (bad / "run.json").write_text(json.dumps(info))
    code, _, err = cli("landscape", "--ckpt", bad / "round_0001.safetensors", "--hessian")
    # run.json no longer agrees with its own identity and the round files' config: refused as edited (#27)
    _one_line_error(code, err, "run.json", "model.kwargs")


def test_federated_view_against_eigsh(cli, tiny, tmp_path):
    out = tiny("run", "--save-clients", rounds=2)
    code, _, err = cli(
        "landscape",
        "--ckpt",
        out / "round_0002.safetensors",
        "--federated",
        "--tol",
        "1e-9",
        "--dtype",
        "float64",
        "--out",
        tmp_path / "f",
    )
    assert code == 0, err
    fed = json.loads((tmp_path / "f" / "landscape.json").read_text())["federated"]
    run = Run.open(out)
    _, returned, info = run.clients(2)
    assert [r["client"] for r in fed["clients"]] == info["clients"]  # default: the round's sampled clients
    ds, parts = run.dataset(), run.partition()

    def top(model, x, y):
        obj = ModelLoss(model, x, y, dtype=torch.float64)
        lin = LinearOperator((obj.size, obj.size), matvec=lambda v: obj.hvp(torch.as_tensor(v.ravel())).numpy())
        vals, vecs = eigsh(lin, k=1, which="LA", tol=1e-10)
        return vals[0], vecs[:, 0]

    _, g_vec = top(run.model(2), ds.train.x, ds.train.y)
    for row in fed["clients"]:
        c = row["client"]
        idx = torch.as_tensor(parts[c])
        lam, vec = top(run.model(2), ds.train.x[idx], ds.train.y[idx])
        assert row["lambda_max_at_global"] == pytest.approx(lam, rel=1e-6)
        assert row["alignment_with_global"] == pytest.approx(abs(float(vec @ g_vec)), abs=1e-5)
        local = run.build()
        local.load_state_dict(returned[info["clients"].index(c)])
        lam_r, _ = top(local, ds.train.x[idx], ds.train.y[idx])
        assert row["lambda_max_at_returned"] == pytest.approx(lam_r, rel=1e-6)


def test_surface_cli_writes_resumes_and_plots(cli, run_dir, tmp_path):
    from flatfl.analysis.surfaces import Surface

    args = [
        "landscape",
        "--ckpt",
        run_dir / "round_0003.safetensors",
        "--data",
        "test",
        "--samples",
        "100",
        "--surface",
        "2d",
        "--grid",
        "5",
        "--span",
        "0.5",
        "--out",
        tmp_path / "s",
    ]
    code, _, err = cli(*args)
    assert code == 0, err
    res = json.loads((tmp_path / "s" / "landscape.json").read_text())
    surf = Surface.load(tmp_path / "s" / "surface")
    assert surf.loss.shape == (5, 5) and np.isfinite(surf.loss).all()
    assert surf.loss[2, 2] == pytest.approx(res["loss"], rel=1e-5)  # the centre is the checkpoint itself
    assert res["surface"]["loss_at_checkpoint"] == pytest.approx(res["loss"], rel=1e-5)
    assert (tmp_path / "s" / "surface.png").stat().st_size > 20_000
    # an interrupted surface: drop half the points; rerunning fills exactly those
    partial = Surface(surf.alphas, surf.betas, surf.loss.copy(), surf.accuracy.copy(), surf.description, surf.points)
    partial.loss[3:, :] = np.nan
    partial.loss[0, 0] = -1.0  # marks a point that must be kept, not recomputed
    save_surface(partial, tmp_path / "s" / "surface")
    code, _, err = cli(*args)
    assert code == 0, err
    again = Surface.load(tmp_path / "s" / "surface")
    assert again.loss[0, 0] == -1.0
    np.testing.assert_allclose(again.loss[3:], surf.loss[3:], rtol=1e-6)


def test_surface_along_top_eigenvectors_1d(cli, run_dir, tmp_path):
    code, _, err = cli(
        "landscape",
        "--ckpt",
        run_dir / "round_0002.safetensors",
        "--samples",
        "80",
        "--surface",
        "1d",
        "--surface-dirs",
        "eigen",
        "--grid",
        "7",
        "--out",
        tmp_path / "e",
    )
    assert code == 0, err
    from flatfl.analysis.surfaces import Surface

    s = Surface.load(tmp_path / "e" / "surface")
    assert s.loss.shape == (7,) and s.betas is None and s.description["kind"] == "1d eigen"
    # along the sharpest direction the loss rises on both sides of the checkpoint
    assert s.loss[0] > s.loss[3] and s.loss[-1] > s.loss[3]


def test_samples_auto_reports_the_data_error_and_the_subset(cli, run_dir, tmp_path):
    ckpt = run_dir / "round_0003.safetensors"
    code, out, err = cli(
        "landscape", "--ckpt", ckpt, "--hessian", "--topk", "1", "--trace", "--trace-matvecs", "12",
        "--samples", "auto", "--data-tol", "0.5", "--out", tmp_path,
    )  # fmt: skip
    assert code == 0, err
    res = json.loads((tmp_path / "landscape.json").read_text())
    auto = res["data"]["auto"]
    assert auto["converged"] and res["data"]["samples"] == auto["levels"][-1]["samples"] == 256 < res["data"]["of"]
    assert 0 < res["hessian"]["data_error"] <= 0.5 * res["hessian"]["eigenvalues"][0]
    assert 0 < res["trace"]["data_error"] == auto["data_errors"]["trace"]
    # the eigenvalue reported is the subset's own, as the subsampler computed it
    assert res["hessian"]["eigenvalues"][0] == pytest.approx(auto["values"]["lambda_max"], rel=1e-3)
    assert "samples auto: 256 of" in err
    code, _, err = cli("landscape", "--ckpt", ckpt, "--hessian", "--samples", "many")
    _one_line_error(code, err, "--samples", "auto")
