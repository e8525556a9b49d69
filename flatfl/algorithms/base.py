"""The federated round, written once; algorithms override only the hook that differs.

One round t of every algorithm here is::

    w_t      = before_round(t, w_t)                    # the algorithm's preparation (FedGen: its
                                                       #   generator; FedAUX: pre-training, scorers)
    for each turn T of turns(t, clients):              # one turn of all sampled clients (FedCluster:
        sent_i  = dispatch(t, w, T's clients)          #   one per cluster, each from the last's w)
        w_i     = local training of client i from sent_i  # done by the trainer's Federation,
                  on loss + local_term(t, i, sent_i)      #   with an optional extra objective term,
                  by local_step(t, i, sent_i)'s rule      #   each minibatch step (SGD, SAM, ...)
        w       = aggregate(t, w, [w_i])               # w = w_t before the first turn
    w_{t+1}  = after_aggregate(t, w_t, w, [w_i])       # server-side work on the aggregate (FedDF:
                                                       #   distillation; FedGen: generator training)
    after_round(t, w_t, w_{t+1})                       # update the algorithm's own state

``run_round`` is this loop, written once; no algorithm replaces it. FedAvg uses the defaults (send
w_t to all, weighted mean, ``--local-opt``'s step). FedMut overrides ``dispatch`` (mutants) and
``after_round`` (remember w_t); FedSAM-style algorithms ``local_step``
(:mod:`flatfl.algorithms.step`: the one minibatch step both the sequential and the stacked
``flatfl.parallel`` paths run); FedAUX, FedGen and FedCluster (its clusters) ``before_round``; FedCluster
``turns``; FedDF, FedAUX and FedGen ``after_aggregate``. The hooks draw from the round's generator in
this order. Algorithm state is explicit (``state_tensors`` / ``state_json``) and saved with every
round, so a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np

from flatfl.algorithms.step import LocalStep
from flatfl.config import LocalConfig
from flatfl.statedict import StateDict, weighted_average

if TYPE_CHECKING:
    import torch


@dataclass
class ClientUpdate:
    """What one sampled client returns: its trained model and how it got there."""

    client: int
    num_samples: int
    state: StateDict
    train_loss: float
    num_steps: int = 0  # local SGD steps taken (SCAFFOLD's K)
    lr: float = 0.0  # local learning rate used
    momentum: float = 0.0  # local SGD momentum used
    sent_loss: float = float("nan")  # loss of the model it was sent on its first local minibatch


@dataclass(frozen=True)
class LocalBatch:
    """The minibatch a local term sees: inputs, labels, the model's logits on them, the model
    itself (for terms that run it on other inputs, as FedGen's head on generated latents) and
    the client's generator (for terms that draw, so runs stay seeded)."""

    x: torch.Tensor
    y: torch.Tensor
    logits: torch.Tensor
    model: torch.nn.Module
    generator: torch.Generator


# An extra term of a client's local objective, f(named parameters, batch) -> scalar, added to
# every minibatch loss (FedProx's proximal term, SCAFFOLD's drift correction, FedGen's
# generator regulariser).
LocalTerm = Callable[[dict[str, "torch.Tensor"], LocalBatch], "torch.Tensor"]


def server_step(global_state: StateDict, mean: StateDict, global_lr: float, names: Sequence[str]) -> StateDict:
    """``mean`` with the parameters ``names`` moved to x + eta_g (mean - x) from x = ``global_state``
    (a server learning rate eta_g, SCAFFOLD's and MoFedSAM's ``global_lr``; 1: ``mean`` itself)."""
    if global_lr == 1.0:
        return mean
    out = dict(mean)
    for n in names:
        out[n] = (global_state[n] + global_lr * (mean[n] - global_state[n])).to(global_state[n].dtype)
    return out


@dataclass(frozen=True)
class ClientJob:
    """One client's local training of a round: its slot, its id, the model it starts from, the
    extra term of its objective and the rule of its minibatch steps (None: the algorithm's
    ``local_step``)."""

    slot: int
    client: int
    state: StateDict
    local_term: LocalTerm | None = None
    step: LocalStep | None = None


class Federation(Protocol):
    """Runs local training; provided by the trainer (data, device, optimiser, seeds)."""

    def train_client(
        self,
        round: int,
        slot: int,
        client: int,
        state: StateDict,
        local_term: LocalTerm | None = None,
        step: LocalStep | None = None,
    ) -> ClientUpdate: ...

    def train_clients(self, round: int, jobs: Sequence[ClientJob]) -> list[ClientUpdate]:
        """Every job's update, in job order (one after another, in parallel, or across ranks)."""
        ...

    def server_data(self) -> torch.Tensor:
        """Unlabelled inputs held out for the server (algorithms with ``server_fraction`` > 0)."""
        ...

    def new_model(self, state: StateDict) -> torch.nn.Module:
        """A module of the run's architecture with ``state`` loaded, on the training device."""
        ...

    def client_inputs(self, client: int) -> torch.Tensor:
        """Client ``client``'s training inputs (for client-side computations outside local SGD,
        such as FedAUX's scorers)."""
        ...


class SequentialTraining:
    """Mixin for a ``Federation``: ``train_clients`` as one ``train_client`` after another."""

    def train_clients(self, round: int, jobs: Sequence[ClientJob]) -> list[ClientUpdate]:
        return [self.train_client(round, j.slot, j.client, j.state, j.local_term, j.step) for j in jobs]  # type: ignore[attr-defined]


@dataclass
class RoundOutput:
    new_global: StateDict
    sent: list[StateDict]
    updates: list[ClientUpdate]


class FederatedAlgorithm:
    """Base class: FedAvg's behaviour in every hook."""

    name: ClassVar[str]
    config_cls: ClassVar[type]
    # Name prefixes of per-client state tensors (``<prefix><client>[/<key>]``), saved incrementally
    # (flatfl.client_state): a client's entries may change only in a round it takes part in.
    client_state_prefixes: ClassVar[tuple[str, ...]] = ()
    # The local optimizer the algorithm is defined with (FedSAM: "sam"), recorded as ``local.opt``;
    # None: any of ``--local-opt`` (sgd, sam, asam).
    local_opt: ClassVar[str | None] = None

    def __init__(
        self,
        config: Any,
        *,
        param_names: Sequence[str],
        num_clients: int = 0,
        client_sizes: Sequence[int] | None = None,
        client_label_counts: Any = None,
        local: LocalConfig | None = None,
    ) -> None:
        self.config = config
        self.local = local if local is not None else LocalConfig()
        if self.local_opt is not None and self.local.opt != self.local_opt:  # the algorithm's own optimizer
            self.local = dataclasses.replace(self.local, opt=self.local_opt)
        self._default_step = LocalStep.from_config(self.local)
        self._round_step: tuple[int, LocalStep] | None = None
        self.param_names = tuple(param_names)
        self.num_clients = num_clients
        self.client_sizes = None if client_sizes is None else list(client_sizes)
        self.client_label_counts = client_label_counts  # (K, classes) array, for label-aware algorithms

    # -- the round loop ---------------------------------------------------------------
    def run_round(
        self,
        round: int,
        global_state: StateDict,
        clients: Sequence[int],
        rng: np.random.Generator,
        federation: Federation,
    ) -> RoundOutput:
        """Round ``round`` from ``global_state`` with the sampled ``clients`` (module docstring); ``sent`` and
        ``updates`` of the output are in turn order (slot order with a single turn)."""
        start = self.before_round(round, global_state, rng, federation)
        state, sent, updates = start, [], []
        for turn in self.turns(round, clients):
            members = [int(clients[slot]) for slot in turn]
            models = self.dispatch(round, state, members, rng)
            jobs = [
                ClientJob(slot, c, s, self.local_term(round, c, s), self.local_step(round, c, s))
                for slot, c, s in zip(turn, members, models)
            ]
            returned = federation.train_clients(round, jobs)
            sent += models
            updates += returned
            state = self.aggregate(round, state, returned)
        new_global = self.after_aggregate(round, start, state, updates, rng, federation)
        self.after_round(round, start, new_global)
        return RoundOutput(new_global, sent, updates)

    @classmethod
    def server_fraction(cls, config: Any) -> float:
        """Share of the training set the server keeps as unlabelled proxy data (default none)."""
        return 0.0

    # -- hooks ------------------------------------------------------------------------
    def select_clients(self, round: int, m: int, rng: np.random.Generator) -> list[int] | None:
        """The m clients of ``round`` (may repeat), or None for the trainer's uniform sample."""
        return None

    def before_round(
        self, round: int, global_state: StateDict, rng: np.random.Generator, federation: Federation
    ) -> StateDict:
        """The model the round starts from (default ``global_state`` itself), after the algorithm's own
        preparation (building or pre-training models, fitting per-client scorers)."""
        return global_state

    def turns(self, round: int, clients: Sequence[int]) -> list[list[int]]:
        """Slots of the sampled clients grouped into turns: each turn's clients train from the previous
        turn's aggregate (default one turn of all slots: every client trains from w_t)."""
        return [list(range(len(clients)))]

    def dispatch(
        self,
        round: int,
        global_state: StateDict,
        clients: Sequence[int],
        rng: np.random.Generator,
    ) -> list[StateDict]:
        """Models sent to the sampled clients, in slot order. Default: the global model."""
        return [global_state for _ in clients]

    def local_term(self, round: int, client: int, sent: StateDict) -> LocalTerm | None:
        """An extra term of client ``client``'s local objective (default: none, plain local SGD)."""
        return None

    def local_step(self, round: int, client: int, sent: StateDict) -> LocalStep:
        """The rule of client ``client``'s minibatch steps in ``round`` (default: local SGD with
        ``--local-opt``'s perturbation, the same object for every client of a run, so that stacked
        training applies). An algorithm returns one object for all clients of a round whose steps
        are the same (``flatfl.parallel`` stacks only clients sharing one)."""
        return self._default_step

    def step_of_round(self, round: int, build: Callable[[], LocalStep]) -> LocalStep:
        """``build()``'s step, made once per round and shared by the round's clients (for ``local_step``
        overrides whose step depends on the algorithm's state, so stacked training applies)."""
        if self._round_step is None or self._round_step[0] != round:
            self._round_step = (round, build())
        return self._round_step[1]

    def aggregate(self, round: int, global_state: StateDict, updates: list[ClientUpdate]) -> StateDict:
        """New global model: sample-weighted mean (``weighted``) or plain mean of the returns."""
        weights = [u.num_samples if self.config.weighted else 1.0 for u in updates]
        return weighted_average([u.state for u in updates], weights)

    def after_aggregate(
        self,
        round: int,
        start: StateDict,
        aggregate: StateDict,
        updates: list[ClientUpdate],
        rng: np.random.Generator,
        federation: Federation,
    ) -> StateDict:
        """The new global model from the round's ``aggregate`` (default the aggregate itself): server-side
        work on the returned models, e.g. distillation; ``start`` is the model the round started from."""
        return aggregate

    def after_round(self, round: int, old_global: StateDict, new_global: StateDict) -> None:
        """Update the algorithm's state once the round's new global model is known."""

    def dispatch_info(self) -> dict[str, Any]:
        """JSON description of the last dispatch, saved with ``--save-clients``."""
        return {}

    def round_metrics(self) -> dict[str, Any]:
        """The algorithm's own diagnostics of the last round, added to its metrics line (default none)."""
        return {}

    def round_notes(self) -> list[str]:
        """Lines for the user about the last round (a warning its metrics alone would hide); default none."""
        return []

    # -- state (saved with every round) ---------------------------------------------------
    def state_tensors(self) -> StateDict:
        return {}

    def state_json(self) -> dict[str, Any]:
        return {}

    def load_state(self, tensors: StateDict, meta: dict[str, Any]) -> None:
        """Restore what ``state_tensors``/``state_json`` saved."""
