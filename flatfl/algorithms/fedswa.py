"""FedSWA (Caldarola, Caputo, Ciccone; ECCV 2022): stochastic weight averaging of the server model.

FedAvg (any ``--local-opt``: with ``sam``/``asam`` it is the paper's FedSAM/FedASAM + SWA) until round
S = ``swa_start`` (``--swa-start``, default 75 % of ``--rounds``, fixed when the run starts); from round
S + 1 on, with cycle length c (``--swa-cycle``) and round t::

    s(t)   = ((t - S - 1) mod c + 1) / c                 (1/c, 2/c, ..., 1 within each cycle)
    lr(t)  = (1 - s(t)) lr + s(t) lr_swa                 (the clients' cyclical learning rate;
                                                          ``--swa-lr`` lr_swa; c = 1: lr unchanged)
    w_{t+1} = FedAvg's mean of the returned models       (the server model, sent to the clients)
    w_SWA  <- (n w_SWA + w_{t+1}) / (n + 1),  n += 1     after every round with s(t) = 1 (cycle end)

(Izmailov et al., UAI 2018, on the server's sequence of models). The round files, evaluation and
``flatfl report`` see the SWA model -- the model the method outputs -- from its first collection on,
the server model before; the server model that keeps training is saved in the algorithm's state
(exact resume). With S >= the number of rounds it is FedAvg bit for bit (tested).

Reference: github debcaldarola/fedsam (``models/main.py``, ``servers/fedavg_server.py``): the cyclical
rate is ``schedule_cycling_lr`` (t = (i mod c + 1)/c with i the 0-based round) and the SWA model is a
running mean started by replacing (weight 1) a copy of the server model. Departures: (1) its
collections happen when (i - S) mod c = 0 for 0-based i > S, one round after the round that trained at
lr_swa whenever S is a multiple of c (then its cycle phase, i mod c, equals flatfl's); flatfl collects
at the cycle's end, where SWA's schedule puts it. (2) Its SWA model averages parameters only and keeps
BatchNorm statistics of the copy made at S; flatfl averages every floating-point state entry (integer
entries are the server model's). Defaults are its script's for CIFAR (``paper_experiments``:
``--swa-c 10``, ``--swa-lr 1e-4``, start at 75 %).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flatfl.algorithms.base import ClientUpdate, FederatedAlgorithm
from flatfl.algorithms.step import LocalStep
from flatfl.errors import DivergenceError
from flatfl.statedict import StateDict, clone, first_nonfinite


@dataclass(frozen=True)
class FedSWAConfig:
    swa_start: int | None = None  # S; None: 75 % of the run's rounds, filled in by flatfl train
    swa_cycle: int = 10
    swa_lr: float = 1e-4
    weighted: bool = True


def cycle_position(t: int, start: int, c: int) -> float:
    """s(t) = ((t - S - 1) mod c + 1) / c for an SWA round t > S."""
    return ((t - start - 1) % c + 1) / c


class FedSWA(FederatedAlgorithm):
    name = "fedswa"
    config_cls = FedSWAConfig

    def __init__(self, config: FedSWAConfig, **kw: Any) -> None:
        super().__init__(config, **kw)
        if config.swa_start is None:
            raise ValueError("FedSWAConfig.swa_start: give the round after which SWA starts")
        self.server: StateDict | None = None  # the server model, once it differs from the SWA model
        self.swa_n = 0
        self._step: tuple[int, LocalStep] | None = None

    def swa_round(self, t: int) -> bool:
        return t > int(self.config.swa_start)

    def lr(self, t: int) -> float:
        """The clients' learning rate of round t (``--lr`` before and at S)."""
        c = self.config.swa_cycle
        if not self.swa_round(t) or c == 1:
            return self.local.lr
        s = cycle_position(t, int(self.config.swa_start), c)
        return (1 - s) * self.local.lr + s * self.config.swa_lr

    def collects(self, t: int) -> bool:
        return self.swa_round(t) and cycle_position(t, int(self.config.swa_start), self.config.swa_cycle) == 1.0

    def dispatch(self, round: int, global_state: StateDict, clients: Any, rng: Any) -> list[StateDict]:
        sent = self.server if self.server is not None else global_state
        return [sent for _ in clients]

    def local_step(self, round: int, client: int, sent: StateDict) -> LocalStep:
        if not self.swa_round(round):
            return self._default_step
        if self._step is None or self._step[0] != round:  # one object for the round's clients
            self._step = (round, LocalStep.from_config(self.local, lr=self.lr(round)))
        return self._step[1]

    def aggregate(self, round: int, global_state: StateDict, updates: list[ClientUpdate]) -> StateDict:
        server = super().aggregate(round, global_state, updates)
        bad = first_nonfinite(server) if self.server is not None else None
        if bad is not None:  # the returned SWA model would hide it until the next collection
            raise DivergenceError(f"round {round}: the server model has non-finite values in {bad}", round, None)
        if not self.collects(round):
            if self.server is not None:
                self.server = server
                return global_state  # the SWA model stays what round files and evaluation see
            return server
        if self.server is None:  # first collection: the SWA model is the server model (weight 1)
            swa = clone(server)
        else:
            a = 1.0 / (self.swa_n + 1)
            swa = {k: global_state[k] * (1.0 - a) + v * a if v.is_floating_point() else v for k, v in server.items()}
        self.server, self.swa_n = server, self.swa_n + 1
        return swa

    def round_metrics(self) -> dict[str, Any]:
        return {"swa_models": self.swa_n}

    # -- state ------------------------------------------------------------------------------
    def state_tensors(self) -> StateDict:
        return {} if self.server is None else {f"server/{k}": v for k, v in self.server.items()}

    def state_json(self) -> dict[str, Any]:
        return {"swa_n": self.swa_n, "has_server": self.server is not None}

    def load_state(self, tensors: StateDict, meta: dict[str, Any]) -> None:
        prefix = "server/"
        server = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        self.server = server if meta.get("has_server") else None
        self.swa_n = int(meta.get("swa_n", 0))
