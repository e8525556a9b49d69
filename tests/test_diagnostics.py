"""Per-round divergence diagnostics in metrics.jsonl, the one-line divergence message, the mutation cap."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from flatfl import checkpoint as ckpt
from flatfl import seeding
from flatfl.config import RunConfig
from flatfl.data import load_dataset
from flatfl.local import minibatches
from flatfl.models import build_model
from tests.conftest import assert_same_rounds


def _norm(a, b=None):
    return math.sqrt(sum(float(((a[k].double() - (0 if b is None else b[k].double())) ** 2).sum()) for k in a))


def _floats(sd):
    return {k: v for k, v in sd.items() if v.is_floating_point()}


def test_norms_match_the_stored_checkpoints(tiny):
    out = tiny("m", rounds=3)
    m = {r["round"]: r for r in ckpt.read_metrics(out)}
    w = {t: _floats(ckpt.load_round(ckpt.round_path(out, t))[0]) for t in range(4)}
    radius = 4.0
    assert m[1]["mutation_norm"] == 0.0  # round 1 sends w_0 to every client
    for t in (1, 2, 3):
        assert m[t]["global_update_norm"] == pytest.approx(_norm(w[t], w[t - 1]), rel=1e-9)
    for t in (2, 3):  # mutants of round t move along d = w_{t-1} - w_{t-2}
        want = radius * _norm(w[t - 1], w[t - 2])
        assert m[t]["mutation_norm"] == pytest.approx(want, rel=1e-9)
        assert m[t]["mutation_rel"] == pytest.approx(want / _norm(w[t - 1]), rel=1e-9)
        assert "mutation_radius" not in m[t]  # only with the cap


def _first_batch_loss(out, cfg, data, parts, t, client, state):
    gen = torch.Generator().manual_seed(seeding.derive_seed(cfg.seed, seeding.CLIENT, t, client))
    idx = torch.as_tensor(parts[client])
    xb, yb = next(minibatches(data.train.x[idx], data.train.y[idx], cfg.local.batch_size, 1, gen))
    model = build_model(cfg.model, **cfg.model_kwargs)
    model.load_state_dict(state)
    model.train()
    with torch.no_grad():
        return float(F.cross_entropy(model(xb), yb))


@pytest.mark.parametrize("parallel", ["1", "3"])
def test_sent_loss_is_the_sent_models_loss_on_the_first_minibatch(tiny, parallel):
    out = tiny(f"s{parallel}", "--save-clients", "--parallel-clients", parallel, rounds=2)
    cfg = RunConfig.from_dict(ckpt.read_run_json(out)["config"])
    data, parts = load_dataset(cfg.data), ckpt.read_partition(out)
    for rec in ckpt.read_metrics(out)[1:]:
        t = rec["round"]
        sent, _, info = ckpt.load_clients(ckpt.clients_path(out, t))
        want = [_first_batch_loss(out, cfg, data, parts, t, c, s) for c, s in zip(info["clients"], sent)]
        assert rec["sent_loss"] == pytest.approx(want, rel=1e-5, abs=1e-6)
        assert rec["sent_loss_mean"] == pytest.approx(sum(want) / len(want), rel=1e-5)
        if t == 2:  # mutants differ from each other (plain slot aside), so do their losses
            assert len(set(rec["sent_loss"])) == 3


def test_fedavg_has_the_update_norm_and_no_mutation_keys(tiny):
    rec = ckpt.read_metrics(tiny("a", rounds=1, algo="fedavg"))[1]
    assert rec["global_update_norm"] > 0 and len(rec["sent_loss"]) == 3
    assert not any(k.startswith("mutation") for k in rec)


def test_mutation_cap_bounds_the_step_and_is_exact_when_slack(tiny):
    base = tiny("base", rounds=3)
    slack = tiny("slack", "--mutation-cap", "1e9", rounds=3)
    assert_same_rounds(base, slack, 3)  # a cap that never binds sends the reference's mutants
    tight = tiny("tight", "--mutation-cap", "0.001", rounds=3)
    m_base, m_tight = ckpt.read_metrics(base), ckpt.read_metrics(tight)
    for a, b in zip(m_base[2:], m_tight[2:]):
        assert b["mutation_rel"] == pytest.approx(0.001, rel=1e-9) and a["mutation_rel"] > 0.001
        assert b["mutation_radius"] < 4.0
    cfg = ckpt.read_run_json(tight)["config"]
    assert cfg["algo_config"]["mutation_cap"] == 0.001
    assert "mutation_cap" not in ckpt.read_run_json(base)["config"]["algo_config"]
