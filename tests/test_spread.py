"""Spread of sent/returned models: closed forms from the saved state dicts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flatfl.analysis.operators import ModelLoss
from flatfl.analysis.spread import (
    filter_normalized_distance,
    filter_slices,
    pca_plane,
    plane_coordinates,
)
from flatfl.runs.run import Run
from flatfl.runs.spread import round_spread, spread_rounds


def _params(run: Run) -> list[str]:
    return [n for n, p in run.build().named_parameters()]


def test_filter_normalized_distance_closed_form():
    # a 2x3 weight (two filters) and a bias of 2
    w = torch.tensor([3.0, 4.0, 0.0, 0.0, 0.0, 2.0, 1.0, 1.0], dtype=torch.float64)
    d = torch.tensor([0.3, 0.4, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0], dtype=torch.float64)
    groups = filter_slices([torch.Size([2, 3]), torch.Size([2])])
    # ratios: 0.5/5 = 0.1, 1/2 = 0.5, bias 1/sqrt(2)
    want = np.sqrt((0.1**2 + 0.5**2 + 0.5) / 3)
    assert filter_normalized_distance(d, w, groups) == pytest.approx(want, rel=1e-12)


def test_plane_coordinates_exact_for_skewed_axes():
    g = torch.Generator().manual_seed(0)
    o, d1, d2, n = (torch.randn(50, generator=g, dtype=torch.float64) for _ in range(4))
    coords = torch.tensor([[0.3, -1.2], [2.0, 0.5]], dtype=torch.float64)
    pts = o + coords[:, :1] * d1 + coords[:, 1:] * (d1 + 0.3 * d2)  # axes d1 and d1+0.3 d2: not orthogonal
    c, off = plane_coordinates(pts, o, d1, d1 + 0.3 * d2)
    np.testing.assert_allclose(c, coords.numpy(), atol=1e-10)
    np.testing.assert_allclose(off, 0.0, atol=1e-10)
    # an off-plane component orthogonal to both axes is reported as the off-plane distance
    q, _ = torch.linalg.qr(torch.stack([d1, d2, n], 1))
    perp = q[:, 2] * 1.5
    _, off2 = plane_coordinates((pts[0] + perp)[None], o, d1, d1 + 0.3 * d2)
    assert off2[0] == pytest.approx(1.5, rel=1e-9)


def test_pca_plane_of_rank_one_rows_is_orthonormal():
    v = torch.zeros(5, 30, dtype=torch.float64)
    v[:, 3] = torch.arange(5.0)
    d1, d2 = pca_plane(v)
    assert abs(float(d1 @ d2)) < 1e-12 and float(d1.norm()) == pytest.approx(1) and float(d2.norm()) == pytest.approx(1)
    assert abs(float(d1[3])) == pytest.approx(1.0)


def test_fedavg_sends_the_global_model_itself(tiny):
    run = Run.open(tiny("avg", "--save-clients", rounds=2, algo="fedavg"))
    s = round_spread(run, 2)
    assert s.sent_l2 == [0.0, 0.0, 0.0] and s.sent_filter == [0.0, 0.0, 0.0]
    names = _params(run)
    origin = torch.cat([run.global_state(1)[n].reshape(-1).double() for n in names])
    new = torch.cat([run.global_state(2)[n].reshape(-1).double() for n in names])
    _, returned, _ = run.clients(2)
    for k, r in enumerate(returned):
        rv = torch.cat([r[n].reshape(-1).double() for n in names])
        assert s.returned_l2[k] == pytest.approx(float((rv - origin).norm()), rel=1e-12)
        assert s.returned_relative[k] == pytest.approx(float((rv - origin).norm() / origin.norm()), rel=1e-12)
        assert s.returned_to_new_l2[k] == pytest.approx(float((rv - new).norm()), rel=1e-12)
    assert s.step_norm == pytest.approx(float((new - origin).norm()), rel=1e-12)


def test_fedmut_mutant_distances_follow_the_coefficients(tiny):
    radius = 2.5
    run = Run.open(tiny("mut", "--save-clients", "--radius", str(radius), rounds=3))
    s = round_spread(run, 3)
    _, _, info = run.clients(3)
    coef = np.array(info["mutation_coefficients"])  # (tensor, slot)
    keys = info["mutation_keys"]
    names = set(_params(run))
    w2, w1 = run.global_state(2), run.global_state(1)
    for slot in range(coef.shape[1]):
        # closed form: ||sum over parameter tensors of c[t, slot] * radius * (w_2 - w_1)[t]||
        sq = sum(
            float(((coef[t, slot] * radius) * (w2[k] - w1[k]).double()).pow(2).sum())
            for t, k in enumerate(keys)
            if k in names
        )
        assert s.sent_l2[slot] == pytest.approx(np.sqrt(sq), rel=1e-6)
    assert s.sent_l2[-1] == 0.0  # m = 3 is odd: the last slot gets the plain global model
    assert s.mutation_coefficients == info["mutation_coefficients"]


def test_update_cosines_and_losses(tiny):
    run = Run.open(tiny("mut", "--save-clients", rounds=3))
    ds = run.dataset()
    s = round_spread(run, 3, data=(ds.test.x, ds.test.y))
    names = _params(run)
    sent, returned, _ = run.clients(3)
    U = [torch.cat([(r[n] - sd[n]).reshape(-1).double() for n in names]) for sd, r in zip(sent, returned)]
    C = np.array([[float(a @ b / (a.norm() * b.norm())) for b in U] for a in U])
    np.testing.assert_allclose(np.array(s.update_cosines), C, atol=1e-10)
    assert s.mean_update_cosine == pytest.approx((C.sum() - np.trace(C)) / 6, abs=1e-8)
    # the origin's loss is the loss of global model w_2 on the test set
    want = ModelLoss(run.model(2), ds.test.x, ds.test.y).loss()
    assert s.losses["origin_loss"] == pytest.approx(want, rel=1e-5)
    assert s.losses["sent_loss"][-1] == pytest.approx(want, rel=1e-5)  # the plain slot
    # positions: returned models are in the round's PCA plane up to their off-plane distance
    pos = s.positions
    assert pos["origin"] == pytest.approx([0.0, 0.0], abs=1e-9)
    for k in range(3):
        rel = pos["returned_off_plane"][k] / max(s.returned_l2[k], 1e-12)
        assert 0.0 <= rel < 1.0


def test_save_clients_every_k_keeps_both_sides_of_each_kth_round(tiny):
    out = tiny("mut", "--save-clients", "3", rounds=7)
    saved = sorted(int(p.stem.split("_")[1]) for p in out.glob("clients_*.safetensors"))
    assert saved == [1, 3, 4, 6, 7]
    assert spread_rounds(Run.open(out)) == [1, 3, 4, 6, 7]
