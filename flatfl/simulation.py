"""The simulated clients: data on the device, the working model, the algorithm, and local training
of one client (``Simulation``, the trainer's ``Federation``); ``run_info``: run.json's description."""

from __future__ import annotations

import platform
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import safetensors
import torch

import flatfl
from flatfl import distributed, seeding
from flatfl.algorithms import get_algorithm
from flatfl.algorithms.base import ClientJob, ClientUpdate, FederatedAlgorithm, LocalTerm, SequentialTraining
from flatfl.algorithms.step import LocalStep
from flatfl.config import RunConfig
from flatfl.data import Dataset
from flatfl.errors import DivergenceError
from flatfl.local import evaluate, local_sgd
from flatfl.models import build_model, check_fits, num_parameters
from flatfl.partition import label_counts
from flatfl.sampling import proxy_dataset_inputs, server_holdout
from flatfl.statedict import StateDict, clone


class Simulation(SequentialTraining):
    """Holds the data, the working model and the algorithm; implements ``Federation``."""

    def __init__(
        self,
        cfg: RunConfig,
        device: torch.device,
        data: Dataset,
        parts: list[np.ndarray],
        dist: distributed.DistContext | None = None,
        parallel_clients: int = 1,
    ) -> None:
        self.cfg = cfg
        self.dist = dist
        self.parallel_clients = parallel_clients
        self.device = device
        self.data = data
        self.train_data = data.train.to(device)
        self.test_data = data.test.to(device)
        self.client_idx = [torch.as_tensor(p, dtype=torch.long, device=device) for p in parts]
        self.client_x = [self.train_data.x[i] for i in self.client_idx]
        self.client_y = [self.train_data.y[i] for i in self.client_idx]
        torch.manual_seed(seeding.derive_seed(cfg.seed, seeding.INIT))
        model = build_model(cfg.model, **cfg.model_kwargs)
        check_fits(model, cfg.model, cfg.data.dataset, data.input_shape, dtype=data.train.x.dtype)
        self.model = model.to(device)
        self.algorithm: FederatedAlgorithm = get_algorithm(cfg.algo)(
            cfg.algo_config,
            param_names=[n for n, _ in model.named_parameters()],
            num_clients=cfg.data.num_clients,
            client_sizes=[len(p) for p in parts],
            client_label_counts=label_counts(parts, data.train.y.numpy(), data.num_classes),
            local=cfg.local,
        )
        self.on_client_done: Callable[[int, int], None] | None = None
        self._server_x: torch.Tensor | None = None
        self.augment = None
        if cfg.data.augment:
            from flatfl.data.cifar import augment_batch

            self.augment = augment_batch

    def initial_state(self) -> StateDict:
        return clone(self.model.state_dict())

    # Federation ------------------------------------------------------------------------
    def train_clients(self, round: int, jobs: list[ClientJob]) -> list[ClientUpdate]:
        """Every job's update in job order: this process alone, or this rank's share (slots r, r+W,
        ...) gathered from every rank (``flatfl.distributed``)."""
        if self.dist is None:
            return self._train_here(round, jobs)
        ctx, n = self.dist, len(jobs)
        idx = ctx.my_slots(n)
        mine: list[ClientUpdate] = []
        error = None
        try:
            mine = self._train_here(round, [jobs[j] for j in idx])
        except DivergenceError as exc:  # every rank must learn of it, or the others wait forever
            # the failing job: this rank's first job of that client (a client met twice in a round
            # trains identically, so it fails at its first slot)
            at = next((j for j in idx if jobs[j].client == exc.client), idx[0] if idx else n)
            error = (at, str(exc), exc.round, exc.client)
        metas = distributed.gather_objects(
            ctx,
            (
                error,
                [(u.client, u.num_samples, u.train_loss, u.num_steps, u.lr, u.momentum, u.sent_loss) for u in mine],
            ),
        )
        errors = sorted(e for e, _ in metas if e is not None)
        if errors:  # the first failing slot, as a single process would have met it
            _, msg, r, c = errors[0]
            raise DivergenceError(msg, r, c)
        states = distributed.gather_states(ctx, n, {j: u.state for j, u in zip(idx, mine)}, self.model.state_dict())
        fields = distributed.merge_in_job_order(ctx, n, [m for _, m in metas])
        return [ClientUpdate(f[0], f[1], st, *f[2:]) for f, st in zip(fields, states)]

    def _train_here(self, round: int, jobs: list[ClientJob]) -> list[ClientUpdate]:
        jobs = [j if j.step is not None else replace(j, step=self.algorithm.local_step(round, j.client, j.state))
                for j in jobs]  # fmt: skip
        if self.parallel_clients > 1:
            from flatfl.parallel import parallel_eligible, train_parallel

            if parallel_eligible(self, jobs):
                out: list[ClientUpdate] = []
                for i in range(0, len(jobs), self.parallel_clients):
                    out += train_parallel(self, round, jobs[i : i + self.parallel_clients])
                return out
        return super().train_clients(round, jobs)  # one client after another

    def train_client(
        self,
        round: int,
        slot: int,
        client: int,
        state: StateDict,
        local_term: LocalTerm | None = None,
        step: LocalStep | None = None,
    ) -> ClientUpdate:
        """Client ``client``'s local training of ``round`` from ``state`` (``step``: the rule of its
        minibatch steps, default the algorithm's ``local_step``)."""
        step = step if step is not None else self.algorithm.local_step(round, client, state)
        self.model.load_state_dict(state)
        seed = seeding.derive_seed(self.cfg.seed, seeding.CLIENT, round, client)
        # dropout and other in-model randomness; torch.manual_seed would also queue a CUDA
        # seeding call (with a captured stack trace) on every client, ~1 ms each on CPU
        torch.random.default_generator.manual_seed(seed)
        if self.device.type == "cuda":
            torch.cuda.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        first: list[torch.Tensor] = []
        loss_t, steps = local_sgd(
            self.model,
            self.client_x[client],
            self.client_y[client],
            self.cfg.local,
            gen,
            local_term,
            self.augment,
            first,
            step,
        )
        loss = float(loss_t)
        if not np.isfinite(loss):
            raise DivergenceError(
                f"round {round}, client {client}: local training produced a non-finite loss ({loss})", round, client
            )
        # Non-finite weights with a finite loss are caught after aggregation (any NaN/inf
        # reaches the mean), which then names the client; one check per round, not per client.
        new_state = clone(self.model.state_dict())
        if self.on_client_done is not None:
            self.on_client_done(slot, client)
        sent_loss = float(first[0]) if first else float("nan")
        return ClientUpdate(
            client, len(self.client_y[client]), new_state, loss, steps, step.lr, step.momentum, sent_loss
        )

    def server_data(self) -> torch.Tensor:
        """The server's unlabelled proxy inputs, on the device; built once per run: the held-out
        slice of the training set, or a seeded share of another dataset (``proxy_data``)."""
        if self._server_x is None:
            name = getattr(self.cfg.algo_config, "proxy_data", "holdout")
            if name == "holdout":
                idx = server_holdout(self.cfg, len(self.train_data))
                self._server_x = self.train_data.x[torch.as_tensor(idx, dtype=torch.long, device=self.device)]
            else:
                self._server_x = proxy_dataset_inputs(self.cfg, self.data.input_shape).to(self.device)
        return self._server_x

    def client_inputs(self, client: int) -> torch.Tensor:
        return self.client_x[client]

    def new_model(self, state: StateDict) -> torch.nn.Module:
        """A model of the run's architecture with ``state`` loaded, on the device (for server-side work)."""
        m = build_model(self.cfg.model, **self.cfg.model_kwargs).to(self.device)
        m.load_state_dict(state)
        return m

    def evaluate(self, state: StateDict) -> tuple[float, float]:
        self.model.load_state_dict(state)
        return evaluate(self.model, self.test_data.x, self.test_data.y, self.cfg.eval_batch_size)


def run_info(cfg: RunConfig, sim: Simulation, parts: list[np.ndarray], device: torch.device) -> dict[str, Any]:
    labels = sim.data.train.y.numpy()
    return {
        "config": cfg.to_dict(),
        "identity": cfg.identity(),
        "clients_per_round": cfg.clients_per_round,
        "versions": {
            "flatfl": flatfl.__version__,
            "torch": torch.__version__.split("+")[0],
            "numpy": np.__version__,
            "safetensors": safetensors.__version__,
            "python": platform.python_version(),
        },
        "model": {
            "name": cfg.model,
            "kwargs": cfg.model_kwargs,
            "num_parameters": num_parameters(sim.model),
            "parameters": [n for n, _ in sim.model.named_parameters()],
            "state_keys": list(sim.model.state_dict().keys()),
        },
        "dataset": sim.data.summary(),
        "partition": {
            "scheme": cfg.data.partition,
            "dirichlet_alpha": cfg.data.dirichlet_alpha if cfg.data.partition == "dirichlet" else None,
            "min_size": cfg.data.min_size,
            "num_clients": cfg.data.num_clients,
            **(
                {"file": cfg.data.partition_file, "sha256": cfg.data.partition_sha256}
                if cfg.data.partition_file
                else {}
            ),
            "sizes": [len(p) for p in parts],
            "label_counts": label_counts(parts, labels, sim.data.num_classes).tolist(),
        },
        "seeding": "numpy SeedSequence([seed, purpose, round, client]); see flatfl/seeding.py",
    } | (_preset_info(cfg) if cfg.preset else {})


def _preset_info(cfg: RunConfig) -> dict[str, Any]:
    """run.json's ``preset``: its name and the values it sets for this run (flags given override them;
    ``config`` holds every resolved value)."""
    from flatfl.presets import preset_values

    return {"preset": {"name": cfg.preset, "values": preset_values(cfg.preset, cfg.algo, cfg.model)}}
