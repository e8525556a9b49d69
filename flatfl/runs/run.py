"""Open a run directory and rebuild its models and data from ``run.json``.

>>> run = Run.open("checkpoints/digits-fedmut-s0")
>>> model = run.model(round=50)              # nn.Module with the round-50 global weights
>>> data = run.dataset()                     # the same train/test split as in training
>>> sent, returned, info = run.clients(50)   # with --save-clients
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from flatfl import checkpoint as ckpt
from flatfl.config import DataConfig, RunConfig
from flatfl.data import Dataset, load_dataset
from flatfl.errors import UserError
from flatfl.models import build_model
from flatfl.rundir import settle
from flatfl.runs.datacache import cached
from flatfl.runs.sources import call_factory, data_pair
from flatfl.sampling import check_drawn
from flatfl.statedict import StateDict, first_nonfinite
from flatfl.validate import check_dtypes, parameter_dtypes


@dataclass
class Run:
    """A run directory: its ``run.json`` and accessors for every saved round."""

    path: Path
    info: dict[str, Any]

    @classmethod
    def open(cls, path: str | Path) -> Run:
        """Opens the run directory ``path``: reads and checks its ``run.json`` (a one-line error if it is missing
        or damaged). Nothing else is read until asked for."""
        path = Path(path)
        settle(path)  # an interrupted --overwrite finished or undone first
        info = ckpt.read_run_json(path)
        ckpt.check_partition_file(path, info)
        return cls(path, info)

    @classmethod
    def of_checkpoint(cls, file: str | Path) -> tuple[Run, int]:
        """The run a ``round_NNNN.safetensors`` belongs to (its directory) and the round."""
        file = Path(file)
        settle(file.parent)
        if not (file.parent / ckpt.RUN_JSON).is_file():
            raise UserError(f"{file}: no run.json beside it in {file.parent}; it cannot be rebuilt")
        run = cls.open(file.parent)
        _, r = ckpt.load_round(file, run.identity)
        named = file.stem.removeprefix("round_")
        if file.stem.startswith("round_") and named.isdigit() and int(named) != r:
            raise UserError(f"{file}: its metadata say round {r}, its name round {int(named)}; rename or restore it")
        return run, r

    @property
    def identity(self) -> str:
        """SHA-256 of the run's canonical config without ``rounds``; every checkpoint carries it, so a file
        from another run is refused."""
        return self.info["identity"]

    @property
    def config(self) -> dict[str, Any]:
        """The run's whole configuration as run.json records it (algo, algo_config, model, data, local,
        rounds, frac, seed, ...)."""
        return self.info["config"]

    def rounds(self) -> list[int]:
        """The saved rounds, ascending (round 0 is the initial model)."""
        return ckpt.list_rounds(self.path)

    def global_state(self, round: int) -> StateDict:
        """The global model's ``state_dict`` after ``round`` (tensors on the CPU, in the model's key order);
        refused in one line when the file belongs to another run or holds NaN or Inf."""
        path = ckpt.round_path(self.path, round)
        state, _ = ckpt.load_round(path, self.identity, round)
        state = check_dtypes(path, state, parameter_dtypes(self.info))
        bad = first_nonfinite(state)
        if bad is not None:
            raise UserError(f"{path}: tensor {bad} holds NaN or Inf; a diverged model has no landscape to measure")
        order = self.info["model"]["state_keys"]
        return {k: state[k] for k in order} if set(order) == set(state) else state

    @property
    def user_data(self) -> bool:
        """A recorded run of a user's model and data (flatfl.flower's UserModel): run.json names them
        (``model``: MODULE:FACTORY; ``config.data.train``/``test``: data names), no flatfl data set."""
        return self.config["data"].get("dataset") is None

    def build(self) -> nn.Module:
        """A fresh model of the run's architecture (weights not loaded): a registry model, or a user's
        ``MODULE:FACTORY`` imported from the current folder or the installed packages."""
        m = self.info["model"]
        if ":" in m["name"]:
            return call_factory(m["name"], m["kwargs"], f"{self.path / ckpt.RUN_JSON}: model")
        return build_model(m["name"], **m["kwargs"])

    def model(self, round: int, device: str | torch.device = "cpu") -> nn.Module:
        """An ``nn.Module`` of the run's architecture with the global weights of ``round``, on ``device``."""
        net = self.build()
        path = ckpt.round_path(self.path, round)
        state = check_dtypes(path, self.global_state(round), {k: v.dtype for k, v in net.state_dict().items()})
        try:
            net.load_state_dict(state)
        except RuntimeError as exc:
            raise UserError(
                f"{ckpt.round_path(self.path, round)}: tensors do not fit model {self.info['model']['name']} "
                f"({str(exc).splitlines()[0]})"
            ) from exc
        return net.to(device)

    def dataset(self) -> Dataset:
        """The run's data set, the same train/test split it trained on (refused for a recorded run of a user's
        own data, which flatfl cannot load)."""
        if self.user_data:
            raise UserError(
                f"{self.path}: a recorded run of a user's model on its own data has no flatfl data set"
                " (nor its clients' data); name the data with --data train, test or MODULE:FACTORY"
            )
        cfg = DataConfig(**self.config["data"])
        # once per data identity inside datacache.shared_data() (flatfl report: not once per checkpoint)
        key = ("dataset", cfg, str(Path(cfg.data_root).expanduser().resolve()))
        data = cached(key, lambda: load_dataset(cfg))
        if (self.path / ckpt.PARTITION_JSON).is_file():  # the split it drew, before any of its data is analysed
            key = ("partition drawn", str(self.path.resolve()), self.identity)
            cached(key, lambda: self.partition(data), name="partition check")
        return data

    def user_data_pair(self, spec: str, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) of ``--data`` for a user-data run: ``train``/``test`` as run.json names them, else a data name."""
        if spec in ("train", "test"):
            named = self.config["data"].get(spec)
            if not named:
                raise UserError(
                    f"--data {spec}: {self.path / ckpt.RUN_JSON} names no {spec} data; give --data MODULE:FACTORY"
                )
            where = f"--data {spec} ({self.path / ckpt.RUN_JSON})"
            return cached(("user data", named, batch_size), lambda: data_pair(named, batch_size, where))
        if spec.startswith("client:"):
            raise UserError(f"--data {spec}: {self.path} holds no partition (the user's ClientApp split the data)")
        return cached(("user data", spec, batch_size), lambda: data_pair(spec, batch_size))

    def partition(self, data: Dataset | None = None) -> list[np.ndarray]:
        """Client -> indices, refused when partition.json differs from run.json's record of it; given the run's
        ``data`` (:meth:`dataset`), also when it is not the split the run drew (:func:`flatfl.sampling.check_drawn`:
        an index moved between clients with the sizes and digest edited to match)."""
        parts = ckpt.read_partition(self.path, self.info)
        if data is not None:
            try:
                cfg: RunConfig | None = RunConfig.from_dict(self.config)
            except UserError:  # a Flower strategy's config (not flatfl's): its label counts are checked, no redraw
                cfg = None
            check_drawn(self.path / ckpt.PARTITION_JSON, self.info, cfg, data, parts)
        return [np.asarray(p, dtype=np.int64) for p in parts]

    def clients(self, round: int) -> tuple[list[StateDict], list[StateDict], dict[str, Any]]:
        """(sent, returned, info) of ``round`` for a run trained with ``--save-clients``: the models sent to the
        sampled clients (FedMut's mutants; FedAvg's copies of the global model), the models they returned, and
        the metadata (``clients``, ``num_samples``, ...)."""
        path = ckpt.clients_path(self.path, round)
        if not path.is_file():
            raise UserError(f"{path}: missing; train with --save-clients to keep client models")
        sent, returned, info = ckpt.load_clients(path, self.identity, round)
        want = parameter_dtypes(self.info)
        return [check_dtypes(path, s, want) for s in sent], [check_dtypes(path, r, want) for r in returned], info

    def metrics(self) -> list[dict[str, Any]]:
        """``metrics.jsonl`` as a list of dicts, one per round (test loss and accuracy, mean client training
        loss, update and mutation norms, times)."""
        return ckpt.read_metrics(self.path)
