"""The run directory: the on-disk contract between the trainer and the analysis side.

See ``docs/checkpoint-format.md``. Files (no pickle anywhere, safetensors + JSON):

* ``run.json``                 config, versions, model, dataset and partition summary
* ``partition.json``           client -> training indices
* ``round_NNNN.safetensors``   global model after round N (round 0 = initial model);
                               tensor names are the model's ``state_dict`` keys
* ``clients_NNNN.safetensors`` with ``--save-clients``: ``sent/<slot>/<key>`` and
                               ``returned/<slot>/<key>`` for each sampled client
* ``state.safetensors``        server/algorithm state after the last completed round
* ``metrics.jsonl``            one JSON line per round

Every write goes to a temporary file in the same directory, is fsynced, then renamed over
the target (``os.replace`` is atomic on POSIX): a crash leaves the previous file intact.
``state.safetensors`` is written last in a round and is the commit point for ``--resume``.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from flatfl.config import canonical_json
from flatfl.errors import UserError
from flatfl.statedict import StateDict

FORMAT = "flatfl.run"
FORMAT_VERSION = 1
RUN_JSON = "run.json"
PARTITION_JSON = "partition.json"
STATE_FILE = "state.safetensors"
METRICS_FILE = "metrics.jsonl"


def round_path(run_dir: Path, round: int) -> Path:
    return Path(run_dir) / f"round_{round:04d}.safetensors"


def clients_path(run_dir: Path, round: int) -> Path:
    return Path(run_dir) / f"clients_{round:04d}.safetensors"


# -- atomic writes ---------------------------------------------------------------------
def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def save_tensors(path: Path, tensors: StateDict, metadata: dict[str, Any]) -> None:
    """Atomically save tensors (moved to CPU, contiguous) with JSON-encoded metadata values."""
    meta = {k: v if isinstance(v, str) else canonical_json(v) for k, v in metadata.items()}
    # clone: safetensors refuses tensors that share storage (e.g. FedAvg's identical sent models)
    cpu = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}
    atomic_write_bytes(path, st_save(cpu, metadata=meta))


def load_tensors(path: Path) -> tuple[StateDict, dict[str, str]]:
    """Load a safetensors file and its metadata; a missing or corrupt file is a UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    data = path.read_bytes()
    try:
        tensors = st_load(data)
        meta = _read_metadata(data)
    except (SafetensorError, ValueError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: truncated or not a safetensors file ({exc})") from exc
    return tensors, meta


def _read_metadata(data: bytes) -> dict[str, str]:
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    return dict(header.get("__metadata__", {}) or {})


# -- run.json ----------------------------------------------------------------------------
def write_run_json(run_dir: Path, info: dict[str, Any]) -> None:
    atomic_write_json(Path(run_dir) / RUN_JSON, {"format": FORMAT, "format_version": FORMAT_VERSION, **info})


def read_run_json(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / RUN_JSON
    if not path.is_file():
        raise UserError(f"{path}: missing; {run_dir} holds no flatfl run")
    try:
        info = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc}); the run directory is damaged") from exc
    if info.get("format") != FORMAT:
        raise UserError(f"{path}: not a flatfl run.json (format {info.get('format')!r})")
    if info.get("format_version") != FORMAT_VERSION:
        raise UserError(
            f"{path}: format version {info.get('format_version')} is not supported by this "
            f"flatfl (expects {FORMAT_VERSION})"
        )
    return info


def read_partition(run_dir: Path) -> list[list[int]]:
    path = Path(run_dir) / PARTITION_JSON
    if not path.is_file():
        raise UserError(f"{path}: missing; the run directory is incomplete")
    try:
        return [list(map(int, c)) for c in json.loads(path.read_text())["clients"]]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{path}: damaged ({exc})") from exc


# -- rounds ------------------------------------------------------------------------------
def save_round(run_dir: Path, round: int, state: StateDict, config: dict[str, Any], identity: str) -> None:
    save_tensors(
        round_path(run_dir, round),
        state,
        {"format": "flatfl.round", "round": str(round), "run_identity": identity, "config": config},
    )


def load_round(path: Path, identity: str | None = None) -> tuple[StateDict, int]:
    """Load a global-model checkpoint; with ``identity``, refuse one from another run."""
    tensors, meta = load_tensors(path)
    if meta.get("format") != "flatfl.round":
        raise UserError(f"{path}: not a flatfl round checkpoint (metadata format {meta.get('format')!r})")
    if identity is not None and meta.get("run_identity") != identity:
        raise UserError(f"{path}: belongs to a different run than the run.json beside it (config differs)")
    return tensors, int(meta["round"])


def list_rounds(run_dir: Path) -> list[int]:
    """Rounds that have a global-model file, ascending."""
    out = []
    for p in Path(run_dir).glob("round_*.safetensors"):
        stem = p.stem.split("_", 1)[1]
        if stem.isdigit():
            out.append(int(stem))
    return sorted(out)


def save_clients(
    run_dir: Path,
    round: int,
    sent: list[StateDict],
    returned: list[StateDict],
    info: dict[str, Any],
    identity: str,
) -> None:
    tensors: StateDict = {}
    for slot, (s, r) in enumerate(zip(sent, returned)):
        tensors.update({f"sent/{slot}/{k}": v for k, v in s.items()})
        tensors.update({f"returned/{slot}/{k}": v for k, v in r.items()})
    meta = {"format": "flatfl.clients", "round": str(round), "run_identity": identity, **info}
    save_tensors(clients_path(run_dir, round), tensors, meta)


def load_clients(path: Path) -> tuple[list[StateDict], list[StateDict], dict[str, Any]]:
    """(sent models, returned models, info) of one round saved with ``--save-clients``."""
    tensors, meta = load_tensors(path)
    if meta.get("format") != "flatfl.clients":
        raise UserError(f"{path}: not a flatfl clients file")
    info = {k: json.loads(v) for k, v in meta.items() if k not in ("format", "round", "run_identity")}
    m = len(info["clients"])
    sent: list[StateDict] = [{} for _ in range(m)]
    returned: list[StateDict] = [{} for _ in range(m)]
    for name, v in tensors.items():
        kind, slot, key = name.split("/", 2)
        (sent if kind == "sent" else returned)[int(slot)][key] = v
    info["round"] = int(meta["round"])
    return sent, returned, info


# -- server state (commit point) ------------------------------------------------------------
def save_state(run_dir: Path, round: int, algo: str, tensors: StateDict, algo_json: dict[str, Any], identity: str) -> None:
    meta = {"format": "flatfl.state", "round": str(round), "algo": algo, "algo_state": algo_json, "run_identity": identity}
    save_tensors(Path(run_dir) / STATE_FILE, tensors, meta)


def load_state(run_dir: Path, identity: str) -> tuple[int, str, StateDict, dict[str, Any]]:
    path = Path(run_dir) / STATE_FILE
    tensors, meta = load_tensors(path)
    if meta.get("format") != "flatfl.state":
        raise UserError(f"{path}: not a flatfl state file")
    if meta.get("run_identity") != identity:
        raise UserError(f"{path}: belongs to a different run than {Path(run_dir) / RUN_JSON}")
    return int(meta["round"]), meta["algo"], tensors, json.loads(meta["algo_state"])


# -- metrics -------------------------------------------------------------------------------
def append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    with open(Path(run_dir) / METRICS_FILE, "a") as fh:
        fh.write(json.dumps(record) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """Complete JSON lines of ``metrics.jsonl`` (a torn last line is skipped)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return out


def truncate_metrics(run_dir: Path, last_round: int) -> None:
    """Keep only records of rounds <= last_round (used on resume)."""
    keep = [r for r in read_metrics(run_dir) if r.get("round", 0) <= last_round]
    atomic_write_bytes(Path(run_dir) / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in keep).encode())
