"""A run's config from ``flatfl train``'s flags, in one place for the command line and the Flower app.

:meth:`flatfl.config.RunConfig.from_flags` takes a mapping of flag names without the dashes
(``radius``, ``mut-acc-rate`` or ``mut_acc_rate``) to values: text as typed on the command line,
or the typed values of a Flower run config (``4.0``, ``true``). Every value goes through the same
check (:mod:`flatfl.flagtypes`; a number is checked as its text), then the cross-flag checks below
(``--centralised``, ``--partition-file``, the local step, each algorithm's own flags). A bad
value or combination is a :class:`UserError` of one line naming the flag (``--clients: expected a
positive integer, got '0'``): ``flatfl train`` prints it, the Flower app prefixes ``Flower run
config:``. Neither parses argv here: the command line's parser only collects the text.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from flatfl.algorithms import ALGORITHMS, get_algorithm
from flatfl.algorithms.step import DEFAULT_ETA, DEFAULT_RHO, LOCAL_OPTS
from flatfl.config import DataConfig, LocalConfig, RunConfig
from flatfl.data import DATASETS, dataset_info
from flatfl.errors import UserError
from flatfl.flagtypes import (
    batch_size_t,
    clients_t,
    dirichlet_t,
    frac_0_1,
    gen_size_t,
    momentum_t,
    nonneg_float,
    open_frac,
    passes0_t,
    passes_t,
    pos_float,
    pos_int,
    rounds0_t,
    rounds_t,
    seed_t,
    temperature_t,
    unit,
)
from flatfl.models import DEFAULT_MODEL, MODELS, model_kwargs_for
from flatfl.partition_file import check_dataset, read_partition_file
from flatfl.presets import PRESETS, apply_preset

# flag dest -> field of DataConfig / LocalConfig / RunConfig / the algorithm's config
DATA_FLAGS = {
    "dataset": "dataset",
    "test_frac": "test_frac",
    "split_seed": "split_seed",
    "partition": "partition",
    "dirichlet": "dirichlet_alpha",
    "min_size": "min_size",
    "clients": "num_clients",
    "shards": "shards_per_client",
    "data_root": "data_root",
    "augment": "augment",
    "cifar100_labels": "cifar100_labels",
}
LOCAL_FLAGS = {
    "lr": "lr",
    "momentum": "momentum",
    "batch_size": "batch_size",
    "local_epochs": "epochs",
    "weight_decay": "weight_decay",
    "local_opt": "opt",
    "rho": "rho",
    "eta": "eta",
}
RUN_FLAGS = ("algo", "model", "rounds", "frac", "seed", "save_clients", "eval_batch_size")
ALGO_FLAGS = {
    "weighted": "weighted",
    "radius": "radius",
    "mut_acc_rate": "mut_acc_rate",
    "mut_bound": "mut_bound",
    "mutate": "mutate",
    "mutation_cap": "mutation_cap",
    "mu": "mu",
    "global_lr": "global_lr",
    "similarity": "similarity",
    "clusters": "clusters",
    "grouping": "grouping",
    "proxy_data": "proxy_data",
    "proxy_frac": "proxy_frac",
    "temperature": "temperature",
    "distill_steps": "steps",
    "distill_lr": "lr",
    "gen_hidden": "gen_hidden",
    "gen_noise": "gen_noise",
    "gen_lr": "gen_lr",
    "gen_epochs": "gen_epochs",
    "gen_iters": "gen_iters",
    "gen_batch": "gen_batch",
    "gen_alpha": "gen_alpha",
    "gen_beta": "gen_beta",
    "diversity": "diversity",
    "aux_pretrain_steps": "pretrain_steps",
    "aux_pretrain_lr": "pretrain_lr",
    "score_l2": "score_l2",
    "dp_epsilon": "dp_epsilon",
    "dp_delta": "dp_delta",
    "mo_alpha": "alpha",
    "swa_start": "swa_start",
    "swa_cycle": "swa_cycle",
    "swa_lr": "swa_lr",
}
# on/off flags: true/false (a Flower run config may give the strings "true"/"false")
SWITCHES = ("augment", "centralised", "weighted")


def _choices() -> dict[str, tuple[str, ...]]:
    """Flags with a fixed set of values (the registries' names read when checked, so late entries count)."""
    return {
        "dataset": tuple(sorted(DATASETS)),
        "cifar100_labels": ("coarse", "fine"),
        "partition": ("iid", "dirichlet", "shards", "natural"),
        "preset": tuple(sorted(PRESETS)),
        "norm": ("batch", "group"),
        "model": tuple(sorted(MODELS)),
        "local_opt": tuple(LOCAL_OPTS),
        "algo": tuple(ALGORITHMS),
        "mutate": ("all", "params"),
        "similarity": ("L1", "L2", "cosine"),
        "grouping": ("random", "label"),
    }


CHOICE_FLAGS = tuple(_choices())
# flag -> the check of its text (flatfl.flagtypes)
KINDS: dict[str, Callable[[str], Any]] = {
    "test_frac": open_frac,
    "split_seed": seed_t,
    "data_root": str,
    "clients": clients_t,
    "frac": frac_0_1,
    "partition_file": Path,
    "dirichlet": dirichlet_t,
    "shards": pos_int,
    "min_size": pos_int,
    "lr": pos_float,
    "momentum": momentum_t,
    "batch_size": batch_size_t,
    "local_epochs": passes_t,
    "weight_decay": nonneg_float,
    "rho": nonneg_float,
    "eta": nonneg_float,
    "rounds": rounds_t,
    "radius": nonneg_float,
    "mut_acc_rate": unit,
    "mut_bound": rounds_t,
    "mutation_cap": pos_float,
    "mu": nonneg_float,
    "global_lr": pos_float,
    "mo_alpha": unit,
    "swa_start": rounds0_t,
    "swa_cycle": rounds_t,
    "swa_lr": pos_float,
    "clusters": pos_int,
    "proxy_frac": open_frac,
    "proxy_data": str,
    "temperature": temperature_t,
    "distill_steps": passes_t,
    "distill_lr": pos_float,
    "gen_alpha": nonneg_float,
    "gen_beta": nonneg_float,
    "gen_lr": pos_float,
    "gen_epochs": passes_t,
    "gen_iters": passes_t,
    "gen_batch": gen_size_t,
    "gen_hidden": gen_size_t,
    "gen_noise": gen_size_t,
    "diversity": nonneg_float,
    "aux_pretrain_steps": passes0_t,
    "aux_pretrain_lr": pos_float,
    "score_l2": pos_float,
    "dp_epsilon": nonneg_float,
    "dp_delta": open_frac,
    "seed": seed_t,
    "save_clients": rounds_t,
    "eval_batch_size": pos_int,
}
# every flag of a run's config (the rest of flatfl train's flags are runtime choices: --out, --device, ...)
CONFIG_FLAGS = frozenset(KINDS) | frozenset(SWITCHES) | frozenset(CHOICE_FLAGS)
# Config flags that may differ when resuming (extending the run; the data moved).
RESUME_FREE = frozenset({"rounds", "data_root"})
CENTRALISED = {"clients": 1, "partition": "iid", "frac": 1.0}


def flag(name: str) -> str:
    """``--mut-acc-rate`` of ``mut_acc_rate`` (or of ``mut-acc-rate``)."""
    return "--" + name.replace("_", "-")


def parse_flags(given: Mapping[str, Any]) -> dict[str, Any]:
    """The checked, typed values of ``given`` (flag names without dashes, ``-`` or ``_``), keyed by
    the flag's name with ``_``; a value is its text, or a number/boolean (checked as its text).
    ``unweighted = true`` is ``weighted = false``; ``save-clients`` may be ``true`` (1, as ``--save-clients``
    alone) or ``false`` (left out); any other flag that is not on/off refuses true/false (``seed = false`` is
    not seed 0), and a path or name flag (``data-root``) refuses a number."""
    out: dict[str, Any] = {}
    for key, value in given.items():
        name = str(key).replace("-", "_")
        if name == "unweighted":
            name, value = "weighted", not _switch(name, value)
        if name not in CONFIG_FLAGS:
            raise UserError(f"{flag(name)}: not a flag of a run's config (flatfl train --help lists them)")
        if name in out:
            raise UserError(f"{flag(name)}: given twice; give it once")
        parsed = _value(name, value)
        if parsed is not None:
            out[name] = parsed
    return out


def _switch(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise UserError(f"{flag(name)}: expected true or false, got {value!r}")


def _value(name: str, value: Any) -> Any:
    """One flag's checked value (None: left out)."""
    if name in SWITCHES:
        on = _switch(name, value)
        return on if (on or name == "weighted") else None
    if isinstance(value, bool) and name == "save_clients":  # the one flag given alone (true) or left out (false)
        return 1 if value else None
    if KINDS.get(name) in (str, Path) and not isinstance(value, (str, Path)):
        raise UserError(f"{flag(name)}: expected a path or name as text, got {value!r}")
    text = str(value)
    if name in CHOICE_FLAGS:
        names = _choices()[name]
        if text not in names:
            raise UserError(f"{flag(name)}: invalid choice {text!r} (choose from {', '.join(names)})")
        return text
    try:
        return KINDS[name](text)
    except argparse.ArgumentTypeError as exc:
        raise UserError(f"{flag(name)}: {exc}") from None


def config_from_flags(given: Mapping[str, Any]) -> RunConfig:
    """``RunConfig.from_flags``: the config of the flags given (checked), defaults elsewhere."""
    ns = parse_flags(given)
    centralised = bool(ns.get("centralised"))
    ns = apply_preset(_centralised(ns), DEFAULT_MODEL.get(ns.get("dataset", DataConfig.dataset)))
    data = replace(DataConfig(), **{f: ns[k] for k, f in DATA_FLAGS.items() if k in ns})
    if data.dataset == "shakespeare" and "partition" not in ns:
        data = replace(data, partition="natural")
    if "partition_file" in ns:
        data = _with_partition_file(data, ns)
    else:
        _check_partition_options(ns, data.partition)
    algo = ns.get("algo", "fedavg")
    algo_cls = get_algorithm(algo)
    local = _local_config(ns, algo_cls)
    algo_config = _algo_config(ns, algo_cls, data, local)
    model, kwargs = _model(ns, data)
    if data.augment and not data.dataset.startswith("cifar"):
        raise UserError(f"--augment: crop + flip is defined for cifar10/cifar100, not {data.dataset}")
    if "cifar100_labels" in ns and data.dataset != "cifar100":
        raise UserError(f"--cifar100-labels: applies to --dataset cifar100 only, not {data.dataset}")
    cfg = RunConfig(
        algo=algo,
        algo_config=algo_config,
        model=model,
        model_kwargs=kwargs,
        data=data,
        local=local,
        preset=ns.get("preset"),
        **{k: ns[k] for k in RUN_FLAGS if k in ns and k not in ("algo", "model")},
    )
    _check_not_fedavg(cfg, centralised)
    return cfg


def _check_not_fedavg(cfg: RunConfig, centralised: bool) -> None:
    """Refuse an algorithm whose mechanism needs several clients where it would silently be FedAvg: FedMut with
    one client a round sends the unmutated model (its +/- pairs need two), FedDF distils an ensemble of one model,
    SCAFFOLD with one client has c = c_1 (the correction c - c_i is zero)."""
    m, k = cfg.clients_per_round, cfg.data.num_clients
    how = "--centralised" if centralised else f"--clients {k} --frac {cfg.frac}"
    if cfg.algo in ("fedmut", "feddf") and m < 2:
        what = {"fedmut": "sends the global model unmutated (its +/- mutants come in pairs)",
                "feddf": "distils an ensemble of one model"}[cfg.algo]  # fmt: skip
        raise UserError(
            f"--algo {cfg.algo}: {how} samples 1 client a round, where {cfg.algo} {what}; sample at least 2 a round"
        )
    if cfg.algo == "clusamp" and k < 2:
        raise UserError(f"--algo clusamp: {how} has 1 client, and clustered sampling needs at least 2 to cluster")
    if cfg.algo == "scaffold" and k < 2:
        raise UserError(
            f"--algo scaffold: {how} has 1 client, whose control variate is the server's (the correction c - c_i "
            "is zero: FedAvg); use --algo fedavg or at least 2 clients"
        )


def _model(ns: dict[str, Any], data: DataConfig) -> tuple[str, dict[str, Any]]:
    """The model's name (``--model`` or the data set's default) and its keyword arguments (``--norm``)."""

    info = dataset_info(data)
    model = ns.get("model", DEFAULT_MODEL.get(data.dataset))
    if model is None:
        raise UserError(f"--model: no default model for --dataset {data.dataset}; pass --model")
    kwargs = model_kwargs_for(model, info)
    if "norm" in ns:
        if "norm" not in kwargs:
            raise UserError(f"--norm: applies to --model resnet18 only, not {model}")
        kwargs["norm"] = ns["norm"]
    return model, kwargs


def _algo_config(ns: dict[str, Any], algo_cls: Any, data: DataConfig, local: LocalConfig) -> Any:
    """The algorithm's frozen config from its own flags; a flag of another algorithm is refused."""
    algo = algo_cls.name
    names = {f.name for f in fields(algo_cls.config_cls)}
    for k, f in ALGO_FLAGS.items():
        if k in ns and f not in names:
            owners = [n for n, c in ALGORITHMS.items() if f in {x.name for x in fields(c.config_cls)}]
            raise UserError(f"--{k.replace('_', '-')}: applies to --algo {'/'.join(owners)} only, not {algo}")
    algo_config = algo_cls.config_cls(**{f: ns[k] for k, f in ALGO_FLAGS.items() if k in ns})
    if algo == "fedswa" and algo_config.swa_start is None:  # 75 % of the rounds, fixed for the run's life
        algo_config = replace(algo_config, swa_start=int(0.75 * ns.get("rounds", RunConfig.rounds)))
    if algo == "fedswa":
        _check_swa(algo_config, local, ns.get("rounds", RunConfig.rounds), given=set(ns))
    if algo in ("feddf", "fedaux") and algo_config.proxy_data != "holdout":
        if algo_config.proxy_data not in DATASETS:
            raise UserError(
                f"--proxy-data: {algo_config.proxy_data!r} is not holdout or a dataset ({', '.join(sorted(DATASETS))})"
            )
    clusters = getattr(algo_config, "clusters", None)
    if algo == "fedcluster" and clusters is not None and clusters > data.num_clients:
        raise UserError(f"--clusters {clusters}: more clusters than the {data.num_clients} clients (--clients)")
    if algo == "fedaux" and algo_config.pretrain_steps > 0 and data.dataset == "shakespeare":
        raise UserError("--aux-pretrain-steps: rotation pre-training needs images; use 0 with --dataset shakespeare")
    if algo == "fedaux":
        _check_fedaux(algo_config, set(ns))
    return algo_config


def _check_fedaux(cfg: Any, given: set[str]) -> None:
    """FedAUX's dependent options are refused where their switch is off (they would be ignored): the pre-training
    step size without pre-training steps, the DP delta without a DP epsilon."""
    if "aux_pretrain_lr" in given and cfg.pretrain_steps == 0:
        raise UserError(
            "--aux-pretrain-lr: the step size of rotation pre-training, which --aux-pretrain-steps 0 (the default) "
            "leaves off; give --aux-pretrain-steps N or drop --aux-pretrain-lr"
        )
    if "dp_delta" in given and cfg.dp_epsilon == 0:
        raise UserError(
            "--dp-delta: the delta of the scorers' (epsilon, delta)-DP noise, which --dp-epsilon 0 (the default) "
            "leaves off; give --dp-epsilon EPS or drop --dp-delta"
        )


def _check_swa(cfg: Any, local: Any, rounds: int, given: set[str]) -> None:
    """FedSWA's schedule, as given on the command line, must happen within the run: averaging starts before
    the last round, a cycle fits in the rounds, and the cycle's low learning rate is below --lr."""
    if "swa_start" in given and cfg.swa_start > rounds:
        raise UserError(f"--swa-start {cfg.swa_start}: averaging would start after the last round ({rounds}, --rounds)")
    if "swa_cycle" in given and cfg.swa_cycle > rounds:
        raise UserError(f"--swa-cycle {cfg.swa_cycle}: longer than the run ({rounds} rounds, --rounds)")
    swa_lr = cfg.swa_lr
    if "swa_lr" in given and swa_lr > local.lr:
        raise UserError(f"--swa-lr {swa_lr:g}: above --lr {local.lr:g} (the cycle runs from --lr down to --swa-lr)")


# the options of each partition (flatfl.partition; --min-size is also shakespeare's natural split's smallest role):
# given with another partition they would be ignored
PARTITION_OPTIONS = {"dirichlet": ("dirichlet",), "min_size": ("dirichlet", "natural"), "shards": ("shards",)}


def _check_partition_options(ns: dict[str, Any], partition: str) -> None:
    """Refuse ``--shards`` unless ``--partition shards``, ``--dirichlet`` unless dirichlet, ``--min-size``
    unless dirichlet or natural: silently ignored otherwise."""
    for k, owners in PARTITION_OPTIONS.items():
        if k in ns and partition not in owners:
            raise UserError(
                f"{flag(k)} {ns[k]}: an option of --partition {' or '.join(owners)}, and the partition is "
                f"{partition}; give --partition {owners[0]} or drop {flag(k)}"
            )


def _centralised(ns: dict[str, Any]) -> dict[str, Any]:
    """``--centralised``: the flags of one client holding all the training data (``CENTRALISED``);
    a flag given with another value, or one splitting data over clients, is refused."""
    if not ns.get("centralised"):
        return {k: v for k, v in ns.items() if k != "centralised"}
    for k, v in CENTRALISED.items():
        if k in ns and ns[k] != v:
            raise UserError(f"--{k} {ns[k]}: --centralised trains one client on all the data (--{k} {v}); drop one")
    for k in ("dirichlet", "shards", "min_size", "partition_file"):
        if k in ns:
            raise UserError(f"--{k.replace('_', '-')}: --centralised splits nothing; drop one of them")
    return {k: v for k, v in ns.items() if k != "centralised"} | CENTRALISED


def _local_config(ns: dict[str, Any], algo_cls: Any) -> LocalConfig:
    """The local step's config: SGD flags, then the perturbation: ``--local-opt`` or the algorithm's own
    (FedSAM: sam), with ``--rho``/``--eta`` where they apply (defaults in flatfl.algorithms.step)."""
    local = replace(LocalConfig(), **{f: ns[k] for k, f in LOCAL_FLAGS.items() if k in ns and k not in ("rho", "eta")})
    own = algo_cls.local_opt
    if own is not None and "local_opt" in ns and ns["local_opt"] != own:
        raise UserError(
            f"--local-opt {ns['local_opt']}: --algo {algo_cls.name} defines its local step ({own}); drop one"
        )
    opt = own or local.opt
    if "rho" in ns and opt == "sgd":
        raise UserError("--rho: applies to --local-opt sam/asam and --algo fedsam/fedasam/mofedsam/fedlesam, not sgd")
    if "eta" in ns and opt != "asam":
        raise UserError(f"--eta: applies to --local-opt asam (and --algo fedasam) only, not {opt}")
    if opt == "sgd":
        return replace(local, opt="sgd")
    return replace(
        local,
        opt=opt,
        rho=float(ns.get("rho", DEFAULT_RHO[opt])),
        eta=float(ns.get("eta", DEFAULT_ETA)) if opt == "asam" else None,
    )


def _with_partition_file(data: DataConfig, ns: dict[str, Any]) -> DataConfig:
    """``data`` reading its split from ``--partition-file`` (checked now; the index range once loaded)."""
    path = ns["partition_file"]
    for k in ("partition", "dirichlet", "shards", "min_size"):
        if k in ns:
            raise UserError(f"--{k.replace('_', '-')}: the split comes from --partition-file {path}; drop one of them")
    pf = read_partition_file(path)
    check_dataset(pf, path, data.dataset)
    if "clients" in ns and ns["clients"] != len(pf.clients):
        raise UserError(f"--clients {ns['clients']}: --partition-file {path} holds {len(pf.clients)} clients")
    return replace(
        data,
        partition="file",
        partition_file=str(path),
        partition_sha256=pf.sha256,
        num_clients=len(pf.clients),
    )


def check_resume_flags(ns: dict[str, Any], saved: RunConfig, run_json: Path) -> None:
    """Config flags given with --resume (``parse_flags``'s values) must agree with the saved config, except
    ``RESUME_FREE`` ones."""
    values = {
        **{k: getattr(saved.data, f) for k, f in DATA_FLAGS.items()},
        **{k: getattr(saved.local, f) for k, f in LOCAL_FLAGS.items()},
        **{k: getattr(saved, k) for k in RUN_FLAGS},
        **{k: getattr(saved.algo_config, f) for k, f in ALGO_FLAGS.items() if hasattr(saved.algo_config, f)},
        **({"norm": saved.model_kwargs["norm"]} if "norm" in saved.model_kwargs else {}),
        "preset": saved.preset,
    }
    for k, v in ns.items():
        if k in RESUME_FREE:
            continue
        flag = "--" + k.replace("_", "-")
        if k not in values:
            raise UserError(f"{flag}: does not apply to the {saved.algo} run being resumed ({run_json})")
        if values[k] != v:
            raise UserError(
                f"{as_typed(k, v)} differs from the resumed run, which has {as_typed(k, values[k])} ({run_json}); "
                "a resumed run keeps its config: drop the flag, or start a new run with another --out"
            )


def as_typed(name: str, value: Any) -> str:
    """Setting ``name`` = ``value`` the way a user types it: ``--lr 0.05``, ``--unweighted`` (weighted False),
    ``--augment`` / ``no --augment`` (a switch), ``no preset`` (None: the flag left out)."""
    flag = "--" + name.replace("_", "-")
    if name == "weighted" and isinstance(value, bool):
        return "--weighted" if value else "--unweighted"
    if name in SWITCHES and isinstance(value, bool):
        return flag if value else f"no {flag}"
    if value is None:
        return f"no {name.replace('_', ' ')}"
    return f"{flag} {value}"
