"""flatfl on Flower (flatfl.flower): FedMut as a Flower strategy equals ``flatfl train --algo fedmut``
bit for bit, and the recorder's run directory goes through ``flatfl landscape`` and ``flatfl report``.

Flower's simulation runtime (run_simulation, Ray backend) runs the apps in one test; the others run
Flower's objects (Strategy, ClientApp, Messages, ArrayRecords) on flatfl's in-process LocalGrid, which
shares the test's process and threads (seconds instead of Ray's start-up).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("flwr")

from flatfl import checkpoint as ckpt  # noqa: E402
from flatfl.errors import UserError  # noqa: E402
from tests.test_layering import ROOT, _imports  # noqa: E402

TEN = {"algo": "fedmut", "clients": 10, "frac": 0.5, "rounds": 3, "local-epochs": 1, "seed": 0, "save-clients": 1}
TRAIN = ["--clients", "10", "--frac", "0.5", "--rounds", "3", "--local-epochs", "1", "--seed", "0", "--save-clients"]


def flower_run(user_config: dict, out, nodes: int = 10, client_config: dict | None = None) -> None:
    """The app's ServerApp and ClientApp on the in-process grid; ``client_config`` changes the last node's
    run config."""
    from flwr.app import Context, RecordDict

    from flatfl.flower.client_app import app
    from flatfl.flower.local_grid import LocalGrid
    from flatfl.flower.server_app import make_server_app

    grid = LocalGrid(app, nodes, user_config)
    if client_config:
        grid.contexts[max(grid.contexts)].run_config.update(client_config)
    context = Context(
        run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=dict(user_config, out=str(out))
    )
    make_server_app()(grid, context)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from flatfl.cli import main

    root = tmp_path_factory.mktemp("flower")
    flower_run(TEN, root / "flower")
    args = ["train", "--algo", "fedmut", *TRAIN, "--out", str(root / "flatfl"), "--no-progress", "--device", "cpu"]
    assert main(args) == 0
    return root


def test_fedmut_on_flower_is_flatfl_fedmut_bit_for_bit(runs):
    a, b = runs / "flatfl", runs / "flower"
    names = ["partition.json", "state.safetensors"] + [f"{k}_{t:04d}.safetensors" for k in ("round", "clients")
                                                      for t in range(4) if (k, t) != ("clients", 0)]  # fmt: skip
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    info_a, info_b = ckpt.read_run_json(a), ckpt.read_run_json(b)
    assert info_b.pop("flower") == {"version": __import__("flwr").__version__,
                                    "strategy": "flatfl.flower.strategy.FedMutStrategy"}  # fmt: skip
    assert info_a == info_b
    _, _, meta = ckpt.load_clients(b / "clients_0002.safetensors")  # real mutants were sent
    assert meta["clients"] and any(c != 0 for row in meta["mutation_coefficients"] for c in row)
    ma, mb = ckpt.read_metrics(a), ckpt.read_metrics(b)
    for ra, rb in zip(ma, mb, strict=True):
        for key in ("round", "test_loss", "test_acc", "clients", "client_train_loss", "mutation_norm", "sent_loss"):
            assert ra.get(key) == rb.get(key), key


@pytest.mark.deployment  # Ray's start-up: with the other runtime tests in make test-deployment
def test_flowers_simulation_runtime_gives_flatfl_fedmut_bit_for_bit(tmp_path):
    """10 virtual SuperNodes on Ray, 3 rounds of FedMut: every file of the run equals ``flatfl train``'s
    (each Ray actor has 1 CPU, so 1 thread; the reference trains with ``--threads 1``)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", RAY_DISABLE_USAGE_STATS="1")
    config = [f"{k}={json.dumps(v)}" for k, v in TEN.items()]
    sim = subprocess.run(
        [sys.executable, "examples/flower_app/simulation.py", "--out", str(tmp_path / "sim"), *config],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert sim.returncode == 0, sim.stderr[-3000:]
    assert "aggregate_train: Received 5 results and 0 failures" in sim.stdout + sim.stderr
    ref = subprocess.run(
        [sys.executable, "-m", "flatfl", "train", "--algo", "fedmut", *TRAIN, "--threads", "1", "--no-progress",
         "--device", "cpu", "--out", str(tmp_path / "ref")],
        env=env, cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert ref.returncode == 0, ref.stderr[-2000:]
    names = ["partition.json", "state.safetensors", *(f"round_{t:04d}.safetensors" for t in range(4))]
    names += [f"clients_{t:04d}.safetensors" for t in (1, 2, 3)]
    for name in names:
        assert (tmp_path / "sim" / name).read_bytes() == (tmp_path / "ref" / name).read_bytes(), name
    assert ckpt.read_run_json(tmp_path / "sim")["flower"]["strategy"] == "flatfl.flower.strategy.FedMutStrategy"


def test_landscape_on_the_flower_checkpoint(cli, runs, tmp_path):
    lam = {}
    for name in ("flatfl", "flower"):
        code, _, err = cli("landscape", "--ckpt", runs / name / "round_0003.safetensors", "--data", "test",
                           "--samples", "100", "--dtype", "float64", "--hessian", "--topk", "1", "--tol", "1e-8",
                           "--out", tmp_path / name)  # fmt: skip
        assert code == 0, err
        lam[name] = json.loads((tmp_path / name / "landscape.json").read_text())["hessian"]["eigenvalues"][0]
    assert lam["flower"] == lam["flatfl"] and lam["flower"] > 0


def test_flower_fedavg_and_fedmut_runs_give_one_report(cli, runs, tmp_path):
    from flatfl.statedict import weighted_average

    fedavg = dict(TEN, algo="fedavg")
    flower_run(fedavg, tmp_path / "fedavg")
    info = ckpt.read_run_json(tmp_path / "fedavg")
    assert info["config"]["algo"] == "fedavg" and info["config"]["algo_config"]["fraction_train"] == 0.5
    # Flower's FedAvg: the sample-weighted mean of the returned models (flatfl's float64 mean as the reference)
    _, returned, meta = ckpt.load_clients(tmp_path / "fedavg" / "clients_0002.safetensors")
    new, _ = ckpt.load_round(ckpt.round_path(tmp_path / "fedavg", 2))
    ref = weighted_average(returned, meta["num_samples"])
    assert len(meta["clients"]) == 5 and all(float((new[k] - ref[k]).abs().max()) <= 1e-6 for k in ref)
    out = tmp_path / "report"
    code, stdout, err = cli("report", tmp_path / "fedavg", runs / "flower", "--out", out, "--rounds", "3",
                            "--samples", "100", "--grid", "3", "--trace-matvecs", "0", "--sharpness", "none",
                            "--no-spread", "--no-match", "--slices", "0", "--no-progress")  # fmt: skip
    assert code == 0, err
    rows = list(csv.DictReader(open(out / "report.csv")))
    assert sorted(r["run"] for r in rows) == ["fedavg", "fedmut"] and all(float(r["lambda_max"]) > 0 for r in rows)
    assert (out / "verdict.csv").is_file() and "equal round (3)" in stdout


def test_seeds_of_a_seeded_flower_strategy_form_one_group(tmp_path):
    """Flower FedAvg runs that differ only in their seed are one group of the report (the seed is the run's,
    not a strategy setting that splits groups)."""
    from flatfl.runs.groups import group_runs
    from flatfl.runs.run import Run

    for seed in (0, 1):
        flower_run(dict(TEN, algo="fedavg", rounds=1, seed=seed), tmp_path / f"s{seed}", nodes=10)
    info = ckpt.read_run_json(tmp_path / "s1")
    assert "seed" not in info["config"]["algo_config"] and info["config"]["seed"] == 1
    groups = group_runs([Run.open(tmp_path / "s0"), Run.open(tmp_path / "s1")])
    assert len(groups) == 1


def test_flower_fedprox_and_fedavg_train_flatfls_clients(cli, tmp_path):
    """The app's FedProx (Flower's FedProx on flatfl's seeded sample; the ClientApp adds the proximal term
    for ``proximal-mu``) trains the clients ``flatfl train --algo fedprox`` trains: the same sample every
    round, round 1's returned models byte-equal, its mean within float32 rounding of flatfl's."""
    two = dict(TEN, rounds=2)
    flower_run(dict(two, algo="fedprox", mu=0.5), tmp_path / "prox")
    flower_run(dict(two, algo="fedavg"), tmp_path / "avg")
    code, _, err = cli("train", "--algo", "fedprox", "--mu", "0.5", *TRAIN[:4], "--rounds", "2", *TRAIN[6:],
                       "--out", tmp_path / "ref", "--no-progress", "--device", "cpu")  # fmt: skip
    assert code == 0, err
    info = ckpt.read_run_json(tmp_path / "prox")
    assert info["config"]["algo"] == "fedprox" and info["config"]["algo_config"]["proximal_mu"] == 0.5
    assert info["flower"]["strategy"] == "flatfl.flower.sampling.SeededFedProx"
    for name in ("prox", "avg"):
        drawn = [m["clients"] for m in ckpt.read_metrics(tmp_path / name)[1:]]
        assert drawn == [m["clients"] for m in ckpt.read_metrics(tmp_path / "ref")[1:]], name
    sent, prox, meta = ckpt.load_clients(tmp_path / "prox" / "clients_0001.safetensors")
    _, ref, _ = ckpt.load_clients(tmp_path / "ref" / "clients_0001.safetensors")
    _, plain, _ = ckpt.load_clients(tmp_path / "avg" / "clients_0001.safetensors")
    assert all(torch.equal(a[k], b[k]) for a, b in zip(prox, ref, strict=True) for k in a)
    # the proximal term was applied: without it (Flower's FedAvg) the largest client (several local steps;
    # at the first step w = w_0 and the term's gradient is 0) moves further from w_0
    i = max(range(len(prox)), key=lambda j: meta["num_samples"][j])
    dist = [sum(float((m[k] - sent[i][k]).pow(2).sum()) for k in m) for m in (prox[i], plain[i])]
    assert 0 < dist[0] < dist[1]
    new, _ = ckpt.load_round(ckpt.round_path(tmp_path / "prox", 1))
    want, _ = ckpt.load_round(ckpt.round_path(tmp_path / "ref", 1))
    assert meta["clients"] and all(float((new[k] - want[k]).abs().max()) <= 1e-6 for k in want)


@pytest.mark.parametrize("dataset", ["cifar10", "shakespeare"])
def test_the_client_app_trains_cifar_and_shakespeare_clients(cli, tmp_path, dataset):
    """The app's ClientApp on CIFAR-10 (the python batches, with augmentation) and LEAF Shakespeare (an LSTM
    on natural clients), written small in their real formats: the rounds of ``flatfl train``, byte for byte."""
    from tests.test_cifar import write_cifar10
    from tests.test_shakespeare import write_leaf_all_data

    if dataset == "cifar10":
        write_cifar10(tmp_path / "data", n=20)
        flags = {"model": "cnn", "augment": True, "clients": 4, "frac": 0.5, "partition": "iid"}
    else:
        write_leaf_all_data(tmp_path / "data", repeats=2)
        flags = {"clients": 3, "frac": 0.67, "min-size": 5, "batch-size": 64, "lr": 0.5}
    rounds = 2 if dataset == "cifar10" else 1  # the LSTM's round takes seconds
    config = {"algo": "fedmut", "dataset": dataset, "data-root": str(tmp_path / "data"), "rounds": rounds, "seed": 3}
    config |= flags | {"local-epochs": 1}
    flower_run(config, tmp_path / "flower", nodes=flags["clients"])
    argv = [f"--{k}" if v is True else f"--{k} {v}" for k, v in config.items()]
    code, _, err = cli("train", *" ".join(argv).split(), "--out", tmp_path / "ref", "--no-progress", "--device", "cpu")
    assert code == 0, err
    for name in ("partition.json", "state.safetensors", *(f"round_{t:04d}.safetensors" for t in range(rounds + 1))):
        assert (tmp_path / "flower" / name).read_bytes() == (tmp_path / "ref" / name).read_bytes(), name
    assert ckpt.read_run_json(tmp_path / "flower")["config"]["data"]["dataset"] == dataset


def test_bad_flower_run_config_is_one_line():
    from flatfl.flower.config import run_config

    with pytest.raises(UserError, match="Flower run config: --nope: not a flag of a run's config"):
        run_config({"nope": 1})
    with pytest.raises(UserError, match="radius"):
        run_config({"radius": "wide"})
    assert run_config({"algo": "fedmut", "radius": 2}).algo_config.radius == 2.0
    # Flower templates' num-server-rounds is rounds; both at once are refused
    assert run_config({"num-server-rounds": 7}).rounds == 7
    with pytest.raises(UserError, match="both rounds and num-server-rounds"):
        run_config({"num-server-rounds": 7, "rounds": 3})


@pytest.mark.parametrize(
    "key, value",
    [("clients", 0), ("frac", 1.5), ("dataset", "mnist"), ("radius", "wide"), ("mut-acc-rate", 2), ("proxy-data", "x"),
     ("mu", 0.1), ("partition", "random"), ("rho", 0.1)],
)  # fmt: skip
def test_flower_and_cli_refuse_a_flag_in_the_same_words(cli, tmp_path, key, value):
    """One check for both paths (RunConfig.from_flags): the Flower run config's error is flatfl train's line,
    prefixed with ``Flower run config:``, and names the flag; exit code 2 on the command line."""
    from flatfl.flower.config import run_config

    config = {"algo": "fedmut", "clients": 10, key: value}
    with pytest.raises(UserError) as flower:
        run_config(config)
    argv = [a for k, v in config.items() for a in (f"--{k}", str(v))]
    code, _, err = cli("train", *argv, "--out", tmp_path / "o", "--rounds", "1")
    assert code == 2 and err.strip() == f"flatfl: error: {str(flower.value).removeprefix('Flower run config: ')}"
    assert str(flower.value).startswith(f"Flower run config: --{key}")
    assert not (tmp_path / "o").exists()


def test_flower_config_parses_no_argv():
    """The Flower app's config goes to RunConfig.from_flags as a mapping: no argparse, no flatfl.cli."""
    imports = _imports(ROOT / "flatfl" / "flower" / "config.py")
    assert "argparse" not in imports and not [m for m in imports if m.startswith("flatfl.cli")], imports
    from flatfl.flower.config import run_config

    typed = run_config({"algo": "fedmut", "radius": 2, "unweighted": True, "save-clients": True, "augment": False})
    text = run_config({"algo": "fedmut", "radius": "2", "weighted": "false", "save_clients": "1"})
    assert typed == text and typed.algo_config.radius == 2.0 and typed.save_clients == 1
    with pytest.raises(UserError, match="Flower run config: --weighted: given twice"):
        run_config({"algo": "fedmut", "radius": 2, "weighted": False, "unweighted": True})


def test_true_false_keys_and_checks_before_ray(tmp_path):
    """overwrite/resume: booleans or the strings true/false, nothing else (the string "False" is no);
    examples/flower_app/simulation.py refuses what the ServerApp would refuse before Ray starts."""
    from flatfl.flower.config import switch

    assert switch({"overwrite": "False"}, "overwrite") is False and switch({"resume": "true"}, "resume") is True
    assert switch({}, "resume") is False and switch({"overwrite": True}, "overwrite") is True
    with pytest.raises(UserError, match=r"overwrite = 'no'; give true or false"):
        switch({"overwrite": "no"}, "overwrite")
    flower_run({"algo": "fedavg", "clients": 2, "frac": 1.0, "rounds": 1, "local-epochs": 1}, tmp_path / "run", nodes=2)
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file()}
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for config, needle in (
        (["overwrite=False"], "already holds a run; continue it with resume=true or replace it with overwrite=true"),
        (["algo=scaffold"], "algo = 'scaffold'; the Flower app runs fedmut, fedavg, fedprox, fedsam or fedasam"),
        (["resume=true", "algo=fedmut", "clients=2", "frac=1.0"], "records another run than this strategy and config"),
    ):
        proc = subprocess.run([sys.executable, "examples/flower_app/simulation.py", "--out", str(tmp_path / "run"),
                               *config], env=env, cwd=ROOT, capture_output=True, text=True)  # fmt: skip
        assert proc.returncode == 2 and needle in proc.stderr.splitlines()[-1], proc.stderr[-1500:]
        assert "Ray" not in proc.stderr and "Traceback" not in proc.stderr
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file()} == before


def test_fedmut_needs_a_node_per_sampled_client(tmp_path):
    with pytest.raises(UserError, match=r"have no Flower node .* start one SuperNode per client"):
        flower_run(dict(TEN, rounds=1), tmp_path / "few", nodes=3)


def test_a_failing_client_and_an_existing_run_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match=r"1 of 2 clients replied; .* first error: UserError: Flower run config"):
        flower_run({"algo": "fedmut", "clients": 2, "frac": 1.0, "rounds": 1, "local-epochs": 1}, tmp_path / "bad",
                   nodes=2, client_config={"lr": "fast"})  # fmt: skip
    assert not (tmp_path / "bad" / "round_0001.safetensors").exists()  # round 0 only: nothing half-written
    # Flower's FedAvg aggregates no model when every client fails: the recorder stops (no gap in the rounds)
    with pytest.raises(UserError, match=r"round 1: the strategy aggregated no model \(1 of 1 clients failed"):
        flower_run({"algo": "fedavg", "clients": 1, "frac": 1.0, "rounds": 2, "local-epochs": 1}, tmp_path / "none",
                   nodes=1, client_config={"lr": "fast"})  # fmt: skip
    assert ckpt.list_rounds(tmp_path / "none") == [0]
    flower_run(dict(TEN, rounds=1, clients=2, frac=1.0), tmp_path / "one", nodes=2)
    before = {p.name: p.read_bytes() for p in (tmp_path / "one").iterdir() if p.is_file()}
    with pytest.raises(UserError, match="already holds a run"):
        flower_run(dict(TEN, rounds=1, clients=2, frac=1.0), tmp_path / "one", nodes=2)
    assert {p.name: p.read_bytes() for p in (tmp_path / "one").iterdir() if p.is_file()} == before


def test_a_kill_while_recording_keeps_every_committed_round_and_resume_finishes_it(tmp_path):
    """Killed (as by SIGKILL) halfway through writing round 2's model: rounds 0 and 1 stay whole, the
    half-written file is a temporary one, removed on opening, and no run is mixed; the app's ``resume``
    then finishes the run, byte-equal to ``flatfl train`` uninterrupted."""
    from flatfl.rundir import recover
    from flatfl.runs.groups import run_status
    from flatfl.runs.run import Run

    config = {"algo": "fedmut", "clients": 2, "frac": 1.0, "rounds": 3, "local-epochs": 1, "seed": 0, "save-clients": 1}
    script = "from tests.test_flower import flower_run; flower_run({!r}, {!r}, nodes=2)"
    env = dict(os.environ, FLATFL_FAULT_AT="round:write:3", OMP_NUM_THREADS="1")

    def run(cfg: dict, env: dict) -> subprocess.CompletedProcess:
        argv = [sys.executable, "-c", script.format(cfg, str(tmp_path / "k"))]
        return subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True)

    proc = run(config, env)
    assert proc.returncode == 137, proc.stderr[-2000:]
    out = tmp_path / "k"
    assert ckpt.list_rounds(out) == [0, 1] and any(p.name.endswith(".tmp") for p in out.iterdir())
    recover(out)
    assert not any(p.name.endswith(".tmp") for p in out.iterdir())
    assert [m["round"] for m in ckpt.read_metrics(out)] == [0, 1]
    assert run_status(Run.open(out)).state == "incomplete"
    # the reference in a process with the same threads: float reductions differ across thread counts
    ref = subprocess.run(
        [sys.executable, "-m", "flatfl", "train", "--algo", "fedmut", "--clients", "2", "--frac", "1.0", "--rounds",
         "3", "--local-epochs", "1", "--seed", "0", "--save-clients", "--out", str(tmp_path / "ref"), "--no-progress"],
        env=dict(os.environ, OMP_NUM_THREADS="1"), cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert ref.returncode == 0, ref.stderr[-2000:]
    for r in (0, 1):
        assert ckpt.round_path(out, r).read_bytes() == ckpt.round_path(tmp_path / "ref", r).read_bytes()
    # a different config is refused in one line, the run untouched; the same one resumes it
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    other = run(dict(config, radius=2.0, resume=True), dict(env, FLATFL_FAULT_AT=""))
    assert other.returncode == 1 and "records another run than this strategy" in other.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    done = run(dict(config, resume=True), dict(env, FLATFL_FAULT_AT=""))
    assert done.returncode == 0, done.stderr[-2000:]
    names = ["state.safetensors", *(f"round_{t:04d}.safetensors" for t in range(4))]
    names += [f"clients_{t:04d}.safetensors" for t in (1, 2, 3)]
    for name in names:
        assert (out / name).read_bytes() == (tmp_path / "ref" / name).read_bytes(), name
    assert [m["round"] for m in ckpt.read_metrics(out)] == [0, 1, 2, 3]
    assert run_status(Run.open(out)).state == "complete"


def test_only_flatfl_flower_imports_flwr():
    from tests.test_layering import _imports

    sources = [p for d in ("flatfl", "analysis") for p in (ROOT / d).rglob("*.py") if "flower" not in p.parts]
    bad = [f"{p.relative_to(ROOT)}: {m}" for p in sources for m in _imports(p) if m.split(".")[0] == "flwr"]
    assert sources and not bad, bad


def test_flower_fedsam_clients_run_flatfls_sam_step(cli, tmp_path):
    """algo = fedsam: Flower's FedAvg server and ClientApps taking flatfl's SAM steps; round 1's returned models
    byte-equal ``flatfl train --algo fedsam``'s (so do the sampled clients), its mean within float32 rounding."""
    from flatfl.flower.config import run_config
    from flatfl.flower.server_app import strategy_for

    flower_run(dict(TEN, algo="fedsam", rho=0.1, rounds=1), tmp_path / "sam")
    code, _, err = cli("train", "--algo", "fedsam", "--rho", "0.1", *TRAIN[:4], "--rounds", "1", *TRAIN[6:],
                       "--out", tmp_path / "ref", "--no-progress", "--device", "cpu")  # fmt: skip
    assert code == 0, err
    local = ckpt.read_run_json(tmp_path / "sam")["config"]["local"]
    assert (local["opt"], local["rho"]) == ("sam", 0.1)
    _, got, meta = ckpt.load_clients(tmp_path / "sam" / "clients_0001.safetensors")
    _, want, ref_meta = ckpt.load_clients(tmp_path / "ref" / "clients_0001.safetensors")
    assert meta["clients"] == ref_meta["clients"]
    assert all(torch.equal(a[k], b[k]) for a, b in zip(got, want, strict=True) for k in a)
    new, _ = ckpt.load_round(ckpt.round_path(tmp_path / "sam", 1))
    ref, _ = ckpt.load_round(ckpt.round_path(tmp_path / "ref", 1))
    assert all(float((new[k] - ref[k]).abs().max()) <= 1e-6 for k in ref)
    with pytest.raises(UserError, match="mofedsam"):  # its clients need the server's momentum
        strategy_for(run_config(dict(TEN, algo="mofedsam")), ["w"])
