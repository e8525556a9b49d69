"""The spread of a saved run's client models: reads ``clients_NNNN`` + the global rounds and hands them to
:func:`flatfl.analysis.spread.spread_of` (the numbers themselves live there)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from flatfl import checkpoint as ckpt
from flatfl.analysis.spread import RoundSpread, spread_of
from flatfl.runs.run import Run


def round_spread(run: Run, round: int, **kw: Any) -> RoundSpread:
    """Spread of round ``round`` of ``run`` (needs ``clients_NNNN`` and rounds ``round-1`` and ``round``);
    keywords as :func:`~flatfl.analysis.spread.spread_of` (``data``, ``plane``, ``batch_size``, ``device``)."""
    if round < 1:
        raise ValueError("round 0 has no clients")
    sent, returned, info = run.clients(round)
    return spread_of(
        run.global_state(round - 1),
        run.global_state(round),
        sent,
        returned,
        run.model(round - 1),  # BatchNorm statistics: those of the dispatch origin w_{t-1} for every model
        round=round,
        clients=info["clients"],
        mutation_coefficients=info.get("mutation_coefficients"),
        extra={"algo": run.config["algo"]},
        **kw,
    )


def spread_rounds(run: Run) -> list[int]:
    """Rounds of ``run`` whose client models were saved (and whose previous global exists)."""
    have = set(run.rounds())
    return [r for r in sorted(have) if r >= 1 and r - 1 in have and ckpt.clients_path(run.path, r).is_file()]


def spread_curve(
    run: Run,
    rounds: Sequence[int] | None = None,
    *,
    data: tuple[torch.Tensor, torch.Tensor] | None = None,
    progress: Callable[[int], None] | None = None,
    **kw: Any,
) -> list[RoundSpread]:
    """:func:`round_spread` for each of ``rounds`` (default: every round saved with clients)."""
    rounds = spread_rounds(run) if rounds is None else list(rounds)
    out = []
    for r in rounds:
        out.append(round_spread(run, r, data=data, **kw))
        if progress is not None:
            progress(1)
    return out
