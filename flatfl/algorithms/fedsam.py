"""FedSAM (Caldarola, Caputo, Ciccone; ECCV 2022. Qu, Li, Duan, Liu, Tang, Lu; ICML 2022).

FedAvg whose clients minimise their local loss with sharpness-aware minimisation (Foret et al., ICLR
2021) instead of plain SGD. Each local step on minibatch B from w::

    g = grad L_B(w);   e = rho g / ||g||          (norm over all trainable parameters)
    w <- w - lr * sgd(grad L_B(w + e))            (the same minibatch; momentum, weight decay as SGD)

and the server takes FedAvg's sample-weighted mean of the returned models (``--unweighted``: plain
mean), as Caldarola et al.'s code (github debcaldarola/fedsam, ``SAMClient`` + FedAvg server). The
step is :mod:`flatfl.algorithms.step` (``--local-opt sam`` with any other algorithm runs the same one);
this class fixes it, recording ``local.opt = "sam"`` and ``local.rho`` (``--rho``, default 0.05) in
run.json. ``--rho 0`` is FedAvg bit for bit (tested).

Departures: the references add 1e-12..1e-16 to ||g||; here e = 0 when g = 0 and no constant is added.
BatchNorm running statistics are updated by the pass at w only (the second pass's are discarded, the
usual SAM practice); Caldarola et al.'s code lets both passes update them. Their code undoes the ascent
by subtracting e; here w is restored exactly from a copy.
"""

from __future__ import annotations

from dataclasses import dataclass

from flatfl.algorithms.fedavg import FedAvg


@dataclass(frozen=True)
class FedSAMConfig:
    weighted: bool = True


class FedSAM(FedAvg):
    name = "fedsam"
    config_cls = FedSAMConfig
    local_opt = "sam"
