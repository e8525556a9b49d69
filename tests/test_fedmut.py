"""FedMut's dispatch against an independent computation (float64, from the definition)."""

import numpy as np
import pytest
import torch
from torch import nn

from flatfl.algorithms import FedMut, FedMutConfig
from flatfl.runs.run import Run


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.bn = nn.BatchNorm1d(2)


def _states():
    torch.manual_seed(0)
    prev = {k: v.clone() for k, v in Tiny().state_dict().items()}
    glob = {k: (v + torch.randn_like(v) if v.is_floating_point() else v + 5) for k, v in prev.items()}
    return prev, glob


def expected_beta(t_dispatch: int, beta0: float = 0.3, bound: int = 50) -> float:
    # the reference computes ctrl_rate with the 0-based index of the round that just ended
    r = t_dispatch - 2
    return beta0 * (1 - min(r / bound, 1))


@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 8])
@pytest.mark.parametrize("t", [2, 27, 52, 200])
def test_mutants_are_global_plus_c_alpha_d_with_balanced_signs(m, t):
    prev, glob = _states()
    algo = FedMut(FedMutConfig(radius=4.0), param_names=["lin.weight", "lin.bias", "bn.weight", "bn.bias"])
    algo.prev_global = prev
    sent = algo.dispatch(t, glob, list(range(m)), np.random.default_rng(t * 10 + m))
    beta = expected_beta(t)
    mutated = [k for k, v in glob.items() if v.is_floating_point()]  # "all": running stats too
    assert "bn.running_mean" in mutated and "bn.num_batches_tracked" not in mutated
    half = m // 2
    for k in glob:
        d = glob[k].double() - prev[k].double()
        coefs = []
        for j in range(m):
            diff = sent[j][k].double() - glob[k].double()
            if k not in mutated:
                assert torch.equal(sent[j][k], glob[k])
                continue
            if m % 2 == 1 and j == m - 1:  # odd m: last slot is the plain global model
                assert torch.equal(sent[j][k], glob[k])
                coefs.append(0.0)
                continue
            # diff = c * alpha * d for a scalar c in {1, -1 + beta}
            c = float((diff * d).sum() / (4.0 * (d * d).sum()))
            assert torch.allclose(diff, c * 4.0 * d, atol=1e-5)
            coefs.append(c)
        if k in mutated:
            coefs = np.array(coefs)
            assert np.sum(np.isclose(coefs, 1.0)) == half
            assert np.sum(np.isclose(coefs, -1.0 + beta)) == half
            assert np.isclose(coefs.sum(), half * beta, atol=1e-6)


def test_ctrl_rate_schedule_values():
    assert expected_beta(2) == pytest.approx(0.3)
    assert expected_beta(27) == pytest.approx(0.15)
    assert expected_beta(52) == 0.0 and expected_beta(500) == 0.0


def test_round_one_and_radius_zero_send_the_global_model():
    prev, glob = _states()
    algo = FedMut(FedMutConfig(), param_names=[])
    assert all(s is glob for s in algo.dispatch(1, glob, [0, 1, 2, 3], np.random.default_rng(0)))
    algo = FedMut(FedMutConfig(radius=0.0), param_names=[])
    algo.prev_global = prev
    for s in algo.dispatch(5, glob, [0, 1, 2, 3], np.random.default_rng(0)):
        assert all(torch.equal(s[k], glob[k]) for k in glob)


def test_mutate_params_leaves_buffers_alone():
    prev, glob = _states()
    names = ["lin.weight", "lin.bias", "bn.weight", "bn.bias"]
    algo = FedMut(FedMutConfig(mutate="params"), param_names=names)
    algo.prev_global = prev
    sent = algo.dispatch(3, glob, [0, 1], np.random.default_rng(0))
    for s in sent:
        assert torch.equal(s["bn.running_mean"], glob["bn.running_mean"])
        assert torch.equal(s["bn.running_var"], glob["bn.running_var"])
        assert not torch.equal(s["lin.weight"], glob["lin.weight"])


def test_signs_are_drawn_per_tensor():
    prev, glob = _states()
    algo = FedMut(FedMutConfig(), param_names=[])
    algo.prev_global = prev
    algo.dispatch(2, glob, list(range(10)), np.random.default_rng(0))
    coef = algo.last_coefficients
    assert coef.shape == (6, 10)  # 6 floating tensors in Tiny's state dict
    assert len({tuple(row) for row in coef}) > 1


def test_trainer_sends_mutants_built_from_the_saved_rounds(tiny):
    """End to end, from files only: clients_t 'sent' = w_{t-1} + c*alpha*(w_{t-1} - w_{t-2})."""
    run = Run.open(tiny("mut", "--save-clients", "--radius", "2.5", rounds=4))
    for t in (1, 2, 3, 4):
        sent, returned, info = run.clients(t)
        g = run.global_state(t - 1)
        assert len(sent) == 3 and info["clients"] == run.metrics()[t]["clients"]
        if t == 1:
            assert all(torch.equal(s[k], g[k]) for s in sent for k in g)
            continue
        d = {k: g[k].double() - run.global_state(t - 2)[k].double() for k in g}
        coef = np.array(info["mutation_coefficients"])
        assert info["mutation_keys"] == list(g)  # every float tensor, in state_dict order
        beta = expected_beta(t)
        for j, s in enumerate(sent):
            for i, k in enumerate(info["mutation_keys"]):
                assert torch.allclose(s[k].double(), g[k].double() + coef[i, j] * 2.5 * d[k], atol=1e-6)
        assert sorted(np.round(coef[:, :2].ravel(), 9).tolist()) == sorted([-1 + beta, 1.0] * len(g))
        assert (coef[:, 2] == 0).all()
        # the new global model is the plain mean of the returned models (FedMut's default)
        mean = {k: torch.stack([r[k].double() for r in returned]).mean(0) for k in g}
        new = run.global_state(t)
        assert all(torch.allclose(new[k].double(), mean[k], atol=1e-6) for k in g)


def test_fedmut_with_radius_zero_equals_unweighted_fedavg(tiny):
    a = Run.open(tiny("mut0", "--radius", "0", rounds=3))
    b = Run.open(tiny("avg", "--unweighted", rounds=3, algo="fedavg"))
    for k, v in a.global_state(3).items():
        assert torch.equal(v, b.global_state(3)[k])
