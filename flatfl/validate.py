"""What every reader checks in a run directory beyond parsing it: an edited or forged file is refused.

The SHA-256 digests in ``run.json`` catch an accidental edit, but a file edited *and* given a matching
digest (or a run from before the digest) would otherwise be used as it is. So each reader also checks
the structure and the agreement of the files (docs/checkpoint-format.md, "What each reader checks"):

* ``partition.json`` (:func:`check_partition`): every index an integer in ``[0, n_train)``, owned by
  one client only (nor by the server's hold-out), as many clients as the config's ``num_clients``,
  the sizes those run.json records;
* ``run.json`` (:func:`check_run_config`): ``config`` agrees with its ``identity`` digest, with the
  config stored in every round file's metadata (read from the headers alone), with the ``model``
  record and with ``clients_per_round``; the local-SGD numbers are finite numbers;
* tensors (:func:`check_dtypes`): each has the dtype of the run's model (float32; float64 is
  accepted where it converts to float32 exactly).

Every refusal is one :class:`~flatfl.errors.UserError` naming the file and the field, tensor or
index; nothing is written.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from flatfl.config import canonical_json, identity_of
from flatfl.errors import UserError
from flatfl.presets import PRESETS
from flatfl.statedict import StateDict

# config.local's numbers (other keys: free); batch_size may also be "full" (one batch of all the client's data)
NUMBERS = ("lr", "momentum", "weight_decay", "batch_size", "epochs", "rho", "eta")
MAX_INDEX = 2**40  # no data set has more samples; bounds a partition index where run.json records no size
EDITED = "the file was edited or forged after the run wrote it; restore it from a copy (nothing was changed)"


# -- partition.json ----------------------------------------------------------------------------------------------
def check_partition(path: Path, clients: Any, server: Any, info: dict[str, Any] | None) -> None:
    """``clients`` (and the optional ``server`` hold-out) of ``path`` are a partition of the run's training set."""
    if not isinstance(clients, list) or not all(isinstance(c, list) for c in clients):
        raise UserError(f"{path}: 'clients' is not a list of lists of indices; {EDITED}")
    info = info or {}
    n = (info.get("dataset") or {}).get("n_train") if isinstance(info.get("dataset"), dict) else None
    k = ((info.get("config") or {}).get("data") or {}).get("num_clients")
    if isinstance(k, int) and len(clients) != k:
        raise UserError(f"{path}: holds {len(clients)} clients, run.json's config.data.num_clients is {k}; {EDITED}")
    owner: dict[int, str] = {}
    groups = [(f"client {c}", idx) for c, idx in enumerate(clients)]
    if server is not None:
        if not isinstance(server, list):
            raise UserError(f"{path}: 'server' is not a list of indices; {EDITED}")
        groups.append(("the server's hold-out", server))
    for who, idx in groups:
        for i in idx:
            if not isinstance(i, int) or isinstance(i, bool):
                raise UserError(f"{path}: {who} holds {i!r}, not an integer index; {EDITED}")
            if i < 0 or i >= (n if isinstance(n, int) else MAX_INDEX):
                bound = f"0..{n - 1}" if isinstance(n, int) else f"0..{MAX_INDEX - 1}"
                raise UserError(f"{path}: {who} holds index {i}, outside the training set ({bound}); {EDITED}")
            if i in owner:
                raise UserError(f"{path}: index {i} is held by both {owner[i]} and {who}; {EDITED}")
            owner[i] = who
    sizes = (info.get("partition") or {}).get("sizes") if isinstance(info.get("partition"), dict) else None
    if sizes is not None and [len(c) for c in clients] != sizes:
        raise UserError(f"{path}: client sizes differ from run.json's partition record; {EDITED}")


# -- run.json ------------------------------------------------------------------------------------------------------
def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    """The part of a config the identity digest covers (no rounds, preset, data_root or partition_file)."""
    d = json.loads(canonical_json(config))
    d.pop("rounds", None)
    d.pop("preset", None)
    if isinstance(d.get("data"), dict):
        d["data"].pop("data_root", None)
        d["data"].pop("partition_file", None)
    return d


def _difference(a: Any, b: Any, where: str = "config") -> tuple[str, Any, Any] | None:
    """The first field (dotted path) where ``a`` and ``b`` differ, with both values."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            d = _difference(a.get(key), b.get(key), f"{where}.{key}")
            if d is not None:
                return d
        return None
    return None if a == b and type(a) is type(b) else (where, a, b)


def _digest(config: dict[str, Any]) -> str | None:
    try:
        return identity_of({"rounds": 0, **config})
    except (KeyError, TypeError, AttributeError, ValueError, RecursionError):
        return None


def _check_numbers(path: Path, config: dict[str, Any], info: dict[str, Any]) -> None:
    """The numbers readers compute with (local SGD, frac) are finite numbers, not text or NaN; ``config.preset`` a
    preset's name, the one run.json's ``preset`` record names (the round files' metadata are compared too)."""
    local = config.get("local")
    fields = [(f"config.local.{k}", local[k]) for k in NUMBERS if k in local] if isinstance(local, dict) else []
    if "frac" in config:
        fields.append(("config.frac", config["frac"]))
    preset = config.get("preset")
    if preset is not None and preset not in PRESETS:
        raise UserError(f"{path}: config.preset is {preset!r}, not a preset ({', '.join(PRESETS)}); {EDITED}")
    record = info.get("preset")  # run.json's {"name", "values"} of the preset, beside the config
    if isinstance(record, dict) and record.get("name") != preset:
        raise UserError(f"{path}: config.preset is {preset!r}, but its preset record names {record.get('name')!r}; "
                        f"{EDITED}")  # fmt: skip
    for name, v in fields:
        if name == "config.local.batch_size" and v == "full":
            continue
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise UserError(f"{path}: {name} is {v!r}, not a finite number; {EDITED}")


def check_run_config(run_dir: Path, info: dict[str, Any]) -> None:
    """run.json's ``config`` agrees with its ``identity``, its ``model`` record, ``clients_per_round`` and the
    config in the metadata of every round file (headers only); one line naming the file and the field."""
    from flatfl import checkpoint as ckpt

    path = Path(run_dir) / ckpt.RUN_JSON
    config = info["config"]
    _check_numbers(path, config, info)
    model = info["model"]
    if "model_kwargs" in config and (model.get("name"), model.get("kwargs")) != (
        config.get("model"),
        config["model_kwargs"],
    ):
        field = "name" if model.get("name") != config.get("model") else "kwargs"
        theirs = config.get("model") if field == "name" else config["model_kwargs"]
        raise UserError(f"{path}: model.{field} is {model.get(field)!r}, its config says {theirs!r}; {EDITED}")
    data = config.get("data") if isinstance(config.get("data"), dict) else {}
    frac, k = config.get("frac"), data.get("num_clients")
    if "clients_per_round" in info and isinstance(frac, float | int) and isinstance(k, int):
        if info["clients_per_round"] != max(int(frac * k), 1):
            raise UserError(
                f"{path}: clients_per_round is {info['clients_per_round']!r}, but config.frac {frac} of "
                f"config.data.num_clients {k} gives {max(int(frac * k), 1)}; {EDITED}"
            )
    mine = _digest(config)
    if mine is None:
        raise UserError(f"{path}: 'config' is damaged (not a flatfl run config); restore run.json from a copy")
    for i, r in enumerate(ckpt.list_rounds(run_dir)):
        # run.json is to blame when its own digest disagrees, or when even the first round file does
        forged = mine != info["identity"] or i == 0
        _check_round_config(ckpt.round_path(run_dir, r), path, config, forged)
    if mine != info["identity"]:
        raise UserError(f"{path}: 'config' does not match its 'identity' digest; {EDITED}")


def _check_round_config(file: Path, path: Path, config: dict[str, Any], forged: bool) -> None:
    meta = _header(file)
    if meta is None:
        return  # unreadable: loading the file names the problem
    theirs, their_id = meta["config"], meta.get("run_identity")
    diff = _difference(_comparable(config), _comparable(theirs))
    if diff is None and config.get("preset") != theirs.get("preset"):  # a label the identity leaves out
        diff = ("config.preset", config.get("preset"), theirs.get("preset"))
    if _digest(theirs) != their_id:  # the round file's own metadata were edited
        where = f"{diff[0]} is {diff[2]!r}, run.json says {diff[1]!r}" if diff else "config does not match its digest"
        raise UserError(f"{file}: its metadata's {where}; {EDITED}")
    if diff is None:
        return
    if forged:  # run.json's config edited: the round files record what the run was trained with
        raise UserError(f"{path}: {diff[0]} is {diff[1]!r}, but {file.name} was trained with {diff[2]!r}; {EDITED}")
    raise UserError(
        f"{file}: belongs to a different run than the run.json beside it ({diff[0]} is {diff[2]!r} there, "
        f"{diff[1]!r} in run.json); move it out of {file.parent}"
    )


def _header(file: Path) -> dict[str, Any] | None:
    from flatfl import checkpoint as ckpt

    meta = ckpt.read_metadata(file)
    if not isinstance(meta, dict) or meta.get("format") != "flatfl.round":
        return None
    if not isinstance(meta.get("config"), dict):  # a round file's config is what it was trained with: never absent
        raise UserError(f"{file}: its metadata's config is {meta.get('config')!r}, not an object; {EDITED}")
    return meta


# -- tensors -------------------------------------------------------------------------------------------------------
def check_dtypes(path: Path, saved: StateDict, expected: dict[str, torch.dtype]) -> StateDict:
    """``saved`` with each tensor named in ``expected`` of that dtype: float64 where float32 is expected is
    converted when exact, any other mismatch (int64, bool, float16 weights ...) is one line."""
    out = dict(saved)
    for k, want in expected.items():
        v = saved.get(k)
        if v is None or v.dtype == want:
            continue
        if v.dtype == torch.float64 and want == torch.float32:
            low = v.to(torch.float32)
            if torch.equal(low.to(torch.float64), v):
                out[k] = low
                continue
        have = str(v.dtype).removeprefix("torch.")
        raise UserError(
            f"{path}: tensor {k} is {have}, the run's model holds {str(want).removeprefix('torch.')}; "
            "the file was not written by this run (restore it)"
        )
    return out


def parameter_dtypes(info: dict[str, Any]) -> dict[str, torch.dtype]:
    """float32 for every parameter run.json's ``model`` lists (what a reader without the model can check)."""
    params = info.get("model", {}).get("parameters")
    return {k: torch.float32 for k in params if isinstance(k, str)} if isinstance(params, list) else {}
