"""SCAFFOLD (Karimireddy, Kale, Mohri, Reddi, Stich, Suresh; ICML 2020), option II.

The server keeps a control variate c and each client k its own c_k (all zero at the start).
A sampled client corrects every local gradient step for the drift of its data,

    y <- y - eta_l (g_k(y) - c_k + c),

implemented as the extra objective term <c - c_k, y> (its gradient is c - c_k), so momentum
and weight decay see the corrected gradient as in the paper's pseudo-code. After K local steps
from x (the global model), option II updates

    c_k+ = c_k - c + (x - y_k) / (K eta_l),

(eta_l being the effective step lr / (1 - momentum) when local SGD uses momentum: the paper's
plain-SGD formula then overestimates the gradient by 1 / (1 - momentum) and, measured on the
digits demo setting with momentum 0.9, diverges within ~16 rounds for every seed tried), the
server sets x <- x + eta_g * mean_k (y_k - x) (eta_g = ``global_lr``, 1 = the mean of the
returned models; ``--weighted`` weights by sample counts) and c <- c + (1/N) sum_k (c_k+ - c_k)
over the sampled clients, N = all clients. Control variates cover trainable parameters only;
buffers (BatchNorm statistics) are averaged as in FedAvg. All control variates are saved with
every saved round (c in ``state.safetensors``, each c_k in ``client_state/``, rewritten only when
client k took part: ``flatfl.client_state``), so a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from flatfl.algorithms.base import ClientUpdate, FederatedAlgorithm, LocalBatch, LocalTerm, server_step
from flatfl.statedict import StateDict, weighted_average


@dataclass(frozen=True)
class ScaffoldConfig:
    global_lr: float = 1.0
    weighted: bool = False


class Scaffold(FederatedAlgorithm):
    name = "scaffold"
    config_cls = ScaffoldConfig
    client_state_prefixes = ("c_client/",)

    def __init__(self, config: ScaffoldConfig, *, param_names: Sequence[str], **kw: Any) -> None:
        super().__init__(config, param_names=param_names, **kw)
        self.c: StateDict | None = None  # server control variate
        self.c_clients: dict[int, StateDict] = {}  # client k's c_k (absent = zero)

    def _zeros(self, like: StateDict) -> StateDict:
        return {n: torch.zeros_like(like[n], dtype=torch.float32) for n in self.param_names}

    def local_term(self, round: int, client: int, sent: StateDict) -> LocalTerm | None:
        if self.c is None:
            self.c = self._zeros(sent)
        ck = self.c_clients.get(client)
        diff = {n: (self.c[n] - (ck[n] if ck is not None else 0.0)).detach() for n in self.param_names}

        def correction(params: dict[str, torch.Tensor], batch: LocalBatch) -> torch.Tensor:
            return torch.stack([(params[n] * diff[n].to(params[n].device)).sum() for n in self.param_names]).sum()

        return correction

    def aggregate(self, round: int, global_state: StateDict, updates: list[ClientUpdate]) -> StateDict:
        assert self.c is not None
        n_all = self.num_clients or len(updates)
        dc = {n: torch.zeros_like(v) for n, v in self.c.items()}
        for u in updates:
            ck = self.c_clients.get(u.client) or self._zeros(global_state)
            # option II divides the local progress by K steps of size lr; with heavy-ball momentum beta
            # a step moves lr / (1 - beta) per unit gradient in steady state, so that is the step used
            scale = (1.0 - u.momentum) / (max(u.num_steps, 1) * u.lr)
            new_ck = {
                n: ck[n] - self.c[n] + (global_state[n].float() - u.state[n].float()) * scale for n in self.param_names
            }
            for n in self.param_names:
                dc[n] += new_ck[n] - ck[n]
            self.c_clients[u.client] = new_ck
        for n in self.param_names:
            self.c[n] = self.c[n] + dc[n] / n_all
        weights = [u.num_samples if self.config.weighted else 1.0 for u in updates]
        mean = weighted_average([u.state for u in updates], weights)
        return server_step(global_state, mean, self.config.global_lr, self.param_names)

    # -- state ------------------------------------------------------------------------------
    def state_tensors(self) -> StateDict:
        out: StateDict = {}
        if self.c is not None:
            out.update({f"c/{n}": v for n, v in self.c.items()})
        for k, ck in sorted(self.c_clients.items()):
            out.update({f"c_client/{k}/{n}": v for n, v in ck.items()})
        return out

    def state_json(self) -> dict[str, Any]:
        return {"clients_with_control_variate": sorted(self.c_clients)}

    def load_state(self, tensors: StateDict, meta: dict[str, Any]) -> None:
        c = {k[2:]: v for k, v in tensors.items() if k.startswith("c/")}
        self.c = c or None
        self.c_clients = {}
        for k, v in tensors.items():
            if k.startswith("c_client/"):
                _, client, name = k.split("/", 2)
                self.c_clients.setdefault(int(client), {})[name] = v
