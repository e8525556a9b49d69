"""Client splits read from a file (``flatfl train --partition-file FILE``).

Two JSON formats are accepted:

* flatfl's own ``partition.json`` (written into every run directory):
  ``{"clients": [[i, ...], ...], "server": [...]}`` -- client k holds training indices
  ``clients[k]``; ``server`` (FedDF/FedAUX's held-out proxy slice) is ignored;
* the FedMut authors' format (github HMHelloWorld/FedMut, ``data/cifar10_100_noniidCase5_beta0.1.json``
  and its siblings, written by ``utils/get_dataset.py`` and read by ``utils/dataset_utils.read_record``):
  ``{"dataset", "num_users", "iid", "noniid_case", "data_beta", "train_data": {"0": [i, ...], ...}}``,
  with keys ``"0"`` .. ``str(num_users - 1)``.

Checks, each a one-line :class:`UserError` naming the file: valid JSON in one of the formats,
at least one client, no empty client, integer indices >= 0, no index listed twice (within a client
or across clients), ``num_users`` equal to the number of clients, the authors' ``dataset`` equal
to ``--dataset``, and (once the data are loaded) every index inside the training set. The
file's SHA-256 is part of the run's config (``data.partition_sha256``), so the run records
exactly which split it used; the file is read again at training time and must still match.

The indices mean something only for one training set: flatfl's ``partition.json`` records it under ``"split"``
(:func:`split_record`: the dataset, ``split_seed``, ``test_frac``, CIFAR-100's label granularity, the number
of training samples and the SHA-256 of the training labels in order). A file used with other settings (another
``--split-seed`` draws another digits training set, so the same indices hold other samples and the label skew
is lost) is refused in one line naming the file and the field (:func:`check_split`). A file without the record
(written before it existed) is checked against the ``run.json`` beside it when there is one (its
``config.data`` and ``partition.label_counts``); otherwise only the index range can be checked and a note says
the training set could not be verified.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from flatfl.digest import sha256_hex
from flatfl.errors import UserError

# the authors' dataset names -> flatfl's
AUTHOR_DATASETS = {"cifar10": "cifar10", "cifar100": "cifar100", "shakespeare": "shakespeare"}


@dataclass(frozen=True)
class PartitionFile:
    clients: list[np.ndarray]  # per client, the training indices in the file's order
    format: str  # "flatfl" | "fedmut"
    sha256: str
    dataset: str | None  # the dataset the file names (authors' format), lower case
    split: dict | None = None  # flatfl's record of the training set the indices refer to (split_record)


def read_partition_file(path: str | Path) -> PartitionFile:
    """Parse and check ``path`` (see the module docstring); one-line errors name the file."""
    path = Path(path)
    where = f"--partition-file {path}"
    if path.exists() and not path.is_file() and not path.is_dir():  # reading a FIFO blocks until a writer comes
        kind = "a FIFO" if path.is_fifo() else "a device or socket"
        raise UserError(f"{where}: not a regular file ({kind}); give a flatfl partition.json or a FedMut data/*.json")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UserError(f"{where}: cannot be read ({exc.strerror or exc})") from exc
    try:
        doc = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(
            f"{where}: not valid JSON ({exc}); give a flatfl partition.json or a FedMut data/*.json"
        ) from exc
    split = None
    if isinstance(doc, dict) and "clients" in doc:
        fmt, lists, dataset = "flatfl", doc["clients"], None
        if not isinstance(lists, list):
            raise UserError(f"{where}: 'clients' must be a list of index lists")
        split = doc.get("split")
        if split is not None and not isinstance(split, dict):
            raise UserError(f"{where}: 'split' must be an object (the training set the indices refer to)")
    elif isinstance(doc, dict) and "train_data" in doc:
        fmt, lists, dataset = "fedmut", _author_lists(doc, where), str(doc.get("dataset", "")).lower() or None
    else:
        raise UserError(
            f"{where}: neither flatfl's partition.json ('clients') nor the FedMut authors' format ('train_data')"
        )
    if not lists:
        raise UserError(f"{where}: lists no clients")
    clients = [_index_array(c, k, where) for k, c in enumerate(lists)]
    _check_disjoint(clients, where)
    return PartitionFile(clients, fmt, sha256_hex(raw), dataset, split)


def _author_lists(doc: dict, where: str) -> list:
    td = doc["train_data"]
    if not isinstance(td, dict):
        raise UserError(f"{where}: 'train_data' must map client ids '0', '1', ... to index lists")
    n = len(td)
    if sorted(td) != sorted(str(k) for k in range(n)):
        bad = sorted(set(td) - {str(k) for k in range(n)})[:3]
        raise UserError(f"{where}: 'train_data' keys must be '0' .. '{n - 1}' (found {bad})")
    users = doc.get("num_users", n)
    if users != n:
        raise UserError(f"{where}: num_users is {users} but 'train_data' has {n} clients")
    return [td[str(k)] for k in range(n)]


def _index_array(c: object, k: int, where: str) -> np.ndarray:
    if not isinstance(c, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in c):
        raise UserError(f"{where}: client {k}'s entry is not a list of integer indices")
    if not c:
        raise UserError(f"{where}: client {k} holds no samples")
    big = next((i for i in c if abs(i) >= 2**63), None)  # JSON integers have no size; an int64 array would overflow
    if big is not None:
        raise UserError(f"{where}: client {k} lists the index {big}, beyond any training set")
    a = np.asarray(c, dtype=np.int64)
    if a.min() < 0:
        raise UserError(f"{where}: client {k} lists the negative index {int(a.min())}")
    return a


def _check_disjoint(clients: list[np.ndarray], where: str) -> None:
    owner = np.concatenate([np.full(len(c), k) for k, c in enumerate(clients)])
    idx = np.concatenate(clients)
    order = np.argsort(idx, kind="stable")
    same = np.flatnonzero(idx[order][1:] == idx[order][:-1])
    if len(same):
        j = same[0]
        a, b = int(owner[order][j]), int(owner[order][j + 1])
        who = f"client {a} twice" if a == b else f"clients {a} and {b}"
        raise UserError(f"{where}: index {int(idx[order][j])} is listed for {who}; a split gives each sample once")


def check_dataset(pf: PartitionFile, path: str | Path, dataset: str) -> None:
    """A file in the authors' format names its dataset; it must be the run's."""
    if pf.dataset is not None and AUTHOR_DATASETS.get(pf.dataset, pf.dataset) != dataset:
        raise UserError(f"--partition-file {path}: is a split of {pf.dataset}, not of --dataset {dataset}")


def check_against(pf: PartitionFile, path: str | Path, *, dataset: str, num_train: int) -> None:
    """The file fits the run's training set: its dataset (authors' format) and index range."""
    where = f"--partition-file {path}"
    check_dataset(pf, path, dataset)
    top = max(int(c.max()) for c in pf.clients)
    if top >= num_train:
        raise UserError(
            f"{where}: index {top} is outside the {num_train} training samples of {dataset} "
            "(a split of the full training set needs the full data under --data-root)"
        )


# the config fields that decide which samples form a dataset's training set, in the order they are named
SPLIT_FIELDS = ("dataset", "split_seed", "test_frac", "cifar100_labels")
SPLIT_FLAGS = {"dataset": "--dataset", "split_seed": "--split-seed", "test_frac": "--test-frac",
               "cifar100_labels": "--cifar100-labels"}  # fmt: skip


def labels_sha256(labels: np.ndarray) -> str:
    """SHA-256 of the training labels in order (int64, little-endian): two training sets with the same digest
    list the same label at every index, so a client's label counts -- its skew -- are the ones it was cut for."""
    return sha256_hex(np.ascontiguousarray(np.asarray(labels), dtype="<i8").tobytes())


def split_record(data: Any, labels: np.ndarray) -> dict[str, Any]:
    """partition.json's ``"split"``: what its indices refer to (``data`` is the run's DataConfig)."""
    rec: dict[str, Any] = {f: getattr(data, f) for f in SPLIT_FIELDS[:3]}
    if data.dataset == "cifar100":
        rec["cifar100_labels"] = data.cifar100_labels
    return rec | {"num_train": int(len(labels)), "train_labels_sha256": labels_sha256(labels)}


def check_split(pf: PartitionFile, path: str | Path, data: Any, labels: np.ndarray) -> str | None:
    """``pf``'s indices refer to this run's training set (``data``: its DataConfig, ``labels``: its training
    labels). A mismatch is one line naming the file and the field; a file that cannot be verified gives the
    note returned (None when verified)."""
    where = f"--partition-file {path}"
    rec = pf.split if pf.split is not None else _record_beside(pf, Path(path))
    if rec is None:
        if pf.format == "fedmut":  # the authors' files index the dataset's own training set (CIFAR, no split seed)
            return None
        return (
            f"note: {where} records no training set (written before flatfl recorded it): its indices could not be "
            f"verified against this run's split ({', '.join(SPLIT_FLAGS[f] for f in SPLIT_FIELDS[:3])})"
        )
    mine = split_record(data, labels)
    if all(rec.get(f) == mine[f] for f in ("dataset", "num_train", "train_labels_sha256")):
        return None  # the same label at every index: a --test-frac that does not change it (CIFAR's split) is free
    for f in SPLIT_FIELDS:
        if f in rec and f in mine and rec[f] != mine[f]:
            raise UserError(
                f"{where}: its indices refer to the training set of {f} {rec[f]!r}, this run's {SPLIT_FLAGS[f]} is "
                f"{mine[f]!r}; the same indices would hold other samples (give {SPLIT_FLAGS[f]} {rec[f]})"
            )
    for f in ("num_train", "train_labels_sha256"):
        if f in rec and rec[f] != mine[f]:
            raise UserError(
                f"{where}: its {f} ({rec[f]}) differs from this run's training set ({mine[f]}); "
                "the indices refer to other data"
            )
    counts = rec.get("label_counts")
    if (
        isinstance(counts, list)
        and len(counts) == len(pf.clients)
        and max(int(c.max()) for c in pf.clients) < len(labels)
    ):
        for j, (idx, want) in enumerate(zip(pf.clients, counts, strict=True)):
            have = np.bincount(labels[idx], minlength=len(want) if isinstance(want, list) else 0).tolist()
            if isinstance(want, list) and have != want:
                raise UserError(
                    f"{where}: client {j}'s labels per class are {have}, the run.json beside it records {want} "
                    "(partition.label_counts); the indices refer to another training set"
                )
    return None


def _record_beside(pf: PartitionFile, path: Path) -> dict[str, Any] | None:
    """An older run's partition.json has no ``"split"``; the run.json beside it (when its ``partition_sha256`` is
    this file's) records the config and each client's label counts."""
    beside = path.parent / "run.json"
    try:
        info = json.loads(beside.read_bytes()) if path.name == "partition.json" and beside.is_file() else None
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(info, dict) or info.get("partition_sha256") != pf.sha256:
        return None
    data = (info.get("config") or {}).get("data") if isinstance(info.get("config"), dict) else None
    if not isinstance(data, dict):
        return None
    rec = {f: data[f] for f in SPLIT_FIELDS if f in data}
    part = info.get("partition")
    if isinstance(part, dict) and "label_counts" in part:
        rec["label_counts"] = part["label_counts"]
    return rec


def load_for_run(
    path: str | Path, sha256: str | None, *, dataset: str, num_train: int, data: Any = None, labels: Any = None
) -> list[np.ndarray]:
    """The clients' indices of a run's partition file, checked against the hash in its config and (given the
    run's DataConfig ``data`` and training ``labels``) against the training set they refer to."""
    pf = read_partition_file(path)
    if sha256 is not None and pf.sha256 != sha256:
        raise UserError(f"--partition-file {path}: changed since the run was configured (SHA-256 differs)")
    check_dataset(pf, path, dataset)
    note = check_split(pf, path, data, np.asarray(labels)) if data is not None and labels is not None else None
    check_against(pf, path, dataset=dataset, num_train=num_train)
    if note:
        print(note, file=sys.stderr)
    return pf.clients
