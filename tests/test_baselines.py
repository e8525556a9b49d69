"""FedProx and SCAFFOLD: one round against hand-computed updates; equivalences; exact resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from flatfl.algorithms.base import ClientUpdate, SequentialTraining
from flatfl.algorithms.fedavg import FedAvg, FedAvgConfig
from flatfl.algorithms.fedprox import FedProx, FedProxConfig
from flatfl.algorithms.scaffold import Scaffold, ScaffoldConfig
from flatfl.config import LocalConfig
from flatfl.local import local_sgd
from flatfl.statedict import clone
from tests.conftest import assert_same_rounds
from tests.test_checkpoint import _files

CFG = LocalConfig(lr=0.1, momentum=0.0, batch_size=4, epochs=1, weight_decay=0.0)


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        return self.fc(x)


def _data(k: int):
    g = torch.Generator().manual_seed(k)
    return torch.randn(8, 3, generator=g), torch.randint(0, 2, (8,), generator=g)


class FakeFederation(SequentialTraining):
    """Local SGD as the trainer runs it (same local_sgd, fixed per-client data and seeds)."""

    def __init__(self) -> None:
        self.model = Tiny()

    def train_client(self, round, slot, client, state, local_term=None, step=None):
        # plain SGD with CFG: the algorithms tested here take the default step, built from their own (default)
        # LocalConfig, which the trainer makes cfg.local
        self.model.load_state_dict(state)
        x, y = _data(client)
        loss, steps = local_sgd(self.model, x, y, CFG, torch.Generator().manual_seed(100 * round + client), local_term)
        return ClientUpdate(client, len(y), clone(self.model.state_dict()), float(loss), steps, CFG.lr)


def hand_sgd(state, client, round, extra_grad):
    """Plain SGD written out: w <- w - lr * (grad of the mean CE on the batch + extra_grad(w))."""
    w, b = state["fc.weight"].clone(), state["fc.bias"].clone()
    x, y = _data(client)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(100 * round + client))
    for s in range(0, len(y), CFG.batch_size):
        idx = perm[s : s + CFG.batch_size]
        p = torch.softmax(x[idx] @ w.T + b, 1)
        p[torch.arange(len(idx)), y[idx]] -= 1.0  # d CE / d logits
        gw, gb = p.T @ x[idx] / len(idx), p.mean(0)
        ew, eb = extra_grad(w, b)
        w, b = w - CFG.lr * (gw + ew), b - CFG.lr * (gb + eb)
    return {"fc.weight": w, "fc.bias": b}, (len(y) + CFG.batch_size - 1) // CFG.batch_size


def test_fedprox_round_against_hand_computed_update():
    mu = 0.7
    torch.manual_seed(0)
    start = clone(Tiny().state_dict())
    algo = FedProx(FedProxConfig(mu=mu), param_names=["fc.weight", "fc.bias"])
    out = algo.run_round(1, start, [0, 1], np.random.default_rng(0), FakeFederation())
    hand = []
    for c in (0, 1):
        sd, _ = hand_sgd(start, c, 1, lambda w, b: (mu * (w - start["fc.weight"]), mu * (b - start["fc.bias"])))
        hand.append(sd)
    for k in start:
        want = (8 * hand[0][k] + 8 * hand[1][k]) / 16
        torch.testing.assert_close(out.new_global[k], want, rtol=1e-5, atol=1e-6)
    # the proximal term mattered: without it the result differs
    plain = FedAvg(FedAvgConfig(), param_names=["fc.weight", "fc.bias"]).run_round(
        1, start, [0, 1], np.random.default_rng(0), FakeFederation()
    )
    assert not torch.allclose(plain.new_global["fc.weight"], out.new_global["fc.weight"], atol=1e-5)


def test_scaffold_two_rounds_against_hand_computed_updates():
    torch.manual_seed(0)
    x0 = clone(Tiny().state_dict())
    names = ["fc.weight", "fc.bias"]
    algo = Scaffold(ScaffoldConfig(), param_names=names, num_clients=4)
    fed = FakeFederation()
    # round 1: all control variates are zero, local training is plain SGD
    r1 = algo.run_round(1, x0, [0, 2], np.random.default_rng(0), fed)
    c = {n: torch.zeros_like(x0[n]) for n in names}
    ck: dict[int, dict] = {}
    ys = {}
    for k in (0, 2):
        ys[k], K = hand_sgd(x0, k, 1, lambda w, b: (0.0, 0.0))
        ck[k] = {n: (x0[n] - ys[k][n]) / (K * CFG.lr) for n in names}  # c_k+ = c_k - c + (x - y)/(K lr)
    c = {n: sum(ck[k][n] for k in (0, 2)) / 4 for n in names}  # c += (1/N) sum (c_k+ - c_k)
    x1 = {n: (ys[0][n] + ys[2][n]) / 2 for n in names}
    for n in names:
        torch.testing.assert_close(r1.new_global[n], x1[n], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(algo.c[n], c[n], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(algo.c_clients[0][n], ck[0][n], rtol=1e-5, atol=1e-6)
    # round 2: client 0 corrects its gradient by c - c_0, client 1 (new) by c - 0
    r2 = algo.run_round(2, r1.new_global, [0, 1], np.random.default_rng(1), fed)
    x1 = r1.new_global
    hand = {}
    for k in (0, 1):
        cko = ck.get(k, {n: torch.zeros_like(x0[n]) for n in names})
        hand[k], _ = hand_sgd(
            x1, k, 2, lambda w, b, cko=cko: (c["fc.weight"] - cko["fc.weight"], c["fc.bias"] - cko["fc.bias"])
        )
    for n in names:
        torch.testing.assert_close(r2.new_global[n], (hand[0][n] + hand[1][n]) / 2, rtol=1e-5, atol=1e-6)
    assert sorted(algo.c_clients) == [0, 1, 2]


def test_fedprox_with_mu_zero_is_fedavg_bit_for_bit(tiny):
    a = tiny("avg", rounds=3, algo="fedavg")
    b = tiny("prox", "--mu", "0", rounds=3, algo="fedprox")
    assert_same_rounds(a, b, 3)


@pytest.mark.parametrize(
    "algo,extra",
    [
        ("scaffold", ()),
        ("fedprox", ("--mu", "0.1")),
        ("clusamp", ("--save-clients",)),
        ("fedcluster", ("--clusters", "3", "--grouping", "random")),
        ("fedcluster", ("--clusters", "3", "--grouping", "label")),
        ("fedgen", ("--gen-epochs", "2", "--gen-batch", "32")),
        ("fedaux", ("--aux-pretrain-steps", "5", "--distill-steps", "10")),
    ],
)
def test_baseline_resume_equals_straight_run(tiny, cli, algo, extra):
    straight = tiny("straight", *extra, rounds=5, algo=algo)
    split = tiny("split", *extra, rounds=2, algo=algo)
    code, _, err = cli("train", "--resume", split, "--rounds", "5", "--no-progress")
    assert code == 0, err
    a, b = _files(straight), _files(split)
    assert set(a) == set(b)
    for name in a:
        assert a[name] == b[name], name


def test_algorithm_flags_name_their_owner(cli, tmp_path):
    from tests.conftest import TINY
    from tests.test_cli import _one_line_error

    code, _, err = cli("train", *TINY, "--algo", "fedavg", "--mu", "0.1", "--out", tmp_path / "x")
    _one_line_error(code, err, "--mu", "fedprox")
    code, _, err = cli("train", *TINY, "--algo", "fedprox", "--radius", "2", "--out", tmp_path / "x")
    _one_line_error(code, err, "--radius", "fedmut")


def test_clustered_sampling_distributions_keep_each_clients_importance():
    from flatfl.algorithms.clusamp import sampling_distributions

    rng = np.random.default_rng(0)
    # three groups of similar clients (rows of the distance matrix), unequal sizes
    centers = np.array([0.0, 5.0, 20.0])
    g = np.repeat([0, 1, 2], [4, 3, 3])
    pts = centers[g] + rng.normal(0, 0.1, 10)
    sim = np.abs(pts[:, None] - pts[None, :])
    sizes = rng.integers(10, 50, 10).astype(float)
    w = sizes / sizes.sum()
    for m in (1, 3, 4, 7):
        R = sampling_distributions(sim, m, w, np.random.default_rng(1))
        assert R.shape == (m, 10) and np.all(R >= 0)
        np.testing.assert_allclose(R.sum(1), 1.0, atol=1e-9)
        np.testing.assert_allclose(R.sum(0), m * w, atol=1e-9)  # unbiased: every client keeps m * p_i


def test_clusamp_round_updates_similarity_and_takes_the_plain_mean():
    from flatfl.algorithms.clusamp import CluSamp, CluSampConfig

    torch.manual_seed(0)
    start = clone(Tiny().state_dict())
    algo = CluSamp(CluSampConfig(), param_names=["fc.weight", "fc.bias"], num_clients=4, client_sizes=[8, 8, 8, 8])
    clients = algo.select_clients(1, 2, np.random.default_rng(0))
    assert len(clients) == 2 and all(0 <= c < 4 for c in clients)
    out = algo.run_round(1, start, [0, 2], np.random.default_rng(0), FakeFederation())
    ys = [hand_sgd(start, c, 1, lambda w, b: (0.0, 0.0))[0] for c in (0, 2)]
    for k in start:
        torch.testing.assert_close(out.new_global[k], (ys[0][k] + ys[1][k]) / 2, rtol=1e-5, atol=1e-6)
    flat = lambda sd: torch.cat([(sd[n] - start[n]).reshape(-1).double() for n in ("fc.weight", "fc.bias")])  # noqa: E731
    g0, g2 = flat(ys[0]), flat(ys[1])
    assert algo.similarity[0, 2] == pytest.approx(float((g0 - g2).abs().sum()), rel=1e-5)
    assert algo.similarity[0, 1] == pytest.approx(float(g0.abs().sum()), rel=1e-5)  # client 1: zero gradient
    assert algo.similarity[1, 3] == 0.0 and algo.similarity[2, 0] == algo.similarity[0, 2]


def test_fedcluster_round_is_sequential_fedavg_steps():
    from flatfl.algorithms.fedcluster import FedCluster, FedClusterConfig

    torch.manual_seed(0)
    start = clone(Tiny().state_dict())
    algo = FedCluster(FedClusterConfig(clusters=2), param_names=["fc.weight", "fc.bias"], num_clients=4)
    algo.assignment = [0, 1, 0, 1]
    out = algo.run_round(1, start, [3, 0, 2], np.random.default_rng(0), FakeFederation())
    # cluster 0 (clients 0, 2) from the global model, then cluster 1 (client 3) from their average
    y0 = hand_sgd(start, 0, 1, lambda w, b: (0.0, 0.0))[0]
    y2 = hand_sgd(start, 2, 1, lambda w, b: (0.0, 0.0))[0]
    mid = {k: (y0[k] + y2[k]) / 2 for k in start}
    y3 = hand_sgd(mid, 3, 1, lambda w, b: (0.0, 0.0))[0]
    for k in start:
        torch.testing.assert_close(out.new_global[k], y3[k], rtol=1e-5, atol=1e-6)
    assert [u.client for u in out.updates] == [0, 2, 3]
    torch.testing.assert_close(out.sent[2]["fc.weight"], mid["fc.weight"], rtol=1e-5, atol=1e-6)


def test_fedcluster_with_one_cluster_is_fedavg_bit_for_bit(tiny):
    a = tiny("avg", rounds=3, algo="fedavg")
    b = tiny("fc", "--clusters", "1", rounds=3, algo="fedcluster")
    assert_same_rounds(a, b, 3)


def test_feddf_distillation_lowers_the_kl_to_the_ensemble():
    from flatfl.algorithms.feddf import FedDF, FedDFConfig, distillation_loss, ensemble_logits

    torch.manual_seed(0)
    teachers = [Tiny() for _ in range(3)]
    student = Tiny()
    x = torch.randn(200, 3)
    zl = ensemble_logits(teachers, x)
    torch.testing.assert_close(zl, torch.stack([t(x) for t in teachers]).mean(0).detach())
    # the closed form of the loss: T^2 * KL(p_teacher || p_student), p_teacher = softmax(mean logits / T)
    T = 2.0
    algo = FedDF(FedDFConfig(steps=200, lr=0.05, patience=100, temperature=T), param_names=["fc.weight", "fc.bias"])
    z = algo.teacher_log_probs(teachers, [0, 1, 2], x)
    p, q = torch.softmax(zl / T, -1), torch.softmax(student(x).detach() / T, -1)
    want = float((p * (p.log() - q.log())).sum(-1).mean() * T * T)
    assert float(distillation_loss(student(x).detach(), z, T)) == pytest.approx(want, rel=1e-5)
    algo = FedDF(FedDFConfig(steps=200, lr=0.05, patience=100), param_names=["fc.weight", "fc.bias"])
    z = algo.teacher_log_probs(teachers, [0, 1, 2], x)
    before = float(distillation_loss(student(x).detach(), z, 1.0))
    info = algo.distill(student, z, x, torch.Generator().manual_seed(0))
    after = float(distillation_loss(student(x).detach(), z, 1.0))
    assert after < 0.2 * before and info["val_kl_after"] < info["val_kl_before"]


def test_feddf_keeps_proxy_data_off_the_clients_and_resumes_exactly(tiny, cli):
    import json

    straight = tiny("straight", "--proxy-frac", "0.2", "--distill-steps", "20", rounds=4, algo="feddf")
    part = json.loads((straight / "partition.json").read_text())
    server, used = set(part["server"]), {i for c in part["clients"] for i in c}
    assert len(server) == int(0.2 * 1438) and not server & used and len(server | used) == 1438
    split = tiny("split", "--proxy-frac", "0.2", "--distill-steps", "20", rounds=2, algo="feddf")
    code, _, err = cli("train", "--resume", split, "--rounds", "4", "--no-progress")
    assert code == 0, err
    a, b = _files(straight), _files(split)
    assert set(a) == set(b) and all(a[n] == b[n] for n in a)
    avg = tiny("avg", rounds=1, algo="fedavg")
    assert "server" not in json.loads((avg / "partition.json").read_text())
