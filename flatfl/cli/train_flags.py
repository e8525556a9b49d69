"""``flatfl train``'s flags: data and clients, model and local training, the algorithm, the run and
its storage. The parser only collects their text; :meth:`flatfl.config.RunConfig.from_flags` checks
and types the config flags (:mod:`flatfl.run_flags`), so the Flower app's run config reads the same.
The runtime flags (``--out``, ``--device``, storage...) keep their argparse types here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flatfl.cli.common import SEED_RANGE, default, pos_int
from flatfl.config import DataConfig, RunConfig
from flatfl.errors import UserError
from flatfl.flagtypes import ROUNDS_BOUND, STEPS_BOUND, rounds0_t
from flatfl.presets import PRESETS, describe


def _parallel_clients(text: str) -> int | str:
    return "auto" if text == "auto" else pos_int(text)


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
        metavar="NAME",
        help="dataset: "
        + "; ".join(f"{k}: {v.description}" for k, v in sorted(DATASETS.items()))
        + f" {default(dd, 'dataset')}",
    )
    g.add_argument(
        "--test-frac",
        metavar="F",
        help="fraction of the data held out as the global test set, for datasets without an official "
        f"split {default(dd, 'test_frac')}",
    )
    g.add_argument(
        "--split-seed",
        metavar="S",
        help=f"seed of the train/test split, kept apart from --seed so all runs share one test set, {SEED_RANGE} "
        f"{default(dd, 'split_seed')}",
    )
    g.add_argument(
        "--data-root",
        metavar="DIR",
        help="folder holding on-disk datasets (CIFAR: DIR/cifar-10-batches-py/, DIR/cifar-100-python/); refused "
        "with the embedded digits, which read nothing from it "
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
        metavar="{coarse,fine}",
        help="CIFAR-100: 20 coarse superclasses (as the FedMut reference code) or 100 fine classes "
        f"{default(dd, 'cifar100_labels')}",
    )


def _add_client_arguments(g: Any, client_sampling: bool) -> None:
    """How many clients, how their data are drawn and how many train per round."""
    dd = DataConfig()
    g.add_argument("--clients", metavar="K", help=f"number of clients K {default(dd, 'num_clients')}")
    if client_sampling:
        g.add_argument(
            "--frac",
            metavar="C",
            help=f"fraction of clients sampled per round; m = max(floor(C*K), 1) {default(RunConfig, 'frac')}",
        )
    g.add_argument(
        "--partition-file",
        metavar="FILE",
        help="read the client split from FILE instead of drawing one: flatfl's partition.json ({'clients': "
        "[[indices], ...]}) or the FedMut authors' data/*.json ({'num_users', 'train_data': {'0': [indices], "
        "...}}, e.g. cifar10_100_noniidCase5_beta0.1.json); it fixes the number of clients; checked for range, "
        "duplicates and client count; its SHA-256 is recorded in run.json",
    )
    g.add_argument(
        "--partition",
        metavar="{iid,dirichlet,shards,natural}",
        help="how training data are split over clients; natural: the dataset's own clients (shakespeare: one "
        f"per role, its default) {default(dd, 'partition')}",
    )
    g.add_argument(
        "--dirichlet",
        metavar="ALPHA",
        help="Dirichlet concentration of label skew, at least 1e-6; smaller = more non-IID "
        f"{default(dd, 'dirichlet_alpha')}",
    )
    g.add_argument(
        "--shards",
        metavar="S",
        help=f"shards: label-sorted shards per client (McMahan et al. 2017) {default(dd, 'shards_per_client')}",
    )
    g.add_argument(
        "--min-size",
        metavar="N",
        help="redraw the Dirichlet split until every client has at least N samples; natural: keep only clients "
        f"(roles) with at least N training samples {default(dd, 'min_size')}",
    )


def add_model_arguments(t: Any, ld: Any) -> None:
    """Model and local SGD."""
    from flatfl.models import DEFAULT_MODEL, MODELS

    g = t.add_argument_group("model and local training")
    g.add_argument(
        "--preset",
        metavar="{" + ",".join(sorted(PRESETS)) + "}",
        help="fill every flag not given from a FedMut hyperparameter set; "
        + " | ".join(describe(n) for n in sorted(PRESETS))
        + ". Recorded in run.json (default: none; flatfl's own defaults are the reference code's local SGD "
        "with 20 clients, 25%% per round)",
    )
    g.add_argument(
        "--norm",
        metavar="{batch,group}",
        help="resnet18: BatchNorm (default) or GroupNorm with 2 groups (no running statistics to average, "
        "mutate or freeze in Hessian analysis)",
    )
    g.add_argument(
        "--model",
        metavar="NAME",
        help="model: "
        + "; ".join(f"{k}: {v.description}" for k, v in sorted(MODELS.items()))
        + " (default: per dataset, "
        + ", ".join(f"{d}: {m}" for d, m in sorted(DEFAULT_MODEL.items()))
        + ")",
    )
    g.add_argument("--lr", help=f"local SGD learning rate {default(ld, 'lr')}")
    g.add_argument(
        "--momentum",
        help="local SGD momentum, the same for every algorithm; the FedMut reference code's 0.5 (default), "
        f"the paper states 0.9, with which FedMut diverged on real CIFAR-10 {default(ld, 'momentum')}",
    )
    g.add_argument(
        "--batch-size",
        metavar="B",
        help="local minibatch size, or 'full': one batch of all the client's data per epoch (full-batch gradient "
        "descent); a client holding fewer samples than B takes them all in one batch (a note says when B is above "
        f"every client's size) {default(ld, 'batch_size')}",
    )
    g.add_argument("--local-epochs", metavar="E", help=f"local epochs per round, {STEPS_BOUND} {default(ld, 'epochs')}")
    g.add_argument("--weight-decay", metavar="WD", help=f"local SGD weight decay {default(ld, 'weight_decay')}")
    _local_opt_arguments(g)


def _local_opt_arguments(g: Any) -> None:
    """The local step's perturbation (SAM family) and the centralised shorthand."""
    from flatfl.algorithms.step import DEFAULT_ETA, DEFAULT_RHO, LOCAL_OPTS

    g.add_argument(
        "--local-opt",
        metavar="{" + ",".join(list(LOCAL_OPTS)) + "}",
        help="each local step, for any --algo: sgd; sam: the gradient taken at w + rho g/||g|| (Foret et al. 2021); "
        "asam: at w + rho T^2 g/||T g||, T = |w| + eta (Kwon et al. 2021); then the SGD update (momentum, weight "
        "decay) at w. Recorded in run.json as local.opt (default: sgd; fedsam/mofedsam: sam, fedasam: asam)",
    )
    g.add_argument(
        "--rho",
        metavar="RHO",
        help=f"SAM/ASAM/FedLESAM perturbation radius; 0 = plain SGD steps (default: sam {DEFAULT_RHO['sam']}, "
        f"asam {DEFAULT_RHO['asam']}, fedlesam {DEFAULT_RHO['lesam']})",
    )
    g.add_argument("--eta", metavar="ETA", help=f"ASAM: T = |w| + eta on weights (default: {DEFAULT_ETA})")
    g.add_argument(
        "--centralised",
        action="store_true",
        help="centralised training: one client holding the whole training set (--clients 1 --partition iid "
        "--frac 1); contradicting data flags are refused. Full-batch gradient descent: --centralised --batch-size "
        "full --local-epochs 1 --momentum 0 (each round one step on all the data)",
    )


def add_algorithm_arguments(t: Any) -> Any:
    """The algorithm, rounds and aggregation weights; returns the group the per-algorithm flags join."""
    from flatfl.algorithms import ALGORITHMS

    g = t.add_argument_group("algorithm")
    g.add_argument(
        "--algo",
        metavar="NAME",
        help=f"federated algorithm: {', '.join(ALGORITHMS)} (default: fedavg)",
    )
    g.add_argument(
        "--rounds",
        metavar="T",
        help=f"number of rounds, {ROUNDS_BOUND}; with --resume, the new total {default(RunConfig, 'rounds')}",
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


def add_run_arguments(t: Any) -> None:
    """Seed, output, resume, client files, storage, device and progress."""
    g = t.add_argument_group("run")
    g.add_argument(
        "--seed",
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
        nargs="?",
        const=1,
        metavar="K",
        help="also save the model sent to each sampled client (FedMut mutants) and the model it returned, in "
        "clients_NNNN.safetensors: every round, or with K only rounds t with t %% K in (0, 1) -- the clients "
        "that produced w_t and the mutants sent from it -- to save disk (needed by flatfl report's spread); K "
        f"{ROUNDS_BOUND}",
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
        metavar="N",
        help="batch size of test evaluation (results do not depend on it; an N above the test split's size is one "
        f"batch of all of it) {default(RunConfig, 'eval_batch_size')}",
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
        type=rounds0_t,
        metavar="N",
        help=f"write round_NNNN.safetensors and the resume point state.safetensors every N rounds, plus round 0 and "
        "the last round (metrics.jsonl still gets every round); a run stopped between saves restarts with --resume "
        "from the last saved round and redoes the rest bit for bit. 0: only round 0, the last and --save-rounds; "
        f"{ROUNDS_BOUND} "
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


def check_download(download: bool, cfg: Any) -> None:
    """``--download`` fetches missing CIFAR archives (the run's data set or its FedDF/FedAUX proxy data); with
    nothing to fetch it would be ignored, so it is refused."""
    proxy = str(getattr(cfg.algo_config, "proxy_data", ""))
    if download and not (cfg.data.dataset.startswith("cifar") or proxy.startswith("cifar")):
        raise UserError(
            f"--download: fetches a missing CIFAR archive, and --dataset {cfg.data.dataset} has none to fetch "
            "(digits is embedded; shakespeare is built with flatfl data shakespeare); drop --download"
        )


EMBEDDED = ("digits",)  # data sets shipped inside flatfl: nothing is read from --data-root


def check_data_root(given: bool, cfg: Any) -> None:
    """``--data-root`` names where on-disk data sets live; for the embedded digits (and no on-disk proxy data) it
    would be ignored, so it is refused, as --download is."""
    proxy = str(getattr(cfg.algo_config, "proxy_data", "holdout"))
    if given and cfg.data.dataset in EMBEDDED and proxy in ("holdout", *EMBEDDED):
        raise UserError(
            f"--data-root {cfg.data.data_root}: --dataset {cfg.data.dataset} is embedded in flatfl and reads nothing "
            "from disk; drop --data-root"
        )
