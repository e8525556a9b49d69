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
* ``diverged.json``            only after a divergence: its round, client and message

Every write goes to a temporary file in the same directory, is fsynced, then renamed over
the target (``os.replace`` is atomic on POSIX): a crash leaves the previous file or the new
one, never a torn file. (The directory itself is not fsynced: after a power cut a rename
may be lost, which leaves the previous round's file -- still a valid checkpoint.)
``state.safetensors`` is written last in a round and is the commit point for ``--resume``.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
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
META_KEY = "flatfl"
METRICS_FILE = "metrics.jsonl"
DIVERGED_JSON = "diverged.json"  # written when training diverged: round, client, message


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


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def save_tensors(path: Path, tensors: StateDict, metadata: dict[str, Any]) -> None:
    """Atomically save tensors (copied to CPU, contiguous) with JSON metadata.

    The metadata go into one header entry, ``"flatfl"``, as canonical JSON: safetensors
    writes its metadata map in hash order, so several entries would make the bytes of
    identical checkpoints differ from run to run.
    """
    meta = {META_KEY: canonical_json(metadata)}
    cpu: StateDict = {}
    seen: set[int] = set()
    for k, v in tensors.items():
        t = v.detach().to("cpu")
        if t.data_ptr() in seen or not t.is_contiguous():
            # safetensors refuses tensors that share storage (FedAvg sends one model m times)
            t = t.clone(memory_format=torch.contiguous_format)
        seen.add(t.data_ptr())
        cpu[k] = t
    atomic_write_bytes(path, st_save(cpu, metadata=meta))


def load_tensors(path: Path) -> tuple[StateDict, dict[str, Any]]:
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


def _read_metadata(data: bytes) -> dict[str, Any]:
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    raw = (header.get("__metadata__") or {}).get(META_KEY)
    return json.loads(raw) if raw else {}


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
    """Global model after ``round``; metadata carry the run's config (without ``rounds``,
    which is the run's plan, not a property of this model) and its identity hash."""
    config = {k: v for k, v in config.items() if k != "rounds"}
    save_tensors(
        round_path(run_dir, round),
        state,
        {"format": "flatfl.round", "round": round, "run_identity": identity, "config": config},
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
    meta = {"format": "flatfl.clients", "round": round, "run_identity": identity, **info}
    save_tensors(clients_path(run_dir, round), tensors, meta)


def load_clients(path: Path) -> tuple[list[StateDict], list[StateDict], dict[str, Any]]:
    """(sent models, returned models, info) of one round saved with ``--save-clients``."""
    tensors, meta = load_tensors(path)
    if meta.get("format") != "flatfl.clients":
        raise UserError(f"{path}: not a flatfl clients file")
    info = {k: v for k, v in meta.items() if k not in ("format", "run_identity")}
    m = len(info["clients"])
    sent: list[StateDict] = [{} for _ in range(m)]
    returned: list[StateDict] = [{} for _ in range(m)]
    for name, v in tensors.items():
        kind, slot, key = name.split("/", 2)
        (sent if kind == "sent" else returned)[int(slot)][key] = v
    return sent, returned, info


# -- server state (commit point) ------------------------------------------------------------
def save_state(
    run_dir: Path, round: int, algo: str, tensors: StateDict, algo_json: dict[str, Any], identity: str
) -> None:
    meta = {"format": "flatfl.state", "round": round, "algo": algo, "algo_state": algo_json, "run_identity": identity}
    save_tensors(Path(run_dir) / STATE_FILE, tensors, meta)


def load_state(run_dir: Path, identity: str) -> tuple[int, str, StateDict, dict[str, Any]]:
    path = Path(run_dir) / STATE_FILE
    tensors, meta = load_tensors(path)
    if meta.get("format") != "flatfl.state":
        raise UserError(f"{path}: not a flatfl state file")
    if meta.get("run_identity") != identity:
        raise UserError(f"{path}: belongs to a different run than {Path(run_dir) / RUN_JSON}")
    return int(meta["round"]), meta["algo"], tensors, meta["algo_state"]


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


class BackgroundWriter:
    """Runs checkpoint writes on one background thread, in submission order.

    Training of round t+1 overlaps the (fsynced) writes of round t. Writes stay ordered, so
    the commit protocol (round file, then state, then metrics) holds; ``close()`` waits for
    all of them, and an exception raised by a write is re-raised on the next ``submit`` or
    on ``close``. Callers pass tensors that are not modified afterwards (CPU snapshots).
    """

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="flatfl-ckpt", initializer=_lower_priority)
        self._pending: list[Future] = []

    def submit(self, fn: Callable[[], None]) -> None:
        self._raise_failed()
        self._pending.append(self._pool.submit(fn))

    def _raise_failed(self) -> None:
        still = []
        for f in self._pending:
            if f.done():
                f.result()  # re-raises a failed write
            else:
                still.append(f)
        self._pending = still

    def close(self) -> None:
        try:
            for f in self._pending:
                f.result()
        finally:
            self._pending = []
            self._pool.shutdown(wait=True)


def _lower_priority() -> None:
    """Nice the writer thread (Linux: per thread) so it yields the cores to training threads.

    On a small machine the writes' CPU time (serialisation, syscalls, fsync) would otherwise
    preempt PyTorch's intra-op threads and stall every op's barrier.
    """
    try:
        import threading

        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (AttributeError, OSError):  # not Linux, or not permitted: run at normal priority
        pass


def cpu_snapshot(sd: StateDict) -> StateDict:
    """Detached CPU copies, safe to hand to a :class:`BackgroundWriter`."""
    return {k: v.detach().to("cpu", copy=True) for k, v in sd.items()}
