"""A run's start, fresh or resumed: its partition, its simulation, and its round 0 or saved state.

Used by the round loop (:mod:`flatfl.trainer`). Fresh: the clients' indices drawn, the simulation built, the
initial model evaluated and round 0 committed with run.json and partition.json. Resumed: the partition and
the last committed round and state read back and checked against the model. Under ``torchrun`` rank 0 reads
and writes and every rank gets its result (:func:`on_main`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flatfl import checkpoint as ckpt
from flatfl import distributed, rundir, state_check
from flatfl.config import RunConfig
from flatfl.errors import UserError
from flatfl.run_checks import (
    check_finite,
    check_keys,
    check_state_groups,
    complete_metrics,
    resume_info,
    resumed_storage,
)
from flatfl.sampling import check_drawn, make_partition, server_holdout
from flatfl.saver import RoundSaver
from flatfl.simulation import Simulation, run_info
from flatfl.startup import start_header
from flatfl.statedict import StateDict
from flatfl.storage import StorageConfig
from flatfl.tracking import Tracker
from flatfl.validate import EDITED, check_dtypes


def on_main(ctx: distributed.DistContext | None, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on rank 0 only and give its result -- or its ``UserError`` -- to every rank."""
    if ctx is None:
        return fn()
    result, error = None, None
    if ctx.is_main:
        try:
            result = fn()
        except UserError as exc:
            error = str(exc)
    result, error = distributed.broadcast_object(ctx, (result, error))
    if error is not None:
        raise UserError(error)
    return result


def run_partition(
    out: Path, cfg: RunConfig, data: Any, ctx: distributed.DistContext | None, resume: bool, identity: str
) -> tuple[list[np.ndarray], list[Any] | None]:
    """The clients' indices -- drawn anew, or read back with the saved state on a resume (main rank reads)."""

    def read_resume() -> tuple[list[list[int]], int, str, dict[str, Any], dict[str, Any], StateDict, dict[str, Any]]:
        info = resume_info(out, identity)
        parts = ckpt.read_partition(out, info)
        check_drawn(out / ckpt.PARTITION_JSON, info, cfg, data, parts)  # an index moved between clients
        start, algo_name, st_tensors, st_json = ckpt.load_state(out, identity)
        # a state file edited back to an earlier round, or another round's algorithm state (restore_run names
        # another algorithm)
        state_check.check_resume_state(out, info, start, (algo_name, cfg.algo, cfg.algo_config), st_tensors, st_json)
        global_cpu, _ = ckpt.load_round(ckpt.round_path(out, start), identity, start)
        check_finite(ckpt.round_path(out, start), global_cpu)
        return parts, start, algo_name, st_tensors, st_json, global_cpu, info  # info: run.json, checked

    if not resume:
        return make_partition(cfg, data), None
    raw_parts, *resume_data = on_main(ctx, read_resume)
    parts = [np.asarray(p, dtype=np.int64) for p in raw_parts]
    n = len(data.train)
    if len(parts) != cfg.data.num_clients or any(len(p) and (p.min() < 0 or p.max() >= n) for p in parts):
        raise UserError(
            f"{out / ckpt.PARTITION_JSON}: does not match the run's data "
            f"({cfg.data.num_clients} clients over {n} samples)"
        )
    return parts, resume_data


def build_simulation(
    cfg: RunConfig,
    dev: torch.device,
    data: Any,
    parts: list[np.ndarray],
    ctx: distributed.DistContext | None,
    parallel_clients: int | str,
    log: Callable[[str], None],
) -> tuple[Simulation, dict[str, Any]]:
    """The simulation (data, model, algorithm) and run.json's description of it."""
    if parallel_clients == "auto":
        from flatfl.parallel import auto_parallel_clients

        parallel_clients = auto_parallel_clients(dev, cfg.clients_per_round)
    sim = Simulation(cfg, dev, data, parts, dist=ctx, parallel_clients=parallel_clients)
    if parallel_clients > 1:
        from flatfl.parallel import model_qualifies

        if not model_qualifies(sim.model):
            log(
                f"note: --parallel-clients: {cfg.model} has BatchNorm statistics, dropout or an LSTM, which cannot "
                "be stacked; its clients train one after another"
            )
    largest = max((len(p) for p in parts), default=0)
    if cfg.local.batch_size != "full" and int(cfg.local.batch_size) > largest > 0:
        log(
            f"note: --batch-size {cfg.local.batch_size}: no client holds more than {largest} training samples; each "
            "local epoch is one batch of the client's whole data (as --batch-size full)"
        )
    info = run_info(cfg, sim, parts, dev) | (
        {"launch": {"world_size": ctx.world_size, "backend": ctx.backend}} if ctx is not None else {}
    )
    source = getattr(cfg.algo_config, "proxy_data", None)
    if source is not None:  # FedDF/FedAUX: where the unlabelled proxy data come from (checked now)
        info["server_data"] = {"source": source, "samples": int(len(sim.server_data()))}

    return sim, info


DESCRIBED = {  # run.json's description of the model and data, which a resume recomputes ('source': where the
    "model": ("name", "num_parameters", "parameters", "state_keys"),  # data were read, may move)
    "dataset": ("name", "num_classes", "input_shape", "n_train", "n_test"),
}


def check_description(out: Path, stored: dict[str, Any], info: dict[str, Any]) -> None:
    """run.json's ``model`` and ``dataset`` records (outside the identity digest) are what this resume rebuilt
    from the config (``stored``: run.json as the resume read it); a field that differs was edited, or the data
    changed since the run was trained."""
    path = out / ckpt.RUN_JSON
    short = lambda v: repr(v) if len(repr(v)) <= 60 else repr(v)[:57] + "..."  # noqa: E731
    for part, keys in DESCRIBED.items():
        have = stored.get(part)
        if not isinstance(have, dict):
            raise UserError(f"{path}: '{part}' is not an object ({short(have)}); {EDITED}")
        for key in (k for k in keys if k in have and have[k] != info[part][k]):
            raise UserError(
                f"{path}: {part}.{key} is {short(have[key])}, the run's config rebuilds {short(info[part][key])}; "
                "the file was edited after the run wrote it, or the data changed since (nothing was changed)"
            )


def restore_run(
    out: Path,
    cfg: RunConfig,
    sim: Simulation,
    dev: torch.device,
    identity: str,
    storage: StorageConfig | None,
    main: bool,
    log: Callable[[str], None],
    resume_data: list[Any],
    info: dict[str, Any],
) -> tuple[int, StateDict, StorageConfig | None]:
    """The saved global model and algorithm state, checked against the model; (start round, global, storage)."""
    start, algo_name, st_tensors, st_json, global_cpu, stored = resume_data
    if main:
        check_description(out, stored, info)
    algo = sim.algorithm
    if algo_name != cfg.algo:
        raise UserError(f"{out / ckpt.STATE_FILE}: holds {algo_name} state but run.json says {cfg.algo}")
    # files store tensors sorted by name; keep the model's state_dict order, which fixes
    # the order in which FedMut draws per-tensor coefficients (resume == straight run)
    model_sd = sim.model.state_dict()
    check_keys(global_cpu, model_sd, ckpt.round_path(out, start))
    global_cpu = check_dtypes(ckpt.round_path(out, start), global_cpu, {k: v.dtype for k, v in model_sd.items()})
    check_state_groups(st_tensors, model_sd, {n for n, _ in sim.model.named_parameters()}, out / ckpt.STATE_FILE)
    global_state = {k: global_cpu[k].to(dev) for k in model_sd}
    try:
        algo.load_state({k: v.to(dev) for k, v in st_tensors.items()}, st_json)
    except (KeyError, ValueError) as exc:  # state the algorithm needs is missing or does not fit
        raise UserError(f"{out / ckpt.STATE_FILE}: {exc}; the state file is damaged (restore it from a copy)") from exc
    unused = sorted(set(st_tensors) - set(algo.state_tensors()))  # load then save: what the algorithm keeps
    if unused:
        raise UserError(
            f"{out / ckpt.STATE_FILE}: holds tensors {cfg.algo} does not use ({', '.join(unused[:3])}"
            f"{', ...' if len(unused) > 3 else ''}); the state file is damaged or forged (restore it from a copy)"
        )
    if main:
        complete_metrics(out, start, sim, identity, str(dev))
    if start >= cfg.rounds:
        log(f"{out}: already at round {start} of {cfg.rounds}; nothing to do (raise --rounds to continue)")
        return start, global_state, storage
    if main:
        state_check.drop_uncommitted(out, start)  # before run.json's rounds or storage change (flatfl.state_check)
        ckpt.set_run_rounds(out, cfg.rounds)
        storage = resumed_storage(out, storage)
        (out / ckpt.DIVERGED_JSON).unlink(missing_ok=True)  # training goes on: written again if it diverges
    log(start_header(cfg, info, dev, out, resumed_from=start))
    return start, global_state, storage


def start_fresh(
    out: Path,
    cfg: RunConfig,
    sim: Simulation,
    dev: torch.device,
    ctx: distributed.DistContext | None,
    rd: rundir.RunDir | None,
    info: dict[str, Any],
    parts: list[np.ndarray],
    data: Any,
    storage: StorageConfig | None,
    tensorboard: Path | None,
    log: Callable[[str], None],
) -> tuple[StateDict, RoundSaver | None]:
    """Round 0: the initial global model, evaluated; on the main rank run.json, partition.json and round 0
    written and committed (an overwritten run is moved aside only now, after every check)."""
    global_state = distributed.broadcast_state(ctx, sim.initial_state())
    loss0, acc0 = sim.evaluate(global_state)
    log(start_header(cfg, info, dev, out, round0=(loss0, acc0)))
    if not (ctx is None or ctx.is_main):
        return global_state, None
    assert rd is not None
    tracker = Tracker(Path(tensorboard) / out.name, warn=log) if tensorboard is not None else None
    rd.clear_for_new_run()
    from flatfl.partition_file import split_record

    partition = ckpt.partition_json_bytes(
        {"clients": [p.tolist() for p in parts], "split": split_record(cfg.data, data.train.y.numpy())}
        | ({"server": held.tolist()} if len(held := server_holdout(cfg, len(data.train))) else {})
    )
    storage = storage or StorageConfig()
    run_json = info | {"partition_sha256": ckpt.sha256_hex(partition), "storage": storage.to_dict()}
    ckpt.write_run_json(out, run_json)
    ckpt.atomic_write_bytes(out / ckpt.PARTITION_JSON, partition)
    saver = RoundSaver(out, cfg, cfg.identity(), storage, sim.algorithm, tracker)
    record0 = {"round": 0, "test_loss": loss0, "test_acc": acc0, "train_loss": None, "device": str(dev)}
    saver.job(0, global_state, record0)()
    rd.round0_committed()
    return global_state, saver
