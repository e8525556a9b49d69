"""The local minibatch step (flatfl.algorithms.step): SGD bit for bit torch.optim.SGD's; SAM, ASAM,
FedLESAM's fixed perturbation and MoFedSAM's mix against float64 references written out by hand."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from flatfl.algorithms.step import LocalStep, Perturbation, sgd_direction
from flatfl.config import LocalConfig
from flatfl.local import local_sgd


class Net(nn.Module):
    """Linear -> tanh -> Linear: a curved loss, weights and biases (ASAM treats them differently)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(3, 4), nn.Linear(4, 3)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    model = Net().double()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(12, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (12,), generator=g)
    return model, x, y


def _loss(model: nn.Module, w: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(torch.func.functional_call(model, w, (x,)), y)


def _grad(model, w, x, y):
    w = {n: v.detach().clone().requires_grad_(True) for n, v in w.items()}
    gs = torch.autograd.grad(_loss(model, w, x, y), list(w.values()))
    return dict(zip(w, gs))


def _hand_steps(model, x, y, lr, steps, eps_fn):
    """Full-batch steps by hand in float64: e = eps_fn(w, g(w)); w <- w - lr * g(w + e)."""
    w = {n: p.detach().clone() for n, p in model.named_parameters()}
    for _ in range(steps):
        e = eps_fn(w, _grad(model, w, x, y))
        g2 = _grad(model, {n: w[n] + e[n] for n in w}, x, y)
        w = {n: w[n] - lr * g2[n] for n in w}
    return w


def _flat_norm(d):
    return torch.sqrt(sum((v**2).sum() for v in d.values()))


def _run(model, x, y, cfg, step):
    local_sgd(model, x, y, cfg, torch.Generator().manual_seed(0), step=step)
    return {n: p.detach() for n, p in model.named_parameters()}


CFG = LocalConfig(lr=0.3, momentum=0.0, batch_size="full", epochs=3)


def test_sgd_direction_is_torch_sgd_bit_for_bit():
    torch.manual_seed(1)
    p0 = [torch.randn(5, 4), torch.randn(7)]
    grads = [[torch.randn_like(p) for p in p0] for _ in range(4)]
    for momentum, damp, wd in [(0.0, 0.0, 0.0), (0.9, 0.0, 1e-3), (0.5, 0.3, 0.01)]:
        ref = [p.clone().requires_grad_(True) for p in p0]
        opt = torch.optim.SGD(ref, lr=0.07, momentum=momentum, dampening=damp, weight_decay=wd)
        mine, bufs = [p.clone() for p in p0], [None, None]
        for gs in grads:
            for p, g in zip(ref, gs):
                p.grad = g.clone()
            opt.step()
            for i, g in enumerate(gs):
                d, bufs[i] = sgd_direction(g, mine[i], bufs[i], momentum, damp, wd)
                mine[i] = mine[i].add(d, alpha=-0.07)
        for a, b in zip(ref, mine):
            assert torch.equal(a.detach(), b), (momentum, damp, wd)


def test_sam_step_matches_the_float64_reference():
    model, x, y = _setup()
    rho = 0.2

    def sam(w, g):
        return {n: rho * g[n] / _flat_norm(g) for n in g}

    want = _hand_steps(model, x, y, CFG.lr, CFG.epochs, sam)
    got = _run(model, x, y, CFG, LocalStep(CFG.lr, perturbation=Perturbation("sam", rho)))
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=0, atol=1e-13)
    # the perturbation mattered: plain gradient descent ends elsewhere
    model2, _, _ = _setup()
    plain = _run(model2, x, y, CFG, LocalStep(CFG.lr))
    assert max((plain[n] - want[n]).abs().max() for n in want) > 1e-4


def test_asam_step_matches_the_float64_reference():
    model, x, y = _setup(3)
    rho, eta = 0.5, 0.01

    def asam(w, g):  # T = |w| + eta on weights, 1 on biases (Kwon et al.'s code)
        t = {n: (w[n].abs() + eta) if n.endswith("weight") else torch.ones_like(w[n]) for n in w}
        tg_norm = _flat_norm({n: t[n] * g[n] for n in g})
        return {n: rho * t[n] ** 2 * g[n] / tg_norm for n in g}

    want = _hand_steps(model, x, y, CFG.lr, CFG.epochs, asam)
    got = _run(model, x, y, CFG, LocalStep(CFG.lr, perturbation=Perturbation("asam", rho, eta)))
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=0, atol=1e-13)


def test_from_config_reads_local_opt_rho_and_eta():
    assert LocalStep.from_config(LocalConfig()).perturbation is None
    p = LocalStep.from_config(LocalConfig(opt="asam", rho=0.3, eta=0.2)).perturbation
    assert (p.kind, p.rho, p.eta) == ("asam", 0.3, 0.2)
    p = LocalStep.from_config(LocalConfig(opt="sam")).perturbation
    assert (p.kind, p.rho) == ("sam", 0.05)
    assert LocalStep.from_config(LocalConfig(lr=0.5), lr=0.1).lr == 0.1


def test_fixed_perturbation_and_momentum_mix_match_the_hand_computed_step():
    """FedLESAM: e = rho v/||v|| at every step; MoFedSAM: d = alpha g(w + e) + (1 - alpha) delta; with momentum."""
    model, x, y = _setup(5)
    rho, alpha, lr, m = 0.3, 0.25, 0.2, 0.5
    w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    g_ = torch.Generator().manual_seed(9)
    v = {n: torch.randn(t.shape, generator=g_, dtype=torch.float64) for n, t in w0.items()}
    delta = {n: torch.randn(t.shape, generator=g_, dtype=torch.float64) for n, t in w0.items()}
    e = {n: rho * v[n] / _flat_norm(v) for n in v}
    w, buf = dict(w0), None
    for _ in range(2):
        g = _grad(model, {n: w[n] + e[n] for n in w}, x, y)
        d = {n: alpha * g[n] + (1 - alpha) * delta[n] for n in g}
        buf = d if buf is None else {n: m * buf[n] + d[n] for n in d}
        w = {n: w[n] - lr * buf[n] for n in w}
    cfg = LocalConfig(lr=lr, momentum=m, batch_size="full", epochs=2)
    step = LocalStep(lr, m, perturbation=Perturbation.along(rho, v), mix=(alpha, delta))
    got = _run(model, x, y, cfg, step)
    for n in w:
        torch.testing.assert_close(got[n], w[n], rtol=0, atol=1e-13)


def test_zero_gradient_gives_zero_perturbation_and_rho_zero_is_sgd_bit_for_bit():
    z = {"a.weight": torch.zeros(3), "a.bias": torch.zeros(2)}
    w = {"a.weight": torch.ones(3), "a.bias": torch.ones(2)}
    for kind in ("sam", "asam"):
        e = Perturbation(kind, 0.5, 0.01)(w, z)
        assert all(torch.equal(v, torch.zeros_like(v)) for v in e.values())
    x, y = torch.randn(20, 3, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 2, 1] * 5)
    cfg = LocalConfig(lr=0.1, momentum=0.9, batch_size=7, epochs=2, weight_decay=1e-3)
    torch.manual_seed(0)
    a = _run(Net(), x, y, cfg, None)  # plain SGD (the config's default step)
    torch.manual_seed(0)
    b = _run(Net(), x, y, cfg, LocalStep.from_config(replace(cfg, opt="sam", rho=0.0)))
    for n in a:
        assert torch.equal(a[n], b[n]), n


@pytest.mark.parametrize("opt", ["sam", "asam"])
def test_batchnorm_statistics_come_from_the_pass_at_w(opt):
    """With BatchNorm, the running statistics after a SAM step are those of one plain forward pass at w."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    ref = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    ref.load_state_dict(model.state_dict())
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    cfg = LocalConfig(lr=0.1, momentum=0.0, batch_size="full", epochs=1)
    local_sgd(model, x, y, cfg, torch.Generator().manual_seed(0), step=LocalStep.from_config(
        LocalConfig(lr=0.1, momentum=0.0, batch_size="full", epochs=1, opt=opt, rho=0.5)))  # fmt: skip
    ref.train()
    ref(x[torch.randperm(8, generator=torch.Generator().manual_seed(0))])  # one pass at w, on local_sgd's batch
    for k in ("1.running_mean", "1.running_var", "1.num_batches_tracked"):
        assert torch.equal(model.state_dict()[k], ref.state_dict()[k]), k
