"""Argument checks of the public library calls: a plain ``ValueError``/``TypeError`` naming the argument and
what it may be, before any work starts (instead of a NaN, a numpy warning or an error deep inside torch)."""

from __future__ import annotations

import numbers
from typing import Any

import torch
from torch import nn

HALF_DTYPES = (torch.float16, torch.bfloat16)


def integer(name: str, value: Any, minimum: int, why: str = "") -> int:
    """``value`` as an int >= ``minimum`` (bools and floats refused), else a ValueError/TypeError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int >= {minimum}{why}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}{why}, got {value}")
    return int(value)


def positive(name: str, value: Any) -> float:
    """``value`` as a finite float > 0, else a ValueError/TypeError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number > 0, got {type(value).__name__} {value!r}")
    if not 0 < float(value) < float("inf"):
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return float(value)


def generator(seed: Any) -> torch.Generator:
    """The random generator of ``seed``: an int (a fresh generator seeded with it) or a ``torch.Generator``."""
    if isinstance(seed, torch.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int or a torch.Generator, got {type(seed).__name__} {seed!r}")
    return torch.Generator().manual_seed(int(seed))


def device(value: Any) -> torch.device | None:
    """``value`` as a torch.device that exists on this machine (None stays None: the model's own)."""
    if value is None:
        return None
    try:
        dev = torch.device(value)
    except (RuntimeError, TypeError):
        raise ValueError(f"device={value!r} is not a torch device; use e.g. 'cpu' or 'cuda'") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device={value!r} but CUDA is not available here (torch.cuda.is_available() is False); "
                "use device='cpu' or leave device unset"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device={value!r} but only {torch.cuda.device_count()} CUDA device(s) are visible")
    return dev


def analysis_dtype(model: nn.Module, dtype: Any) -> torch.dtype | None:
    """The precision of the analysis: ``dtype`` when given (a floating torch.dtype), else None (the model's
    own) -- except for a model with float16/bfloat16 parameters, analysed in float32 (float64 if it also
    holds float64 ones): half precision cannot reach the solvers' default tolerances (λmax off by ~1e-3)."""
    if dtype is not None:
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating torch.dtype (torch.float32, torch.float64, ...), got {dtype!r}")
        return dtype
    kinds = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if not kinds & set(HALF_DTYPES):
        return None
    out = torch.float32
    for kind in kinds:
        out = torch.promote_types(out, kind)
    return out


def initialised(model: nn.Module) -> None:
    """Refuse a model with lazy modules (``nn.LazyLinear``...) not yet run: their parameters have no shape."""
    lazy = [n for n, p in model.named_parameters() if isinstance(p, nn.parameter.UninitializedParameter)]
    lazy += [n for n, b in model.named_buffers() if isinstance(b, nn.parameter.UninitializedBuffer)]
    if lazy:
        raise ValueError(
            f"the model has uninitialised lazy parameters ({', '.join(lazy[:3])}{' ...' if len(lazy) > 3 else ''}): "
            "run one forward pass on a batch first, so they get their shapes"
        )
