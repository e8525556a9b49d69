"""Who holds which data and who trains when: the seeded client partition, the server's held-out
(or foreign) proxy data, and each round's client sample.

Every draw comes from a generator derived from the run seed and a purpose (``flatfl.seeding``):
the partition from (seed, PARTITION), the server's slice from (seed, PARTITION, 1), a foreign
proxy share from (seed, PARTITION, 2), round t's clients from (seed, SAMPLE, t).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

import flatfl
from flatfl import seeding
from flatfl.algorithms import get_algorithm
from flatfl.config import DataConfig, RunConfig
from flatfl.data import Dataset, load_dataset
from flatfl.errors import UserError
from flatfl.partition import partition_dirichlet, partition_iid, partition_shards
from flatfl.validate import EDITED


def server_holdout(cfg: RunConfig, n: int) -> np.ndarray:
    """Training-set indices the algorithm keeps on the server (FedDF's unlabelled proxy data).

    A seeded slice of ``frac * n`` samples (``algorithm.server_fraction``), never given to a
    client; empty for algorithms that need none, so their partitions are unaffected.
    """
    frac = get_algorithm(cfg.algo).server_fraction(cfg.algo_config)
    if frac <= 0:
        return np.zeros(0, dtype=np.int64)
    rng = seeding.derive_rng(cfg.seed, seeding.PARTITION, 1)
    return np.sort(rng.permutation(n)[: int(frac * n)]).astype(np.int64)


def proxy_dataset_inputs(cfg: RunConfig, input_shape: tuple[int, ...]) -> torch.Tensor:
    """A seeded ``proxy_frac`` share of the training inputs of the dataset named by ``proxy_data``
    (FedDF/FedAUX's unlabelled proxy data from another source), checked against the run's input."""
    ac = cfg.algo_config
    if ac.proxy_data == cfg.data.dataset:
        raise UserError(
            f"--proxy-data: {ac.proxy_data} is the training set itself; "
            "use holdout to keep a slice of it off the clients"
        )
    other = load_dataset(DataConfig(dataset=ac.proxy_data, data_root=cfg.data.data_root))
    if tuple(other.input_shape) != tuple(input_shape) or other.train.x.dtype != torch.float32:
        raise UserError(
            f"--proxy-data: {ac.proxy_data} inputs {tuple(other.input_shape)} do not fit the model's "
            f"{tuple(input_shape)}; choose a dataset shaped like --dataset {cfg.data.dataset} or holdout"
        )
    n = len(other.train)
    rng = seeding.derive_rng(cfg.seed, seeding.PARTITION, 2)
    idx = np.sort(rng.permutation(n)[: max(2, int(ac.proxy_frac * n))])
    return other.train.x[torch.as_tensor(idx, dtype=torch.long)]


def make_partition(cfg: RunConfig, data: Dataset) -> list[np.ndarray]:
    rng = seeding.derive_rng(cfg.seed, seeding.PARTITION)
    d = cfg.data
    n = len(data.train)
    held = server_holdout(cfg, n)
    rest = np.setdiff1d(np.arange(n), held) if len(held) else np.arange(n)
    labels = data.train.y.numpy()[rest]
    if d.partition == "iid":
        return [rest[p] for p in partition_iid(len(rest), d.num_clients, rng)]
    if d.partition == "dirichlet":
        return [rest[p] for p in partition_dirichlet(labels, d.num_clients, d.dirichlet_alpha, d.min_size, rng)]
    if d.partition == "shards":
        return [rest[p] for p in partition_shards(labels, d.num_clients, d.shards_per_client, rng)]
    if d.partition == "file":
        from flatfl.partition_file import load_for_run

        labels = data.train.y.numpy()
        parts = load_for_run(
            str(d.partition_file), d.partition_sha256, dataset=d.dataset, num_train=n, data=d, labels=labels
        )
        return [np.setdiff1d(p, held) if len(held) else p for p in parts]
    if d.partition == "natural":
        parts = data.natural_parts
        if parts is None:
            raise UserError(f"--partition natural: {d.dataset} has no natural clients (shakespeare has: its roles)")
        return [np.setdiff1d(np.asarray(p, dtype=np.int64), held) for p in parts]
    raise UserError(f"--partition: unknown scheme {d.partition!r}; choose from iid, dirichlet, shards, natural")


def _drawable(cfg: RunConfig) -> bool:
    """The split can be drawn again from the config alone: a seeded scheme, natural clients, or a
    --partition-file still present with the SHA-256 the run recorded."""
    d = cfg.data
    if d.partition != "file":
        return True
    from flatfl.digest import sha256_hex

    path = Path(str(d.partition_file or ""))
    try:
        return bool(d.partition_file) and path.is_file() and sha256_hex(path.read_bytes()) == d.partition_sha256
    except OSError:
        return False


def check_drawn(
    path: Path, info: dict[str, Any], cfg: RunConfig | None, data: Dataset, clients: Sequence[Sequence[int]]
) -> None:
    """``clients`` (read from ``path``, the partition.json of the run whose run.json is ``info``) is the split the
    run drew. An index moved from one client to another, the sizes and digest in run.json edited to match,
    passes every structural check (:func:`flatfl.validate.check_partition`); two checks here need the data:

    * each client's label histogram equals run.json's ``partition.label_counts``;
    * the partition is a function of (scheme, seed, clients, Dirichlet alpha / shards, data set), so it is
      drawn again (:func:`make_partition`; 0.03-0.1 s for CIFAR-10's 50,000 labels over 100 clients, 0.2 s at
      most for CIFAR-100's, on one core) and compared client by client, index by index (their order too:
      local training batches them in it) -- where run.json's numpy and flatfl versions are those running now
      (numpy's Generator promises no stream across versions) and the split can be drawn from the config
      (not a --partition-file that has moved) -- and ``cfg``, the run's config, is known (a Flower strategy's
      config is not flatfl's; the recorder's resume checks the split its ClientApps draw instead).

    A difference is one line naming the file and the first client that differs."""
    labels = data.train.y.numpy()
    for k, mine in enumerate(clients):
        a = np.asarray(mine, dtype=np.int64)
        bad = a[(a < 0) | (a >= len(labels))]
        if len(bad):
            raise UserError(f"{path}: client {k} holds index {bad[0]}, outside the training set "
                            f"(0..{len(labels) - 1}); {EDITED}")  # fmt: skip
    counts = (info.get("partition") or {}).get("label_counts") if isinstance(info.get("partition"), dict) else None
    if isinstance(counts, list) and len(counts) == len(clients):
        for k, (mine, theirs) in enumerate(zip(clients, counts, strict=True)):
            have = np.bincount(labels[np.asarray(mine, dtype=np.int64)], minlength=data.num_classes).tolist()
            if have != theirs:
                raise UserError(
                    f"{path}: client {k}'s labels per class are {have}, run.json's partition.label_counts records "
                    f"{theirs}; {EDITED}"
                )
    versions = info.get("versions") if isinstance(info.get("versions"), dict) else {}
    same = versions.get("numpy") == np.__version__ and versions.get("flatfl") == flatfl.__version__
    if cfg is None or not same or not _drawable(cfg):
        return
    want = make_partition(cfg, data)
    d = cfg.data
    how = {"dirichlet": f"dirichlet alpha {d.dirichlet_alpha}", "shards": f"{d.shards_per_client} shards per client"}
    drawn = f"the split run.json's config draws ({how.get(d.partition, d.partition)}, seed {cfg.seed}, " + (
        f"{d.num_clients} clients of {d.dataset})"
    )
    if len(want) != len(clients):
        raise UserError(f"{path}: holds {len(clients)} clients, {drawn} has {len(want)}; {EDITED}")
    for k, (mine, theirs) in enumerate(zip(clients, want, strict=True)):
        got = np.asarray(mine, dtype=np.int64)
        if len(got) != len(theirs):
            what = f"holds {len(got)} indices where {drawn} gives it {len(theirs)}"
        elif not np.array_equal(got, theirs):
            i = int(np.flatnonzero(got != theirs)[0])
            what = f"holds index {int(got[i])} at position {i} where {drawn} has {int(theirs[i])}"
        else:
            continue
        raise UserError(f"{path}: client {k} {what}; {EDITED}")


def sample_clients(cfg: RunConfig, round: int) -> np.ndarray:
    """m distinct clients for ``round``, from the generator derived from (seed, round)."""
    return draw_clients(cfg.seed, round, cfg.data.num_clients, cfg.clients_per_round)


def draw_clients(seed: int, round: int, num_clients: int, m: int) -> np.ndarray:
    """m distinct client ids of 0..num_clients-1 for ``round``, from the (seed, SAMPLE, round) generator
    (also flatfl.flower's FedMut strategy, so a Flower run samples the clients a flatfl run does)."""
    rng = seeding.derive_rng(seed, seeding.SAMPLE, round)
    return rng.choice(num_clients, m, replace=False)
