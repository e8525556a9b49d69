"""Continue a recorded Flower run (``RunRecorder.start(..., resume=True)``) from its last committed round.

What ``flatfl train --resume`` restores, read from the run directory: the global model of the last
round with a commit point (``state.safetensors``), the strategy's state saved with it (FedMut's
previous global model), metrics.jsonl cut back to the committed rounds. The strategy's rounds are
then numbered on from there, so the seeded sample, the mutants and the clients' seeds are those of
an uninterrupted run, which the resumed one equals byte for byte (tests/test_flower.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flatfl import checkpoint as ckpt
from flatfl.config import identity_of
from flatfl.errors import UserError
from flatfl.flower.strategy import FedMutStrategy
from flatfl.statedict import StateDict
from flatfl.trainer import check_finite

if TYPE_CHECKING:
    from flatfl.flower.recorder import RunRecorder


def restore(rec: RunRecorder, num_rounds: int) -> tuple[int, StateDict]:
    """``(round, global model)`` of ``rec.out``'s last committed round; loads the strategy's state saved
    with it and cuts metrics.jsonl back to it. One line when the directory holds another run."""
    out = rec.out
    rec.config["rounds"] = num_rounds
    rec.identity = identity_of(rec.config)
    info = ckpt.read_run_json(out)
    if info["identity"] != rec.identity:
        raise UserError(
            f"resume: {out / ckpt.RUN_JSON} records another run than this strategy and config "
            f"(algo {info['config'].get('algo')}); resume with the settings it was started with"
        )
    start, algo, tensors, meta = ckpt.load_state(out, rec.identity)
    if algo != rec.config["algo"]:
        raise UserError(f"resume: {out / ckpt.STATE_FILE} holds {algo} state but the strategy is {rec.config['algo']}")
    path = ckpt.round_path(out, start)
    saved, _ = ckpt.load_round(path, rec.identity)
    check_finite(path, saved)
    order = list(rec.subject.initial_state())  # the model's key order: FedMut draws per tensor in it
    if set(order) != set(saved):
        raise UserError(f"{path}: its tensors are not the model's ({sorted(set(order) ^ set(saved))[:3]} ...)")
    if isinstance(rec.strategy, FedMutStrategy):
        rec.strategy.fedmut.load_state(tensors, meta)
    keep, _, rewrite = ckpt.metrics_for_resume(out, start)
    if rewrite:
        ckpt.write_metrics(out, keep)
    if start < num_rounds:
        ckpt.set_run_rounds(out, num_rounds)
    return start, {k: saved[k] for k in order}
