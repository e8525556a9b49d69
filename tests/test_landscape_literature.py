"""flatfl landscape's 'more measures' flags: written into landscape.json, equal to the library's numbers."""

import json

import pytest

from flatfl.analysis import fisher_rao_norm, hessian_eigenvalues, relative_flatness
from flatfl.runs.landscape import LandscapeSettings
from flatfl.runs.problem import of_checkpoint
from tests.conftest import TINY


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from flatfl.cli import main

    out = tmp_path_factory.mktemp("lit") / "run"
    assert main(["train", *TINY, "--rounds", "2", "--out", str(out)]) == 0
    return out


def test_more_measures_in_landscape_json(cli, run_dir, tmp_path):
    ckpt = run_dir / "round_0002.safetensors"
    code, out, err = cli(
        "landscape", "--ckpt", ckpt, "--data", "test", "--samples", "60", "--dtype", "float64", "--tol", "1e-8",
        "--curvature", "ggn,ef", "--trace-matvecs", "12", "--per-layer", "module", "--relative-flatness",
        "--fisher-rao", "--connect", str(run_dir / "round_0001.safetensors"), "--connect-steps", "5",
        "--out", tmp_path / "o",
    )  # fmt: skip
    assert code == 0, err
    lit = json.loads((tmp_path / "o" / "landscape.json").read_text())["literature"]
    assert set(lit) == {"settings", "ggn", "ef", "per_layer", "relative_flatness", "fisher_rao", "connectivity"}
    assert all(lit[k]["seconds"] > 0 for k in lit if k != "settings")
    assert lit["ggn"]["lambda_max"] > 0 and lit["ef"]["trace"] > 0
    assert lit["per_layer"]["group"] == "module" and len(lit["per_layer"]["blocks"]) >= 2
    c = lit["connectivity"]
    assert len(c["t"]) == len(c["curve_loss"]) == 21 and c["curve_loss"][0] == c["line_loss"][0]
    # the same numbers from the library on the same model and data
    settings = LandscapeSettings(data="test", samples=60, dtype="float64")
    obj = of_checkpoint(ckpt, settings, lambda s: None).objective
    assert lit["relative_flatness"]["kappa"] == pytest.approx(relative_flatness(obj).kappa, rel=1e-9)
    assert lit["fisher_rao"]["squared_empirical"] == pytest.approx(fisher_rao_norm(obj).squared, rel=1e-9)
    ggn = hessian_eigenvalues(obj, curvature="ggn", tol=1e-8)
    assert lit["ggn"]["lambda_max"] == pytest.approx(float(ggn.values[0]), rel=1e-6)


def test_more_measures_bad_input(cli, run_dir):
    ckpt = str(run_dir / "round_0002.safetensors")
    code, _, err = cli("landscape", "--ckpt", ckpt, "--curvature", "hessian2")
    assert code == 2 and "--curvature" in err and "Traceback" not in err
    code, _, err = cli("landscape", "--ckpt", ckpt, "--connect-steps", "3")
    assert code == 2 and "--connect" in err and "Traceback" not in err
    # the checkpoint itself as the other end: no path to find -- one line, not a ValueError traceback
    code, _, err = cli("landscape", "--ckpt", ckpt, "--connect", ckpt, "--connect-steps", "2", "--samples", "50")
    assert code == 2 and err.startswith("flatfl: error: --connect ") and err.count("\n") == 1, err
    code, _, err = cli("landscape", "--ckpt", ckpt, "--connect", ckpt, "--connect-steps", str(10**7))
    assert code == 2 and "--connect-steps" in err and err.count("\n") == 1, err
