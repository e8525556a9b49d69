"""Checks of a run directory before and while a run is written or resumed: may ``--out`` be used,
is run.json still the run that was read, are the saved tensors finite and shaped as the model,
which storage choice goes on, and metrics.jsonl with one line per committed round."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from flatfl import checkpoint as ckpt
from flatfl import rundir
from flatfl.errors import UserError
from flatfl.statedict import StateDict, first_nonfinite
from flatfl.storage import StorageConfig

if TYPE_CHECKING:
    from flatfl.simulation import Simulation


def prepare_out(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse to clobber an existing run unless asked (checks only: ``flatfl.rundir`` moves an
    overwritten run aside once the new one is validated). A run killed before its round 0 was
    committed is no run yet."""
    run_json = out / ckpt.RUN_JSON
    if resume:
        if out.exists() and not out.is_dir():  # a file, FIFO or device (/dev/null)
            from flatfl.atomic import file_kind

            kind = file_kind(out)
            raise UserError(
                f"--resume: {out} is not a folder ({kind}); give the run directory (the --out of flatfl train)"
            )
        if not out.is_dir():
            raise UserError(f"--resume: {out} does not exist; start the run without --resume")
        if not run_json.is_file():
            raise UserError(f"--resume: {run_json} is missing; {out} holds no flatfl run to resume")
        return
    if out.exists() and not out.is_dir():
        raise UserError(f"--out: {out} exists and is not a directory")
    holds = (out / rundir.REPLACED).is_dir() or run_json.exists() or bool(list(out.glob("round_*.safetensors")))
    if holds and not overwrite and not rundir.uncommitted_start(out):
        raise UserError(
            f"--out: {out} already holds a run; continue it with --resume {out} or replace it with --overwrite"
        )
    other = sorted(p.name for p in out.iterdir() if not p.name.startswith(".") and not rundir.is_run_file(p.name)) if (
        out.is_dir() and not holds) else []  # fmt: skip
    if other:
        shown = ", ".join(other[:3]) + (" ..." if len(other) > 3 else "")
        raise UserError(
            f"--out: {out} holds other files than a flatfl run's ({shown}); a run is written into an empty or new "
            "folder, so that its files are never mixed with others"
        )


def resume_info(out: Path, identity: str) -> dict[str, Any]:
    """run.json of the run being resumed, which must still be the run the CLI read (an
    interrupted ``--overwrite`` undone on opening brings back another one)."""
    info = ckpt.read_run_json(out)
    if info["identity"] != identity:
        raise UserError(
            f"{out / ckpt.RUN_JSON}: changed while this command was opening the run (another flatfl process "
            "replaced it?); check the run, then run the command again"
        )
    return info


def check_finite(path: Path, tensors: StateDict) -> None:
    key = first_nonfinite(tensors)
    if key is not None:
        raise UserError(f"{path}: tensor {key} holds NaN or Inf; this run cannot continue from it (start a new run)")


def complete_metrics(out: Path, start: int, sim: Simulation, identity: str, device: str) -> None:
    """metrics.jsonl with exactly one record per committed round 0..start: lines of uncommitted
    rounds and a torn last line go; a committed round without a line (lost by a kill under
    earlier versions) gets its test metrics back from its round file, marked ``rebuilt``."""
    keep, missing, rewrite = ckpt.metrics_for_resume(out, start)
    if not rewrite:
        return
    for r in missing:
        path = ckpt.round_path(out, r)
        if not path.is_file():
            raise UserError(f"{out / ckpt.METRICS_FILE}: round {r} has no line and no {path.name} to rebuild it from")
        state, _ = ckpt.load_round(path, identity, r)
        loss, acc = sim.evaluate({k: v.to(sim.device) for k, v in state.items()})
        keep.append(
            {"round": r, "test_loss": loss, "test_acc": acc, "train_loss": None, "device": device, "rebuilt": True}
        )
    ckpt.write_metrics(out, sorted(keep, key=lambda rec: rec["round"]))


def check_keys(saved: StateDict, expected: StateDict, path: Path) -> None:
    if set(saved) != set(expected):
        missing = sorted(set(expected) - set(saved))[:3]
        extra = sorted(set(saved) - set(expected))[:3]
        raise UserError(f"{path}: tensors do not match the model (missing {missing}, unexpected {extra})")
    for k, v in expected.items():
        if tuple(saved[k].shape) != tuple(v.shape):
            raise UserError(f"{path}: tensor {k} has shape {tuple(saved[k].shape)}, the model expects {tuple(v.shape)}")


def check_state_groups(tensors: StateDict, model_sd: StateDict, params: set[str], path: Path) -> None:
    """Algorithm state saved per model tensor (``prefix/<key>``: FedMut's previous global model,
    SCAFFOLD's control variates) must cover all parameters or all state keys, in the model's shapes."""
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for name, v in tensors.items():
        prefix, _, key = name.rpartition("/")
        if prefix and key in model_sd:
            groups.setdefault(prefix, {})[key] = v
    for prefix, group in groups.items():
        if set(group) not in (params, set(model_sd)):
            missing = sorted((params if set(group) <= params else set(model_sd)) - set(group))[:3]
            raise UserError(f"{path}: {prefix}/ lacks tensors {missing}; the state file is damaged")
        for key, v in group.items():
            if tuple(v.shape) != tuple(model_sd[key].shape):
                raise UserError(
                    f"{path}: {prefix}/{key} has shape {tuple(v.shape)}, the model expects "
                    f"{tuple(model_sd[key].shape)}; the state file is damaged"
                )
            if v.dtype != model_sd[key].dtype:  # an int64 or float16 copy of the model would be used as it is
                have, want = (str(t).removeprefix("torch.") for t in (v.dtype, model_sd[key].dtype))
                raise UserError(f"{path}: {prefix}/{key} is {have}, the model holds {want}; the state file is damaged")


def resumed_storage(out: Path, given: StorageConfig | None) -> StorageConfig:
    """The storage choice a resumed run goes on with: the flags given (recorded in run.json,
    replacing the earlier choice), else the one run.json records."""
    info = ckpt.read_run_json(out)
    if given is None:
        return StorageConfig.from_dict(info.get("storage"))
    if info.get("storage") != given.to_dict():
        ckpt.atomic_write_json(out / ckpt.RUN_JSON, info | {"storage": given.to_dict()})
    return given
