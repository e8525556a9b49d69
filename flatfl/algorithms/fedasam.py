"""FedASAM (Caldarola, Caputo, Ciccone; ECCV 2022): FedAvg with adaptive SAM on the clients.

ASAM (Kwon, Kim, Park, Choi; ICML 2021) makes SAM's neighbourhood scale-invariant with the
normalisation operator T_w = |w| + eta (elementwise). Each local step on minibatch B from w::

    g = grad L_B(w);   e = rho T^2 g / ||T g||
    w <- w - lr * sgd(grad L_B(w + e))

with T = |w| + eta for parameters whose name contains ``weight`` and T = 1 for the others (biases),
exactly as the authors' code (github SamsungLabs/ASAM) and Caldarola et al.'s (github
debcaldarola/fedsam, ``models/clients/minimizers.py``). The server takes FedAvg's sample-weighted
mean. ``local.opt = "asam"``, ``local.rho`` (``--rho``, default 0.5) and ``local.eta`` (``--eta``,
default 0.01; Kwon et al.'s CIFAR setting and the default of Caldarola et al.'s ASAM class) are
recorded in run.json. ``--rho 0`` is FedAvg bit for bit (tested). Departures as
:mod:`flatfl.algorithms.fedsam`'s.
"""

from __future__ import annotations

from dataclasses import dataclass

from flatfl.algorithms.fedavg import FedAvg


@dataclass(frozen=True)
class FedASAMConfig:
    weighted: bool = True


class FedASAM(FedAvg):
    name = "fedasam"
    config_cls = FedASAMConfig
    local_opt = "asam"
