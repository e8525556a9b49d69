"""--preset reference|paper, the default local optimiser, and configs that predate new fields."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from flatfl import checkpoint as ckpt
from flatfl.algorithms import ALGORITHMS
from flatfl.config import LocalConfig, RunConfig
from tests.test_cli import _one_line_error

# every default of the authors' parser (HMHelloWorld/FedMut utils/options.py) that the preset sets
AUTHORS = {"lr": 0.01, "momentum": 0.5, "batch_size": 50, "epochs": 5, "num_users": 100, "frac": 0.1}
AUTHORS_FEDMUT = {"radius": 4.0, "mut_acc_rate": 0.3, "mut_bound": 50, "weighted": False}


def test_reference_preset_is_the_authors_code():
    cfg = RunConfig.from_flags({"preset": "reference", "algo": "fedmut"})
    loc, ac = cfg.local, cfg.algo_config
    got = {"lr": loc.lr, "momentum": loc.momentum, "batch_size": loc.batch_size, "epochs": loc.epochs}
    got |= {"num_users": cfg.data.num_clients, "frac": cfg.frac}
    assert got == AUTHORS and cfg.clients_per_round == 10
    assert {k: getattr(ac, k) for k in AUTHORS_FEDMUT} == AUTHORS_FEDMUT
    assert cfg.preset == "reference"


def test_paper_preset_differs_in_momentum_and_resnet_beta0():
    assert RunConfig.from_flags({"preset": "paper", "algo": "fedmut"}).local.momentum == 0.9
    cnn = RunConfig.from_flags({"preset": "paper", "algo": "fedmut", "dataset": "cifar10"})
    res = RunConfig.from_flags({"preset": "paper", "algo": "fedmut", "dataset": "cifar10", "model": "resnet18"})
    ref = RunConfig.from_flags({"preset": "reference", "algo": "fedmut", "dataset": "cifar10", "model": "resnet18"})
    assert (cnn.algo_config.mut_acc_rate, res.algo_config.mut_acc_rate, ref.algo_config.mut_acc_rate) == (0.3, 0.5, 0.3)


def test_explicit_flags_override_a_preset():
    cfg = RunConfig.from_flags({"preset": "reference", "algo": "fedmut", "momentum": 0.9, "radius": 2.0, "clients": 20})
    assert (cfg.local.momentum, cfg.algo_config.radius, cfg.data.num_clients) == (0.9, 2.0, 20)
    assert cfg.local.lr == 0.01 and cfg.frac == 0.1


@pytest.mark.parametrize("preset", [None, "reference", "paper"])
def test_every_algorithm_gets_the_same_local_optimiser(preset):
    ns = {} if preset is None else {"preset": preset}
    # the SAM family's own perturbation (local.opt/rho/eta: FedSAM's sam) aside, the same local SGD
    locals_ = {
        algo: replace(RunConfig.from_flags(ns | {"algo": algo}).local, opt="sgd", rho=None, eta=None)
        for algo in ALGORITHMS
    }
    assert len(set(locals_.values())) == 1, locals_
    if preset is None:  # the default is the reference code's momentum (README: measured)
        assert next(iter(locals_.values())) == LocalConfig() and LocalConfig().momentum == 0.5
    # FedAvg keeps its sample-weighted mean (as the reference's FedAvg); the plain mean is FedMut's
    assert RunConfig.from_flags(ns | {"algo": "fedavg"}).algo_config.weighted is True


def test_new_fields_are_absent_at_default_so_old_identities_hold():
    cfg = RunConfig.from_flags({"algo": "fedmut"})
    d = cfg.to_dict()
    assert "preset" not in d and "partition_file" not in d["data"] and "partition_sha256" not in d["data"]
    assert "mutation_cap" not in d["algo_config"]
    assert RunConfig.from_dict(d) == cfg
    labelled = RunConfig.from_flags({"algo": "fedmut", "preset": "reference"})
    explicit = RunConfig.from_flags(
        {"algo": "fedmut", "clients": 100, "frac": 0.1, "momentum": 0.5, "lr": 0.01, "batch_size": 50}
    )
    assert labelled.to_dict()["preset"] == "reference" and RunConfig.from_dict(labelled.to_dict()) == labelled
    assert labelled.identity() == explicit.identity()  # the preset is a label; values identify the run


def test_run_json_records_the_preset_and_resume_keeps_it(cli, tmp_path):
    out = tmp_path / "r"
    args = ["--dataset", "digits", "--preset", "reference", "--clients", "6", "--frac", "0.5", "--local-epochs", "1"]
    code, _, err = cli("train", *args, "--algo", "fedmut", "--rounds", "1", "--out", out, "--no-progress")
    assert code == 0, err
    info = ckpt.read_run_json(out)
    assert info["config"]["preset"] == "reference" and info["preset"]["name"] == "reference"
    assert info["preset"]["values"]["momentum"] == 0.5 and info["config"]["local"]["momentum"] == 0.5
    assert info["config"]["data"]["num_clients"] == 6  # the explicit flag, not the preset's 100
    code, _, err = cli("train", "--resume", out, "--rounds", "2", "--preset", "paper", "--no-progress")
    _one_line_error(code, err, "--preset paper", "reference")


def test_cifar10_fedmut_with_every_default_trains(cli, tmp_path):
    """The issue's "done when": ``flatfl train --dataset cifar10 --algo fedmut`` with defaults (LeNet,
    Dirichlet 0.1 over 20 clients, 5 a round, momentum 0.5) on CIFAR-format files stays finite
    through the rounds in which the paper's momentum 0.9 diverged on real CIFAR-10 (5-6)."""
    from tests.test_cifar import write_cifar10

    write_cifar10(tmp_path / "data", n=100)
    out = tmp_path / "r"
    code, _, err = cli(
        "train", "--dataset", "cifar10", "--data-root", tmp_path / "data", "--algo", "fedmut", "--rounds", "6",
        "--out", out, "--no-progress",
    )  # fmt: skip
    assert code == 0, err
    m = ckpt.read_metrics(out)
    assert [r["round"] for r in m] == list(range(7))
    assert ckpt.read_run_json(out)["config"]["local"]["momentum"] == 0.5
    assert all(math.isfinite(r["test_loss"]) and math.isfinite(r["global_update_norm"]) for r in m[1:])
    assert all(r["mutation_norm"] > 0 and all(map(math.isfinite, r["sent_loss"])) for r in m[2:])
