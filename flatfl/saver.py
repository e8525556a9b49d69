"""The writes of one round, in commit order, as the storage options ask (``flatfl.storage``).

Every round: optional ``clients_t`` (``--save-clients``), its ``metrics.jsonl`` line, then the
tracker (TensorBoard, after the line). A saved round (``StorageConfig.keeps``) also writes
``round_t`` before the line and, after it, the changed clients' ``client_state/`` files and the
commit point ``state.safetensors``, then deletes the client-state files that commit superseded.
Snapshots (CPU copies) are taken on the training thread, only of what the round writes; the
writes run on a :class:`flatfl.checkpoint.BackgroundWriter` or, for round 0, at once.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from flatfl import checkpoint as ckpt
from flatfl import client_state
from flatfl.algorithms.base import FederatedAlgorithm
from flatfl.client_state import ClientStateLog
from flatfl.statedict import StateDict
from flatfl.storage import StorageConfig
from flatfl.tracking import Tracker


class RoundSaver:
    """Builds each round's write job for run directory ``out``."""

    def __init__(
        self,
        out: Path,
        cfg: Any,
        identity: str,
        storage: StorageConfig,
        algo: FederatedAlgorithm,
        tracker: Tracker | None = None,
    ) -> None:
        self.out, self.cfg, self.identity, self.storage, self.algo, self.tracker = (
            out, cfg, identity, storage, algo, tracker,
        )  # fmt: skip
        incremental = storage.incremental_state and algo.client_state_prefixes
        self.clients = ClientStateLog(algo.client_state_prefixes) if incremental else None
        self.config_dict = cfg.to_dict()

    def resumed(self) -> int:
        """After loading the state: continue its client-state index; delete unreferenced files
        (superseded, or written by a save that never committed). Returns how many went."""
        index = client_state.read_index(self.out)
        if self.clients is not None:
            self.clients.index = dict(index or {})
        return client_state.remove_unreferenced(self.out, index)

    def took_part(self, clients: list[int]) -> None:
        if self.clients is not None:
            self.clients.mark(clients)

    def job(
        self,
        t: int,
        global_state: StateDict,
        record: dict[str, Any],
        sent: list[StateDict] | None = None,
        returned: list[StateDict] | None = None,
        clients_info: dict[str, Any] | None = None,
    ) -> Callable[[], None]:
        """Round ``t``'s writes as one job (snapshots taken now)."""
        out, identity, cfg = self.out, self.identity, self.cfg
        keep = self.storage.keeps(t, cfg.rounds)
        dtype = self.storage.clients_dtype
        sent = None if sent is None else [ckpt.cpu_snapshot(s) for s in sent]
        returned = None if returned is None else [ckpt.cpu_snapshot(s) for s in returned]
        glob = ckpt.cpu_snapshot(global_state) if keep else None
        state = self._state_parts(t) if keep else None
        algo_json = self.algo.state_json() if keep else None
        tracker = self.tracker

        def job() -> None:
            if sent is not None and returned is not None:
                ckpt.save_clients(out, t, sent, returned, clients_info or {}, identity, dtype)
            if glob is not None:
                ckpt.save_round(out, t, glob, self.config_dict, identity)
            ckpt.append_metrics(out, record)
            if state is not None:
                shared, writes, index, superseded = state
                client_state.save(out, t, writes, identity)
                ckpt.save_state(out, t, cfg.algo, shared, algo_json or {}, identity, index)
                client_state.remove(out, superseded)
            if tracker is not None:
                tracker.log(record)

        return job

    def _state_parts(
        self, t: int
    ) -> tuple[StateDict, dict[int, StateDict], dict[int, int] | None, list[tuple[int, int]]]:
        tensors = self.algo.state_tensors()
        if self.clients is None:
            return ckpt.cpu_snapshot(tensors), {}, None, []
        shared, writes, index, superseded = self.clients.plan(t, tensors)
        return ckpt.cpu_snapshot(shared), {k: ckpt.cpu_snapshot(v) for k, v in writes.items()}, index, superseded
