"""Continue a recorded Flower run (``RunRecorder.start(..., resume=True)``) from its last committed round.

What ``flatfl train --resume`` restores, read from the run directory: the global model of the last
round with a commit point (``state.safetensors``), the strategy's state saved with it (FedMut's
previous global model), metrics.jsonl cut back to the committed rounds, after the checks ``flatfl train --resume``
makes (:func:`flatfl.state_check.check_resume_state`: a state file edited back to an earlier round, or holding
another round's previous global model, is refused in one line naming it). The strategy's rounds are
then numbered on from there, so the seeded sample, the mutants and the clients' seeds are those of
an uninterrupted run, which the resumed one equals byte for byte (tests/test_flower.py).
"""

from __future__ import annotations

from logging import INFO
from typing import TYPE_CHECKING, Any

from flatfl import checkpoint as ckpt
from flatfl import state_check
from flatfl.errors import UserError
from flatfl.flower.strategy import FedMutStrategy
from flatfl.run_checks import check_finite, check_state_groups
from flatfl.statedict import StateDict
from flatfl.validate import check_dtypes

if TYPE_CHECKING:
    from flatfl.flower.recorder import RunRecorder


def check_resumable(rec: RunRecorder, num_rounds: int) -> tuple[int, StateDict, StateDict, dict[str, Any]]:
    """``(round, global model, strategy state tensors, its JSON)`` of ``rec.out``'s last committed round,
    read and checked against ``rec``'s strategy and config; nothing is written. One line when the
    directory holds another run (naming the settings that differ) or lacks its commit point."""
    out = rec.out
    rec.plan_rounds(num_rounds)
    info = ckpt.read_run_json(out)
    if info["identity"] != rec.identity:
        old, new = _leaves(info["config"]), _leaves(rec.config)
        differ = sorted(k for k in set(old) | set(new) if k != "rounds" and old.get(k) != new.get(k))
        shown = ", ".join(f"{k}: {old.get(k)!r} there, {new.get(k)!r} here" for k in differ[:4])
        raise UserError(
            f"resume: {out / ckpt.RUN_JSON} records another run than this strategy and config ({shown or 'data'}); "
            "resume with the settings it was started with"
        )
    subject = rec.subject
    if getattr(subject, "parts", None) is not None and (out / ckpt.PARTITION_JSON).is_file():
        from flatfl.sampling import check_drawn  # the ClientApps train on the split the config draws: so must the file

        check_drawn(out / ckpt.PARTITION_JSON, info, subject.cfg, subject.sim.data, ckpt.read_partition(out, info))
    if not (out / ckpt.STATE_FILE).is_file():
        raise UserError(
            f"resume: {out / ckpt.STATE_FILE} is missing, so no round of {out} is committed; start it again "
            "without resume (with overwrite = true)"
        )
    start, algo, tensors, meta = ckpt.load_state(out, rec.identity)
    if algo != rec.config["algo"]:
        raise UserError(f"resume: {out / ckpt.STATE_FILE} holds {algo} state but the strategy is {rec.config['algo']}")
    # the checks of `flatfl train --resume` (flatfl.state_check): the recorder commits each round as it does
    fm = rec.strategy.fedmut if isinstance(rec.strategy, FedMutStrategy) else None
    run_algo = (algo, algo if fm is not None else None, fm.config if fm is not None else None)
    state_check.check_resume_state(out, info, start, run_algo, tensors, meta)
    path = ckpt.round_path(out, start)
    saved, _ = ckpt.load_round(path, rec.identity, start)
    check_finite(path, saved)
    model = rec.subject.initial_state()  # the model's key order: FedMut draws per tensor in it
    if set(model) != set(saved):
        raise UserError(f"{path}: its tensors are not the model's ({sorted(set(model) ^ set(saved))[:3]} ...)")
    saved = check_dtypes(path, saved, {k: v.dtype for k, v in model.items()})
    params = set(fm.param_names) if fm is not None else set(model)
    check_state_groups(tensors, model, params, out / ckpt.STATE_FILE)
    return start, {k: saved[k] for k in model}, tensors, meta


def _leaves(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"data": {"num_clients": 10}}`` -> ``{"data.num_clients": 10}``."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out |= _leaves(value, f"{prefix}{key}.")
        else:
            out[prefix + key] = value
    return out


def restore(rec: RunRecorder, num_rounds: int) -> tuple[int, StateDict]:
    """``(round, global model)`` of ``rec.out``'s last committed round (:func:`check_resumable`); loads
    the strategy's state saved with it and cuts metrics.jsonl back to it."""
    from flwr.common.logger import log

    out = rec.out
    start, global_state, tensors, meta = check_resumable(rec, num_rounds)
    if isinstance(rec.strategy, FedMutStrategy):
        try:
            rec.strategy.fedmut.load_state(tensors, meta)
        except (KeyError, ValueError) as exc:  # state FedMut needs is missing or does not fit
            raise UserError(
                f"{out / ckpt.STATE_FILE}: {exc}; the state file is damaged (restore it from a copy)"
            ) from exc
    keep, _, rewrite = ckpt.metrics_for_resume(out, start)
    if rewrite:
        ckpt.write_metrics(out, keep)
    if start < num_rounds:
        state_check.drop_uncommitted(out, start)  # a killed round's files, before run.json's rounds change
        ckpt.set_run_rounds(out, num_rounds)
    else:
        log(INFO, "%s: already at round %d of %d; nothing to do (raise rounds to continue)", out, start, num_rounds)
    return start, global_state
