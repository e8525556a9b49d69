"""FedLESAM (Fan, Hu, Yao, Niu, Zhang, Sugiyama, Wang; ICML 2024): the SAM perturbation estimated
locally from the global update.

Instead of an ascent pass on the client's own minibatch (SAM's e = rho g / ||g||, which follows the
local landscape), every local step perturbs along the last global update, reversed -- an estimate of
the global loss's ascent direction that costs no extra backward pass::

    v = w_{t-1} - w_t                           (known to the client: the last two global models)
    e = rho v / ||v||                           (norm over all trainable parameters; fixed for the round)
    w <- w - lr * sgd(grad L_B(w + e))          (each local step, minibatch B)

Round 1 has no previous model: its steps are plain SGD (as the reference, whose ``global_update`` is
None then). The server takes the plain mean of the returned models (``--weighted``: sample counts).
This is the SAM cousin of FedMut, whose mutants also move along w_t - w_{t-1}. ``local.opt = "lesam"``
and ``local.rho`` (``--rho``, default 0.05) are recorded in run.json. ``--rho 0`` is FedAvg
(``--unweighted``) bit for bit (tested).

Reference: github MediaBrain-SJTU/FedLESAM (``optimizer/LESAM.py``, ``server/FedLESAM.py``): the
server sends global_update = w_t - w_{t-1} (times the global learning rate, 1) and the client adds
e = -rho * global_update / norm before every forward pass. Departures, both where the code and the
paper disagree: (1) the code indexes the flattened update by parameter-tensor number
(``g_update[idx]`` for the idx-th tensor), so each tensor is shifted by one scalar, and normalises by
a sum of those scalars' magnitudes; here e is the paper's vector rho v / ||v||. (2) The paper's
w_{t-1} is the global model the client received in its previous active round; the code, and flatfl,
use the previous round's global model for every client (the two agree under full participation).
The code clips gradients at norm 10 and uses no local momentum; flatfl clips nothing and applies
``--momentum`` (``--momentum 0`` for the reference's). The reported train loss is the loss at w + e,
the only pass a step makes. The previous global model is saved with every round (exact resume).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from flatfl.algorithms.base import FederatedAlgorithm
from flatfl.algorithms.step import DEFAULT_RHO, LocalStep, Perturbation
from flatfl.statedict import StateDict, clone


@dataclass(frozen=True)
class FedLESAMConfig:
    weighted: bool = False


class FedLESAM(FederatedAlgorithm):
    name = "fedlesam"
    config_cls = FedLESAMConfig
    local_opt = "lesam"

    def __init__(self, config: FedLESAMConfig, *, param_names: Sequence[str], **kw: Any) -> None:
        super().__init__(config, param_names=param_names, **kw)
        self.prev_global: StateDict | None = None
        self._step: tuple[int, LocalStep] | None = None

    @property
    def rho(self) -> float:
        return float(self.local.rho if self.local.rho is not None else DEFAULT_RHO["lesam"])

    def local_step(self, round: int, client: int, sent: StateDict) -> LocalStep:
        if self.prev_global is None:
            return self._default_step  # round 1: plain SGD
        if self._step is None or self._step[0] != round:  # one object for the round's clients
            base = self._default_step
            v = {n: self.prev_global[n] - sent[n] for n in self.param_names}
            pert = Perturbation.along(self.rho, v)
            self._step = (round, LocalStep(base.lr, base.momentum, base.weight_decay, perturbation=pert))
        return self._step[1]

    def after_round(self, round: int, old_global: StateDict, new_global: StateDict) -> None:
        self.prev_global = clone({n: old_global[n] for n in self.param_names})

    def state_tensors(self) -> StateDict:
        return {} if self.prev_global is None else {f"prev_global/{n}": v for n, v in self.prev_global.items()}

    def state_json(self) -> dict[str, Any]:
        return {"has_prev_global": self.prev_global is not None}

    def load_state(self, tensors: StateDict, meta: dict[str, Any]) -> None:
        prefix = "prev_global/"
        prev = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        self.prev_global = prev if meta.get("has_prev_global") else None
