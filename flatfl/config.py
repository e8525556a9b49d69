"""Frozen run configuration, filled from flags (``RunConfig.from_flags``) and saved with every checkpoint.

A run is described entirely by a :class:`RunConfig`: data and partition, model, local
optimiser, the algorithm and its own frozen config, rounds, client fraction and seed.
Nothing reads a global ``args``; the trainer, algorithms and analysis receive these
objects. ``RunConfig.to_dict()`` is what ``run.json`` and every checkpoint's metadata hold,
and ``RunConfig.from_dict()`` rebuilds it for ``--resume`` and for the analysis side.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from flatfl.errors import UserError


@dataclass(frozen=True)
class DataConfig:
    """Which data, how it is split into train/test, and how train is split over clients.

    ``partition="dirichlet"`` draws label proportions per class from Dirichlet(alpha)
    (NIID-Bench style) and redraws until every client holds at least ``min_size`` samples.
    """

    dataset: str = "digits"
    test_frac: float = 0.2
    split_seed: int = 0
    partition: str = "dirichlet"
    dirichlet_alpha: float = 0.1
    min_size: int = 10
    num_clients: int = 20
    shards_per_client: int = 2  # partition="shards": label-sorted shards per client
    data_root: str = "data"  # where on-disk datasets live (not part of the run's identity)
    augment: bool = False  # CIFAR: random crop (pad 4) + horizontal flip per local minibatch
    cifar100_labels: str = "coarse"  # coarse (20 superclasses, as the FedMut code) | fine (100)
    # partition="file": a client split read from a JSON file (flatfl's partition.json or the FedMut
    # authors' format, flatfl.partition_file); the path is not part of the run's identity, its hash is
    partition_file: str | None = None
    partition_sha256: str | None = None

    OMIT_AT_DEFAULT: ClassVar[tuple[str, ...]] = ("partition_file", "partition_sha256")


@dataclass(frozen=True)
class LocalConfig:
    """Local SGD on each client, the same for every algorithm: lr 0.01, momentum 0.5, B=50, E=5.

    These are the FedMut reference code's parser defaults (github HMHelloWorld/FedMut,
    ``utils/options.py``). The paper states momentum 0.9, with which FedMut diverged on real
    CIFAR-10 (README "Paper vs reference code"); ``--preset paper`` or ``--momentum 0.9`` gives it.
    A fresh optimiser is made for every client in every round (no momentum carried over).

    ``batch_size="full"``: one minibatch of all the client's data per epoch (full-batch gradient
    descent). ``opt`` perturbs each step's gradient point (``flatfl.algorithms.step``): "sgd" none,
    "sam" (Foret et al. 2021) and "asam" (Kwon et al. 2021) with radius ``rho`` (ASAM also ``eta``);
    "lesam" is FedLESAM's server-estimated perturbation (set by ``--algo fedlesam``). ``rho``/``eta``
    are None where they do not apply; all three are left out of the dict at their defaults, so an
    SGD run's config (and identity) is what it was before they existed.
    """

    lr: float = 0.01
    momentum: float = 0.5
    batch_size: int | str = 50
    epochs: int = 5
    weight_decay: float = 0.0
    opt: str = "sgd"
    rho: float | None = None
    eta: float | None = None

    OMIT_AT_DEFAULT: ClassVar[tuple[str, ...]] = ("opt", "rho", "eta")


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a run's checkpoints (device excluded: it is a runtime choice)."""

    algo: str
    algo_config: Any
    model: str
    model_kwargs: dict[str, Any]
    data: DataConfig = field(default_factory=DataConfig)
    local: LocalConfig = field(default_factory=LocalConfig)
    rounds: int = 50
    frac: float = 0.25
    seed: int = 0
    save_clients: int = 0  # 0: never; K: rounds t with t % K in (0, 1) (K = 1: every round)
    eval_batch_size: int = 500
    preset: str | None = None  # the --preset the values were filled from (flatfl.presets); a label

    OMIT_AT_DEFAULT: ClassVar[tuple[str, ...]] = ("preset",)

    def saves_clients(self, t: int) -> bool:
        """Whether round t's sent/returned client models are saved.

        With K > 1 both rounds t = nK (the models that produced w_nK) and nK + 1 (the models, e.g.
        FedMut's mutants, sent from w_nK) are kept, so every saved "decade" has both sides.
        """
        return saves_clients(self.save_clients, t)

    @property
    def clients_per_round(self) -> int:
        """m = max(floor(frac * K), 1), as in the FedMut reference code."""
        return max(int(self.frac * self.data.num_clients), 1)

    def to_dict(self) -> dict[str, Any]:
        d = compact_dict(self)
        d["algo_config"] = compact_dict(self.algo_config)
        d["data"] = compact_dict(self.data)
        d["local"] = compact_dict(self.local)
        return d

    @classmethod
    def from_flags(cls, flags: Mapping[str, Any]) -> RunConfig:
        """The config of ``flatfl train``'s flags, given as a mapping of flag names without the dashes
        (``mut-acc-rate`` or ``mut_acc_rate``) to text or typed values, defaults for the rest; the command
        line and the Flower app both build their config here (:mod:`flatfl.run_flags`). Raises a one-line
        :class:`UserError` naming the flag for a bad value, combination or unknown name."""
        from flatfl.run_flags import config_from_flags  # it builds on this module

        return config_from_flags(flags)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        from flatfl.algorithms import get_algorithm

        try:
            algo_cls = get_algorithm(d["algo"])
            return cls(
                algo=d["algo"],
                algo_config=_build(algo_cls.config_cls, d["algo_config"]),
                model=d["model"],
                model_kwargs=dict(d["model_kwargs"]),
                data=_build(DataConfig, d["data"]),
                local=_build(LocalConfig, d["local"]),
                rounds=int(d["rounds"]),
                frac=float(d["frac"]),
                seed=int(d["seed"]),
                save_clients=int(d["save_clients"]),
                eval_batch_size=int(d["eval_batch_size"]),
                preset=d.get("preset"),
            )
        except (KeyError, TypeError) as exc:
            raise UserError(f"run config is incomplete or from another version: {exc}") from exc

    def identity(self) -> str:
        """SHA-256 of the canonical config without ``rounds``.

        Extending a run with ``--resume --rounds N`` keeps its identity, and so does moving the
        data (``data_root``); any other change makes a different experiment. Each checkpoint
        records this hash so a file that belongs to another run is detected.
        """
        return identity_of(self.to_dict())


def saves_clients(k: int, t: int) -> bool:
    """``--save-clients k``: whether round t's client models are saved (see :meth:`RunConfig.saves_clients`)."""
    return k > 0 and (k == 1 or t % k in (0, 1))


def identity_of(config: dict[str, Any]) -> str:
    """:meth:`RunConfig.identity` of a config dict (also of a Flower run's, whose ``algo`` may be a
    strategy flatfl does not know)."""
    d = json.loads(canonical_json(config))
    d.pop("rounds")
    d.pop("preset", None)  # a label: the resolved values are what identify the run
    d["data"].pop("data_root", None)  # the same data moved elsewhere is the same experiment
    d["data"].pop("partition_file", None)  # so is a moved partition file (its SHA-256 stays)
    return hashlib.sha256(canonical_json(d).encode()).hexdigest()


def compact_dict(obj: Any) -> dict[str, Any]:
    """``dataclasses.asdict`` without the fields named in ``OMIT_AT_DEFAULT`` that hold their default.

    Fields added after runs were stored are listed there, so a config that does not use them has
    the same dict -- and the same identity hash and checkpoint bytes -- as before they existed.
    """
    d = dataclasses.asdict(obj)
    for f in dataclasses.fields(obj):
        if f.name in getattr(obj, "OMIT_AT_DEFAULT", ()) and d[f.name] == f.default:
            d.pop(f.name)
    return d


def _build(cls: type, d: dict[str, Any]) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise TypeError(f"unknown {cls.__name__} field(s) {sorted(unknown)}")
    return cls(**d)


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: equal objects give equal bytes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))
