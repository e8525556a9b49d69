"""``flatfl train``: flags -> frozen RunConfig (``RunConfig.from_flags``) -> ``flatfl.trainer.train``.

The flags are declared in :mod:`flatfl.cli.train_flags` and :mod:`flatfl.cli.algo_flags`; the config
flags are checked in one place, :mod:`flatfl.run_flags`, shared with the Flower app. This module runs
the command: a new run, or ``--resume`` of one (its config from run.json, the flags given checked
against it)."""

from __future__ import annotations

import argparse
import os
import shlex
from dataclasses import replace
from pathlib import Path
from typing import Any

from flatfl.cli.algo_flags import add_algorithm_flags
from flatfl.cli.train_flags import (
    add_algorithm_arguments,
    add_data_arguments,
    add_model_arguments,
    add_run_arguments,
    check_data_root,
    check_download,
)
from flatfl.config import LocalConfig, RunConfig
from flatfl.errors import Interrupted, UserError
from flatfl.run_flags import CONFIG_FLAGS, check_resume_flags, parse_flags
from flatfl.storage import StorageConfig


def config_flags(ns: dict[str, Any]) -> dict[str, Any]:
    """The flags of ``ns`` that make the run's config (``RunConfig.from_flags``'s mapping); the others
    (``--out``, ``--device``, storage, ...) are runtime choices."""
    return {k: v for k, v in ns.items() if k in CONFIG_FLAGS}


def add_parser(sub: Any) -> None:
    ld = LocalConfig()
    t = sub.add_parser(
        "train",
        help="train FedAvg, FedMut or a baseline on simulated non-IID clients, one checkpoint per round",
        description=(
            "Simulate K clients holding a partition of the training set; each round sample "
            "m = max(floor(frac*K), 1) clients, train them locally with SGD and aggregate. "
            "Writes run.json, partition.json, round_NNNN.safetensors (round 0 = initial model), "
            "state.safetensors and metrics.jsonl to --out (see docs/checkpoint-format.md).\n\n"
            "Several processes: torchrun --nproc_per_node=N -m flatfl train ... splits each round's clients "
            "across the N ranks (NCCL on GPUs, gloo on CPU; add --nnodes/--node-rank/--rdzv-endpoint for several "
            "machines); rank 0 writes the same files a single process would (bit for bit on CPU). "
            "See docs/howto/torchrun.md."
        ),
        argument_default=argparse.SUPPRESS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_data_arguments(t)
    add_model_arguments(t, ld)
    add_algorithm_flags(add_algorithm_arguments(t))
    add_run_arguments(t)


def storage_from_args(ns: dict[str, Any], base: StorageConfig, last: int | None = None) -> StorageConfig:
    """``base`` (a new run's defaults, or the resumed run's record) with the storage flags given; ``last``:
    the run's planned rounds, at which ``--save-rounds`` ranges are cut."""
    from flatfl.storage import parse_round_spec

    listed, every = parse_round_spec(ns["save_rounds"], "--save-rounds", last) if "save_rounds" in ns else (None, 0)
    if every and "save_every" in ns:
        raise UserError("--save-rounds: every:N and --save-every both set a step; give one of them")
    step = ns.get("save_every", every or base.save_every)
    if listed is not None and not every and "save_every" not in ns and base == StorageConfig():
        step = 0  # a new run given only --save-rounds saves those rounds (and round 0 and the last)
    return replace(
        base,
        save_every=step,
        save_rounds=base.save_rounds if listed is None else listed,
        clients_dtype=ns.get("clients_dtype", base.clients_dtype),
    )


def run(ns: dict[str, Any]) -> int:
    from flatfl import checkpoint as ckpt
    from flatfl.run_checks import prepare_out
    from flatfl.rundir import REPLACED, interrupted_overwrite, settle
    from flatfl.trainer import train

    given = parse_flags(config_flags(ns))  # checked before anything is read or written
    if "resume" in ns:
        out = ns["resume"]
        if "out" in ns and Path(ns["out"]).resolve() != Path(out).resolve():
            raise UserError("--out: give only --resume DIR to continue a run (DIR is where it is written)")
        if "overwrite" in ns:
            raise UserError("--overwrite: cannot be combined with --resume")
        if os.environ.get("RANK", "0") == "0":  # under torchrun rank 0 alone touches the directory
            for note in settle(Path(out)):  # an interrupted --overwrite finished or undone before run.json is read
                print(f"{out}: {note}")
        prepare_out(Path(out), resume=True, overwrite=False)  # clear errors for a missing run
        info = ckpt.read_run_json(out)
        cfg = RunConfig.from_dict(info["config"])
        check_resume_flags(given, cfg, Path(out) / ckpt.RUN_JSON)
        rounds = given.get("rounds", cfg.rounds)
        storage = storage_from_args(ns, StorageConfig.from_dict(info.get("storage")), rounds)
        cfg = replace(cfg, rounds=rounds)
        if "data_root" in given:  # the data moved: same experiment
            cfg = replace(cfg, data=replace(cfg.data, data_root=given["data_root"]))
        resume = True
    else:
        cfg = RunConfig.from_flags(given)
        storage = storage_from_args(ns, StorageConfig(), cfg.rounds)
        out = ns.get("out", Path("checkpoints") / f"{cfg.data.dataset}-{cfg.algo}-s{cfg.seed}")
        resume = False
    check_download(ns.get("download", False), cfg)
    check_data_root("data_root" in given, cfg)
    if "clients_dtype" in ns and not cfg.save_clients:
        raise UserError(
            f"--clients-dtype: the precision of clients_NNNN.safetensors, which this run does not write "
            f"({'the resumed run was trained without' if resume else 'no'} --save-clients); drop --clients-dtype"
        )
    try:
        logs = train(
            cfg,
            Path(out),
            device=ns.get("device", "auto"),
            resume=resume,
            overwrite=ns.get("overwrite", False),
            progress=ns.get("progress"),
            download=ns.get("download", False),
            parallel_clients=ns.get("parallel_clients") or "auto",
            storage=storage,
            tensorboard=ns.get("tensorboard"),
        )
    except Interrupted:
        raise  # the trainer's own account (an --overwrite undone)
    except KeyboardInterrupt:
        if interrupted_overwrite(Path(out)):  # (the trainer puts the previous run back; this is what it could not)
            raise Interrupted(
                f"interrupted during an --overwrite; the previous run is kept in {out}/{REPLACED}/ until the next "
                f"command opens {out}, which puts it back (e.g. `flatfl prune {shlex.quote(str(out))} --keep 0 "
                "--dry-run`, which deletes nothing)"
            ) from None
        if not (Path(out) / ckpt.RUN_JSON).is_file():
            raise Interrupted(f"interrupted before {out} held a run; nothing was saved") from None
        raise Interrupted(
            f"interrupted; the completed rounds are saved in {out}"
            + (" up to the last saved one (--save-every: --resume redoes the rest)" if storage.save_every != 1 else "")
            + f"; continue with: flatfl train --resume {shlex.quote(str(out))}"
        ) from None
    if logs and os.environ.get("RANK", "0") == "0":
        last = logs[-1]
        print(f"done: {out} round {last.round}  test_acc {last.test_acc:.4f}  test_loss {last.test_loss:.4f}")
    return 0
