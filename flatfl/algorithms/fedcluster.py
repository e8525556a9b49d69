"""FedCluster (Chen, Sun, Yin; 2020): clusters of clients take turns within one round.

The K clients are split once into M clusters (``--clusters M``; ``--grouping random``, or
``label``: clients sorted by their most frequent label and cut into M contiguous groups of
near-equal size). In round t the m sampled clients are grouped by cluster and the clusters
take turns, in cluster order: the sampled members of cluster 1 train from w_t and are averaged
(FedAvg step, sample-weighted unless ``--unweighted``) into w_t^1, the members of cluster 2
start from w_t^1, and so on; w_{t+1} is the last cluster's average. A cluster with no sampled
member is skipped. So one round makes up to M sequential FedAvg steps -- the "cycling" that
FedCluster argues speeds up convergence on heterogeneous data. M = 1 is FedAvg exactly (a
test checks it bit for bit). The cluster assignment is drawn in round 1 from the round's
generator and saved with every round.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from flatfl.algorithms.base import FederatedAlgorithm, Federation
from flatfl.statedict import StateDict


@dataclass(frozen=True)
class FedClusterConfig:
    clusters: int = 2
    grouping: Literal["random", "label"] = "random"
    weighted: bool = True


class FedCluster(FederatedAlgorithm):
    name = "fedcluster"
    config_cls = FedClusterConfig

    def __init__(self, config: FedClusterConfig, *, param_names: Sequence[str], **kw: Any) -> None:
        super().__init__(config, param_names=param_names, **kw)
        self.assignment: list[int] | None = None  # client -> cluster

    def assign(self, rng: np.random.Generator) -> list[int]:
        K, M = self.num_clients, self.config.clusters
        if self.config.grouping == "label" and self.client_label_counts is not None:
            order = np.argsort(np.asarray(self.client_label_counts).argmax(axis=1), kind="stable")
        else:
            order = rng.permutation(K)
        out = [0] * K
        for c, group in enumerate(np.array_split(order, M)):
            for k in group:
                out[int(k)] = c
        return out

    def before_round(
        self, round: int, global_state: StateDict, rng: np.random.Generator, federation: Federation
    ) -> StateDict:
        """The cluster assignment, drawn in the run's first round."""
        if self.assignment is None:
            self.assignment = self.assign(rng)
        return global_state

    def turns(self, round: int, clients: Sequence[int]) -> list[list[int]]:
        """The sampled slots of each cluster, in cluster order; clusters without a sampled member are skipped."""
        assert self.assignment is not None
        groups = [
            [slot for slot, c in enumerate(clients) if self.assignment[int(c)] == cluster]
            for cluster in range(self.config.clusters)
        ]
        return [g for g in groups if g]

    def state_json(self) -> dict[str, Any]:
        return {"assignment": self.assignment}

    def load_state(self, tensors: StateDict, meta: dict[str, Any]) -> None:
        self.assignment = meta.get("assignment")
