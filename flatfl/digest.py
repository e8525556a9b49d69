"""SHA-256 digests, the one helper every file and byte digest in flatfl goes through.

A checkpoint's digest keys the report's caches (a retrained run never reuses an old number), a weights
file's goes into landscape.json, a partition file's into run.json.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ["file_digest", "sha256_hex"]


def sha256_hex(data: bytes) -> str:
    """The hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def file_digest(path: str | Path) -> str:
    """The hex SHA-256 of a file's bytes, read in 1 MiB blocks (a checkpoint need not fit in memory twice)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
