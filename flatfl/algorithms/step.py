"""One local minibatch step, written once for every algorithm and both training paths.

A client's step on minibatch B from weights w is::

    g = grad L_B(w)                          (only when the perturbation needs it)
    e = perturbation(w, g)                   SGD: none; SAM, ASAM, FedLESAM: see below
    d = descent(grad [L_B + term](w + e))    the gradient taken at w + e on the SAME minibatch;
                                             MoFedSAM mixes in the server's momentum here
    w <- w - lr * sgd(d)                     torch.optim.SGD's rule (``sgd_direction``)

with L_B the mean cross-entropy on B and ``term`` the algorithm's extra objective term (FedProx,
SCAFFOLD, FedGen; evaluated at w + e, never in the ascent pass). Perturbations:

* SAM (Foret, Kleiner, Mobahi, Neyshabur; ICLR 2021): e = rho g / ||g||, the norm over all trainable
  parameters together.
* ASAM (Kwon, Kim, Park, Choi; ICML 2021): e = rho T^2 g / ||T g||, T = |w| + eta elementwise for
  parameters whose name contains ``weight`` and T = 1 for the others (biases), as the authors' code
  (github SamsungLabs/ASAM) and Caldarola et al.'s (github debcaldarola/fedsam) do.
* fixed (FedLESAM, Fan et al., ICML 2024): e = rho v / ||v|| for a direction v given by the server,
  the same at every step; no gradient at w is needed (one backward pass a step).

With ||g|| = 0 the gradient is zero and e = 0 (no division by zero; the references add 1e-12..1e-7 to
the norm instead). The functions over parameter dicts work on one client's tensors and, under
``torch.func.vmap``, on a stack of clients (``flatfl.parallel``), so both paths share them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch

if TYPE_CHECKING:
    from flatfl.config import LocalConfig

Tensors = Mapping[str, torch.Tensor]

# --local-opt values and the defaults of their radius rho (and ASAM's eta) when not given:
# SAM 0.05 (Foret et al.'s default), ASAM rho 0.5, eta 0.01 (Kwon et al.'s CIFAR setting, the
# default of debcaldarola/fedsam's ASAM class); FedLESAM's estimated perturbation ("lesam") 0.05.
LOCAL_OPTS = ("sgd", "sam", "asam")
DEFAULT_RHO = {"sam": 0.05, "asam": 0.5, "lesam": 0.05}
DEFAULT_ETA = 0.01


def sgd_direction(
    grad: torch.Tensor,
    param: torch.Tensor,
    buf: torch.Tensor | None,
    momentum: float,
    dampening: float,
    weight_decay: float,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(step direction b, new momentum buffer) of ``torch.optim.SGD`` (non-Nesterov); w <- w - lr b.

    d = g + wd w; b = d on the first step (buf None), b = m b + (1 - dampening) d after; without
    momentum b = d. The same tensor operations as torch's single-tensor SGD, so the results are bit
    for bit those of ``torch.optim.SGD`` (tested)."""
    d = grad if weight_decay == 0 else grad.add(param, alpha=weight_decay)
    if momentum == 0:
        return d, None
    buf = torch.clone(d).detach() if buf is None else buf.mul(momentum).add_(d, alpha=1 - dampening)
    return buf, buf


def _norm(tensors: Tensors) -> torch.Tensor:
    """The L2 norm of all tensors together (one client's; per client under vmap)."""
    return torch.stack([t.pow(2).sum() for t in tensors.values()]).sum().sqrt()


def _safe(norm: torch.Tensor) -> torch.Tensor:
    """``norm`` where positive, else 1 (then the numerator is zero too, and so is the perturbation)."""
    return torch.where(norm > 0, norm, torch.ones_like(norm))


@dataclass(frozen=True, eq=False)
class Perturbation:
    """Where the descent gradient is taken: w + e (see the module docstring)."""

    kind: Literal["sam", "asam", "fixed"]
    rho: float
    eta: float = 0.0
    fixed: dict[str, torch.Tensor] | None = None  # kind "fixed": e itself (rho v / ||v||)

    @classmethod
    def along(cls, rho: float, direction: Tensors) -> Perturbation:
        """FedLESAM's fixed perturbation e = rho v / ||v|| along the server's direction v."""
        scale = rho / _safe(_norm(direction))
        return cls("fixed", rho, fixed={n: v * scale for n, v in direction.items()})

    @property
    def needs_gradient(self) -> bool:
        return self.kind != "fixed"

    def __call__(self, params: Tensors, grads: Tensors) -> dict[str, torch.Tensor]:
        """e for one client's parameters ``params`` and ascent gradient ``grads`` (same keys)."""
        if self.kind == "fixed":
            assert self.fixed is not None
            return {n: self.fixed[n] for n in params}
        if self.kind == "sam":
            scale = self.rho / _safe(_norm(grads))
            return {n: g * scale for n, g in grads.items()}
        t = {n: params[n].abs() + self.eta if "weight" in n else None for n in grads}
        tg = {n: g if t[n] is None else t[n] * g for n, g in grads.items()}
        scale = self.rho / _safe(_norm(tg))
        return {n: (v if t[n] is None else t[n] * v) * scale for n, v in tg.items()}


@dataclass(frozen=True, eq=False)
class LocalStep:
    """The rule of a client's local minibatch steps in one round (see the module docstring).

    ``mix`` = (alpha, delta): MoFedSAM's descent direction alpha d + (1 - alpha) delta."""

    lr: float
    momentum: float = 0.0
    weight_decay: float = 0.0
    dampening: float = 0.0
    perturbation: Perturbation | None = None
    mix: tuple[float, dict[str, torch.Tensor]] | None = None

    @classmethod
    def from_config(cls, local: LocalConfig, lr: float | None = None) -> LocalStep:
        """SGD with ``--local-opt``'s perturbation (sgd: none), at ``lr`` (default ``local.lr``)."""
        opt = getattr(local, "opt", "sgd")
        pert = None
        if opt in ("sam", "asam"):
            rho = local.rho if local.rho is not None else DEFAULT_RHO[opt]
            eta = (local.eta if local.eta is not None else DEFAULT_ETA) if opt == "asam" else 0.0
            pert = Perturbation(opt, float(rho), float(eta))
        return cls(local.lr if lr is None else lr, local.momentum, local.weight_decay, perturbation=pert)

    def descent(self, grads: Tensors) -> dict[str, torch.Tensor]:
        """The gradient the SGD update uses: ``grads`` (taken at w + e), or MoFedSAM's mix."""
        if self.mix is None:
            return dict(grads)
        alpha, delta = self.mix
        return {n: g.mul(alpha).add(delta[n].to(g.device), alpha=1 - alpha) for n, g in grads.items()}
