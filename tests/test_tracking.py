"""--tensorboard on train and report, read back with TensorBoard's own reader; analysis on a --save-every run."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from flatfl import checkpoint as ckpt
from tests.conftest import TINY
from tests.test_cli import _one_line_error


def _scalars(logdir) -> dict[str, dict[int, float]]:
    """tag -> step -> value, through tensorboard's EventAccumulator (purged steps dropped)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "histograms": 0})
    ea.Reload()
    return {tag: {e.step: e.value for e in ea.Scalars(tag)} for tag in ea.Tags()["scalars"]}


def _histogram_steps(logdir, tag: str) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(logdir), size_guidance={"histograms": 0})
    ea.Reload()
    return [e.step for e in ea.Histograms(tag)]


def _numeric(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)


def test_train_logs_every_metrics_field_and_a_resume_replaces_redone_rounds(cli, tmp_path):
    run, tb = tmp_path / "run", tmp_path / "tb"
    base = [*TINY, "--algo", "fedmut", "--out", run, "--tensorboard", tb]
    assert cli("train", *base, "--rounds", "2")[0] == 0
    code, _, err = cli("train", "--resume", run, "--rounds", "3", "--tensorboard", tb)
    assert code == 0, err
    got = _scalars(tb / "run")
    want: dict[str, dict[int, float]] = {}
    for rec in ckpt.read_metrics(run):
        for k, v in rec.items():
            if k != "round" and _numeric(v):
                want.setdefault(k, {})[rec["round"]] = float(np.float32(v))
    assert {"test_acc", "test_loss", "train_loss", "wall_time", "mutation_norm"} <= set(want)
    assert got == want  # every field, every round once, the values metrics.jsonl holds (as float32)
    assert _histogram_steps(tb / "run", "client_train_loss") == [1, 2, 3]


def test_a_failing_tracker_never_breaks_the_run(cli, tmp_path, monkeypatch):
    import tensorboardX

    def broken(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tensorboardX.SummaryWriter, "add_scalar", broken)
    code, out, err = cli("train", *TINY, "--rounds", "2", "--out", tmp_path / "r", "--tensorboard", tmp_path / "tb")
    assert code == 0, err
    assert out.count("--tensorboard") == 1 and "switched off" in out
    assert [m["round"] for m in ckpt.read_metrics(tmp_path / "r")] == [0, 1, 2]


def test_tensorboard_without_its_package_is_one_line_before_anything_is_written(cli, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    code, _, err = cli("train", *TINY, "--rounds", "1", "--out", tmp_path / "r", "--tensorboard", tmp_path / "tb")
    _one_line_error(code, err, "--tensorboard", "flatfl[track]")
    assert not (tmp_path / "r").exists()


@pytest.fixture(scope="module")
def sparse(tmp_path_factory):
    from flatfl.cli import main

    out = tmp_path_factory.mktemp("sparse") / "run"
    assert main(["train", *TINY, "--algo", "fedavg", "--rounds", "4", "--save-every", "2", "--out", str(out)]) == 0
    assert ckpt.list_rounds(out) == [0, 2, 4]
    return out


def test_report_on_a_save_every_run_writes_curvature_per_round(cli, sparse, tmp_path):
    tb = tmp_path / "tb"
    flags = ["--samples", "100", "--no-surface", "--no-spread", "--trace-matvecs", "12", "--sharpness", "sam",
             "--slices", "0", "--no-progress", "--tensorboard", tb]  # fmt: skip
    code, out, err = cli("report", sparse, "--out", tmp_path / "rep", *flags)
    assert code == 0, err
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert rep["equal_rounds"] == [2, 4]  # the middle and the last of the saved rounds
    rows = rep["rounds"]
    assert {r["round"] for r in rows} <= {2, 4} and any("loss" in r["conditions"] for r in rows)
    got = _scalars(tb / "run")
    for key in ("lambda_max", "trace", "sharpness_sam", "train_loss"):
        assert got[f"curvature/{key}"] == {r["round"]: float(np.float32(r[key])) for r in rows}, key


def test_landscape_pca_surface_on_a_save_every_run_uses_the_saved_rounds(cli, sparse, tmp_path):
    code, _, err = cli("landscape", "--ckpt", ckpt.round_path(sparse, 4), "--surface", "2d", "--surface-dirs", "pca",
                       "--grid", "3", "--samples", "50", "--out", tmp_path / "ls")  # fmt: skip
    assert code == 0, err
    markers = json.loads((tmp_path / "ls" / "surface.json").read_text())["markers"]
    assert [m["name"] for m in markers] == ["round 0", "round 2", "round 4"]
