"""Per-client algorithm state, written incrementally: only the clients that changed since the last save.

SCAFFOLD keeps a control variate c_k per client and CluSamp a representative gradient G_i per
client: one model-sized tensor per client, 4.5 GB for 100 ResNet-18 clients. Rewriting all of it
into ``state.safetensors`` at every save costs K model writes where only the m sampled clients
changed. Here each client's tensors live in their own file, ``client_state/KKKK_RRRR.safetensors``
(client K, written at the save of round R, tensor names as in ``state_tensors()``), and
``state.safetensors`` -- still the single commit point -- records in its metadata which file holds
each client's current state (``client_state``: client -> round). A save writes the files of the
changed clients under the new round's name, then the state file (commit), then deletes the files
it superseded. A kill before the commit leaves the previous state file pointing at the previous
files, all still there; a kill after it leaves superseded files, which nothing references and the
next ``--resume`` deletes. Loading merges the referenced files into the algorithm's tensors, so
``load_state`` sees the same dict as from a whole state file: the resumed run is bit-exact.

Which tensors are per client is the algorithm's ``client_state_prefixes`` (names
``<prefix><client>`` or ``<prefix><client>/<key>``); the contract is that a client's per-client
state changes only in rounds it takes part in.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from safetensors import safe_open

from flatfl import checkpoint as ckpt
from flatfl.errors import UserError
from flatfl.statedict import StateDict

DIR = ckpt.CLIENT_STATE_DIR


def path_of(run_dir: Path, client: int, round: int) -> Path:
    return Path(run_dir) / DIR / f"{client:04d}_{round:04d}.safetensors"


def client_of(name: str, prefixes: Sequence[str]) -> int | None:
    """The client a per-client state tensor belongs to, or None for shared state."""
    for p in prefixes:
        if name.startswith(p):
            head = name[len(p) :].split("/", 1)[0]
            if head.isdigit():
                return int(head)
    return None


def split(tensors: StateDict, prefixes: Sequence[str]) -> tuple[StateDict, dict[int, StateDict]]:
    """(shared tensors, client -> its tensors), names unchanged."""
    shared: StateDict = {}
    per: dict[int, StateDict] = {}
    for name, v in tensors.items():
        k = client_of(name, prefixes)
        if k is None:
            shared[name] = v
        else:
            per.setdefault(k, {})[name] = v
    return shared, per


def read_index(run_dir: Path) -> dict[int, int] | None:
    """state.safetensors' client -> round map (None: the state file holds every client inline)."""
    path = Path(run_dir) / ckpt.STATE_FILE
    try:
        with safe_open(str(path), "pt") as f:
            meta = json.loads((f.metadata() or {}).get(ckpt.META_KEY, "{}"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: truncated or not a safetensors file ({exc})") from exc
    return parse_index(path, meta.get("client_state"))


def parse_index(path: Path, raw: object) -> dict[int, int] | None:
    if raw is None:
        return None
    try:
        return {int(k): int(r) for k, r in raw.items()}  # type: ignore[attr-defined]
    except (AttributeError, TypeError, ValueError) as exc:
        raise UserError(f"{path}: metadata 'client_state' is damaged ({exc}); restore the run from a copy") from exc


def load(run_dir: Path, index: dict[int, int], identity: str) -> StateDict:
    """The per-client tensors the index references, merged (each file checked for run, client, round)."""
    out: StateDict = {}
    for k, r in sorted(index.items()):
        path = path_of(run_dir, k, r)
        tensors, meta = ckpt.load_tensors(path)
        if meta.get("format") != "flatfl.client_state" or meta.get("run_identity") != identity:
            raise UserError(f"{path}: not this run's client state; the run directory is damaged")
        if meta.get("client") != k or meta.get("round") != r:
            raise UserError(f"{path}: its metadata say client {meta.get('client')} round {meta.get('round')}")
        out.update(tensors)
    return out


def remove_unreferenced(run_dir: Path, index: dict[int, int] | None) -> int:
    """Delete client-state files the state file does not reference (superseded, or written by a
    save that never committed); returns how many. Needs the run's lock."""
    d = Path(run_dir) / DIR
    if not d.is_dir():
        return 0
    keep = {path_of(run_dir, k, r).name for k, r in (index or {}).items()}
    gone = 0
    for p in d.iterdir():
        if p.name.endswith(".safetensors") and p.name not in keep:
            p.unlink()
            gone += 1
    return gone


@dataclass
class ClientStateLog:
    """The trainer's record of which clients' state is on disk (index) and which changed since (dirty)."""

    prefixes: tuple[str, ...]
    index: dict[int, int] = field(default_factory=dict)
    dirty: set[int] = field(default_factory=set)

    def mark(self, clients: Iterable[int]) -> None:
        self.dirty.update(int(c) for c in clients)

    def plan(
        self, round: int, tensors: StateDict
    ) -> tuple[StateDict, dict[int, StateDict], dict[int, int], list[tuple[int, int]]]:
        """For a save at ``round``: (shared tensors, the clients to write, the new index, the
        (client, round) files it supersedes); the log then counts the save as done."""
        shared, per = split(tensors, self.prefixes)
        changed = sorted(k for k in per if k in self.dirty or k not in self.index)
        write = {k: per[k] for k in changed}
        new_index = {k: (round if k in write else self.index[k]) for k in sorted(per)}
        superseded = [(k, self.index[k]) for k in changed if k in self.index and self.index[k] != round]
        self.index, self.dirty = new_index, set()
        return shared, write, new_index, superseded


def save(run_dir: Path, round: int, groups: dict[int, StateDict], identity: str) -> None:
    """Write the changed clients' files (before the state file that references them)."""
    if not groups:
        return
    (Path(run_dir) / DIR).mkdir(exist_ok=True)
    for k, tensors in groups.items():
        meta = {"format": "flatfl.client_state", "round": round, "client": k, "run_identity": identity}
        ckpt.save_tensors(path_of(run_dir, k, round), tensors, meta)


def remove(run_dir: Path, files: Iterable[tuple[int, int]]) -> None:
    """Delete superseded (client, round) files once the state file no longer references them."""
    for k, r in files:
        path_of(run_dir, k, r).unlink(missing_ok=True)
