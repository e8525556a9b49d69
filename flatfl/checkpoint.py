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
"""

from __future__ import annotations

import errno
import json
import math
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
from flatfl.digest import sha256_hex
from flatfl.errors import UserError
from flatfl.faults import fault_point
from flatfl.statedict import StateDict

FORMAT = "flatfl.run"
FORMAT_VERSION = 1
RUN_JSON = "run.json"
PARTITION_JSON = "partition.json"
STATE_FILE = "state.safetensors"
META_KEY = "flatfl"
METRICS_FILE = "metrics.jsonl"
DIVERGED_JSON = "diverged.json"  # written when training diverged: round, client, message
CLIENT_STATE_DIR = "client_state"  # per-client algorithm state, one file per client (flatfl.client_state)


def round_path(run_dir: Path, round: int) -> Path:
    return Path(run_dir) / f"round_{round:04d}.safetensors"


def clients_path(run_dir: Path, round: int) -> Path:
    return Path(run_dir) / f"clients_{round:04d}.safetensors"


# -- atomic writes ---------------------------------------------------------------------
def _umask() -> int:
    """The process umask, read without changing it (Linux), else by setting and restoring it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def os_error(path: Path, exc: OSError) -> UserError:
    """One line for a filesystem error: the path and the OS's reason (read-only, full, ...); ``--resume`` is
    named only for a run's own files (a report's or a landscape's are written again by their command)."""
    reason = exc.strerror or str(exc)
    path = Path(path)
    run_file = path.parent.name == CLIENT_STATE_DIR or path.name in (RUN_JSON, PARTITION_JSON, STATE_FILE, METRICS_FILE)
    run_file = run_file or (path.suffix == ".safetensors" and path.name.startswith(("round_", "clients_")))
    then = "then --resume the run" if run_file else "then run the command again"
    return UserError(f"{path}: cannot write ({reason}); {write_fix(exc.errno)}, {then}")


def write_fix(err: int | None) -> str:
    """What to do about a write the OS refused: a file-size limit (``ulimit -f``, EFBIG) is not a full disk."""
    if err == errno.EFBIG:
        return "a file-size limit (ulimit -f) stopped it: raise the limit or free the quota"
    return "free space or fix permissions"


def _kind(path: Path) -> str:
    """The write point's name in ``FLATFL_FAULT_AT``: round, clients, state, client_state, metrics, run.json,
    partition.json."""
    name = path.name
    if path.parent.name == CLIENT_STATE_DIR:
        return "client_state"
    if name.startswith(("round_", "clients_")):
        return name.split("_", 1)[0]
    return name.removesuffix(".safetensors").removesuffix(".jsonl")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise os_error(path, exc) from exc
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600
        with os.fdopen(fd, "wb") as fh:
            fault_point(f"{_kind(path)}:write", lambda: fh.write(data[: len(data) // 2]) and fh.flush())
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise os_error(path, exc) from exc
        raise
    fault_point(f"{_kind(path)}:commit")


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
    if info.get("format_version") != FORMAT_VERSION:
        raise UserError(
            f"{path}: format version {info.get('format_version')} is not supported by this "
            f"flatfl (expects {FORMAT_VERSION})"
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
    ]
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


def load_round(path: Path, identity: str | None = None) -> tuple[StateDict, int]:
    """Load a global-model checkpoint; with ``identity``, refuse one from another run."""
    tensors, meta = load_tensors(path)
    if meta.get("format") != "flatfl.round":
        raise UserError(f"{path}: not a flatfl round checkpoint (metadata format {meta.get('format')!r})")
    if identity is not None and meta.get("run_identity") != identity:
        raise UserError(f"{path}: belongs to a different run than the run.json beside it (config differs)")
    return tensors, _meta_round(path, meta)


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


def load_clients(path: Path) -> tuple[list[StateDict], list[StateDict], dict[str, Any]]:
    """(sent models, returned models, info) of one round saved with ``--save-clients``; tensors
    stored in bfloat16 (``--clients-dtype bfloat16``) come back as float32."""
    tensors, meta = load_tensors(path)
    if meta.get("format") != "flatfl.clients":
        raise UserError(f"{path}: not a flatfl clients file")
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


# -- metrics -------------------------------------------------------------------------------
def append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    path = Path(run_dir) / METRICS_FILE
    line = (json.dumps(record) + "\n").encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        with os.fdopen(fd, "ab") as fh:
            fault_point("metrics:write", lambda: fh.write(line[: len(line) // 2]) and fh.flush())
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        raise os_error(path, exc) from exc
    fault_point("metrics:commit")


# the per-round numbers every reader computes with (and any key ending in _loss, _acc, _norm, _rel, _time)
METRIC_NUMBERS = ("test_loss", "test_acc", "train_loss", "wall_time", "round_time")


def _parse_metrics(path: Path) -> tuple[list[dict[str, Any]], bool]:
    """(records, torn): every line must be a JSON object with an integer ``round``; only an
    unterminated last line (a write cut short by a kill) may be unreadable, and is left out."""
    if not path.is_file():
        return [], False
    lines = path.read_bytes().split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline
    out = []
    for i, line in enumerate(lines, 1):
        rec = _metrics_record(path, i, line)
        out.append(rec)
    torn = False
    if tail:
        try:
            out.append(_metrics_record(path, len(lines) + 1, tail))
        except UserError:
            torn = True
    return out, torn


def _metrics_record(path: Path, i: int, line: bytes) -> dict[str, Any]:
    try:
        rec = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: line {i} is not UTF-8 JSON ({exc}); fix or delete that line") from exc
    r = rec.get("round") if isinstance(rec, dict) else None
    if not isinstance(r, int) or isinstance(r, bool) or r < 0:
        raise UserError(f"{path}: line {i} is not a round record (needs an object with an integer 'round')")
    for k, v in rec.items():
        if k in METRIC_NUMBERS or k.endswith(("_loss", "_acc", "_norm", "_rel", "_time", "_mean")):
            if not all(_number_or_null(x) for x in (v if isinstance(v, list) else [v])):
                raise UserError(f"{path}: line {i} (round {r}): {k} is {v!r}, not a number; fix or delete that line")
    # a cross-entropy is >= 0 and an accuracy a fraction: anything else was edited, and would be averaged or matched
    # on as it is (a non-finite value stays: a recorded Flower run that diverged has one, and is listed as diverged)
    for k, ok, what in (("test_loss", lambda v: v >= 0, "a loss >= 0"),
                        ("test_acc", lambda v: 0 <= v <= 1, "an accuracy in [0, 1]")):  # fmt: skip
        v = rec.get(k)
        if v is not None and not (isinstance(v, float) and not math.isfinite(v)) and not ok(v):
            raise UserError(f"{path}: line {i} (round {r}): {k} is {v!r}, not {what}; the file was edited")
    return rec


def _number_or_null(v: Any) -> bool:
    """None, a float, or an integer a float can hold (JSON has no size limit: ``10**400`` is no loss a float
    training could have recorded, and float() of it overflows where the readers average it)."""
    if isinstance(v, bool):
        return False
    return v is None or isinstance(v, float) or (isinstance(v, int) and abs(v) <= 2**53)


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The records of ``metrics.jsonl`` (a torn last line, cut by a kill, is left out); any other
    unreadable line, or a round out of order or recorded twice, is a :class:`UserError` naming it
    (as ``--resume`` refuses it: which of two lines is the round's cannot be told)."""
    path = Path(run_dir) / METRICS_FILE
    records = _parse_metrics(path)[0]
    _check_order(path, [r["round"] for r in records], "")
    return records


def _check_order(path: Path, rounds: list[int], then: str) -> None:
    """Rounds strictly increasing: one line naming the first round out of order or recorded twice."""
    bad = next((r for i, r in enumerate(rounds) if i and r <= rounds[i - 1]), None)
    if bad is not None:
        raise UserError(
            f"{path}: round {bad} is out of order or recorded twice (two processes wrote this run?); "
            f"keep one line per round, in order{then}"
        )


def metrics_for_resume(run_dir: Path, committed: int) -> tuple[list[dict[str, Any]], list[int], bool]:
    """(records to keep, committed rounds without a record, whether the file must be rewritten).

    Records of rounds after ``committed`` were written by a round that never committed and are
    dropped, as is a torn last line. A record out of order or twice (two writers) is refused: no
    valid record is ever deleted. Missing rounds are rebuilt by the caller.
    """
    path = Path(run_dir) / METRICS_FILE
    records, torn = _parse_metrics(path)
    keep = [r for r in records if r["round"] <= committed]
    rounds = [r["round"] for r in keep]
    _check_order(path, rounds, ", then --resume again")
    missing = sorted(set(range(committed + 1)) - set(rounds))
    return keep, missing, torn or len(keep) != len(records) or bool(missing)


def write_metrics(run_dir: Path, records: list[dict[str, Any]]) -> None:
    atomic_write_bytes(Path(run_dir) / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in records).encode())


class BackgroundWriter:
    """Runs checkpoint writes on one background thread, in submission order.

    Training of round t+1 overlaps the (fsynced) writes of round t. Writes stay ordered, so
    the commit protocol (round file, metrics line, then state) holds; ``close()`` waits for
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

    def cancel_pending(self) -> None:
        """Drop the writes not yet begun (on interrupt: stop at the round being written)."""
        for f in self._pending:
            f.cancel()
        self._pending = [f for f in self._pending if not f.cancelled()]

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
