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

    def Net(hidden=16, bn=False):
        norm = [nn.BatchNorm1d(hidden)] if bn else []
        return nn.Sequential(nn.Linear(64, hidden), *norm, nn.Tanh(), nn.Linear(hidden, 10))

    def _xy(lo, hi):  # 10 Gaussian classes in 64 dimensions
        g = torch.Generator().manual_seed(7)
        centres = torch.randn(10, 64, generator=g)
        y = torch.randint(0, 10, (1500,), generator=g)
        x = centres[y] + 1.5 * torch.randn(1500, 64, generator=g)
        return x[lo:hi], y[lo:hi]

    def train_xy():
        return _xy(0, 600)

    def wrong_shape_xy():  # 32 features: not the model's 64
        x, y = _xy(1200, 1300)
        return x[:, :32], y

    def NotModule():
        return 42

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
        prefix = context.run_config.get("prefix", "")  # a ClientApp renaming the tensors: not the model's
        state = {prefix + k: v for k, v in net.state_dict().items()}
        content = RecordDict({"arrays": ArrayRecord(state), "metrics": metrics})
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


def record(
    user_app: str, strategy, out, rounds: int = 3, test: str = "test_xy", overwrite=False, kw=KW, **config
) -> None:
    from flatfl.flower.local_grid import LocalGrid
    from flatfl.flower.recorder import RunRecorder
    from flatfl.flower.subjects import UserModel

    model = UserModel(
        f"{user_app}:Net", kw, test_data=f"{user_app}:{test}", train_data=f"{user_app}:train_xy",
        num_clients=3, seed=1, save_clients=1,
    )  # fmt: skip
    rec = RunRecorder(strategy, out, model=model, overwrite=overwrite)
    client_app = __import__(user_app).app
    rec.start(LocalGrid(client_app, 3, {"model": kw} | config), rec.initial_arrays(), num_rounds=rounds)


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
    # BatchNorm re-estimation reads the train data run.json names (a model with BatchNorm; without, it would do
    # nothing: refused in one line)
    code, _, err = cli("landscape", "--ckpt", last, "--data", "test", "--bn-reestimate", "2", "--surface", "1d",
                       "--grid", "3", "--out", tmp_path / "nobn")  # fmt: skip
    assert code == 2 and "--bn-reestimate" in err and "no" in err and len(err.strip().splitlines()) == 1, err
    record(user_app, FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_available_nodes=3), tmp_path / "withbn",
           rounds=1, kw=KW | {"bn": True})  # fmt: skip
    code, _, err = cli("landscape", "--ckpt", tmp_path / "withbn" / "round_0001.safetensors", "--data", "test",
                       "--bn-reestimate", "2", "--surface", "1d", "--grid", "3", "--out", tmp_path / "bn")  # fmt: skip
    assert code == 0, err
    assert json.loads((tmp_path / "bn" / "landscape.json").read_text())["settings"]["bn_reestimate"] == 2
    # client data need flatfl's data set (a partition): one line
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
    with pytest.raises(UserError, match="UserModel model nope_module:Net: cannot import nope_module"):
        RunRecorder(FedAvg(), tmp_path / "x", model=UserModel("nope_module:Net")).initial_arrays()


def test_bad_user_models_and_clients_are_one_line_and_write_nothing(cli, tiny, user_app, tmp_path):
    """Test data the model cannot take, a ClientApp returning other tensors than the model's, a factory that
    is no model: one line each; an existing run stays as it was, a new one gets no round of the failure."""
    from flwr.serverapp.strategy import FedAvg

    from flatfl.flower.recorder import RunRecorder
    from flatfl.flower.subjects import UserModel

    fedavg = lambda: FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_available_nodes=3)  # noqa: E731
    record(user_app, fedavg(), tmp_path / "run", rounds=1)
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file()}
    with pytest.raises(UserError, match=r"round 0: the model cannot be evaluated on its test data \(RuntimeError"):
        record(user_app, fedavg(), tmp_path / "run", rounds=1, test="wrong_shape_xy", overwrite=True)
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file()} == before
    with pytest.raises(UserError, match=r"round 1: the aggregated model holds tensors \['x\.0\.bias'"):
        record(user_app, fedavg(), tmp_path / "renamed", rounds=2, prefix="x.")
    assert ckpt.list_rounds(tmp_path / "renamed") == [0]
    with pytest.raises(UserError, match=r"NotModule: returned int, not a torch.nn.Module"):
        RunRecorder(fedavg(), tmp_path / "x", model=UserModel(f"{user_app}:NotModule")).initial_arrays()
    with pytest.raises(UserError, match=r"Net: calling it with \{'width': 3\} failed"):
        RunRecorder(fedavg(), tmp_path / "x", model=UserModel(f"{user_app}:Net", {"width": 3})).initial_arrays()
    # the analysis side: no partition for --federated, and a registry run beside a user run is refused
    code, _, err = cli("landscape", "--ckpt", tmp_path / "run" / "round_0001.safetensors", "--federated",
                       "--hessian", "--out", tmp_path / "f")  # fmt: skip
    assert code == 2 and "holds no partition" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli("report", tmp_path / "run", tiny("flatfl", rounds=1), "--out", tmp_path / "rep", "--rounds",
                       "1", "--no-progress")  # fmt: skip
    assert code == 2 and "a recorded run of a user's own model and data beside flatfl-trained runs" in err
