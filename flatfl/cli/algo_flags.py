"""``flatfl train``'s per-algorithm flags (FedMut, the baselines, the SAM family, distillation,
FedGen's generator, FedAUX's scorers), in the parser's ``algorithm`` group; their values are checked
by :mod:`flatfl.run_flags`, which also refuses a flag of another algorithm."""

from __future__ import annotations

from typing import Any

from flatfl.cli.common import default
from flatfl.flagtypes import ROUNDS_BOUND, STEPS_BOUND


def add_algorithm_flags(g: Any) -> None:
    """Every algorithm's own flags, added to the ``algorithm`` group ``g``."""
    _fedmut_arguments(g)
    _baseline_arguments(g)
    _distillation_arguments(g)


def _fedmut_arguments(g: Any) -> None:
    """FedMut: radius, beta schedule, what is mutated, the (non-paper) mutation cap."""
    from flatfl.algorithms.fedmut import FedMutConfig

    fm = FedMutConfig()
    g.add_argument(
        "--radius",
        metavar="R",
        help=f"FedMut: mutation radius R (alpha in the paper); mutant = w + c*R*(w - w_prev) {default(fm, 'radius')}",
    )
    g.add_argument(
        "--mut-acc-rate",
        metavar="BETA0",
        help=f"FedMut: beta0; pairs are (+1, -1+beta), beta = beta0*(1 - min(r/mut_bound, 1)) "
        f"(the paper uses 0.5 for ResNet-18, 0.3 for CNN/VGG-16) {default(fm, 'mut_acc_rate')}",
    )
    g.add_argument(
        "--mut-bound",
        metavar="TB",
        help=f"FedMut: round after which beta reaches 0, {ROUNDS_BOUND} {default(fm, 'mut_bound')}",
    )
    g.add_argument(
        "--mutate",
        metavar="{all,params}",
        help="FedMut: 'all' mutates every floating-point state_dict entry (BatchNorm running "
        f"stats too, as the reference code); 'params' only parameters {default(fm, 'mutate')}",
    )

    g.add_argument(
        "--mutation-cap",
        metavar="RHO",
        help="FedMut safeguard, NOT in the paper or the reference code: cap the mutation step radius*||d|| at "
        "RHO*||w_t|| (the round's radius becomes min(radius, RHO*||w_t||/||d||), logged as mutation_radius) "
        "(default: off)",
    )


def _baseline_arguments(g: Any) -> None:
    """FedProx, SCAFFOLD, clustered sampling and FedCluster."""
    g.add_argument(
        "--mu",
        metavar="MU",
        help="FedProx: weight of the proximal term (mu/2)||w - w_t||^2 (default: 0.01; 0 = FedAvg)",
    )
    g.add_argument(
        "--global-lr",
        metavar="ETA_G",
        help="SCAFFOLD/MoFedSAM: server step size, x += eta_g * mean(y_k - x) (default: 1.0)",
    )
    _sam_family_arguments(g)

    g.add_argument(
        "--similarity",
        metavar="{L1,L2,cosine}",
        help="CluSamp: distance between clients' representative gradients (default: L1, as the reference code)",
    )

    g.add_argument(
        "--clusters",
        metavar="M",
        help="FedCluster: number of client clusters taking turns within a round (default: 2; 1 = FedAvg)",
    )
    g.add_argument(
        "--grouping",
        metavar="{random,label}",
        help="FedCluster: clusters drawn at random or by each client's most frequent label (default: random)",
    )


def _sam_family_arguments(g: Any) -> None:
    """MoFedSAM's momentum weight and FedSWA's schedule (--rho, --eta: the local step's flags)."""
    g.add_argument(
        "--mo-alpha",
        metavar="ALPHA",
        help="MoFedSAM: local direction alpha * SAM gradient + (1 - alpha) * server momentum (default: 0.1)",
    )
    g.add_argument(
        "--swa-start",
        metavar="S",
        help="FedSWA: rounds after round S average the server model and cycle the clients' lr "
        f"({ROUNDS_BOUND}; default: 75%% of --rounds)",
    )
    g.add_argument(
        "--swa-cycle",
        metavar="C",
        help="FedSWA: cycle length in rounds; the SWA model collects the server model at each cycle's end "
        f"({ROUNDS_BOUND}; default: 10)",
    )
    g.add_argument(
        "--swa-lr",
        metavar="LR",
        help="FedSWA: the clients' lr at the end of a cycle; it falls linearly from --lr (default: 1e-4)",
    )


def _distillation_arguments(g: Any) -> None:
    """FedDF, FedGen and FedAUX: server data and distillation, then the generator and the scorers."""
    g.add_argument(
        "--proxy-frac",
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
    g.add_argument("--temperature", metavar="T", help="FedDF/FedAUX: distillation temperature (default: 1.0)")
    g.add_argument(
        "--distill-steps",
        metavar="N",
        help="FedDF/FedAUX: most Adam steps of distillation per round, early-stopped on 10%% of the proxy data "
        f"({STEPS_BOUND}; default: 100)",
    )
    g.add_argument("--distill-lr", metavar="LR", help="FedDF/FedAUX: Adam step size (default: 1e-3)")
    _generator_arguments(g)
    _scorer_arguments(g)


def _generator_arguments(g: Any) -> None:
    """FedGen's generator and its two client-side loss weights."""
    g.add_argument(
        "--gen-alpha",
        metavar="A",
        help="FedGen: client weight of CE(head(G(eps, y)), y) on generated latents (default: 0.2; all models)",
    )
    g.add_argument(
        "--gen-beta",
        metavar="B",
        help="FedGen: client weight of KL(softmax(head(G(y))) || softmax(f(x))) on its own batch (default: 0.2)",
    )
    g.add_argument("--gen-lr", metavar="LR", help="FedGen: generator Adam step size (default: 3e-4)")
    g.add_argument("--gen-epochs", metavar="N", help=f"FedGen: generator epochs a round, {STEPS_BOUND} (default: 10)")
    g.add_argument(
        "--gen-iters", metavar="N", help=f"FedGen: Adam steps per generator epoch, {STEPS_BOUND} (default: 5)"
    )
    g.add_argument(
        "--gen-batch",
        metavar="B",
        help="FedGen: generated latents per step, server and clients (default: 128)",
    )
    g.add_argument("--gen-hidden", metavar="H", help="FedGen: generator hidden width (default: 512)")
    g.add_argument("--gen-noise", metavar="D", help="FedGen: generator noise size (default: 100)")
    g.add_argument("--diversity", metavar="ETA", help="FedGen: weight of the diversity loss (default: 1.0)")


def _scorer_arguments(g: Any) -> None:
    """FedAUX's pre-training and its clients' certainty scorers."""
    g.add_argument(
        "--aux-pretrain-steps",
        metavar="N",
        help="FedAUX: Adam steps of self-supervised rotation-prediction pre-training of the feature extractor on "
        f"the auxiliary data before round 1; image datasets only; {STEPS_BOUND} (default: 0 = off)",
    )
    g.add_argument("--aux-pretrain-lr", metavar="LR", help="FedAUX: pre-training Adam step size (default: 1e-3)")
    g.add_argument(
        "--score-l2",
        metavar="LAMBDA",
        help="FedAUX: l2 weight of each client's logistic-regression certainty scorer (default: 0.01)",
    )
    g.add_argument(
        "--dp-epsilon",
        metavar="EPS",
        help="FedAUX: (epsilon, delta)-DP Gaussian noise on the scorers' weights; 0 = none (default: 0)",
    )
    g.add_argument("--dp-delta", metavar="DELTA", help="FedAUX: delta of the scorers' privacy (default: 1e-5)")
