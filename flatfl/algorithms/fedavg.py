"""FedAvg (McMahan et al., AISTATS 2017): every sampled client starts from the global model,
trains locally, and the server takes the mean of the returned models weighted by sample
counts, w_{t+1} = sum_i n_i w_i / sum_i n_i (``--unweighted`` for the plain mean)."""

from __future__ import annotations

from dataclasses import dataclass

from flatfl.algorithms.base import FederatedAlgorithm


@dataclass(frozen=True)
class FedAvgConfig:
    weighted: bool = True


class FedAvg(FederatedAlgorithm):
    name = "fedavg"
    config_cls = FedAvgConfig
