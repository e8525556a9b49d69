"""FedGen and FedAUX against independent computations; the model registry's feature/head split;
every distillation/grouping baseline on digits, CIFAR files and Shakespeare through the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from torch import nn

from flatfl.algorithms.base import LocalBatch
from flatfl.algorithms.fedaux import (
    FedAUX,
    FedAUXConfig,
    dp_sigma,
    fit_logistic,
    rotation_pretrain,
    scorer_inputs,
    weighted_ensemble_log_probs,
)
from flatfl.algorithms.feddf import distillation_loss
from flatfl.algorithms.fedgen import (
    FedGen,
    FedGenConfig,
    LatentGenerator,
    diversity_loss,
    generator_loss,
    label_weights,
)
from flatfl.models import MODELS, build_model
from tests.test_cifar import write_cifar10
from tests.test_cli import _one_line_error
from tests.test_shakespeare import write_leaf_all_data


class Split(nn.Module):
    """A tiny model with the registry's split: latent = relu(W1 x), head = W2 z."""

    latent_dim = 4

    def __init__(self, d: int = 3, classes: int = 3) -> None:
        super().__init__()
        self.l1, self.l2 = nn.Linear(d, 4), nn.Linear(4, classes)

    def latent(self, x):
        return torch.relu(self.l1(x))

    def head(self, z):
        return self.l2(z)

    def forward(self, x):
        return self.head(self.latent(x))


@pytest.mark.parametrize(
    "name,kwargs,x,dim",
    [
        ("smallcnn", {"in_channels": 1, "image_size": 8, "num_classes": 10}, torch.randn(2, 1, 8, 8), 64),
        ("cnn", {"in_channels": 3, "num_classes": 10}, torch.randn(2, 3, 32, 32), 84),
        ("resnet18", {"in_channels": 3, "num_classes": 10, "norm": "group"}, torch.randn(2, 3, 32, 32), 512),
        ("vgg16", {"in_channels": 3, "num_classes": 10}, torch.randn(2, 3, 32, 32), 512),
        ("lstm", {"vocab_size": 80}, torch.randint(0, 80, (2, 80)), 256),
    ],
)
def test_every_model_splits_into_latent_and_head(name, kwargs, x, dim):
    assert set(MODELS) == {"smallcnn", "cnn", "resnet18", "vgg16", "lstm"}
    m = build_model(name, **kwargs).eval()
    with torch.no_grad():
        z = m.latent(x)
        assert z.shape == (2, dim) == (2, m.latent_dim)
        torch.testing.assert_close(m.head(z), m(x))


# -- FedGen -------------------------------------------------------------------------------


def test_fedgen_label_weights_and_diversity_closed_forms():
    counts = np.array([[5, 0, 1], [1, 3, 0], [0, 1, 0]])  # 3 clients x 3 labels
    a, qualified = label_weights(counts, [0, 1])
    np.testing.assert_allclose(a, [[5 / 6, 1 / 6], [0, 1], [1, 0]])
    assert qualified.tolist() == [0, 1]  # label 2: nobody holds more than one sample
    eps, z = torch.rand(5, 3, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    want = np.exp(
        -np.mean(
            [
                [np.mean((eps[i] - eps[j]).numpy() ** 2) * np.mean(np.abs((z[i] - z[j]).numpy())) for j in range(5)]
                for i in range(5)
            ]  # fmt: skip
        )
    )
    assert float(diversity_loss(eps, z)) == pytest.approx(want, rel=1e-12)


def test_fedgen_generator_loss_falls_against_fixed_heads():
    torch.manual_seed(0)
    heads = [nn.Linear(4, 3) for _ in range(2)]
    for h in heads:
        h.requires_grad_(False)
    algo = FedGen(FedGenConfig(gen_hidden=32, gen_noise=8, gen_lr=1e-2, gen_batch=64), param_names=["w"],
                  num_clients=2, client_label_counts=np.array([[10, 0, 4], [0, 8, 4]]))  # fmt: skip
    algo.generator = LatentGenerator(3, 4, hidden=32, noise_dim=8)
    a, _ = label_weights(algo.client_label_counts, [0, 1])
    weights = torch.as_tensor(a, dtype=torch.float32)
    y = torch.arange(3).repeat(20)

    def eval_loss() -> float:
        algo.generator.eval()
        with torch.no_grad():
            return float(generator_loss(algo.generator, heads, weights, y, torch.Generator().manual_seed(7), 1.0)[0])

    before = eval_loss()
    info = algo.train_generator(heads, [0, 1], torch.Generator().manual_seed(1))
    after = eval_loss()
    assert after < 0.5 * before, (before, after)
    assert info["teacher_last"] < info["teacher_first"]
    # the heads agree on the generated latents: each head's weighted CE is low for its own labels
    with torch.no_grad():
        _, z = algo.generator.sample(torch.tensor([0, 1]), torch.Generator().manual_seed(3))
        assert heads[0](z[:1]).argmax().item() == 0 and heads[1](z[1:]).argmax().item() == 1


def test_fedgen_client_regulariser_is_the_papers_on_generated_latents():
    torch.manual_seed(0)
    c = FedGenConfig(gen_hidden=16, gen_noise=5, gen_batch=7, gen_alpha=0.3, gen_beta=0.4)
    algo = FedGen(c, param_names=["l1.weight"], num_clients=2, client_label_counts=np.ones((2, 3)))
    g = LatentGenerator(3, 4, hidden=16, noise_dim=5)
    g.bn.running_mean.uniform_(-1, 1)
    g.bn.running_var.uniform_(0.5, 2)
    algo.generator = g
    assert algo.local_term(1, 0, {}) is None  # no regulariser in the first round
    term = algo.local_term(2, 0, {})
    model = Split()
    x, y = torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    value = term(dict(model.named_parameters()), LocalBatch(x, y, model(x), model, torch.Generator().manual_seed(5)))

    # independent: the generator written out (eval-mode BatchNorm), same draws in the same order
    gen = torch.Generator().manual_seed(5)

    def G(eps, labels):
        h = torch.cat([eps, torch.eye(3)[labels]], 1) @ g.fc.weight.T + g.fc.bias
        h = (h - g.bn.running_mean) / torch.sqrt(g.bn.running_var + g.bn.eps) * g.bn.weight + g.bn.bias
        return torch.relu(h) @ g.out.weight.T + g.out.bias

    z_y = G(torch.rand(6, 5, generator=gen), y)
    y_t = torch.randint(3, (7,), generator=gen)
    z_t = G(torch.rand(7, 5, generator=gen), y_t)
    p = torch.softmax(model.head(z_y), 1).detach()
    q = torch.log_softmax(model(x), 1)
    want = 0.4 * (p * (p.log() - q)).sum(1).mean() + 0.3 * nn.functional.cross_entropy(model.head(z_t), y_t)
    torch.testing.assert_close(value, want, rtol=1e-5, atol=1e-6)
    # the term trains the head through the generated latents, and the latent part only through the KL
    value.backward()
    assert model.l2.weight.grad.abs().sum() > 0 and model.l1.weight.grad.abs().sum() > 0


# -- FedAUX -------------------------------------------------------------------------------


def test_fedaux_scorer_is_the_regularised_logistic_regression_scipy_finds():
    g = torch.Generator().manual_seed(0)
    hp, hn = torch.randn(40, 5, generator=g) + 1.0, torch.randn(60, 5, generator=g)
    scale = float(torch.cat([hp, hn]).norm(dim=1).max())
    pos, neg = scorer_inputs(hp, scale), scorer_inputs(hn, scale)
    assert float(torch.cat([pos, neg]).norm(dim=1).max()) == pytest.approx(1.0)  # the sensitivity's ||u|| <= 1
    torch.testing.assert_close(pos[:, :5] * np.sqrt(2) * scale, hp.double())
    lam = 0.05
    v = fit_logistic(pos, neg, lam)
    u = np.concatenate([pos.numpy(), neg.numpy()])
    s = np.concatenate([np.ones(40), -np.ones(60)])

    def f(w):
        m = -s * (u @ w)
        return np.mean(np.logaddexp(0, m)) + 0.5 * lam * w @ w, (u.T @ (-s / (1 + np.exp(-m)))) / len(s) + lam * w

    ref = minimize(f, np.zeros(u.shape[1]), jac=True, method="BFGS", options={"gtol": 1e-12})
    np.testing.assert_allclose(v.numpy(), ref.x, atol=1e-6)
    assert float(torch.sigmoid(pos @ v).mean()) > float(torch.sigmoid(neg @ v).mean())
    # Gaussian output perturbation: sensitivity 2/(n lambda) times the Gaussian mechanism's factor
    assert dp_sigma(100, lam, 1.0, 1e-5) == pytest.approx(2 / (100 * lam) * np.sqrt(2 * np.log(1.25e5)))


def test_fedaux_target_and_distillation_lower_the_kl_to_the_weighted_ensemble():
    torch.manual_seed(0)
    logits, scores = torch.randn(3, 50, 4), torch.rand(3, 50)
    T = 2.0
    # the closed form, written out per sample and class
    want = torch.empty(50, 4)
    for i in range(50):
        zbar = sum(scores[k, i] * logits[k, i] for k in range(3)) / scores[:, i].sum()
        want[i] = zbar / T - torch.logsumexp(zbar / T, 0)
    target = weighted_ensemble_log_probs(logits, scores, T)
    torch.testing.assert_close(target, want, rtol=1e-5, atol=1e-6)
    # equal scores: FedDF's target, the softmax of the mean logits
    flat = weighted_ensemble_log_probs(logits, torch.full((3, 50), 0.3), T)
    torch.testing.assert_close(flat, torch.log_softmax(logits.mean(0) / T, -1), rtol=1e-5, atol=1e-6)

    teachers, student = [Split(3, 4) for _ in range(3)], Split(3, 4)
    x = torch.randn(300, 3)
    algo = FedAUX(FedAUXConfig(steps=300, lr=0.05, patience=100, temperature=1.0), param_names=["l1.weight"],
                  num_clients=3)  # fmt: skip
    algo.scores = torch.rand(3, 300)
    z = algo.teacher_log_probs(teachers, [0, 1, 2], x)
    with torch.no_grad():
        zl = torch.stack([t(x) for t in teachers])
    torch.testing.assert_close(z, weighted_ensemble_log_probs(zl, algo.scores, 1.0), rtol=1e-5, atol=1e-6)
    before = float(distillation_loss(student(x).detach(), z, 1.0))
    info = algo.distill(student, z, x, torch.Generator().manual_seed(0))
    after = float(distillation_loss(student(x).detach(), z, 1.0))
    assert after < 0.5 * before and info["val_kl_after"] < info["val_kl_before"]


def test_rotation_pretraining_moves_the_features_not_the_head():
    model = build_model("smallcnn", in_channels=1, image_size=8, num_classes=10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(64, 1, 8, 8)
    rotation_pretrain(model, x, 20, 1e-2, 32, torch.Generator().manual_seed(0))
    after = model.state_dict()
    assert not torch.equal(before["conv1.weight"], after["conv1.weight"])
    assert torch.equal(before["fc2.weight"], after["fc2.weight"])


# -- through the CLI --------------------------------------------------------------------------


def test_fedaux_prepares_once_and_records_the_scores(tiny, cli, tmp_path):
    run = tiny("aux", "--aux-pretrain-steps", "5", "--proxy-frac", "0.2", "--distill-steps", "10", "--dp-epsilon",
               "5", rounds=2, algo="fedaux")  # fmt: skip
    meta = json.loads((run / "run.json").read_text())
    assert meta["config"]["algo_config"]["pretrain_steps"] == 5
    from safetensors.torch import load_file

    scores = load_file(run / "state.safetensors")["scores"]
    n_server = len(json.loads((run / "partition.json").read_text())["server"])
    assert scores.shape == (6, n_server) and ((scores > 0) & (scores < 1)).all()
    code, _, err = cli("train", "--algo", "fedgen", "--aux-pretrain-steps", "3", "--out", tmp_path / "x")
    _one_line_error(code, err, "--aux-pretrain-steps", "fedaux")


def _shakespeare_root(tmp_path):
    write_leaf_all_data(tmp_path / "sd", repeats=4)
    return tmp_path / "sd"


@pytest.mark.parametrize("algo", ["fedgen", "feddf", "fedaux", "fedcluster"])
def test_baselines_run_on_cifar_files_and_shakespeare(cli, tmp_path, algo):
    fast = {"fedgen": ["--gen-epochs", "1", "--gen-iters", "2", "--gen-batch", "16"],
            "feddf": ["--distill-steps", "5", "--proxy-frac", "0.2"],
            "fedaux": ["--distill-steps", "5", "--proxy-frac", "0.2"],
            "fedcluster": ["--clusters", "2"]}[algo]  # fmt: skip
    write_cifar10(tmp_path / "c", n=20)
    code, _, err = cli(
        "train", "--dataset", "cifar10", "--data-root", tmp_path / "c", "--model", "cnn", "--algo", algo, *fast,
        "--clients", "4", "--frac", "0.5", "--partition", "iid", "--rounds", "2", "--local-epochs", "1",
        "--no-progress", "--out", tmp_path / "cifar",
    )  # fmt: skip
    assert code == 0, err
    code, _, err = cli(
        "train", "--dataset", "shakespeare", "--data-root", _shakespeare_root(tmp_path), "--algo", algo, *fast,
        "--clients", "3", "--frac", "0.67", "--min-size", "10", "--rounds", "2", "--local-epochs", "1",
        "--batch-size", "64", "--lr", "0.5", "--no-progress", "--out", tmp_path / "shk",
    )  # fmt: skip
    assert code == 0, err
    for run in ("cifar", "shk"):
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        assert len(lines) == 3 and all(np.isfinite(json.loads(s)["test_loss"]) for s in lines)
    if algo == "fedaux":
        code, _, err = cli(
            "train", "--dataset", "shakespeare", "--data-root", tmp_path / "sd", "--algo", "fedaux",
            "--aux-pretrain-steps", "3", "--out", tmp_path / "shk2",
        )  # fmt: skip
        _one_line_error(code, err, "--aux-pretrain-steps", "images")


def _last_line_error(code, err, needle):
    """Exit 2, no traceback, the error the last line (generated CIFAR files also draw md5 warnings)."""
    assert code == 2 and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("flatfl: error: --proxy-data") and needle in last, err


def test_feddf_proxy_data_from_another_dataset(cli, tmp_path):
    import pickle

    from tests.test_cifar import _batch

    write_cifar10(tmp_path / "c", n=20)
    folder = tmp_path / "c" / "cifar-100-python"
    folder.mkdir()
    for name, n in (("train", 40), ("test", 4)):
        d = _batch(n, 5, fine_labels=[0] * n, coarse_labels=[0] * n)
        (folder / name).write_bytes(pickle.dumps(d, protocol=2))
    (folder / "meta").write_bytes(pickle.dumps({b"fine_label_names": [], b"coarse_label_names": []}, protocol=2))
    base = ["train", "--dataset", "cifar10", "--data-root", tmp_path / "c", "--model", "cnn", "--clients", "4",
            "--frac", "0.5", "--partition", "iid", "--rounds", "1", "--local-epochs", "1", "--no-progress",
            "--distill-steps", "5"]  # fmt: skip
    code, _, err = cli(*base, "--algo", "feddf", "--proxy-data", "cifar100", "--proxy-frac", "0.5",
                       "--out", tmp_path / "r")  # fmt: skip
    assert code == 0, err
    info = json.loads((tmp_path / "r" / "run.json").read_text())
    assert info["server_data"] == {"source": "cifar100", "samples": 20}
    assert info["config"]["algo_config"]["proxy_data"] == "cifar100"
    part = json.loads((tmp_path / "r" / "partition.json").read_text())
    assert "server" not in part and sum(map(len, part["clients"])) == 100  # every training image on a client
    code, _, err = cli(*base, "--algo", "fedaux", "--proxy-data", "cifar10", "--out", tmp_path / "s")
    _last_line_error(code, err, "holdout")
    code, _, err = cli("train", "--algo", "feddf", "--proxy-data", "cifar10", "--data-root", tmp_path / "c",
                       "--out", tmp_path / "t")  # fmt: skip
    _last_line_error(code, err, "do not fit")
    code, _, err = cli("train", "--algo", "feddf", "--proxy-data", "imagenet", "--out", tmp_path / "u")
    _one_line_error(code, err, "--proxy-data", "imagenet")
