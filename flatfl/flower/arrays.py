"""State dicts to and from Flower's ``ArrayRecord``, exactly (the tensors' bytes travel as they are)."""

from __future__ import annotations

from flwr.app import ArrayRecord

from flatfl.statedict import StateDict


def to_record(state: StateDict) -> ArrayRecord:
    """An ArrayRecord holding ``state``'s tensors (CPU copies) under their state-dict keys, in order."""
    return ArrayRecord({k: v.detach().cpu() for k, v in state.items()})


def from_record(record: ArrayRecord) -> StateDict:
    """The state dict an :func:`to_record` record carries (same keys, order, dtypes and values)."""
    return dict(record.to_torch_state_dict())
