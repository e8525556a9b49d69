"""``flatfl`` command line. The only place where configs are filled from flags.

Bad input exits with code 2 and one line ``flatfl: error: ...`` naming the flag or file and
the fix; a diverging run exits 1 after keeping its last finite checkpoint.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from flatfl.config import DataConfig, LocalConfig, RunConfig
from flatfl.errors import DivergenceError, UserError

# flag dest -> (section of RunConfig, field). Section "" is RunConfig itself.
DATA_FLAGS = {
    "dataset": "dataset",
    "test_frac": "test_frac",
    "split_seed": "split_seed",
    "partition": "partition",
    "dirichlet": "dirichlet_alpha",
    "min_size": "min_size",
    "clients": "num_clients",
}
LOCAL_FLAGS = {
    "lr": "lr",
    "momentum": "momentum",
    "batch_size": "batch_size",
    "local_epochs": "epochs",
    "weight_decay": "weight_decay",
}
RUN_FLAGS = ("algo", "model", "rounds", "frac", "seed", "save_clients", "eval_batch_size")
ALGO_FLAGS = {
    "weighted": "weighted",
    "radius": "radius",
    "mut_acc_rate": "mut_acc_rate",
    "mut_bound": "mut_bound",
    "mutate": "mutate",
}
# Flags that may differ when resuming (runtime choices, or extending the run).
RESUME_FREE = {"rounds", "device", "progress", "resume", "out", "overwrite", "command"}


class _Parser(argparse.ArgumentParser):
    """argparse that reports errors as one line and exit code 2 (no usage dump)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"flatfl: error: {message} (see '{self.prog} --help')\n")
        raise SystemExit(2)


def _typed(kind: type, check, what: str):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not check(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    parse.__name__ = what
    return parse


pos_int = _typed(int, lambda v: v > 0, "a positive integer")
nonneg_int = _typed(int, lambda v: v >= 0, "a non-negative integer")
pos_float = _typed(float, lambda v: v > 0, "a positive number")
nonneg_float = _typed(float, lambda v: v >= 0, "a non-negative number")
frac_0_1 = _typed(float, lambda v: 0 < v <= 1, "a fraction in (0, 1]")
open_frac = _typed(float, lambda v: 0 < v < 1, "a fraction in (0, 1)")
unit = _typed(float, lambda v: 0 <= v <= 1, "a number in [0, 1]")
momentum_t = _typed(float, lambda v: 0 <= v < 1, "a momentum in [0, 1)")


def _d(obj: Any, name: str) -> str:
    return f"(default: {getattr(obj, name)})"


def build_parser() -> argparse.ArgumentParser:
    from flatfl.algorithms import ALGORITHMS
    from flatfl.algorithms.fedmut import FedMutConfig
    from flatfl.data import DATASETS
    from flatfl.models import DEFAULT_MODEL, MODELS

    top = _Parser(prog="flatfl", description="Train federated learning algorithms, save every round, measure flatness.")
    sub = top.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    dd, ld = DataConfig(), LocalConfig()
    fm = FedMutConfig()
    t = sub.add_parser(
        "train",
        help="train FedAvg/FedMut on simulated non-IID clients, one checkpoint per round",
        description=(
            "Simulate K clients holding a partition of the training set; each round sample "
            "m = max(floor(frac*K), 1) clients, train them locally with SGD and aggregate. "
            "Writes run.json, partition.json, round_NNNN.safetensors (round 0 = initial model), "
            "state.safetensors and metrics.jsonl to --out (see docs/checkpoint-format.md)."
        ),
        argument_default=argparse.SUPPRESS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = t.add_argument_group("data and clients")
    g.add_argument(
        "--dataset",
        choices=sorted(DATASETS),
        metavar="NAME",
        help=f"dataset: {'; '.join(f'{k}: {v.description}' for k, v in sorted(DATASETS.items()))} {_d(dd, 'dataset')}",
    )
    g.add_argument(
        "--test-frac",
        type=open_frac,
        metavar="F",
        help="fraction of the data held out as the global test set, for datasets without an official "
        f"split {_d(dd, 'test_frac')}",
    )
    g.add_argument(
        "--split-seed",
        type=nonneg_int,
        metavar="S",
        help="seed of the train/test split, kept apart from --seed so all runs share one test set "
        f"{_d(dd, 'split_seed')}",
    )
    g.add_argument("--clients", type=pos_int, metavar="K", help=f"number of clients K {_d(dd, 'num_clients')}")
    g.add_argument(
        "--frac",
        type=frac_0_1,
        metavar="C",
        help=f"fraction of clients sampled per round; m = max(floor(C*K), 1) {_d(RunConfig, 'frac')}",
    )
    g.add_argument(
        "--partition",
        choices=["iid", "dirichlet"],
        help=f"how training data are split over clients {_d(dd, 'partition')}",
    )
    g.add_argument(
        "--dirichlet",
        type=pos_float,
        metavar="ALPHA",
        help=f"Dirichlet concentration of label skew; smaller = more non-IID {_d(dd, 'dirichlet_alpha')}",
    )
    g.add_argument(
        "--min-size",
        type=pos_int,
        metavar="N",
        help=f"redraw the Dirichlet split until every client has at least N samples {_d(dd, 'min_size')}",
    )

    g = t.add_argument_group("model and local training")
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
    g.add_argument("--lr", type=pos_float, help=f"local SGD learning rate {_d(ld, 'lr')}")
    g.add_argument(
        "--momentum",
        type=momentum_t,
        help=f"local SGD momentum; the FedMut paper uses 0.9, its reference code 0.5 {_d(ld, 'momentum')}",
    )
    g.add_argument("--batch-size", type=pos_int, metavar="B", help=f"local minibatch size {_d(ld, 'batch_size')}")
    g.add_argument("--local-epochs", type=pos_int, metavar="E", help=f"local epochs per round {_d(ld, 'epochs')}")
    g.add_argument(
        "--weight-decay", type=nonneg_float, metavar="WD", help=f"local SGD weight decay {_d(ld, 'weight_decay')}"
    )

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
        help=f"number of rounds; with --resume, the new total {_d(RunConfig, 'rounds')}",
    )
    w = g.add_mutually_exclusive_group()
    w.add_argument(
        "--weighted",
        dest="weighted",
        action="store_const",
        const=True,
        help="aggregate with sample-count weights (FedAvg's default)",
    )
    w.add_argument(
        "--unweighted",
        dest="weighted",
        action="store_const",
        const=False,
        help="aggregate with the plain mean (FedMut's default, as in its reference code)",
    )
    g.add_argument(
        "--radius",
        type=nonneg_float,
        metavar="ALPHA",
        help=f"FedMut: mutation radius alpha; mutant = w + c*alpha*(w - w_prev) {_d(fm, 'radius')}",
    )
    g.add_argument(
        "--mut-acc-rate",
        type=unit,
        metavar="BETA0",
        help=f"FedMut: beta0; pairs are (+1, -1+beta), beta = beta0*(1 - min(r/mut_bound, 1)) "
        f"(the paper uses 0.5 for ResNet-18, 0.3 for CNN/VGG-16) {_d(fm, 'mut_acc_rate')}",
    )
    g.add_argument(
        "--mut-bound",
        type=pos_int,
        metavar="TB",
        help=f"FedMut: round after which beta reaches 0 {_d(fm, 'mut_bound')}",
    )
    g.add_argument(
        "--mutate",
        choices=["all", "params"],
        help="FedMut: 'all' mutates every floating-point state_dict entry (BatchNorm running "
        f"stats too, as the reference code); 'params' only parameters {_d(fm, 'mutate')}",
    )

    g = t.add_argument_group("run")
    g.add_argument(
        "--seed",
        type=nonneg_int,
        help=f"run seed: partition, init, sampling, mutants, shuffles {_d(RunConfig, 'seed')}",
    )
    g.add_argument(
        "--out", type=Path, metavar="DIR", help="run directory (default: checkpoints/<dataset>-<algo>-s<seed>)"
    )
    g.add_argument(
        "--resume",
        type=Path,
        metavar="DIR",
        help="continue the run in DIR from its last completed round; its config comes from "
        "DIR/run.json (only --rounds, --device and --no-progress may be given)",
    )
    g.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    g.add_argument(
        "--save-clients",
        action="store_true",
        help="also save, per round, the model sent to each sampled client (FedMut mutants) "
        "and the model it returned, in clients_NNNN.safetensors",
    )
    g.add_argument(
        "--device", metavar="DEV", help="auto (CUDA when available, else CPU), cpu, cuda or cuda:N (default: auto)"
    )
    g.add_argument(
        "--eval-batch-size",
        type=pos_int,
        metavar="N",
        help=f"batch size of test evaluation {_d(RunConfig, 'eval_batch_size')}",
    )
    g.add_argument(
        "--no-progress",
        dest="progress",
        action="store_const",
        const=False,
        help="plain log lines instead of a progress bar (automatic when stderr is not a terminal)",
    )
    _add_landscape(sub)
    return top


def _add_landscape(sub) -> None:
    from analysis.landscape import SHARPNESS_MEASURES, LandscapeSettings

    d = LandscapeSettings()
    p = sub.add_parser(
        "landscape",
        help="Hessian eigenvalues, trace, spectral density and sharpness of one checkpoint",
        description=(
            "Measure the curvature of the loss at one saved global model. Reads --ckpt and the run.json "
            "beside it (model and data are rebuilt from it), and writes DIR/landscape.json with every "
            "number and its settings, plus density.png/.pdf with --density. The model is evaluated in "
            "eval mode (BatchNorm running statistics) on the full chosen data (exact, not one mini-batch)."
        ),
    )
    p.add_argument("--ckpt", type=Path, required=True, metavar="FILE", help="a round_NNNN.safetensors of a flatfl run")
    p.add_argument("--out", type=Path, metavar="DIR", help="output folder (default: RUN/landscape/round_NNNN)")
    g = p.add_argument_group("data")
    g.add_argument(
        "--data",
        default=d.data,
        metavar="SEL",
        help=f"train (union of all clients' data), test, or client:K (client K's training data) (default: {d.data})",
    )
    g.add_argument("--samples", type=pos_int, metavar="N", help="a seeded random subset of N samples (default: all)")
    g.add_argument(
        "--batch-size",
        type=pos_int,
        default=d.batch_size,
        metavar="B",
        help=f"samples per forward/backward pass; results do not depend on it (default: {d.batch_size})",
    )
    g.add_argument(
        "--dtype",
        choices=["float32", "float64"],
        default=d.dtype,
        help=f"precision of the analysis; float64 for reference checks (default: {d.dtype})",
    )
    g.add_argument("--device", default="auto", metavar="DEV", help="auto, cpu, cuda or cuda:N (default: auto)")
    g.add_argument(
        "--seed", type=nonneg_int, default=d.seed, help=f"seed of random vectors and subsets (default: {d.seed})"
    )
    g.add_argument(
        "--memory-budget",
        type=pos_float,
        default=d.memory_budget_gb,
        metavar="GB",
        help="keep the first-order graphs of all data in memory (about 2x faster HVPs) when their estimated "
        f"size fits this many GiB, else recompute them per HVP (default: {d.memory_budget_gb})",
    )
    g = p.add_argument_group("curvature")
    g.add_argument("--hessian", action="store_true", help="top-k eigenpairs and the most negative eigenvalue (Lanczos)")
    g.add_argument(
        "--topk", type=pos_int, default=d.topk, metavar="K", help=f"number of top eigenvalues (default: {d.topk})"
    )
    g.add_argument(
        "--tol",
        type=pos_float,
        default=d.tol,
        help=f"Lanczos stops when every residual ||Hv - lv|| <= tol * |lambda_max| (default: {d.tol})",
    )
    g.add_argument(
        "--max-vectors",
        type=pos_int,
        default=d.max_vectors,
        metavar="N",
        help=f"most parameter-sized vectors Lanczos/SLQ hold in memory (default: {d.max_vectors})",
    )
    g.add_argument("--trace", action="store_true", help="Hessian trace by Hutch++, with a standard error")
    g.add_argument(
        "--trace-matvecs",
        type=pos_int,
        default=d.trace_matvecs,
        metavar="N",
        help=f"HVP budget of Hutch++ (default: {d.trace_matvecs})",
    )
    g.add_argument(
        "--trace-method",
        choices=["hutch++", "hutchinson"],
        default=d.trace_method,
        help=f"trace estimator (default: {d.trace_method})",
    )
    g.add_argument(
        "--density", action="store_true", help="eigenvalue spectral density by stochastic Lanczos quadrature"
    )
    g.add_argument(
        "--slq-runs", type=pos_int, default=d.slq_runs, metavar="N", help=f"SLQ random vectors (default: {d.slq_runs})"
    )
    g.add_argument(
        "--slq-steps",
        type=pos_int,
        default=d.slq_steps,
        metavar="N",
        help=f"Lanczos steps per SLQ run (default: {d.slq_steps})",
    )
    g = p.add_argument_group("sharpness")
    g.add_argument(
        "--sharpness", metavar="LIST", help=f"comma-separated measures, or all: {', '.join(SHARPNESS_MEASURES)}"
    )
    g.add_argument(
        "--rho", type=pos_float, default=d.rho, help=f"radius of SAM and adaptive sharpness (default: {d.rho})"
    )
    g.add_argument("--eps", type=pos_float, default=d.eps, help=f"box size of epsilon-sharpness (default: {d.eps})")
    g.add_argument(
        "--sigma", type=pos_float, default=d.sigma, help=f"noise scale of average-case sharpness (default: {d.sigma})"
    )
    g.add_argument(
        "--sharpness-steps",
        type=pos_int,
        default=d.sharpness_steps,
        metavar="N",
        help=f"ascent steps of SAM/adaptive sharpness (default: {d.sharpness_steps})",
    )
    g.add_argument(
        "--sharpness-samples",
        type=pos_int,
        default=d.sharpness_samples,
        metavar="N",
        help=f"Monte Carlo draws of average-case sharpness (default: {d.sharpness_samples})",
    )
    g.add_argument(
        "--m", type=pos_int, metavar="M", help="SAM m-sharpness: mean of worst cases over batches of M samples"
    )
    g = p.add_argument_group("federated view")
    g.add_argument(
        "--federated",
        action="store_true",
        help="per client: lambda_max of its own loss at the global model and at the model it returned "
        "(needs --save-clients), and |cos| of its top eigenvector with the --data one",
    )
    g.add_argument(
        "--clients",
        default="auto",
        metavar="SEL",
        help="clients of the federated view: all, sampled (this round's, from clients_NNNN), or ids "
        "like 0,3,5 (default: sampled when saved, else all)",
    )


def cmd_landscape(ns: dict[str, Any]) -> int:
    from analysis.landscape import SHARPNESS_MEASURES, LandscapeSettings, compute, json_ready
    from analysis.plots import plot_density
    from flatfl import checkpoint as ckpt
    from flatfl.trainer import resolve_device

    sharp: tuple[str, ...] = ()
    if ns.get("sharpness"):
        names = [s.strip() for s in ns["sharpness"].split(",") if s.strip()]
        sharp = SHARPNESS_MEASURES if names == ["all"] else tuple(names)
        bad = [s for s in sharp if s not in SHARPNESS_MEASURES]
        if bad:
            raise UserError(f"--sharpness: unknown measure(s) {bad}; choose from all, {', '.join(SHARPNESS_MEASURES)}")
    if not (ns["hessian"] or ns["trace"] or ns["density"] or sharp or ns["federated"]):
        raise UserError("nothing to compute: pass --hessian, --trace, --density, --sharpness and/or --federated")
    if ns["max_vectors"] < ns["topk"]:
        raise UserError(f"--max-vectors: must be >= --topk ({ns['topk']})")
    settings = LandscapeSettings(
        data=ns["data"],
        samples=ns.get("samples"),
        batch_size=ns["batch_size"],
        dtype=ns["dtype"],
        device=str(resolve_device(ns["device"])),
        seed=ns["seed"],
        hessian=ns["hessian"],
        topk=ns["topk"],
        tol=ns["tol"],
        max_vectors=ns["max_vectors"],
        trace=ns["trace"],
        trace_matvecs=ns["trace_matvecs"],
        trace_method=ns["trace_method"],
        density=ns["density"],
        slq_runs=ns["slq_runs"],
        slq_steps=min(ns["slq_steps"], ns["max_vectors"]),
        sharpness=sharp,
        rho=ns["rho"],
        eps=ns["eps"],
        sigma=ns["sigma"],
        sharpness_steps=ns["sharpness_steps"],
        sharpness_samples=ns["sharpness_samples"],
        m=ns.get("m"),
        federated=ns["federated"],
        clients=ns["clients"],
        memory_budget_gb=ns["memory_budget"],
    )
    ckpt_path = Path(ns["ckpt"])
    if not ckpt_path.is_file():
        raise UserError(f"--ckpt: {ckpt_path} does not exist")
    result, density = compute(ckpt_path, settings, log=lambda s: print(s, file=sys.stderr, flush=True))
    out = ns.get("out") or ckpt_path.parent / "landscape" / ckpt_path.stem
    out.mkdir(parents=True, exist_ok=True)
    ckpt.atomic_write_json(out / "landscape.json", json_ready(result))
    print(f"wrote {out / 'landscape.json'}")
    if density is not None:
        for p in plot_density(
            density,
            out / "density",
            title=f"{result['algo']} round {result['round']}, "
            f"{result['data']['selection']} ({result['data']['samples']} samples)",
        ):
            print(f"wrote {p}")
    return 0


def config_from_args(ns: dict[str, Any]) -> RunConfig:
    """Fill a RunConfig from the flags that were given, defaults elsewhere."""
    from flatfl.algorithms import get_algorithm
    from flatfl.data import dataset_info
    from flatfl.models import DEFAULT_MODEL, model_kwargs_for

    data = replace(DataConfig(), **{f: ns[k] for k, f in DATA_FLAGS.items() if k in ns})
    local = replace(LocalConfig(), **{f: ns[k] for k, f in LOCAL_FLAGS.items() if k in ns})
    algo = ns.get("algo", "fedavg")
    algo_cls = get_algorithm(algo)
    names = {f.name for f in fields(algo_cls.config_cls)}
    for k, f in ALGO_FLAGS.items():
        if k in ns and f not in names:
            raise UserError(f"--{k.replace('_', '-')}: applies to --algo fedmut only, not {algo}")
    algo_config = algo_cls.config_cls(**{f: ns[k] for k, f in ALGO_FLAGS.items() if k in ns})
    info = dataset_info(data)
    model = ns.get("model", DEFAULT_MODEL.get(data.dataset))
    if model is None:
        raise UserError(f"--model: no default model for --dataset {data.dataset}; pass --model")
    cfg = RunConfig(
        algo=algo,
        algo_config=algo_config,
        model=model,
        model_kwargs=model_kwargs_for(model, info),
        data=data,
        local=local,
        **{k: ns[k] for k in RUN_FLAGS if k in ns and k not in ("algo", "model")},
    )
    return cfg


def _check_resume_flags(ns: dict[str, Any], saved: RunConfig, run_json: Path) -> None:
    """Flags given with --resume must agree with the saved config (except runtime ones)."""
    values = {
        **{k: getattr(saved.data, f) for k, f in DATA_FLAGS.items()},
        **{k: getattr(saved.local, f) for k, f in LOCAL_FLAGS.items()},
        **{k: getattr(saved, k) for k in RUN_FLAGS},
        **{k: getattr(saved.algo_config, f) for k, f in ALGO_FLAGS.items() if hasattr(saved.algo_config, f)},
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


def cmd_train(ns: dict[str, Any]) -> int:
    from flatfl import checkpoint as ckpt
    from flatfl.trainer import prepare_out, train

    if "resume" in ns:
        out = ns["resume"]
        if "out" in ns and Path(ns["out"]).resolve() != Path(out).resolve():
            raise UserError("--out: give only --resume DIR to continue a run (DIR is where it is written)")
        if "overwrite" in ns:
            raise UserError("--overwrite: cannot be combined with --resume")
        prepare_out(Path(out), resume=True, overwrite=False)  # clear errors for a missing run
        info = ckpt.read_run_json(out)
        train_cfg = RunConfig.from_dict(info["config"])
        _check_resume_flags(ns, train_cfg, Path(out) / ckpt.RUN_JSON)
        if "rounds" in ns:
            train_cfg = replace(train_cfg, rounds=ns["rounds"])
        cfg = train_cfg
        resume = True
    else:
        cfg = config_from_args(ns)
        out = ns.get("out", Path("checkpoints") / f"{cfg.data.dataset}-{cfg.algo}-s{cfg.seed}")
        resume = False
    logs = train(
        cfg,
        Path(out),
        device=ns.get("device", "auto"),
        resume=resume,
        overwrite=ns.get("overwrite", False),
        progress=ns.get("progress"),
    )
    if logs:
        last = logs[-1]
        print(f"done: {out} round {last.round}  test_acc {last.test_acc:.4f}  test_loss {last.test_loss:.4f}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        ns = vars(parser.parse_args(argv))
    except SystemExit as exc:  # argparse: --help (0) or a one-line usage error (2)
        return int(exc.code or 0)
    try:
        if ns["command"] == "train":
            return cmd_train(ns)
        if ns["command"] == "landscape":
            return cmd_landscape(ns)
        parser.error(f"unknown command {ns['command']!r}")
    except UserError as exc:
        sys.stderr.write(f"flatfl: error: {exc}\n")
        return exc.exit_code
    except DivergenceError as exc:
        sys.stderr.write(f"flatfl: diverged: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("flatfl: interrupted; completed rounds are saved, continue with --resume DIR\n")
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
