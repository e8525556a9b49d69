"""Splitting the training set over K clients: IID and Dirichlet label skew.

Every function returns a list of K sorted index arrays that together cover every training
index exactly once. Randomness comes from the numpy ``Generator`` passed in.
"""

from __future__ import annotations

import numpy as np

from flatfl.errors import UserError

SCHEMES = ("iid", "dirichlet")


def partition_iid(n: int, num_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    """A random permutation cut into K parts whose sizes differ by at most one."""
    _check_enough(n, num_clients, 1)
    return [np.sort(p) for p in np.array_split(rng.permutation(n), num_clients)]


def partition_dirichlet(
    labels: np.ndarray,
    num_clients: int,
    alpha: float,
    min_size: int,
    rng: np.random.Generator,
    max_tries: int = 1000,
) -> list[np.ndarray]:
    """Label-skewed split (Hsu et al. 2019; NIID-Bench's ``noniid-labeldir``, Li et al. 2022).

    For each class c, proportions p ~ Dir(alpha * 1_K) decide how the class's samples are
    shared; a client that already holds N/K samples gets no more of later classes. The
    whole draw is repeated until every client holds at least ``min_size`` samples. Small
    alpha (0.1) gives clients with one or two dominant classes; large alpha tends to IID.
    """
    labels = np.asarray(labels)
    n = len(labels)
    _check_enough(n, num_clients, min_size)
    classes = np.unique(labels)
    by_class = [np.flatnonzero(labels == c) for c in classes]
    for _ in range(max_tries):
        parts: list[list[int]] = [[] for _ in range(num_clients)]
        for idx_c in by_class:
            idx_c = rng.permutation(idx_c)
            p = rng.dirichlet(np.full(num_clients, alpha))
            sizes = np.array([len(q) for q in parts])
            p = p * (sizes < n / num_clients)
            with np.errstate(invalid="ignore", divide="ignore"):  # alpha so small every p underflows to 0: the
                p = p / p.sum()  # draw is as before (no warnings), and the min-size check refuses it
                cuts = (np.cumsum(p) * len(idx_c)).astype(int)[:-1]
            for k, chunk in enumerate(np.split(idx_c, cuts)):
                parts[k].extend(chunk.tolist())
        if min(len(q) for q in parts) >= min_size:
            return [np.sort(np.asarray(q, dtype=np.int64)) for q in parts]
    raise UserError(
        f"--min-size: no Dirichlet({alpha}) split of {n} samples over {num_clients} clients gave "
        f"every client >= {min_size} samples in {max_tries} draws; lower --min-size, raise "
        "--dirichlet, or use fewer --clients"
    )


def partition_shards(
    labels: np.ndarray, num_clients: int, shards_per_client: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """McMahan et al. (2017) pathological non-IID: sort by label, cut into K*k equal shards,
    give each client k shards at random (so each client sees about k labels)."""
    n = len(labels)
    num_shards = num_clients * shards_per_client
    if num_shards > n:
        from flatfl.errors import UserError

        raise UserError(f"--shards: {num_clients} clients x {shards_per_client} shards exceed the {n} samples")
    order = np.argsort(labels, kind="stable")
    shards = np.array_split(order, num_shards)
    perm = rng.permutation(num_shards)
    return [
        np.sort(np.concatenate([shards[j] for j in perm[c * shards_per_client : (c + 1) * shards_per_client]]))
        for c in range(num_clients)
    ]


def _check_enough(n: int, num_clients: int, min_size: int) -> None:
    if num_clients * min_size > n:
        raise UserError(
            f"--clients: {num_clients} clients x --min-size {min_size} needs more than the "
            f"{n} training samples; use fewer clients or a smaller minimum"
        )


def label_counts(parts: list[np.ndarray], labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, C) matrix of how many samples of each class each client holds."""
    labels = np.asarray(labels)
    return np.stack([np.bincount(labels[p], minlength=num_classes) for p in parts])
