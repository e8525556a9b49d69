"""FedMut (Hu, Chen, Li, Liu, Zhang, Wang; AAAI 2024) as a strategy of Flower's Message API.

Round t, with w_t the global model and d = w_t - w_{t-1}::

    clients c_1..c_m  = flatfl's sample for (seed, t): m = max(floor(frac * K), 1) of K
    sent_i            = w_t + c[tensor][i] * radius * d      (FedMut.dispatch: the mutants)
    w_{t+1}           = mean_i w_i                            (plain mean, as the reference code;
                                                               weighted=True: by num-examples)

``configure_train`` sends slot i's mutant to the node holding client c_i (its ``partition-id``,
:mod:`flatfl.flower.nodes`); ``aggregate_train`` averages the returned models in slot order and
lets FedMut remember w_t (``after_round``). The mutation is not re-implemented here: this class
drives :class:`flatfl.algorithms.fedmut.FedMut`, whose ``dispatch``/``aggregate``/``after_round``
``flatfl train --algo fedmut`` runs, with the same :class:`FedMutConfig` (flags and defaults) and
the same seeded generators, so a Flower run gives flatfl's global models.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from flatfl import seeding
from flatfl.algorithms.base import ClientUpdate
from flatfl.algorithms.fedmut import FedMut, FedMutConfig
from flatfl.config import compact_dict
from flatfl.errors import UserError
from flatfl.flower.arrays import from_record, to_record
from flatfl.flower.sampling import sampled_nodes
from flatfl.statedict import StateDict


class FedMutStrategy(FedAvg):
    """FedMut for Flower. ``num_clients`` K (node partition ids 0..K-1) and ``frac`` fix the sample
    m = max(floor(frac * K), 1) per round, as ``flatfl train --clients K --frac F``; ``param_names``
    are the model's trainable parameters (``mutate="params"``)."""

    def __init__(
        self,
        config: FedMutConfig | None = None,
        *,
        param_names: Sequence[str],
        num_clients: int,
        frac: float = 0.25,
        seed: int = 0,
        timeout: float = 600.0,
    ) -> None:
        super().__init__(fraction_train=frac, fraction_evaluate=0.0, min_train_nodes=1, min_available_nodes=1)
        self.fedmut = FedMut(config or FedMutConfig(), param_names=param_names, num_clients=num_clients)
        self.num_clients, self.frac, self.seed, self.timeout = num_clients, frac, seed, timeout
        self.clients_per_round = max(int(frac * num_clients), 1)
        self._node_client: dict[int, int] = {}
        self._round: tuple[int, StateDict, list[int], dict[int, int]] | None = None

    @property
    def config(self) -> FedMutConfig:
        """The FedMut settings (radius, mut_acc_rate, mut_bound, mutate, weighted, ...): flatfl's own FedMutConfig."""
        return self.fedmut.config

    def settings(self) -> dict[str, Any]:
        """What run.json records of this strategy (flatfl's ``algo_config`` of a FedMut run)."""
        return compact_dict(self.config)

    def summary(self) -> None:
        from flwr.common.logger import log

        log(
            20,
            "\t├──> FedMut %s; %d of %d clients per round",
            self.settings(),
            self.clients_per_round,
            self.num_clients,
        )

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        clients, nodes = sampled_nodes(
            grid, self._node_client, seed=self.seed, server_round=server_round, num_clients=self.num_clients,
            frac=self.frac, timeout=self.timeout,
        )  # fmt: skip
        global_state = from_record(arrays)
        rng = seeding.derive_rng(self.seed, seeding.ALGORITHM, server_round)
        sent = self.fedmut.dispatch(server_round, global_state, clients, rng)
        slots = {nodes[c]: slot for slot, c in enumerate(clients)}
        self._round = (server_round, global_state, clients, slots)
        messages = []
        for slot, (c, state) in enumerate(zip(clients, sent)):
            cfg = ConfigRecord(dict(config) | {"server-round": server_round, "client": c, "slot": slot})
            content = RecordDict({self.arrayrecord_key: to_record(state), self.configrecord_key: cfg})
            messages.append(Message(content, dst_node_id=nodes[c], message_type=MessageType.TRAIN))
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid, errors = self._check_and_log_replies(list(replies), is_train=True)
        if self._round is None or self._round[0] != server_round:
            raise RuntimeError(f"aggregate_train of round {server_round} without its configure_train")
        _, global_state, clients, slots = self._round
        if errors or len(valid) != len(clients):
            first = f"; first error: {errors[0].error.reason}" if errors else ""
            raise UserError(
                f"round {server_round}: {len(valid)} of {len(clients)} clients replied; FedMut's mean needs every "
                f"mutant back{first}"
            )
        valid.sort(key=lambda m: slots[m.metadata.src_node_id])
        updates = [update_of(m, c, self.arrayrecord_key, self.weighted_by_key) for m, c in zip(valid, clients)]
        new_global = self.fedmut.aggregate(server_round, global_state, updates)
        self.fedmut.after_round(server_round, global_state, new_global)
        metrics = self.train_metrics_aggr_fn([m.content for m in valid], self.weighted_by_key)
        return to_record(new_global), metrics


def update_of(reply: Message, client: int, arrays_key: str, weight_key: str) -> ClientUpdate:
    """A reply as flatfl's :class:`ClientUpdate` (its model, sample count and mean training loss)."""
    metrics = next(iter(reply.content.metric_records.values()), MetricRecord())
    return ClientUpdate(
        client=client,
        num_samples=int(metrics.get(weight_key, 1)),
        state=from_record(reply.content[arrays_key]),
        train_loss=float(metrics.get("train_loss", float("nan"))),
    )
