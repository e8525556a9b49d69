"""The device choice of ``flatfl train`` and the analysis commands (``--device``)."""

from __future__ import annotations

import torch

from flatfl.errors import UserError


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else must be a valid torch device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise UserError(f"--device: {device!r} is not a device; use auto, cpu, cuda or cuda:N") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device: CUDA was asked for but no CUDA device is available; use --device cpu")
    return dev
