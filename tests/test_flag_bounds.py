"""Flag values past what the code can hold (issue #27, hostile pass 11): floats above float32's largest, work
budgets such as 2**70, a Flower run config with 10**400 clients or ``seed = false``. Each is one line naming
the flag and its bound, exit 2, decided while parsing (nothing is read, so no run is needed here)."""

from __future__ import annotations

import pytest
import torch

from flatfl.errors import UserError
from flatfl.flagtypes import FLOAT32_MAX, MAX_CLIENTS, MAX_LEVELS, MAX_PASSES, pos_float
from flatfl.flower.config import run_config
from tests.test_cli import _one_line_error

TRAIN = ["train", "--dataset", "digits", "--clients", "10", "--frac", "0.5", "--rounds", "2"]
HUGE = str(2**70)


def test_the_bound_is_float32s_largest():
    assert FLOAT32_MAX == float(torch.finfo(torch.float32).max)
    assert pos_float(repr(FLOAT32_MAX)) == FLOAT32_MAX  # the largest itself is accepted


@pytest.mark.parametrize(
    "args",
    [
        ["--lr", "1e39"],
        ["--weight-decay", "1e39"],
        ["--algo", "feddf", "--distill-lr", "1e300"],
        ["--algo", "fedmut", "--radius", "1e39"],
        ["--algo", "fedsam", "--rho", "1e39"],
    ],
)
def test_train_float_flags_above_float32(cli, tmp_path, args):
    code, _, err = cli(*TRAIN, *args, "--out", tmp_path / "r")
    name = [a for a in args if a.startswith("--") and a != "--algo"][0]
    _one_line_error(code, err, name, "3.4e38")
    assert not (tmp_path / "r").exists()


def test_clients_beyond_the_bound(cli, tmp_path):
    for value in ("1" + "0" * 400, str(MAX_CLIENTS + 1)):
        code, _, err = cli("train", "--dataset", "digits", "--clients", value, "--out", tmp_path / "r")
        _one_line_error(code, err, "--clients", f"{MAX_CLIENTS:,}")


@pytest.mark.parametrize(
    ("args", "bound"),
    [
        (["--trace", "--trace-matvecs", HUGE], f"{MAX_PASSES:,}"),
        (["--trace", "--trace-matvecs", str(MAX_PASSES + 1)], f"{MAX_PASSES:,}"),
        (["--sharpness", "sam", "--sharpness-steps", HUGE], f"{MAX_PASSES:,}"),
        (["--sharpness", "avg", "--sharpness-samples", HUGE], f"{MAX_PASSES:,}"),
        (["--hessian", "--topk", HUGE], f"{MAX_PASSES:,}"),
        (["--hessian", "--max-vectors", HUGE], f"{MAX_PASSES:,}"),
        (["--density", "--slq-runs", HUGE], f"{MAX_PASSES:,}"),
        (["--density", "--slq-steps", HUGE], f"{MAX_PASSES:,}"),
        (["--connect", "returned:0", "--connect-steps", HUGE], f"{MAX_PASSES:,}"),
        (["--surface", "2d", "--levels", HUGE], str(MAX_LEVELS)),
        (["--surface", "1d", "--bn-reestimate", HUGE], f"{MAX_PASSES:,}"),
        (["--surface", "1d", "--range=-1e39,1"], "3.4e38"),
        (["--sharpness", "sam", "--rho", "1e39"], "3.4e38"),
    ],
)
def test_landscape_budgets_are_bounded(cli, tmp_path, args, bound):
    code, _, err = cli("landscape", "--ckpt", tmp_path / "round_0001.safetensors", *args)
    _one_line_error(code, err, [a for a in args if a.startswith("--")][-1].split("=")[0], bound)


@pytest.mark.parametrize("args", [["--trace-matvecs", HUGE], ["--connect-steps", HUGE], ["--span", "1e39"]])
def test_report_budgets_are_bounded(cli, tmp_path, args):
    code, _, err = cli("report", tmp_path, *args)
    _one_line_error(code, err, args[0])


@pytest.mark.parametrize(
    ("config", "needles"),
    [
        ({"clients": 10**400}, ["--clients", f"{MAX_CLIENTS:,}"]),
        ({"seed": False}, ["--seed", "False"]),
        ({"lr": False}, ["--lr", "False"]),
        ({"data-root": 5}, ["--data-root", "5"]),
        ({"lr": 1e39}, ["--lr", "3.4e38"]),
    ],
)
def test_flower_run_config_refuses(config, needles):
    with pytest.raises(UserError) as exc:
        run_config(config)
    msg = str(exc.value)
    assert msg.count("Flower run config:") == 1 and "\n" not in msg, msg
    for n in needles:
        assert n in msg, (n, msg)


def test_flower_prefix_once_for_rounds_twice():
    with pytest.raises(UserError) as exc:
        run_config({"rounds": 2, "num-server-rounds": 3})
    assert str(exc.value) == "Flower run config: both rounds and num-server-rounds; give one"


def test_flower_save_clients_false_is_left_out():
    assert run_config({"save-clients": False}).save_clients == run_config({}).save_clients
    assert run_config({"save-clients": True, "data-root": "d"}).save_clients == 1


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--shards", "5"], "--partition shards"),  # the default partition is dirichlet
        (["--partition", "iid", "--dirichlet", "0.5"], "--partition dirichlet"),
        (["--partition", "shards", "--dirichlet", "0.5"], "--partition dirichlet"),
        (["--partition", "iid", "--min-size", "3"], "--partition dirichlet or natural"),
    ],
)
@pytest.mark.parametrize("command", ["partition", "train"])
def test_options_of_a_partition_not_chosen(cli, tmp_path, command, args, needle):
    out = ["--out", tmp_path / "r"] if command == "train" else ["--plot", tmp_path / "p.png"]
    code, _, err = cli(command, "--dataset", "digits", "--clients", "10", *args, *out)
    _one_line_error(code, err, args[-2], needle)
    assert not (tmp_path / "r").exists() and not (tmp_path / "p.png").exists()


def test_options_of_the_chosen_partition_are_taken():
    cfg = run_config({"partition": "shards", "shards": 3, "clients": 5})
    assert cfg.data.shards_per_client == 3
    assert run_config({"dirichlet": 0.5, "min-size": 3}).data.min_size == 3


@pytest.mark.parametrize("algo", ["feddf", "fedaux"])
@pytest.mark.parametrize("value", ["1e300", "1e4", "1001", "0"])
def test_temperature_past_float32_resolution(cli, tmp_path, algo, value):
    code, _, err = cli(*TRAIN, "--algo", algo, "--temperature", value, "--out", tmp_path / "r")
    _one_line_error(code, err, "--temperature", "(0, 1,000]")


def test_distillation_that_diverges_says_so(cli, tmp_path):
    """--distill-lr 2**70: Adam's first steps make the student's loss NaN; the early stopping used to keep
    w_avg silently (rc 0, FedDF run as FedAvg). Now it is a divergence: exit 1, the usual message."""
    from flatfl.run_files import DIVERGED_JSON

    out = tmp_path / "r"
    code, _, err = cli(*TRAIN, "--local-epochs", "1", "--algo", "feddf", "--distill-steps", "5",
                       "--distill-lr", HUGE, "--no-progress", "--out", out)  # fmt: skip
    assert code == 1, err
    assert "round 1: the server's distillation loss became nan" in err and "--distill-lr" in err, err
    assert "Traceback" not in err and (out / DIVERGED_JSON).is_file()
