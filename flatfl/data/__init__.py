"""Datasets as in-memory tensors, and the registry the trainer and analysis look them up in.

A dataset is loaded whole into tensors (``x`` float, ``y`` int64) once, kept on the
training device, and indexed per client: no DataLoader workers, no copies per round.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from flatfl.config import DataConfig
from flatfl.errors import UserError


@dataclass
class TensorData:
    """A labelled split: inputs ``x`` (N, ...) and integer labels ``y`` (N,)."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def to(self, device: torch.device | str) -> TensorData:
        return TensorData(self.x.to(device), self.y.to(device))

    def subset(self, idx: torch.Tensor | list[int]) -> TensorData:
        idx = torch.as_tensor(idx, dtype=torch.long, device=self.y.device)
        return TensorData(self.x[idx], self.y[idx])


@dataclass
class Dataset:
    """Train and test splits plus what a model needs to know about the inputs."""

    name: str
    train: TensorData
    test: TensorData
    num_classes: int
    input_shape: tuple[int, ...]
    source: str
    natural_parts: list | None = None  # per-client train indices of datasets with natural clients
    client_names: list[str] | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "num_classes": self.num_classes,
            "input_shape": list(self.input_shape),
            "n_train": len(self.train),
            "n_test": len(self.test),
            "source": self.source,
        }


Loader = Callable[..., Dataset]  # loader(cfg, download=False)


@dataclass(frozen=True)
class DatasetEntry:
    """A loader plus cheap metadata (input shape, classes) known without loading the data."""

    load: Loader
    info: Callable[[DataConfig], dict[str, Any]]
    description: str


DATASETS: dict[str, DatasetEntry] = {}


def register_dataset(
    name: str, info: Callable[[DataConfig], dict[str, Any]], description: str
) -> Callable[[Loader], Loader]:
    def deco(fn: Loader) -> Loader:
        DATASETS[name] = DatasetEntry(fn, info, description)
        return fn

    return deco


def dataset_info(cfg: DataConfig) -> dict[str, Any]:
    """``{"name", "num_classes", "input_shape"}`` for ``cfg`` without loading any data."""
    _check_name(cfg.dataset)
    return {"name": cfg.dataset, **DATASETS[cfg.dataset].info(cfg)}


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise UserError(f"--dataset: unknown dataset {name!r}; choose from {', '.join(sorted(DATASETS))}")


def load_dataset(cfg: DataConfig, download: bool = False) -> Dataset:
    """Load ``cfg.dataset`` through the registry; unknown names list the choices.

    ``download``: on-disk datasets missing under ``cfg.data_root`` may be fetched (the only
    network access flatfl makes); a runtime choice, not part of the run's config.
    """
    _check_name(cfg.dataset)
    return DATASETS[cfg.dataset].load(cfg, download=download)


from flatfl.data import cifar as _cifar  # noqa: E402,F401  (registers "cifar10", "cifar100")
from flatfl.data import digits as _digits  # noqa: E402,F401  (registers "digits")
from flatfl.data import shakespeare as _shakespeare  # noqa: E402,F401  (registers "shakespeare")
