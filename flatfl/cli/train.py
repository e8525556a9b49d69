"""``flatfl train``: flags -> frozen RunConfig -> ``flatfl.trainer.train``."""

from __future__ import annotations

import argparse
import os
import shlex
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from flatfl.cli.common import (
    SEED_RANGE,
    default,
    frac_0_1,
    momentum_t,
    nonneg_float,
    nonneg_int,
    open_frac,
    pos_float,
    pos_int,
    seed_t,
    unit,
)
from flatfl.config import DataConfig, LocalConfig, RunConfig
from flatfl.errors import Interrupted, UserError
from flatfl.presets import PRESETS, apply_preset, describe
from flatfl.storage import StorageConfig

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
# Flags that may differ when resuming (runtime choices, or extending the run).
RESUME_FREE = {
    "_argv",
    "data_root",
    "download",
    "rounds",
    "device",
    "parallel_clients",
    "progress",
    "resume",
    "out",
    "overwrite",
    "command",
    "save_every",
    "save_rounds",
    "clients_dtype",
    "tensorboard",
    "threads",
}


def _parallel_clients(text: str) -> int | str:
    return "auto" if text == "auto" else pos_int(text)


def _batch_size(text: str) -> int | str:
    return "full" if text == "full" else pos_int(text)


def add_data_arguments(t: Any, training: bool = True) -> None:
    """The data-and-clients flags, shared by ``flatfl train`` and ``flatfl partition`` (which trains
    nothing: no ``--frac``, as it draws no clients per round, and no ``--augment``)."""
    g = t.add_argument_group("data and clients")
    _add_source_arguments(g, training)
    _add_client_arguments(g, training)


def _add_source_arguments(g: Any, training: bool) -> None:
    """Which data set, where it lives and how it is split into train and test."""
    from flatfl.data import DATASETS

    dd = DataConfig()
    g.add_argument(
        "--dataset",
        choices=sorted(DATASETS),
        metavar="NAME",
        help="dataset: "
        + "; ".join(f"{k}: {v.description}" for k, v in sorted(DATASETS.items()))
        + f" {default(dd, 'dataset')}",
    )
    g.add_argument(
        "--test-frac",
        type=open_frac,
        metavar="F",
        help="fraction of the data held out as the global test set, for datasets without an official "
        f"split {default(dd, 'test_frac')}",
    )
    g.add_argument(
        "--split-seed",
        type=seed_t,
        metavar="S",
        help=f"seed of the train/test split, kept apart from --seed so all runs share one test set, {SEED_RANGE} "
        f"{default(dd, 'split_seed')}",
    )
    g.add_argument(
        "--data-root",
        metavar="DIR",
        help="folder holding on-disk datasets (CIFAR: DIR/cifar-10-batches-py/, DIR/cifar-100-python/) "
        f"{default(dd, 'data_root')}",
    )
    g.add_argument(
        "--download",
        action="store_true",
        help="fetch a missing CIFAR archive into --data-root through torchvision (needs network)",
    )
    if training:
        g.add_argument(
            "--augment",
            action="store_true",
            help="CIFAR: random 32x32 crop of the 4-padded image + horizontal flip per local minibatch "
            "(default: none, as the FedMut reference code)",
        )
    g.add_argument(
        "--cifar100-labels",
        choices=["coarse", "fine"],
        help="CIFAR-100: 20 coarse superclasses (as the FedMut reference code) or 100 fine classes "
        f"{default(dd, 'cifar100_labels')}",
    )


def _add_client_arguments(g: Any, client_sampling: bool) -> None:
    """How many clients, how their data are drawn and how many train per round."""
    dd = DataConfig()
    g.add_argument("--clients", type=pos_int, metavar="K", help=f"number of clients K {default(dd, 'num_clients')}")
    if client_sampling:
        g.add_argument(
            "--frac",
            type=frac_0_1,
            metavar="C",
            help=f"fraction of clients sampled per round; m = max(floor(C*K), 1) {default(RunConfig, 'frac')}",
        )
    g.add_argument(
        "--partition-file",
        type=Path,
        metavar="FILE",
        help="read the client split from FILE instead of drawing one: flatfl's partition.json ({'clients': "
        "[[indices], ...]}) or the FedMut authors' data/*.json ({'num_users', 'train_data': {'0': [indices], "
        "...}}, e.g. cifar10_100_noniidCase5_beta0.1.json); it fixes the number of clients; checked for range, "
        "duplicates and client count; its SHA-256 is recorded in run.json",
    )
    g.add_argument(
        "--partition",
        choices=["iid", "dirichlet", "shards", "natural"],
        help="how training data are split over clients; natural: the dataset's own clients (shakespeare: one "
        f"per role, its default) {default(dd, 'partition')}",
    )
    g.add_argument(
        "--dirichlet",
        type=pos_float,
        metavar="ALPHA",
        help=f"Dirichlet concentration of label skew; smaller = more non-IID {default(dd, 'dirichlet_alpha')}",
    )
    g.add_argument(
        "--shards",
        type=pos_int,
        metavar="S",
        help=f"shards: label-sorted shards per client (McMahan et al. 2017) {default(dd, 'shards_per_client')}",
    )
    g.add_argument(
        "--min-size",
        type=pos_int,
        metavar="N",
        help="redraw the Dirichlet split until every client has at least N samples; natural: keep only clients "
        f"(roles) with at least N training samples {default(dd, 'min_size')}",
    )


def add_parser(sub: Any) -> None:
    from flatfl.algorithms.fedmut import FedMutConfig

    ld = LocalConfig()
    fm = FedMutConfig()
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

    _model_arguments(t, ld)
    g = _algorithm_arguments(t)
    _fedmut_arguments(g, fm)
    _baseline_arguments(g)
    _distillation_arguments(g)
    _run_arguments(t)


def _model_arguments(t: Any, ld: Any) -> None:
    """Model and local SGD."""
    from flatfl.models import DEFAULT_MODEL, MODELS

    g = t.add_argument_group("model and local training")
    g.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="fill every flag not given from a FedMut hyperparameter set; "
        + " | ".join(describe(n) for n in sorted(PRESETS))
        + ". Recorded in run.json (default: none; flatfl's own defaults are the reference code's local SGD "
        "with 20 clients, 25%% per round)",
    )
    g.add_argument(
        "--norm",
        choices=["batch", "group"],
        help="resnet18: BatchNorm (default) or GroupNorm with 2 groups (no running statistics to average, "
        "mutate or freeze in Hessian analysis)",
    )
    g.add_argument(
        "--model",
        choices=sorted(MODELS),
        metavar="NAME",
        help="model: "
        + "; ".join(f"{k}: {v.description}" for k, v in sorted(MODELS.items()))
        + " (default: per dataset, "
        + ", ".join(f"{d}: {m}" for d, m in sorted(DEFAULT_MODEL.items()))
        + ")",
    )
    g.add_argument("--lr", type=pos_float, help=f"local SGD learning rate {default(ld, 'lr')}")
    g.add_argument(
        "--momentum",
        type=momentum_t,
        help="local SGD momentum, the same for every algorithm; the FedMut reference code's 0.5 (default), "
        f"the paper states 0.9, with which FedMut diverged on real CIFAR-10 {default(ld, 'momentum')}",
    )
    g.add_argument(
        "--batch-size",
        type=_batch_size,
        metavar="B",
        help="local minibatch size, or 'full': one batch of all the client's data per epoch (full-batch gradient "
        f"descent) {default(ld, 'batch_size')}",
    )
    g.add_argument("--local-epochs", type=pos_int, metavar="E", help=f"local epochs per round {default(ld, 'epochs')}")
    g.add_argument(
        "--weight-decay", type=nonneg_float, metavar="WD", help=f"local SGD weight decay {default(ld, 'weight_decay')}"
    )
    _local_opt_arguments(g)


def _local_opt_arguments(g: Any) -> None:
    """The local step's perturbation (SAM family) and the centralised shorthand."""
    from flatfl.algorithms.step import DEFAULT_ETA, DEFAULT_RHO, LOCAL_OPTS

    g.add_argument(
        "--local-opt",
        choices=list(LOCAL_OPTS),
        help="each local step, for any --algo: sgd; sam: the gradient taken at w + rho g/||g|| (Foret et al. 2021); "
        "asam: at w + rho T^2 g/||T g||, T = |w| + eta (Kwon et al. 2021); then the SGD update (momentum, weight "
        "decay) at w. Recorded in run.json as local.opt (default: sgd; fedsam/mofedsam: sam, fedasam: asam)",
    )
    g.add_argument(
        "--rho",
        type=nonneg_float,
        metavar="RHO",
        help=f"SAM/ASAM/FedLESAM perturbation radius; 0 = plain SGD steps (default: sam {DEFAULT_RHO['sam']}, "
        f"asam {DEFAULT_RHO['asam']}, fedlesam {DEFAULT_RHO['lesam']})",
    )
    g.add_argument(
        "--eta", type=nonneg_float, metavar="ETA", help=f"ASAM: T = |w| + eta on weights (default: {DEFAULT_ETA})"
    )
    g.add_argument(
        "--centralised",
        action="store_true",
        help="centralised training: one client holding the whole training set (--clients 1 --partition iid "
        "--frac 1); contradicting data flags are refused. Full-batch gradient descent: --centralised --batch-size "
        "full --local-epochs 1 --momentum 0 (each round one step on all the data)",
    )


def _algorithm_arguments(t: Any) -> Any:
    """The algorithm, rounds and aggregation weights; returns the group the per-algorithm flags join."""
    from flatfl.algorithms import ALGORITHMS

    g = t.add_argument_group("algorithm")
    g.add_argument(
        "--algo",
        choices=list(ALGORITHMS),
        metavar="NAME",
        help=f"federated algorithm: {', '.join(ALGORITHMS)} (default: fedavg)",
    )
    g.add_argument(
        "--rounds",
        type=pos_int,
        metavar="T",
        help=f"number of rounds; with --resume, the new total {default(RunConfig, 'rounds')}",
    )
    w = g.add_mutually_exclusive_group()
    w.add_argument(
        "--weighted",
        dest="weighted",
        action="store_const",
        const=True,
        help="aggregate with sample-count weights (default of fedavg, fedprox, fedcluster)",
    )
    w.add_argument(
        "--unweighted",
        dest="weighted",
        action="store_const",
        const=False,
        help="aggregate with the plain mean (default of fedmut, as its reference code, and of scaffold and "
        "clusamp, as their papers)",
    )
    return g


def _fedmut_arguments(g: Any, fm: Any) -> None:
    """FedMut: radius, beta schedule, what is mutated, the (non-paper) mutation cap."""
    g.add_argument(
        "--radius",
        type=nonneg_float,
        metavar="R",
        help=f"FedMut: mutation radius R (alpha in the paper); mutant = w + c*R*(w - w_prev) {default(fm, 'radius')}",
    )
    g.add_argument(
        "--mut-acc-rate",
        type=unit,
        metavar="BETA0",
        help=f"FedMut: beta0; pairs are (+1, -1+beta), beta = beta0*(1 - min(r/mut_bound, 1)) "
        f"(the paper uses 0.5 for ResNet-18, 0.3 for CNN/VGG-16) {default(fm, 'mut_acc_rate')}",
    )
    g.add_argument(
        "--mut-bound",
        type=pos_int,
        metavar="TB",
        help=f"FedMut: round after which beta reaches 0 {default(fm, 'mut_bound')}",
    )
    g.add_argument(
        "--mutate",
        choices=["all", "params"],
        help="FedMut: 'all' mutates every floating-point state_dict entry (BatchNorm running "
        f"stats too, as the reference code); 'params' only parameters {default(fm, 'mutate')}",
    )

    g.add_argument(
        "--mutation-cap",
        type=pos_float,
        metavar="RHO",
        help="FedMut safeguard, NOT in the paper or the reference code: cap the mutation step radius*||d|| at "
        "RHO*||w_t|| (the round's radius becomes min(radius, RHO*||w_t||/||d||), logged as mutation_radius) "
        "(default: off)",
    )


def _baseline_arguments(g: Any) -> None:
    """FedProx, SCAFFOLD, clustered sampling and FedCluster."""
    g.add_argument(
        "--mu",
        type=nonneg_float,
        metavar="MU",
        help="FedProx: weight of the proximal term (mu/2)||w - w_t||^2 (default: 0.01; 0 = FedAvg)",
    )
    g.add_argument(
        "--global-lr",
        type=pos_float,
        metavar="ETA_G",
        help="SCAFFOLD/MoFedSAM: server step size, x += eta_g * mean(y_k - x) (default: 1.0)",
    )
    _sam_family_arguments(g)

    g.add_argument(
        "--similarity",
        choices=["L1", "L2", "cosine"],
        help="CluSamp: distance between clients' representative gradients (default: L1, as the reference code)",
    )

    g.add_argument(
        "--clusters",
        type=pos_int,
        metavar="M",
        help="FedCluster: number of client clusters taking turns within a round (default: 2; 1 = FedAvg)",
    )
    g.add_argument(
        "--grouping",
        choices=["random", "label"],
        help="FedCluster: clusters drawn at random or by each client's most frequent label (default: random)",
    )


def _sam_family_arguments(g: Any) -> None:
    """MoFedSAM's momentum weight and FedSWA's schedule (--rho, --eta: the local step's flags)."""
    g.add_argument(
        "--mo-alpha",
        type=unit,
        metavar="ALPHA",
        help="MoFedSAM: local direction alpha * SAM gradient + (1 - alpha) * server momentum (default: 0.1)",
    )
    g.add_argument(
        "--swa-start",
        type=nonneg_int,
        metavar="S",
        help="FedSWA: rounds after round S average the server model and cycle the clients' lr "
        "(default: 75%% of --rounds)",
    )
    g.add_argument(
        "--swa-cycle",
        type=pos_int,
        metavar="C",
        help="FedSWA: cycle length in rounds; the SWA model collects the server model at each cycle's end "
        "(default: 10)",
    )
    g.add_argument(
        "--swa-lr",
        type=pos_float,
        metavar="LR",
        help="FedSWA: the clients' lr at the end of a cycle; it falls linearly from --lr (default: 1e-4)",
    )


def _distillation_arguments(g: Any) -> None:
    """FedDF, FedGen and FedAUX: server data and distillation, then the generator and the scorers."""
    g.add_argument(
        "--proxy-frac",
        type=open_frac,
        metavar="F",
        help="FedDF/FedAUX: share of the training set held out (unlabelled) as the server's proxy (FedAUX: "
        "auxiliary) data (default: 0.1)",
    )
    g.add_argument(
        "--proxy-data",
        metavar="SOURCE",
        help="FedDF/FedAUX: unlabelled proxy data: 'holdout' (a --proxy-frac slice of the training set kept off "
        "every client; default) or another dataset with the same input shape, of which a seeded --proxy-frac "
        "share of the training inputs is used (e.g. cifar100 for a cifar10 run, as the FedDF paper); recorded "
        "in run.json's config",
    )
    g.add_argument(
        "--temperature", type=pos_float, metavar="T", help="FedDF/FedAUX: distillation temperature (default: 1.0)"
    )
    g.add_argument(
        "--distill-steps",
        type=pos_int,
        metavar="N",
        help="FedDF/FedAUX: most Adam steps of distillation per round, early-stopped on 10%% of the proxy data "
        "(default: 100)",
    )
    g.add_argument("--distill-lr", type=pos_float, metavar="LR", help="FedDF/FedAUX: Adam step size (default: 1e-3)")
    _generator_arguments(g)
    _scorer_arguments(g)


def _generator_arguments(g: Any) -> None:
    """FedGen's generator and its two client-side loss weights."""
    g.add_argument(
        "--gen-alpha",
        type=nonneg_float,
        metavar="A",
        help="FedGen: client weight of CE(head(G(eps, y)), y) on generated latents (default: 0.2; all models)",
    )
    g.add_argument(
        "--gen-beta",
        type=nonneg_float,
        metavar="B",
        help="FedGen: client weight of KL(softmax(head(G(y))) || softmax(f(x))) on its own batch (default: 0.2)",
    )
    g.add_argument("--gen-lr", type=pos_float, metavar="LR", help="FedGen: generator Adam step size (default: 3e-4)")
    g.add_argument("--gen-epochs", type=pos_int, metavar="N", help="FedGen: generator epochs a round (default: 10)")
    g.add_argument("--gen-iters", type=pos_int, metavar="N", help="FedGen: Adam steps per generator epoch (default: 5)")
    g.add_argument(
        "--gen-batch",
        type=pos_int,
        metavar="B",
        help="FedGen: generated latents per step, server and clients (default: 128)",
    )
    g.add_argument("--gen-hidden", type=pos_int, metavar="H", help="FedGen: generator hidden width (default: 512)")
    g.add_argument("--gen-noise", type=pos_int, metavar="D", help="FedGen: generator noise size (default: 100)")
    g.add_argument(
        "--diversity", type=nonneg_float, metavar="ETA", help="FedGen: weight of the diversity loss (default: 1.0)"
    )


def _scorer_arguments(g: Any) -> None:
    """FedAUX's pre-training and its clients' certainty scorers."""
    g.add_argument(
        "--aux-pretrain-steps",
        type=nonneg_int,
        metavar="N",
        help="FedAUX: Adam steps of self-supervised rotation-prediction pre-training of the feature extractor on "
        "the auxiliary data before round 1; image datasets only (default: 0 = off)",
    )
    g.add_argument(
        "--aux-pretrain-lr", type=pos_float, metavar="LR", help="FedAUX: pre-training Adam step size (default: 1e-3)"
    )
    g.add_argument(
        "--score-l2",
        type=pos_float,
        metavar="LAMBDA",
        help="FedAUX: l2 weight of each client's logistic-regression certainty scorer (default: 0.01)",
    )
    g.add_argument(
        "--dp-epsilon",
        type=nonneg_float,
        metavar="EPS",
        help="FedAUX: (epsilon, delta)-DP Gaussian noise on the scorers' weights; 0 = none (default: 0)",
    )
    g.add_argument(
        "--dp-delta", type=open_frac, metavar="DELTA", help="FedAUX: delta of the scorers' privacy (default: 1e-5)"
    )


def _run_arguments(t: Any) -> None:
    """Seed, output, resume, client files, storage, device and progress."""
    g = t.add_argument_group("run")
    g.add_argument(
        "--seed",
        type=seed_t,
        help=f"run seed: partition, init, sampling, mutants, shuffles, {SEED_RANGE} {default(RunConfig, 'seed')}",
    )
    g.add_argument(
        "--out", type=Path, metavar="DIR", help="run directory (default: checkpoints/<dataset>-<algo>-s<seed>)"
    )
    g.add_argument(
        "--resume",
        type=Path,
        metavar="DIR",
        help="continue the run in DIR from its last completed round; its config comes from "
        "DIR/run.json (only --rounds, --device, --no-progress, --parallel-clients and the storage and tracking flags "
        "may be given)",
    )
    g.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    g.add_argument(
        "--save-clients",
        type=pos_int,
        nargs="?",
        const=1,
        metavar="K",
        help="also save the model sent to each sampled client (FedMut mutants) and the model it returned, in "
        "clients_NNNN.safetensors: every round, or with K only rounds t with t %% K in (0, 1) -- the clients "
        "that produced w_t and the mutants sent from it -- to save disk (needed by flatfl report's spread)",
    )
    add_storage_arguments(t)
    g.add_argument(
        "--device", metavar="DEV", help="auto (CUDA when available, else CPU), cpu, cuda or cuda:N (default: auto)"
    )
    g.add_argument(
        "--parallel-clients",
        type=_parallel_clients,
        default="auto",
        metavar="N",
        help="train up to N sampled clients at once on the device by stacking their parameters (torch.func.vmap); "
        "models without BatchNorm, dropout or LSTM (smallcnn, cnn, resnet18 --norm group), rounds without a "
        "local term (not fedprox with mu > 0, scaffold, fedgen after round 1); others train one after another. "
        "Same results within float tolerance; a runtime choice, free on --resume. auto: every sampled client at "
        "once on a GPU, one after another on a CPU, where stacking measured slower (default: auto)",
    )
    g.add_argument(
        "--eval-batch-size",
        type=pos_int,
        metavar="N",
        help=f"batch size of test evaluation {default(RunConfig, 'eval_batch_size')}",
    )
    g.add_argument(
        "--no-progress",
        dest="progress",
        action="store_const",
        const=False,
        help="plain log lines instead of a progress bar (automatic when stderr is not a terminal)",
    )


def add_storage_arguments(t: Any) -> None:
    """Which rounds get files, client-model precision, TensorBoard (free on --resume: not the experiment)."""
    g = t.add_argument_group("storage and tracking (recorded in run.json; may change on --resume)")
    g.add_argument(
        "--save-every",
        type=nonneg_int,
        metavar="N",
        help="write round_NNNN.safetensors and the resume point state.safetensors every N rounds, plus round 0 and "
        "the last round (metrics.jsonl still gets every round); a run stopped between saves restarts with --resume "
        "from the last saved round and redoes the rest bit for bit. 0: only round 0, the last and --save-rounds "
        "(default: 1, every round; with --save-rounds alone: 0)",
    )
    g.add_argument(
        "--save-rounds",
        metavar="LIST",
        help="also save these rounds: comma-separated rounds, ranges A-B (cut at --rounds) and every:N, e.g. "
        "1,2,5,50-60 (default: none)",
    )
    g.add_argument(
        "--clients-dtype",
        choices=["float32", "bfloat16"],
        help="precision of the client models in clients_NNNN.safetensors (--save-clients): bfloat16 halves their "
        "size at a relative rounding error of at most 2^-8 per weight (docs/checkpoint-format.md); global rounds "
        "and the state stay float32 (default: float32)",
    )
    g.add_argument(
        "--tensorboard",
        type=Path,
        metavar="DIR",
        help="also log every metrics.jsonl field per round to TensorBoard event files in DIR/<run folder name> "
        "(needs pip install 'flatfl[track]'; metrics.jsonl stays the record; a failing logger never stops the run) "
        "(default: off)",
    )


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


def config_from_args(ns: dict[str, Any]) -> RunConfig:
    """Fill a RunConfig from the flags that were given, defaults elsewhere."""
    from flatfl.algorithms import ALGORITHMS, get_algorithm
    from flatfl.data import dataset_info
    from flatfl.models import DEFAULT_MODEL, model_kwargs_for

    ns = apply_preset(_centralised(ns), DEFAULT_MODEL.get(ns.get("dataset", DataConfig.dataset)))
    data = replace(DataConfig(), **{f: ns[k] for k, f in DATA_FLAGS.items() if k in ns})
    if data.dataset == "shakespeare" and "partition" not in ns:
        data = replace(data, partition="natural")
    if "partition_file" in ns:
        data = _with_partition_file(data, ns)
    algo = ns.get("algo", "fedavg")
    algo_cls = get_algorithm(algo)
    local = _local_config(ns, algo_cls)
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
        from flatfl.data import DATASETS

        if algo_config.proxy_data not in DATASETS:
            raise UserError(
                f"--proxy-data: {algo_config.proxy_data!r} is not holdout or a dataset ({', '.join(sorted(DATASETS))})"
            )
    clusters = getattr(algo_config, "clusters", None)
    if algo == "fedcluster" and clusters is not None and clusters > data.num_clients:
        raise UserError(f"--clusters {clusters}: more clusters than the {data.num_clients} clients (--clients)")
    if algo == "fedaux" and algo_config.pretrain_steps > 0 and data.dataset == "shakespeare":
        raise UserError("--aux-pretrain-steps: rotation pre-training needs images; use 0 with --dataset shakespeare")
    info = dataset_info(data)
    model = ns.get("model", DEFAULT_MODEL.get(data.dataset))
    if model is None:
        raise UserError(f"--model: no default model for --dataset {data.dataset}; pass --model")
    kwargs = model_kwargs_for(model, info)
    if "norm" in ns:
        if "norm" not in kwargs:
            raise UserError(f"--norm: applies to --model resnet18 only, not {model}")
        kwargs["norm"] = ns["norm"]
    if data.augment and not data.dataset.startswith("cifar"):
        raise UserError(f"--augment: crop + flip is defined for cifar10/cifar100, not {data.dataset}")
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
    return cfg


CENTRALISED = {"clients": 1, "partition": "iid", "frac": 1.0}


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
    from flatfl.algorithms.step import DEFAULT_ETA, DEFAULT_RHO

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
    from flatfl.partition_file import check_dataset, read_partition_file

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


def _check_resume_flags(ns: dict[str, Any], saved: RunConfig, run_json: Path) -> None:
    """Flags given with --resume must agree with the saved config (except runtime ones)."""
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
                f"{flag} {v} differs from the resumed run's {values[k]} ({run_json}); a resumed run keeps "
                "its config: drop the flag, or start a new run with another --out"
            )


def run(ns: dict[str, Any]) -> int:
    from flatfl import checkpoint as ckpt
    from flatfl.run_checks import prepare_out
    from flatfl.rundir import settle
    from flatfl.trainer import train

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
        _check_resume_flags(ns, cfg, Path(out) / ckpt.RUN_JSON)
        storage = storage_from_args(ns, StorageConfig.from_dict(info.get("storage")), ns.get("rounds", cfg.rounds))
        if "rounds" in ns:
            cfg = replace(cfg, rounds=ns["rounds"])
        if "data_root" in ns:  # the data moved: same experiment
            cfg = replace(cfg, data=replace(cfg.data, data_root=str(ns["data_root"])))
        resume = True
    else:
        cfg = config_from_args(ns)
        storage = storage_from_args(ns, StorageConfig(), cfg.rounds)
        out = ns.get("out", Path("checkpoints") / f"{cfg.data.dataset}-{cfg.algo}-s{cfg.seed}")
        resume = False
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
    except KeyboardInterrupt:
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
