"""The run directory: the on-disk contract between the trainer and the analysis side.

See ``docs/checkpoint-format.md``. Files (no pickle anywhere, safetensors + JSON):

* ``run.json``                 config, versions, model, dataset and partition summary
* ``partition.json``           client -> training indices
* ``round_NNNN.safetensors``   global model after each saved round N (round 0 = initial model);
                               tensor names are the model's ``state_dict`` keys
* ``clients_NNNN.safetensors`` with ``--save-clients``: ``sent/<slot>/<key>`` and
                               ``returned/<slot>/<key>`` for each sampled client
* ``state.safetensors``        server/algorithm state after the last saved round
* ``client_state/``            per-client algorithm state, written incrementally (``flatfl.client_state``)
* ``metrics.jsonl``            one JSON line per round
* ``diverged.json``            only after a divergence: its round, client and message

Every write goes to a temporary file in the same directory, is fsynced, then renamed over
the target (``os.replace`` is atomic on POSIX): a crash leaves the previous file or the new
one, never a torn file. (The directory itself is not fsynced: after a power cut a rename
may be lost, which leaves the previous round's file -- still a valid checkpoint.)
``state.safetensors`` is written last in a round and is the commit point for ``--resume``;
the round's metrics line is appended just before it, so every committed round has its line
(``--resume`` drops lines of uncommitted rounds, see :func:`metrics_for_resume`).

Files are created with the permissions ``open()`` would give (``0o666 & ~umask``), not the
0600 of ``tempfile.mkstemp``. ``FLATFL_FAULT_AT`` is a test-only hook (``flatfl.faults``).

This module reads and writes the tensor files (rounds, clients, state), run.json and partition.json; its
parts live apart and are importable from here too: :mod:`flatfl.run_files` (the files' names and paths),
:mod:`flatfl.atomic` (atomic writes, a refused write's message), :mod:`flatfl.metrics_file` (metrics.jsonl)
and :mod:`flatfl.background_writer` (the writer thread).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from flatfl.atomic import atomic_write_bytes, atomic_write_json, os_error, write_fix
from flatfl.background_writer import BackgroundWriter, cpu_snapshot
from flatfl.config import canonical_json
from flatfl.digest import sha256_hex
from flatfl.errors import UserError
from flatfl.metrics_file import (
    METRIC_NUMBERS,
    append_metrics,
    metrics_for_resume,
    read_metrics,
    write_metrics,
)
from flatfl.run_files import (
    CLIENT_STATE_DIR,
    DIVERGED_JSON,
    FORMAT,
    FORMAT_VERSION,
    META_KEY,
    METRICS_FILE,
    PARTITION_JSON,
    RUN_JSON,
    STATE_FILE,
    clients_path,
    round_path,
)
from flatfl.statedict import StateDict

# the checkpoint's parts, importable from here as before the split
__all__ = [
    "CLIENT_STATE_DIR", "DIVERGED_JSON", "FORMAT", "FORMAT_VERSION", "META_KEY", "METRICS_FILE", "METRIC_NUMBERS",
    "PARTITION_JSON", "RUN_JSON", "STATE_FILE", "BackgroundWriter", "append_metrics", "atomic_write_bytes",
    "atomic_write_json", "check_partition_file", "clients_path", "cpu_snapshot", "list_rounds", "load_clients",
    "load_round", "load_state", "load_tensors", "metrics_for_resume", "os_error", "partition_json_bytes",
    "read_metadata", "read_metrics", "read_partition", "read_run_json", "round_path", "save_clients", "save_round",
    "save_state", "save_tensors", "set_run_rounds", "sha256_hex", "write_fix", "write_metrics", "write_run_json",
]  # fmt: skip


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
    except (SafetensorError, ValueError, RecursionError, AttributeError) as exc:
        raise UserError(f"{path}: truncated or not a safetensors file ({_short(exc)})") from exc
    if not isinstance(meta, dict):
        kind = type(meta).__name__
        raise UserError(f"{path}: its flatfl metadata are a JSON {kind}, not an object; the file is damaged")
    return tensors, meta


def _short(exc: BaseException) -> str:
    """An exception's message cut to one short line (a RecursionError's or a parser's can be long)."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text if len(text) <= 200 else text[:200] + "..."


def _read_metadata(data: bytes) -> Any:
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    raw = (header.get("__metadata__") or {}).get(META_KEY)
    if raw is not None and not isinstance(raw, str):  # safetensors writes text; an edited header may hold anything
        raise ValueError(f"its {META_KEY!r} metadata entry is a JSON {type(raw).__name__}, not text")
    return json.loads(raw) if raw else {}


def read_metadata(path: Path) -> Any:
    """The flatfl metadata of a safetensors file, read from its header alone (no tensor is read);
    None when the header is unreadable (the full load names the problem)."""
    try:
        with open(path, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            if not 0 < n <= 100_000_000:
                return None
            return _read_metadata(n.to_bytes(8, "little") + fh.read(n))
    except (OSError, ValueError, RecursionError, AttributeError):
        return None


# -- run.json ----------------------------------------------------------------------------
def write_run_json(run_dir: Path, info: dict[str, Any]) -> None:
    atomic_write_json(Path(run_dir) / RUN_JSON, {"format": FORMAT, "format_version": FORMAT_VERSION, **info})


def read_run_json(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / RUN_JSON
    if not path.is_file():
        raise UserError(f"{path}: missing; {run_dir} holds no flatfl run")
    try:
        info = json.loads(path.read_bytes())
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, a 5000-digit integer
        raise UserError(f"{path}: not valid JSON ({_short(exc)}); the run directory is damaged") from exc
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        got = info.get("format") if isinstance(info, dict) else type(info).__name__
        raise UserError(f"{path}: not a flatfl run.json (format {got!r})")
    version = info.get("format_version")
    if type(version) is not int or version != FORMAT_VERSION:  # "1", 1.0 and true are edits, not version 1
        raise UserError(
            f"{path}: format version {version!r} is not supported by this flatfl (expects {FORMAT_VERSION})"
        )
    _check_run_info(path, info)
    from flatfl.validate import check_run_config

    check_run_config(Path(run_dir), info)
    return info


def _check_run_info(path: Path, info: dict[str, Any]) -> None:
    """The fields every reader relies on, with their types: one line naming the first bad one."""
    config = info.get("config")
    problems = [
        (not isinstance(config, dict), "'config' is missing or not an object"),
        (not isinstance(info.get("identity"), str), "'identity' is missing or not a string"),
        (not isinstance(info.get("model"), dict), "'model' is missing or not an object"),
        (info.get("dataset") is not None and not isinstance(info["dataset"], dict), "'dataset' is not an object"),
    ]
    for part, key in (
        ("model", "num_parameters"),
        ("dataset", "n_train"),
        ("dataset", "n_test"),
        ("dataset", "num_classes"),
    ):
        v = info.get(part).get(key) if isinstance(info.get(part), dict) else None
        bad = v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0)
        problems.append((bad, f"{part}.{key} is {v!r}, not a count"))
    if isinstance(config, dict):
        for key in ("rounds", "seed"):
            v = config.get(key)
            problems.append((not isinstance(v, int) or isinstance(v, bool), f"config.{key} is {v!r}, not an integer"))
        # outside the identity digest, so an edit is not caught by it: their types are checked here
        data = config.get("data")
        for key in ("data_root", "partition_file") if isinstance(data, dict) else ():
            v = data.get(key)
            problems.append((v is not None and not isinstance(v, str), f"config.data.{key} is {v!r}, not a path"))
    model = info.get("model")
    for key in ("parameters", "state_keys") if isinstance(model, dict) else ():
        v = model.get(key)
        bad = v is not None and not (isinstance(v, list) and all(isinstance(k, str) for k in v))
        problems.append((bad, f"model.{key} is not a list of tensor names"))
    for bad, what in problems:
        if bad:
            raise UserError(f"{path}: {what}; the run directory is damaged (restore run.json from a copy)")


def set_run_rounds(run_dir: Path, rounds: int) -> None:
    """Record a resumed run's new planned ``rounds``: the only field of run.json a resume
    changes, and only when it changes."""
    path = Path(run_dir) / RUN_JSON
    info = read_run_json(run_dir)
    if info["config"]["rounds"] != rounds:
        info["config"]["rounds"] = rounds
        atomic_write_json(path, info)


def partition_json_bytes(parts: dict[str, Any]) -> bytes:
    """The bytes ``partition.json`` is written with (their SHA-256 goes into run.json)."""
    return (json.dumps(parts, indent=2, sort_keys=True) + "\n").encode()


def read_partition(run_dir: Path, info: dict[str, Any] | None = None) -> list[list[int]]:
    """Client -> training indices; with ``info`` (run.json), checked against the recorded SHA-256
    (``partition_sha256``, runs since it was added) and client sizes: an edited file is refused."""
    path = Path(run_dir) / PARTITION_JSON
    if not path.is_file():
        raise UserError(f"{path}: missing; the run directory is incomplete")
    raw = path.read_bytes()
    want = (info or {}).get("partition_sha256")
    if want is not None and sha256_hex(raw) != want:
        raise UserError(
            f"{path}: SHA-256 differs from the one recorded in run.json; the partition was edited "
            "after the run started (restore the original file)"
        )
    try:
        obj = json.loads(raw)
        clients = obj["clients"]
    except (ValueError, RecursionError, KeyError, TypeError) as exc:
        raise UserError(f"{path}: damaged ({_short(exc)})") from exc
    from flatfl.validate import check_partition

    check_partition(path, clients, obj.get("server"), info)
    return clients


def check_partition_file(run_dir: Path, info: dict[str, Any]) -> None:
    """A run's ``partition.json``, when it has one, checked as :func:`read_partition` checks it (digest, indices,
    sizes): every command that opens the run refuses a forged partition, also those that do not use it."""
    if (Path(run_dir) / PARTITION_JSON).is_file():
        read_partition(run_dir, info)


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


def load_round(path: Path, identity: str | None = None, round: int | None = None) -> tuple[StateDict, int]:
    """Load a global-model checkpoint; with ``identity``, refuse one from another run, with ``round`` one whose
    metadata name another round (as :func:`load_clients`)."""
    tensors, meta = load_tensors(path)
    if meta.get("format") != "flatfl.round":
        raise UserError(f"{path}: not a flatfl round checkpoint (metadata format {meta.get('format')!r})")
    if identity is not None and meta.get("run_identity") != identity:
        raise UserError(f"{path}: belongs to a different run than the run.json beside it (config differs)")
    r = _meta_round(path, meta)
    if round is not None and r != round:
        raise UserError(f"{path}: its metadata say round {r}, its name round {round}; rename or restore it")
    return tensors, r


def _meta_round(path: Path, meta: dict[str, Any]) -> int:
    r = meta.get("round")
    if not isinstance(r, int) or isinstance(r, bool) or r < 0:
        raise UserError(f"{path}: metadata 'round' is {r!r}, not a round number; the file is damaged")
    return r


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
    dtype: str = "float32",
) -> None:
    """Round ``round``'s sent and returned client models; ``dtype`` bfloat16 stores their
    floating-point tensors in bfloat16 (``--clients-dtype``), recorded as the metadata's ``dtype``."""
    low = dtype == "bfloat16"
    tensors: StateDict = {}
    for slot, (s, r) in enumerate(zip(sent, returned)):
        for kind, sd in (("sent", s), ("returned", r)):
            for k, v in sd.items():
                tensors[f"{kind}/{slot}/{k}"] = v.to(torch.bfloat16) if low and v.is_floating_point() else v
    meta = {"format": "flatfl.clients", "round": round, "run_identity": identity, **info}
    if low:
        meta["dtype"] = "bfloat16"
    save_tensors(clients_path(run_dir, round), tensors, meta)


def load_clients(
    path: Path, identity: str | None = None, round: int | None = None
) -> tuple[list[StateDict], list[StateDict], dict[str, Any]]:
    """(sent models, returned models, info) of one round saved with ``--save-clients``; tensors
    stored in bfloat16 (``--clients-dtype bfloat16``) come back as float32. With ``identity`` a file of
    another run is refused (as :func:`load_round` does), with ``round`` one whose metadata name another round."""
    tensors, meta = load_tensors(path)
    if meta.get("format") != "flatfl.clients":
        raise UserError(f"{path}: not a flatfl clients file")
    if identity is not None and meta.get("run_identity") != identity:
        raise UserError(f"{path}: belongs to a different run than the run.json beside it (config differs)")
    if round is not None and _meta_round(path, meta) != round:
        raise UserError(f"{path}: its metadata say round {meta['round']}, its name round {round}; rename or restore it")
    info = {k: v for k, v in meta.items() if k not in ("format", "run_identity")}
    m = len(info["clients"])
    sent: list[StateDict] = [{} for _ in range(m)]
    returned: list[StateDict] = [{} for _ in range(m)]
    for name, v in tensors.items():
        kind, slot, key = name.split("/", 2)
        if v.dtype == torch.bfloat16 and meta.get("dtype") == "bfloat16":
            v = v.float()
        (sent if kind == "sent" else returned)[int(slot)][key] = v
    return sent, returned, info


# -- server state (commit point) ------------------------------------------------------------
def save_state(
    run_dir: Path,
    round: int,
    algo: str,
    tensors: StateDict,
    algo_json: dict[str, Any],
    identity: str,
    client_index: dict[int, int] | None = None,
) -> None:
    """The commit point; ``client_index`` (client -> round of its ``client_state/`` file) when the
    algorithm's per-client state is stored incrementally (:mod:`flatfl.client_state`)."""
    meta = {"format": "flatfl.state", "round": round, "algo": algo, "algo_state": algo_json, "run_identity": identity}
    if client_index is not None:
        meta["client_state"] = {str(k): r for k, r in sorted(client_index.items())}
    save_tensors(Path(run_dir) / STATE_FILE, tensors, meta)


def load_state(run_dir: Path, identity: str) -> tuple[int, str, StateDict, dict[str, Any]]:
    """(round, algo, state tensors with the per-client ones merged in, algo_state)."""
    from flatfl import client_state

    path = Path(run_dir) / STATE_FILE
    tensors, meta = load_tensors(path)
    if meta.get("format") != "flatfl.state":
        raise UserError(f"{path}: not a flatfl state file")
    if meta.get("run_identity") != identity:
        raise UserError(f"{path}: belongs to a different run than {Path(run_dir) / RUN_JSON}")
    if not isinstance(meta.get("algo"), str) or not isinstance(meta.get("algo_state"), dict):
        raise UserError(f"{path}: metadata lack 'algo' or 'algo_state'; the file is damaged")
    index = client_state.parse_index(path, meta.get("client_state"))
    if index:
        tensors.update(client_state.load(run_dir, index, identity))
    return _meta_round(path, meta), meta["algo"], tensors, meta["algo_state"]
