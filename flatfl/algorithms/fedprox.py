"""FedProx (Li, Sahu, Zaheer, Sanjabi, Talwalkar, Smith; MLSys 2020).

Each sampled client k minimises its loss plus a proximal term that keeps it near the model
it received,

    h_k(w) = F_k(w) + (mu / 2) * ||w - w_t||^2,

(only trainable parameters; the term's gradient mu (w - w_t) is added at every local step).
Aggregation is FedAvg's sample-weighted mean (``--unweighted``: plain mean). ``mu = 0`` is
FedAvg exactly (a test checks this bit for bit).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from flatfl.algorithms.base import FederatedAlgorithm, LocalBatch, LocalTerm
from flatfl.statedict import StateDict


@dataclass(frozen=True)
class FedProxConfig:
    mu: float = 0.01
    weighted: bool = True


class FedProx(FederatedAlgorithm):
    name = "fedprox"
    config_cls = FedProxConfig

    def local_term(self, round: int, client: int, sent: StateDict) -> LocalTerm | None:
        mu = self.config.mu
        if mu == 0.0:
            return None
        anchor = {n: sent[n].detach() for n in self.param_names}

        def proximal(params: dict[str, torch.Tensor], batch: LocalBatch) -> torch.Tensor:
            sq = torch.stack([(params[n] - anchor[n].to(params[n].device)).pow(2).sum() for n in self.param_names])
            return 0.5 * mu * sq.sum()

        return proximal
