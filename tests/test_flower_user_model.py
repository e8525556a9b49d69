"""A Flower user's own model, data, ClientApp and strategy, recorded by flatfl's RunRecorder
(``UserModel``: the model as ``MODULE:FACTORY``, the data as names), then read by ``flatfl
landscape --ckpt`` and ``flatfl report`` unchanged, from the user's folder as Flower apps run."""

from __future__ import annotations

import csv
import json
import textwrap

import pytest

pytest.importorskip("flwr")

from flatfl import checkpoint as ckpt  # noqa: E402
from flatfl.errors import UserError  # noqa: E402

# a user's Flower app (task.py in Flower's templates): its model, data loaders and ClientApp
USER_APP = textwrap.dedent(
    """
    import torch
    from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from torch import nn

    def Net(hidden=16):
        return nn.Sequential(nn.Linear(64, hidden), nn.Tanh(), nn.Linear(hidden, 10))

    def _xy(lo, hi):  # 10 Gaussian classes in 64 dimensions
        g = torch.Generator().manual_seed(7)
        centres = torch.randn(10, 64, generator=g)
        y = torch.randint(0, 10, (1500,), generator=g)
        x = centres[y] + 1.5 * torch.randn(1500, 64, generator=g)
        return x[lo:hi], y[lo:hi]

    def train_xy():
        return _xy(0, 600)

    def test_xy():
        return _xy(1200, 1500)

    app = ClientApp()

    @app.train()
    def train(msg, context):
        pid, n = context.node_config["partition-id"], context.node_config["num-partitions"]
        x, y = train_xy()
        x, y = x[pid::n], y[pid::n]
        net = Net(**context.run_config.get("model", {}))
        net.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        opt = torch.optim.SGD(net.parameters(), lr=0.5)
        torch.manual_seed(pid)
        for i in torch.randperm(len(y)).split(50):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(x[i]), y[i])
            loss.backward()
            opt.step()
        metrics = MetricRecord({"num-examples": len(y), "train_loss": loss.item()})
        content = RecordDict({"arrays": ArrayRecord(net.state_dict()), "metrics": metrics})
        return Message(content, reply_to=msg)
    """
)
KW = {"hidden": 16}


@pytest.fixture
def user_app(tmp_path, monkeypatch):
    """The user's folder (with a module name of its own) as the current folder."""
    name = f"task_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(USER_APP)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def record(user_app: str, strategy, out, rounds: int = 3) -> None:
    from flatfl.flower.local_grid import LocalGrid
    from flatfl.flower.recorder import RunRecorder
    from flatfl.flower.subjects import UserModel

    model = UserModel(
        f"{user_app}:Net", KW, test_data=f"{user_app}:test_xy", train_data=f"{user_app}:train_xy",
        num_clients=3, seed=1, save_clients=1,
    )  # fmt: skip
    rec = RunRecorder(strategy, out, model=model)
    client_app = __import__(user_app).app
    rec.start(LocalGrid(client_app, 3, {"model": KW}), rec.initial_arrays(), num_rounds=rounds)


def test_a_user_model_run_is_recorded_and_measured(cli, user_app, tmp_path):
    from flwr.serverapp.strategy import FedAvg

    record(user_app, FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_available_nodes=3), tmp_path / "avg")
    info = ckpt.read_run_json(tmp_path / "avg")
    assert info["model"]["name"] == f"{user_app}:Net" and info["model"]["kwargs"] == KW
    assert info["config"]["data"]["test"] == f"{user_app}:test_xy" and info["config"]["algo"] == "fedavg"
    assert ckpt.list_rounds(tmp_path / "avg") == [0, 1, 2, 3] and not (tmp_path / "avg" / "partition.json").exists()
    metrics = ckpt.read_metrics(tmp_path / "avg")
    assert [m["round"] for m in metrics] == [0, 1, 2, 3] and metrics[3]["test_acc"] > metrics[0]["test_acc"]
    # landscape --ckpt rebuilds the user's model and its test data from run.json's names ...
    last = tmp_path / "avg" / "round_0003.safetensors"
    code, _, err = cli("landscape", "--ckpt", last, "--data", "test", "--dtype", "float64", "--hessian", "--topk",
                       "1", "--tol", "1e-9", "--out", tmp_path / "a")  # fmt: skip
    assert code == 0, err
    # ... and measures what the foreign path measures on the same weights and data
    code, _, err = cli("landscape", "--model", f"{user_app}:Net", "--model-kwargs", json.dumps(KW), "--weights",
                       tmp_path / "avg" / "round_0003.safetensors", "--data", f"{user_app}:test_xy", "--dtype",
                       "float64", "--hessian", "--topk", "1", "--tol", "1e-9", "--out", tmp_path / "b")  # fmt: skip
    assert code == 0, err
    lam = [json.loads((tmp_path / d / "landscape.json").read_text())["hessian"]["eigenvalues"][0] for d in "ab"]
    assert lam[0] > 0 and abs(lam[0] - lam[1]) <= 1e-9 * lam[1]
    # client data and BatchNorm re-estimation need flatfl's data set: one line
    code, _, err = cli("landscape", "--ckpt", tmp_path / "avg" / "round_0003.safetensors", "--data", "client:0",
                       "--hessian", "--out", tmp_path / "c")  # fmt: skip
    assert code == 2 and "holds no partition" in err and len(err.strip().splitlines()) == 1


def test_user_fedavg_and_fedmut_runs_give_one_report(cli, user_app, tmp_path):
    from flwr.serverapp.strategy import FedAvg

    from flatfl.algorithms.fedmut import FedMutConfig
    from flatfl.flower.strategy import FedMutStrategy

    params = ["0.weight", "0.bias", "2.weight", "2.bias"]
    record(user_app, FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_available_nodes=3), tmp_path / "fedavg")
    fedmut = FedMutStrategy(FedMutConfig(), param_names=params, num_clients=3, frac=1.0, seed=1)
    record(user_app, fedmut, tmp_path / "fedmut")
    _, _, meta = ckpt.load_clients(tmp_path / "fedmut" / "clients_0002.safetensors")
    assert any(c != 0 for row in meta["mutation_coefficients"] for c in row)  # the user's clients got mutants
    out = tmp_path / "report"
    code, stdout, err = cli("report", tmp_path / "fedavg", tmp_path / "fedmut", "--out", out, "--rounds", "3",
                            "--data", "test", "--grid", "3", "--trace-matvecs", "0", "--sharpness", "none",
                            "--no-spread", "--no-match", "--slices", "0", "--no-progress")  # fmt: skip
    assert code == 0, err
    rows = list(csv.DictReader(open(out / "report.csv")))
    assert sorted(r["run"] for r in rows) == ["fedavg", "fedmut"] and all(float(r["lambda_max"]) > 0 for r in rows)
    assert (out / "verdict.csv").is_file() and "equal round (3)" in stdout


def test_recorder_takes_a_config_or_a_user_model(tmp_path):
    from flwr.serverapp.strategy import FedAvg

    from flatfl.flower.recorder import RunRecorder
    from flatfl.flower.subjects import UserModel

    with pytest.raises(TypeError, match="give cfg .* or model"):
        RunRecorder(FedAvg(), tmp_path / "x")
    with pytest.raises(UserError, match="model nope_module:Net: cannot import nope_module"):
        RunRecorder(FedAvg(), tmp_path / "x", model=UserModel("nope_module:Net")).initial_arrays()
