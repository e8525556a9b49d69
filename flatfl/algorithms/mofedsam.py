"""MoFedSAM (Qu, Li, Duan, Liu, Tang, Lu; ICML 2022): local SAM steps mixed with the server's momentum.

The server keeps Delta, the last round's mean update expressed as a gradient (zero in round 1). Each
local step of a sampled client on minibatch B from w::

    g = grad L_B(w);   e = rho g / ||g||                       (SAM's ascent)
    d = alpha grad L_B(w + e) + (1 - alpha) Delta              (the local step's direction)
    w <- w - lr * sgd(d)                                       (weight decay, momentum as SGD)

After the round, with u_i = w_i - w_t the returned updates and p_i the aggregation weights (plain
mean by default, ``--weighted``: sample counts)::

    w_{t+1} = w_t + eta_g sum_i p_i u_i                        (``--global-lr`` eta_g; 1: the mean)
    Delta   = - sum_i p_i u_i / (K_i lr)                       (K_i: client i's local steps)

Mechanics follow FL-Simulator (github woodenchild95/FL-Simulator, ``client/mofedsam.py``,
``server/MoFedSAM.py``), the code of Qu et al.'s co-authors: the SAM gradient is scaled by alpha and
the correction (1 - alpha) <w, Delta> added to the loss (its gradient is (1 - alpha) Delta); Delta is
the mean update divided by K local iterations and the local learning rate; the server takes the plain
mean; alpha defaults to its 0.1 (``--mo-alpha``). ``local.opt = "sam"`` and ``local.rho`` (``--rho``,
default 0.05; FL-Simulator's is 0.1) are recorded in run.json. With ``--rho 0 --mo-alpha 1`` it is
FedAvg (``--unweighted``) bit for bit (tested).

Departures: FL-Simulator divides every update by one K (client 0's iterations; its clients hold equal
shares); here each update is divided by its own K_i, which is the same when the K_i are equal. It
clips gradients at norm 10 and decays the local learning rate per round (0.998); flatfl does neither,
for any algorithm. Its local SGD has no momentum; flatfl's ``--momentum`` (default 0.5) applies on
top of d (``--momentum 0`` for the reference's). Delta covers trainable parameters; buffers (BatchNorm
statistics) are averaged as FedAvg does. Delta is saved with every round (exact resume).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from flatfl.algorithms.base import ClientUpdate, FederatedAlgorithm
from flatfl.algorithms.step import LocalStep
from flatfl.statedict import StateDict, weighted_average


@dataclass(frozen=True)
class MoFedSAMConfig:
    alpha: float = 0.1
    global_lr: float = 1.0
    weighted: bool = False


class MoFedSAM(FederatedAlgorithm):
    name = "mofedsam"
    config_cls = MoFedSAMConfig
    local_opt = "sam"

    def __init__(self, config: MoFedSAMConfig, *, param_names: Sequence[str], **kw: Any) -> None:
        super().__init__(config, param_names=param_names, **kw)
        self.delta: StateDict | None = None  # the server's momentum, as a gradient (None: zero)
        self._step: tuple[int, LocalStep] | None = None

    def local_step(self, round: int, client: int, sent: StateDict) -> LocalStep:
        if self._step is None or self._step[0] != round:  # one object for the round's clients
            base = self._default_step
            delta = self.delta or {n: torch.zeros_like(sent[n]) for n in self.param_names}
            mix = (self.config.alpha, delta)
            step = LocalStep(base.lr, base.momentum, base.weight_decay, perturbation=base.perturbation, mix=mix)
            self._step = (round, step)
        return self._step[1]

    def aggregate(self, round: int, global_state: StateDict, updates: list[ClientUpdate]) -> StateDict:
        weights = [u.num_samples if self.config.weighted else 1.0 for u in updates]
        total = float(sum(weights))
        mean = weighted_average([u.state for u in updates], weights)
        self.delta = {
            n: -sum(
                (u.state[n].float() - global_state[n].float()) * (w / (total * max(u.num_steps, 1) * u.lr))
                for u, w in zip(updates, weights)
            )
            for n in self.param_names
        }
        if self.config.global_lr == 1.0:
            return mean
        out = dict(mean)
        for n in self.param_names:
            out[n] = (global_state[n] + self.config.global_lr * (mean[n] - global_state[n])).to(global_state[n].dtype)
        return out

    # -- state ------------------------------------------------------------------------------
    def state_tensors(self) -> StateDict:
        return {} if self.delta is None else {f"delta/{n}": v for n, v in self.delta.items()}

    def state_json(self) -> dict[str, Any]:
        return {"has_delta": self.delta is not None}

    def load_state(self, tensors: StateDict, meta: dict[str, Any]) -> None:
        d = {k[len("delta/") :]: v for k, v in tensors.items() if k.startswith("delta/")}
        self.delta = d if meta.get("has_delta") else None
