"""What a :class:`flatfl.flower.recorder.RunRecorder` records: the model, its data and their names.

* :class:`RegistryModel` -- a model and data set of flatfl's registry, named by a ``flatfl train``
  config (``--model``, ``--dataset``, ``--clients``, ...): run.json is ``flatfl train``'s.
* :class:`UserModel` -- a Flower user's own model and data, named as ``flatfl landscape --model``
  and ``--data`` name them: ``MODULE:FACTORY`` for the model (a function returning an ``nn.Module``)
  and, for the data, ``MODULE:FACTORY`` (returning a DataLoader, a Dataset or ``(x, y)`` tensors),
  ``NAME:ROOT[:split]`` (torchvision) or ``imagefolder:DIR``. run.json keeps the names, so
  ``flatfl landscape --ckpt`` and ``flatfl report`` rebuild the model and read ``--data train`` /
  ``--data test`` from them (run from the folder the names import from, as Flower apps do).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from flatfl.config import RunConfig
from flatfl.statedict import StateDict, clone

EVAL_BATCH = 500


class RegistryModel:
    """A registry model on a registry data set, partitioned and evaluated as ``flatfl train`` does."""

    def __init__(self, cfg: RunConfig) -> None:
        from flatfl.data import load_dataset
        from flatfl.sampling import make_partition
        from flatfl.simulation import Simulation

        self.cfg = cfg
        data = load_dataset(cfg.data)
        self.parts = make_partition(cfg, data)
        self.sim = Simulation(cfg, torch.device("cpu"), data, self.parts)

    @property
    def save_clients(self) -> int:
        """``--save-clients``: 0 keeps no client models, 1 every round's, K the rounds t with t mod K in {0, 1}."""
        return self.cfg.save_clients

    def config(self) -> dict[str, Any]:
        """run.json's ``config``: the ``flatfl train`` config of the run, as a dict."""
        return self.cfg.to_dict()

    def run_info(self) -> dict[str, Any]:
        """run.json's model, dataset and partition summary, as ``flatfl train`` writes them."""
        from flatfl.simulation import run_info

        return run_info(self.cfg, self.sim, self.parts, torch.device("cpu"))

    def partition(self) -> list[list[int]] | None:
        """Client -> training-set indices (partition.json), the split ``flatfl train`` draws from the config."""
        return [p.tolist() for p in self.parts]

    def split(self) -> dict[str, Any] | None:
        """partition.json's ``"split"``: the training set the indices refer to, as ``flatfl train`` records it."""
        from flatfl.partition_file import split_record

        return split_record(self.cfg.data, self.sim.data.train.y.numpy())

    def initial_state(self) -> StateDict:
        """Round 0's global model, seeded as ``flatfl train`` seeds it."""
        return self.sim.initial_state()

    def evaluate(self, state: StateDict) -> tuple[float | None, float | None]:
        """(test loss, test accuracy) of a global model on the data set's test split."""
        return self.sim.evaluate(state)


@dataclass(frozen=True)
class UserModel:
    """A user's model (``model``: ``MODULE:FACTORY`` called with ``model_kwargs``) and the names of its
    data: ``test_data`` (the global model's test loss and accuracy every round, and ``--data test``) and
    ``train_data`` (``--data train``), each optional. ``seed`` seeds the factory's initial weights;
    ``num_clients`` is recorded; ``save_clients`` as ``flatfl train --save-clients N``."""

    model: str
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    test_data: str | None = None
    train_data: str | None = None
    num_clients: int = 0
    seed: int = 0
    save_clients: int = 0

    def build(self) -> nn.Module:
        """A fresh model: the factory ``model`` called with ``model_kwargs`` (one-line error if it fails)."""
        from flatfl.runs.sources import call_factory

        return call_factory(self.model, self.model_kwargs, "UserModel model")

    def config(self) -> dict[str, Any]:
        """run.json's ``config``: the model and data names, the seed and ``save_clients`` (no flatfl data set)."""
        data = {"dataset": None, "train": self.train_data, "test": self.test_data, "num_clients": self.num_clients}
        return {
            "model": self.model,
            "model_kwargs": dict(self.model_kwargs),
            "data": data | {"data_root": None},
            "seed": self.seed,
            "save_clients": self.save_clients,
        }

    def run_info(self) -> dict[str, Any]:
        """run.json's ``model`` (name, kwargs, parameter count and names, state keys); ``dataset`` is None."""
        net = self.build()
        return {
            "model": {
                "name": self.model,
                "kwargs": dict(self.model_kwargs),
                "num_parameters": sum(p.numel() for p in net.parameters()),
                "parameters": [n for n, _ in net.named_parameters()],
                "state_keys": list(net.state_dict()),
            },
            "dataset": None,
        }

    def partition(self) -> list[list[int]] | None:
        """None: the user's ClientApp splits its data, so there is no partition.json."""
        return None  # the user's ClientApp splits its data; flatfl never sees the split

    def split(self) -> dict[str, Any] | None:
        """None: no partition.json (see :meth:`partition`)."""
        return None

    def initial_state(self) -> StateDict:
        """Round 0's model: the factory's weights with torch's generator seeded by ``seed`` (the caller's
        random state is restored)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return clone(self.build().state_dict())

    def evaluate(self, state: StateDict) -> tuple[float | None, float | None]:
        """(test loss, test accuracy) of a global model on ``test_data``; (None, None) without test data."""
        if self.test_data is None:
            return None, None
        from flatfl.local import evaluate

        x, y = _test_pair(self.test_data)
        self._eval_net.load_state_dict(state)
        return evaluate(self._eval_net, x, y, EVAL_BATCH)

    @functools.cached_property
    def _eval_net(self) -> nn.Module:
        """One model built for every round's evaluation (its weights are loaded each time)."""
        return self.build()


@functools.lru_cache(maxsize=2)
def _test_pair(spec: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The (x, y) tensors ``spec`` names, read once per process."""
    from flatfl.runs.sources import data_pair

    return data_pair(spec, EVAL_BATCH, "test_data")
