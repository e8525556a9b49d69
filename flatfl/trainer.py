"""The federated simulation: K clients, m sampled per round, a checkpoint per saved round.

``train(cfg, out)`` is the whole job behind ``flatfl train``:

1. load the dataset, split it over clients (seeded), build the model (seeded);
2. for each round t: sample m clients, let the algorithm run its round (dispatch, local
   SGD on each client, aggregate, update state), evaluate the new global model on the test
   split, and write a metrics line, optional ``clients_t`` and, at saved rounds (every round
   unless ``--save-every``/``--save-rounds``, ``flatfl.storage``), ``round_t`` and ``state``
   (``flatfl.saver``);
3. stop with :class:`DivergenceError` on the first non-finite loss or weight, leaving the
   last saved (finite) round as the newest checkpoint.

With ``resume=True`` it continues a run directory from its last committed round and gives
bitwise the same tensors as an uninterrupted run on CPU (all randomness is derived from
(seed, round, client); see ``flatfl.seeding``).

This module is the round loop and the run directory's opening (lock, ``--overwrite``, Ctrl-C); its parts
live apart: :mod:`flatfl.run_start` (the run's start, fresh or resumed), :mod:`flatfl.simulation` (the
simulated clients), :mod:`flatfl.sampling` (partition, server data, each round's clients),
:mod:`flatfl.device` (``--device``) and :mod:`flatfl.run_checks` (checks of the run directory). Their
public names are importable from here too.
"""

from __future__ import annotations

import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flatfl import checkpoint as ckpt
from flatfl import diagnostics, distributed, rundir, seeding
from flatfl.algorithms.base import FederatedAlgorithm
from flatfl.config import RunConfig
from flatfl.data import load_dataset
from flatfl.device import resolve_device
from flatfl.errors import DivergenceError, Interrupted, UserError
from flatfl.run_checks import check_finite, prepare_out
from flatfl.run_start import build_simulation, on_main, restore_run, run_partition, start_fresh
from flatfl.sampling import draw_clients, make_partition, sample_clients
from flatfl.saver import RoundSaver
from flatfl.simulation import Simulation
from flatfl.statedict import StateDict, first_nonfinite
from flatfl.storage import StorageConfig
from flatfl.tracking import Tracker

# the trainer's parts, importable from here as before the split
__all__ = ["RoundLog", "Simulation", "check_finite", "draw_clients", "make_partition", "prepare_out", "resolve_device",
           "sample_clients", "train"]  # fmt: skip


@dataclass
class RoundLog:
    round: int
    test_loss: float
    test_acc: float
    train_loss: float | None
    wall_time: float


def train(
    cfg: RunConfig,
    out: Path,
    *,
    device: str = "auto",
    resume: bool = False,
    overwrite: bool = False,
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
    download: bool = False,
    parallel_clients: int | str = 1,
    storage: StorageConfig | None = None,
    tensorboard: Path | None = None,
) -> list[RoundLog]:
    """Run (or continue) the federated simulation described by ``cfg`` into ``out``.

    ``download``: fetch an on-disk dataset missing under ``cfg.data.data_root``.
    ``parallel_clients``: train up to this many clients at once on the device by stacking their
    parameters (``flatfl.parallel``; models without BatchNorm/dropout/LSTM, rounds without local terms);
    ``"auto"``: :func:`flatfl.parallel.auto_parallel_clients`.

    Under ``torchrun`` (WORLD_SIZE > 1) each rank trains a share of every round's clients and rank
    0 alone writes (``flatfl.distributed``); the files are those of a single-process run.

    Returns the log of the rounds run by this call. Raises :class:`UserError` for bad
    input and :class:`DivergenceError` when training produces non-finite values.
    """
    out = Path(out)
    dev = resolve_device(device)
    if distributed.launched_by_torchrun() and dev.type == "cuda":
        dev = torch.device("cuda", distributed.local_rank())
    ctx = distributed.init(dev)
    ok = False
    rd = rundir.RunDir(out) if ctx is None or ctx.is_main else None  # rank 0 holds the lock
    try:
        check = lambda: prepare_out(out, resume=resume, overwrite=overwrite)  # noqa: E731
        settled = on_main(ctx, lambda: rundir.settle(out))  # an interrupted --overwrite finished or undone
        for note in settled or []:
            (log or print)(f"{out}: {note}")
        on_main(ctx, check)  # before the folder is made or locked
        notes = on_main(ctx, lambda: rd.open(create=not resume))  # type: ignore[union-attr]
        on_main(ctx, check)  # again under the lock, after recovery
        for note in notes if rd is not None else []:
            (log or print)(f"{out}: {note}")
        logs = _train(cfg, out, dev, ctx, rd, resume, progress, log, download, parallel_clients, storage, tensorboard)
        ok = True
        return logs
    except KeyboardInterrupt:
        if rd is not None:
            _interrupted_overwrite(rd)
        raise
    finally:
        if rd is not None:
            rd.close(failed=not ok)
        distributed.shutdown(ctx, ok)


def _interrupted_overwrite(rd: rundir.RunDir) -> None:
    """Ctrl-C during an ``--overwrite`` before the new run's round 0 was committed: the previous run, set aside in
    ``.flatfl-replaced/``, is put back now, under the lock this process still holds (what the next command that
    opens the directory would do), and the message says so; after the commit the previous run is deleted and the
    new run is resumable (the caller's usual message)."""
    out = rd.out
    if not rd.locked or not rundir.interrupted_overwrite(out):
        return
    committed_new = (out / rundir.REPLACED).is_dir() and rundir.committed(out)  # only the deletion was left
    try:
        rd.recover()
    except (OSError, UserError) as exc:
        where = out / (rundir.REPLACED if (out / rundir.REPLACED).is_dir() else rundir.MOVING)
        raise Interrupted(
            f"interrupted before the new run's round 0 was saved; the previous run is kept in {where}/ (putting it "
            f"back failed: {exc}); `flatfl prune {shlex.quote(str(out))} --keep 0 --dry-run` (which deletes "
            "nothing) puts it back"
        ) from None
    if committed_new:
        return  # the new run stands (round 0 saved): the caller's message
    raise Interrupted(
        f"interrupted before the new run's round 0 was saved, so the --overwrite was undone: {out} holds the previous "
        f"run again, unchanged; continue it with `flatfl train --resume {shlex.quote(str(out))}`, or run the "
        "--overwrite command again to replace it"
    ) from None


def _show_round(bar: Any, last_eval: dict[str, str], log: Callable[[str], None], cfg: RunConfig, t: int,
                rec: RoundLog) -> None:  # fmt: skip
    """Round t on the progress bar (its test accuracy and loss as the postfix), or as a log line."""
    if bar is not None:
        bar.update(1)
        last_eval["text"] = f" | test acc {rec.test_acc:.3f} loss {rec.test_loss:.3f}"
        bar.set_postfix_str(last_eval["text"].lstrip(" |"))
    else:
        log(
            f"[{cfg.algo}] round {t}/{cfg.rounds}  test_acc {rec.test_acc:.4f}  test_loss {rec.test_loss:.4f}  "
            f"train_loss {rec.train_loss:.4f}  {rec.wall_time:.2f}s"
        )


def _train(
    cfg: RunConfig,
    out: Path,
    dev: torch.device,
    ctx: distributed.DistContext | None,
    rd: rundir.RunDir | None,
    resume: bool,
    progress: bool | None,
    log: Callable[[str], None] | None,
    download: bool,
    parallel_clients: int | str,
    storage: StorageConfig | None = None,
    tensorboard: Path | None = None,
) -> list[RoundLog]:
    main = ctx is None or ctx.is_main
    log = log or (lambda s: print(s, flush=True))
    if not main:
        log = lambda s: None  # noqa: E731
    identity = cfg.identity()
    if resume and not on_main(ctx, lambda: rundir.committed(out) or not rundir.uncommitted_start(out)):
        log(f"{out}: stopped before its round 0 was saved; starting it from round 0")
        resume = False
    data = load_dataset(cfg.data, download=download and main)

    parts, resume_data = run_partition(out, cfg, data, ctx, resume, identity)
    sim, info = build_simulation(cfg, dev, data, parts, ctx, parallel_clients, log)
    algo = sim.algorithm

    if resume:
        start, global_state, storage = restore_run(out, cfg, sim, dev, identity, storage, main, log, resume_data, info)
        if start >= cfg.rounds:
            return []
    else:
        start = 0
        global_state, saver = start_fresh(out, cfg, sim, dev, ctx, rd, info, parts, data, storage, tensorboard, log)
    if main and resume:
        tracker = Tracker(Path(tensorboard) / out.name, start + 1, warn=log) if tensorboard is not None else None
        saver = RoundSaver(out, cfg, identity, storage or StorageConfig(), algo, tracker)
        saver.resumed()

    last_eval = {"text": ""}
    bar = (
        _progress_bar(cfg, sim, ctx, start, last_eval)
        if main and (sys.stderr.isatty() if progress is None else progress)
        else None
    )

    logs: list[RoundLog] = []
    writer = ckpt.BackgroundWriter()
    try:
        for t in range(start + 1, cfg.rounds + 1):
            rec, result, round_time = _one_round(t, cfg, sim, global_state, dev, ctx)
            new_global = result.new_global
            logs.append(rec)
            old_global, global_state = global_state, new_global
            if not main:
                continue
            writer.submit(_round_job(t, cfg, saver, rec, result, algo, old_global, round_time, dev, ctx))
            _show_round(bar, last_eval, log, cfg, t, rec)
            for note in algo.round_notes():
                (bar.write if bar is not None else log)(f"flatfl: round {t}: {note}")
    except KeyboardInterrupt:
        writer.cancel_pending()  # queued rounds are dropped; the one being written completes
        raise
    except DivergenceError as exc:
        writer.close()
        raise _diverged(exc, out, algo, main) from None
    finally:
        writer.close()
        if bar is not None:
            bar.close()
        if main and saver.tracker is not None:
            saver.tracker.close()
    return logs


def _round_job(
    t: int,
    cfg: RunConfig,
    saver: RoundSaver,
    rec: RoundLog,
    result: Any,
    algo: FederatedAlgorithm,
    old_global: StateDict,
    round_time: float,
    dev: torch.device,
    ctx: distributed.DistContext | None,
) -> Callable[[], None]:
    """Round t's files and metrics line, as a job for the background writer (main rank)."""
    clients_info, record = _round_record(rec, result, algo, old_global, round_time, dev, ctx)
    saver.took_part(clients_info["clients"])
    keep = cfg.saves_clients(t)
    returned = [u.state for u in result.updates] if keep else None
    return saver.job(t, result.new_global, record, result.sent if keep else None, returned, clients_info)


def _one_round(
    t: int,
    cfg: RunConfig,
    sim: Simulation,
    global_state: StateDict,
    dev: torch.device,
    ctx: distributed.DistContext | None,
) -> tuple[RoundLog, Any, float]:
    """Round t: sample, train, aggregate, check, evaluate. (its log, the algorithm's result, seconds to aggregate)."""
    t0 = time.perf_counter()
    algo = sim.algorithm
    chosen = algo.select_clients(t, cfg.clients_per_round, seeding.derive_rng(cfg.seed, seeding.SAMPLE, t))
    clients = sample_clients(cfg, t).tolist() if chosen is None else list(chosen)
    rng = seeding.derive_rng(cfg.seed, seeding.ALGORITHM, t)
    result = algo.run_round(t, global_state, clients, rng, sim)
    if ctx is not None and dev.type == "cuda":  # ranks must not drift apart through GPU non-determinism
        distributed.broadcast_state(ctx, result.new_global)
    _check_round_finite(t, result)
    t1 = time.perf_counter()
    test_loss, test_acc = sim.evaluate(result.new_global)
    if not np.isfinite(test_loss):
        raise DivergenceError(f"round {t}: the global model's test loss is {test_loss}", t, None)
    train_losses = [u.train_loss for u in result.updates]
    rec = RoundLog(t, test_loss, test_acc, float(np.mean(train_losses)), time.perf_counter() - t0)
    return rec, result, t1 - t0


def _check_round_finite(t: int, result: Any) -> None:
    """A non-finite aggregate stops the run, naming the first client whose local training produced one."""
    key = first_nonfinite(result.new_global)
    if key is None:
        return
    for u in result.updates:
        ukey = first_nonfinite(u.state)
        if ukey is not None:
            raise DivergenceError(
                f"round {t}, client {u.client}: local training produced a non-finite weight in {ukey}", t, u.client
            )
    raise DivergenceError(f"round {t}: the aggregated global model has non-finite values in {key}", t, None)


def _round_record(
    rec: RoundLog,
    result: Any,
    algo: FederatedAlgorithm,
    old_global: StateDict,
    round_time: float,
    dev: torch.device,
    ctx: distributed.DistContext | None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the clients file's info, the metrics.jsonl line) of a finished round."""
    train_losses = [u.train_loss for u in result.updates]
    clients_info = {
        "clients": [u.client for u in result.updates],
        "num_samples": [u.num_samples for u in result.updates],
        "train_loss": train_losses,
        **algo.dispatch_info(),
    }
    record = {
        "round": rec.round,
        "test_loss": rec.test_loss,
        "test_acc": rec.test_acc,
        "train_loss": rec.train_loss,
        "clients": clients_info["clients"],
        "client_train_loss": train_losses,
        "wall_time": rec.wall_time,
        "round_time": round_time,
        "device": str(dev),
    } | ({"world_size": ctx.world_size} if ctx is not None else {})
    record |= diagnostics.round_metrics(old_global, result.new_global, [u.sent_loss for u in result.updates])
    record |= algo.round_metrics()
    return clients_info, record


# the step sizes of an algorithm's own optimisers (server step, generator, distillation, pre-training), which a
# diverged run may owe to them as much as to the local SGD
OWN_STEPS = {"scaffold": "--global-lr", "mofedsam": "--global-lr", "fedswa": "--swa-lr", "feddf": "--distill-lr",
             "fedaux": "--distill-lr, --aux-pretrain-lr", "fedgen": "--gen-lr"}  # fmt: skip


def _own_steps(algo: FederatedAlgorithm) -> str:
    own = OWN_STEPS.get(getattr(algo, "name", ""))
    return f" ({algo.name}: also {own})" if own else ""


def _diverged(exc: DivergenceError, out: Path, algo: FederatedAlgorithm, main: bool) -> DivergenceError:
    """The one-line error of a diverged run; ``diverged.json`` so the analysis lists it instead of averaging it."""
    rounds = ckpt.list_rounds(out) if main else []
    last = rounds[-1] if rounds else 0
    reason = f"{exc}{_mutation_note(algo)}"
    message = (
        f"{reason}; {ckpt.round_path(out, last)} is the last finite checkpoint. "
        f"Lower --lr, --momentum, (FedMut) --radius or (SAM family) --rho{_own_steps(algo)}."
    )
    if main:
        ckpt.atomic_write_json(
            out / ckpt.DIVERGED_JSON,
            {"round": exc.round, "client": exc.client, "last_finite_round": last, "message": reason},
        )
    return DivergenceError(message, exc.round, exc.client)


def _progress_bar(
    cfg: RunConfig, sim: Simulation, ctx: distributed.DistContext | None, start: int, last_eval: dict[str, str]
) -> Any:
    """The rounds bar; the clients of the running round (or ranks) and the last test numbers as its postfix."""
    from tqdm.auto import tqdm

    bar = tqdm(total=cfg.rounds, initial=start, desc=f"{cfg.algo} rounds", unit="round", dynamic_ncols=True)
    mine = cfg.clients_per_round if ctx is None else len(ctx.my_slots(cfg.clients_per_round))
    sim.on_client_done = lambda slot, client: bar.set_postfix_str(
        f"client {slot + 1}/{cfg.clients_per_round}{last_eval['text']}"
        if ctx is None
        else f"{mine} clients on each of {ctx.world_size} ranks{last_eval['text']}",
        refresh=True,
    )
    return bar


def _mutation_note(algo: FederatedAlgorithm) -> str:
    """The diverging round's mutation norm for the one-line message (FedMut), else nothing."""
    m = algo.round_metrics()
    if "mutation_norm" not in m:
        return ""
    rel = m.get("mutation_rel")
    return f" (mutation norm radius*||d|| = {m['mutation_norm']:.4g}" + (
        f", {rel:.3g} x ||w||)" if rel is not None else ")"
    )
