"""Per-round quantities that show why a run diverges, written to ``metrics.jsonl``.

For every algorithm and round t (keys read by ``flatfl report``):

* ``global_update_norm`` = ||w_t - w_{t-1}||_2 over every floating-point ``state_dict`` entry
  (BatchNorm running statistics included, as FedMut's ``--mutate all`` direction);
* ``sent_loss``: per sampled client, in slot order, the cross-entropy of the model *sent* to it
  on its first local minibatch (train mode, before any step) -- for FedMut the mutant's loss, so a
  mutation that throws a client off the loss surface shows here before the weights overflow;
  ``sent_loss_mean`` is their mean.

FedMut adds ``mutation_norm`` = radius * ||d|| and ``mutation_rel`` = radius * ||d|| / ||w_t||,
d = w_t - w_{t-1} over the mutated entries (``FedMut.round_metrics``). Norms are accumulated in
float64 and only read: they do not change any trained value.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from flatfl.statedict import StateDict


def float_keys(state: StateDict) -> list[str]:
    return [k for k, v in state.items() if v.is_floating_point()]


def state_norm(state: StateDict, keys: Iterable[str]) -> float:
    """||state||_2 over ``keys``, accumulated in float64."""
    sq = [state[k].detach().double().pow(2).sum() for k in keys]
    return math.sqrt(float(torch.stack(sq).sum())) if sq else 0.0


def diff_norm(a: StateDict, b: StateDict, keys: Iterable[str]) -> float:
    """||a - b||_2 over ``keys``, accumulated in float64."""
    sq = [(a[k].detach().double() - b[k].detach().double()).pow(2).sum() for k in keys]
    return math.sqrt(float(torch.stack(sq).sum())) if sq else 0.0


def round_metrics(old: StateDict, new: StateDict, sent_losses: Sequence[float]) -> dict[str, Any]:
    """The algorithm-independent diagnostics of one round (see the module docstring)."""
    losses = [float(v) for v in sent_losses]
    return {
        "global_update_norm": diff_norm(new, old, float_keys(new)),
        "sent_loss": losses,
        "sent_loss_mean": sum(losses) / len(losses) if losses else None,
    }
