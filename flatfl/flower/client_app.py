"""A Flower ClientApp running flatfl's local training for its registry models and data sets.

The node's client is its ``partition-id`` (``node_config``); its data are that client's share of
flatfl's partition of the data set named in the run config (the flags of ``flatfl train``:
``dataset``, ``clients``, ``partition``, ``dirichlet``, ``seed``, ``lr``, ``local-epochs``, ...).
A ``train`` message holds the model to start from and ``server-round``; the node trains it with
flatfl's local SGD exactly as ``flatfl train`` trains that client in that round
(:meth:`flatfl.simulation.Simulation.train_client`: the same data, batches, seeds and optimiser) and
replies with the model and ``num-examples``, ``train_loss``, ``sent_loss``. A train message with
``proximal-mu`` (Flower's FedProx) adds FedProx's proximal term, as ``flatfl train --algo fedprox
--mu``. Each minibatch step is the one ``flatfl train`` runs (:mod:`flatfl.algorithms.step`), so a run
config with ``local-opt = "sam"`` (or ``algo = "fedsam"``/``"fedasam"``) trains SAM/ASAM clients;
algorithms whose step needs server state (MoFedSAM, FedLESAM, FedSWA) are refused. A ``query`` message
answers the node's partition id (:mod:`flatfl.flower.nodes`).

Run it with ``flwr run`` (``clientapp = "flatfl.flower.client_app:app"``, examples/flower_app).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from flatfl.algorithms.base import FederatedAlgorithm, LocalTerm
from flatfl.config import RunConfig
from flatfl.errors import UserError
from flatfl.flower.arrays import from_record, to_record
from flatfl.flower.config import run_config
from flatfl.flower.nodes import query_reply
from flatfl.simulation import Simulation
from flatfl.statedict import StateDict

_SIMULATIONS: dict[str, Simulation] = {}  # one per run config in this process (data loaded once)


def simulation(cfg: RunConfig) -> Simulation:
    """flatfl's Simulation for ``cfg`` on the CPU (its data, partition and local training), cached."""
    key = cfg.identity()
    if key not in _SIMULATIONS:
        import torch

        from flatfl.data import load_dataset
        from flatfl.sampling import make_partition

        data = load_dataset(cfg.data)
        _SIMULATIONS[key] = Simulation(cfg, torch.device("cpu"), data, make_partition(cfg, data))
    return _SIMULATIONS[key]


def partition_id(context: Context, cfg: RunConfig) -> int:
    """The flatfl client this node trains: its node config's ``partition-id``, checked to be in
    0..clients−1 (one line naming the ``--node-config`` fix otherwise)."""
    pid = context.node_config.get("partition-id")
    if not isinstance(pid, int) or not 0 <= pid < cfg.data.num_clients:
        raise UserError(
            f"Flower node {context.node_id}: node_config partition-id is {pid!r}, "
            f"not one of 0..{cfg.data.num_clients - 1}"
            '; start the SuperNode with --node-config "partition-id=N num-partitions=K"'
        )
    return pid


def make_client_app(defaults: Mapping[str, Any] | None = None) -> ClientApp:
    """A ClientApp whose run config is ``defaults`` overridden by the run's own (``context.run_config``).

    ``flwr run`` fills the run config from the app's pyproject; Flower's Python entry point
    ``flwr.simulation.run_simulation`` passes none, so give it there: ``make_client_app({"algo":
    "fedmut", "clients": 10, ...})``."""
    base = dict(defaults or {})
    client_app = ClientApp()

    @client_app.query()
    def query(message: Message, context: Context) -> Message:
        return query_reply(message, partition_id(context, run_config(base | dict(context.run_config))))

    @client_app.train()
    def train(message: Message, context: Context) -> Message:
        return train_reply(message, context, run_config(base | dict(context.run_config)))

    return client_app


def train_reply(message: Message, context: Context, cfg: RunConfig) -> Message:
    """Train the node's client from the message's model as ``flatfl train`` trains it in that round."""
    client = partition_id(context, cfg)
    config = message.content.config_records.get("config", {})
    server_round = int(config.get("server-round", 1))
    arrays: ArrayRecord = next(iter(message.content.array_records.values()))
    sim = simulation(cfg)
    if type(sim.algorithm).local_step is not FederatedAlgorithm.local_step:
        raise UserError(
            f"Flower run config: algo = {cfg.algo!r}: its clients' steps need the server's state, which the Flower "
            "app does not send; use fedavg, fedprox, fedmut, fedsam or fedasam (and local-opt sam/asam)"
        )
    sent = from_record(arrays)
    term = (
        proximal_term(sim, float(config["proximal-mu"]), server_round, client, sent)
        if "proximal-mu" in config
        else None
    )
    update = sim.train_client(server_round, int(config.get("slot", 0)), client, sent, term)
    metrics = MetricRecord(
        {
            "num-examples": update.num_samples,
            "train_loss": update.train_loss,
            "sent_loss": update.sent_loss,
            "num_steps": update.num_steps,
        }
    )
    return Message(RecordDict({"arrays": to_record(update.state), "metrics": metrics}), reply_to=message)


def proximal_term(sim: Simulation, mu: float, server_round: int, client: int, sent: StateDict) -> LocalTerm | None:
    """FedProx's (mu / 2) ||w - w_t||^2 on the trainable parameters (flatfl's own FedProx term, Li et al.,
    MLSys 2020), for a message with Flower FedProx's ``proximal-mu``; none for mu = 0."""
    from flatfl.algorithms.fedprox import FedProx, FedProxConfig

    if not mu >= 0.0:
        raise UserError(f"Flower message: proximal-mu is {mu}; FedProx needs mu >= 0")
    fedprox = FedProx(FedProxConfig(mu=mu), param_names=sim.algorithm.param_names, num_clients=sim.cfg.data.num_clients)
    return fedprox.local_term(server_round, client, sent)


app = make_client_app()  # the run config is the app's (``flwr run``)
