"""The names of a run directory's files (:mod:`flatfl.checkpoint` describes the format and re-exports them).

At the bottom of the checkpoint modules: the writers (:mod:`flatfl.atomic`), the metrics file
(:mod:`flatfl.metrics_file`) and the tensor files (:mod:`flatfl.checkpoint`) all name files through it.
"""

from __future__ import annotations

from pathlib import Path

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
