"""The round loop lives once (``FederatedAlgorithm.run_round``): algorithms override hooks only, and the
hooks run in the documented order, turns chained through their aggregates."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from flatfl.algorithms import ALGORITHMS
from flatfl.algorithms.base import ClientUpdate, FederatedAlgorithm, SequentialTraining
from flatfl.statedict import weighted_average


def test_no_algorithm_replaces_the_round_loop():
    own = [name for name, cls in ALGORITHMS.items() if cls.run_round is not FederatedAlgorithm.run_round]
    assert len(ALGORITHMS) >= 14 and not own, own


@dataclass(frozen=True)
class _Config:
    weighted: bool = False


class _Logged(FederatedAlgorithm):
    """Two turns (even slots, then odd slots), a shifted start and a doubled aggregate, every hook logged."""

    name = "logged"
    config_cls = _Config

    def __init__(self) -> None:
        super().__init__(_Config(), param_names=["w"])
        self.log: list[tuple] = []

    def before_round(self, round, global_state, rng, federation):
        self.log.append(("before_round", float(global_state["w"])))
        return {"w": global_state["w"] + 1.0}

    def turns(self, round, clients):
        return [list(range(0, len(clients), 2)), list(range(1, len(clients), 2))]

    def dispatch(self, round, global_state, clients, rng):
        self.log.append(("dispatch", tuple(clients), float(global_state["w"])))
        return super().dispatch(round, global_state, clients, rng)

    def after_aggregate(self, round, start, aggregate, updates, rng, federation):
        self.log.append(("after_aggregate", float(start["w"]), float(aggregate["w"]), [u.client for u in updates]))
        return {"w": 2.0 * aggregate["w"]}

    def after_round(self, round, old_global, new_global):
        self.log.append(("after_round", float(old_global["w"]), float(new_global["w"])))


class _AddClient(SequentialTraining):
    """A client's 'training' adds its id to the weight it was sent."""

    def __init__(self) -> None:
        self.jobs: list[tuple[int, int]] = []

    def train_client(self, round, slot, client, state, local_term=None, step=None):
        self.jobs.append((slot, client))
        return ClientUpdate(client, 1, {"w": state["w"] + client}, 0.0)


def test_hooks_run_in_order_and_turns_chain_through_their_aggregates():
    algo, fed = _Logged(), _AddClient()
    out = algo.run_round(1, {"w": torch.tensor(0.0)}, [10, 20, 30, 40], np.random.default_rng(0), fed)
    # start 0 + 1 = 1; turn 1 (slots 0, 2: clients 10, 30) from 1 -> mean(11, 31) = 21;
    # turn 2 (slots 1, 3: clients 20, 40) from 21 -> mean(41, 61) = 51; after_aggregate: 2 * 51 = 102
    assert algo.log == [
        ("before_round", 0.0),
        ("dispatch", (10, 30), 1.0),
        ("dispatch", (20, 40), 21.0),
        ("after_aggregate", 1.0, 51.0, [10, 30, 20, 40]),
        ("after_round", 1.0, 102.0),
    ]
    assert fed.jobs == [(0, 10), (2, 30), (1, 20), (3, 40)]  # slots keep their sample position
    assert float(out.new_global["w"]) == 102.0 and [float(s["w"]) for s in out.sent] == [1.0, 1.0, 21.0, 21.0]
    assert float(weighted_average([u.state for u in out.updates[2:]], [1, 1])["w"]) == 51.0
