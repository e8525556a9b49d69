"""flatfl's seeded client sample for Flower strategies: a Flower run that samples the clients of
``flatfl train`` with the same ``--seed``, ``--clients`` and ``--frac``.

Flower's own FedAvg draws its nodes with Python's global ``random`` (``sample_nodes``), so two runs
train different clients and cannot be repeated. Here round t trains the clients of
:func:`flatfl.sampling.draw_clients` (seed, t): m = max(floor(frac * K), 1) of the K partition ids,
each on the node holding it (:mod:`flatfl.flower.nodes`), in flatfl's slot order.

* :func:`sampled_nodes` -- the round's clients and their nodes (also :class:`FedMutStrategy`'s);
* :class:`SeededFedAvg`, :class:`SeededFedProx` -- Flower's FedAvg and FedProx (their aggregation,
  their config keys: FedProx's ``proximal-mu``) with this sample.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, FedProx

from flatfl.errors import UserError
from flatfl.flower.nodes import client_nodes
from flatfl.sampling import draw_clients


def sampled_nodes(
    grid: Grid, known: dict[int, int], *, seed: int, server_round: int, num_clients: int, frac: float,
    timeout: float = 600.0,
) -> tuple[list[int], dict[int, int]]:  # fmt: skip
    """``(clients, {client: node})``: round ``server_round``'s clients in slot order, as ``flatfl
    train`` samples them, and the nodes holding them; one line when a sampled client has no node."""
    nodes = client_nodes(grid, known, timeout)
    m = max(int(frac * num_clients), 1)
    clients = [int(c) for c in draw_clients(seed, server_round, num_clients, m)]
    missing = [c for c in clients if c not in nodes]
    if missing:
        raise UserError(
            f"round {server_round}: clients {missing} have no Flower node (nodes hold partition-ids "
            f"{sorted(nodes)}); start one SuperNode per client or lower the run's clients"
        )
    return clients, nodes


class SeededSample:
    """Mixin for Flower's FedAvg family: ``configure_train`` trains flatfl's seeded sample of
    ``num_clients`` partition ids (``fraction_train`` of them) instead of random nodes; every
    message carries ``server-round``, the strategy's :meth:`train_keys`, ``client`` and ``slot``."""

    def __init__(self, *args: Any, num_clients: int, seed: int = 0, timeout: float = 600.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.num_clients, self.seed, self.timeout = num_clients, seed, timeout
        self._node_client: dict[int, int] = {}

    def train_keys(self) -> dict[str, Any]:
        """Keys the wrapped Flower strategy adds to every train config (none for FedAvg)."""
        return {}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """One train message per client of flatfl's seeded sample for ``server_round`` (the clients
        ``flatfl train`` trains with the same seed, clients and frac), sent to the node that holds it."""
        if self.fraction_train == 0.0:  # type: ignore[attr-defined]
            return []
        clients, nodes = sampled_nodes(
            grid, self._node_client, seed=self.seed, server_round=server_round, num_clients=self.num_clients,
            frac=self.fraction_train, timeout=self.timeout,  # type: ignore[attr-defined]
        )  # fmt: skip
        base = dict(config) | {"server-round": server_round} | self.train_keys()
        messages = []
        for slot, c in enumerate(clients):
            conf = ConfigRecord(base | {"client": c, "slot": slot})
            content = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: conf})  # type: ignore[attr-defined]
            messages.append(Message(content, dst_node_id=nodes[c], message_type=MessageType.TRAIN))
        return messages


class SeededFedAvg(SeededSample, FedAvg):
    """Flower's FedAvg (sample-weighted mean of the returned models) on flatfl's seeded sample."""


class SeededFedProx(SeededSample, FedProx):
    """Flower's FedProx on flatfl's seeded sample: every train message carries ``proximal-mu``, which
    flatfl's ClientApp turns into FedProx's (mu / 2) ||w - w_t||^2 (Li et al., MLSys 2020)."""

    def train_keys(self) -> dict[str, Any]:
        return {"proximal-mu": float(self.proximal_mu)}
